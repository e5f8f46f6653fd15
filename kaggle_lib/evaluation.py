"""Scoring of model outputs: tag parsing, answer matching, scorecards and the eval files.

Everything here is pure Python (no model, no JAX) so it can be tested and re-run on saved
outputs. The pipeline generates text elsewhere and hands it to `score_item`.

Files written:
- `predictions.jsonl`: one `score_item` record per line (with a `"stage"` field,
  `"baseline"` or `"trained"`).
- `eval_summary.json`: the `summarize` structure
  `{"baseline": scorecard|null, "baseline_fewshot": scorecard|null, "trained": scorecard|null,
  "delta": ...|null, "delta_against": "baseline"|"baseline_fewshot"|null, "meta": {...}}`.
"""

from __future__ import annotations

import ast
import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from kaggle_lib import jsonl, logs

log = logs.get_logger(__name__)

# baseline_fewshot: the untrained model asked with kaggle_lib.data.fewshot's prompt.
STAGES = ("baseline", "baseline_fewshot", "trained")
BASELINES = ("baseline", "baseline_fewshot")
ITEM_FIELDS = ("id", "section", "category", "difficulty", "prompt", "answer")
GROUP_FIELDS = {"by_section": "section", "by_category": "category", "by_difficulty": "difficulty"}
# Metrics that `summarize` / `compare` difference between two scorecards (n is not a metric).
DELTA_METRICS = ("accuracy", "format_exact", "format_approx", "mean_tokens", "truncation_rate")
RECORD_FIELDS = (
    "id", "section", "category", "difficulty", "prompt", "answer", "output", "parsed_answer",
    "correct", "exact_match", "numeric_match", "format_exact", "format_approx", "token_count",
    "truncated", "equations", "equations_correct",
)
# 95% two-sided normal quantile for the Wilson interval.
Z95 = 1.959963984540054

# Stop markers the sampler may leave at the end of a decoded output.
_STOP_MARKERS = ("<end_of_turn>", "<eos>")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedOutput:
    """What `parse_output` found in one model output."""

    reasoning: str | None
    answer: str | None
    format_exact: bool
    format_approx: bool


def _tag_res(name: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    # Lenient tags: any case, whitespace inside the angle brackets.
    return (
        re.compile(rf"<\s*{name}\s*>", re.IGNORECASE),
        re.compile(rf"<\s*/\s*{name}\s*>", re.IGNORECASE),
    )


_REASONING_OPEN, _REASONING_CLOSE = _tag_res("reasoning")
_ANSWER_OPEN, _ANSWER_CLOSE = _tag_res("answer")
_ANY_TAG = re.compile(r"<\s*/?\s*(?:reasoning|answer)\s*>", re.IGNORECASE)
_EXACT = re.compile(r"<reasoning>(.*?)</reasoning>\s*<answer>(.*?)</answer>", re.DOTALL)
_APPROX = re.compile(
    r"<\s*reasoning\s*>.*?<\s*/\s*reasoning\s*>.*?<\s*answer\s*>.*?<\s*/\s*answer\s*>",
    re.IGNORECASE | re.DOTALL,
)


def _strip_stop_markers(text: str) -> str:
    text = text.strip()
    changed = True
    while changed:  # e.g. "...</answer><end_of_turn>\n<eos>"
        changed = False
        for marker in _STOP_MARKERS:
            if text.endswith(marker):
                text = text[: -len(marker)].rstrip()
                changed = True
    return text


def _last_pair(text: str, open_re: re.Pattern[str], close_re: re.Pattern[str]) -> str | None:
    """Content of the last opening tag that is closed later (innermost for nested tags).

    An unclosed final tag (typically a truncated output) is skipped rather than read to the
    end of the text: a half-written answer should not be scored.
    """
    for opening in reversed(list(open_re.finditer(text))):
        closing = close_re.search(text, opening.end())
        if closing is not None:
            return text[opening.end() : closing.start()].strip()
    return None


def parse_output(text: str) -> ParsedOutput:
    """Split a model output into reasoning and answer and judge its format.

    - `format_exact`: after stripping whitespace and trailing `<end_of_turn>`/`<eos>`, the
      output is exactly `<reasoning>R</reasoning>` then `<answer>A</answer>` (lowercase tags,
      only whitespace between the two blocks, nothing before or after), with non-empty R and A
      and no further reasoning/answer tags inside them. Empty blocks do not count because a
      format reward must not pay for `<reasoning></reasoning><answer></answer>`.
    - `format_approx`: both tag pairs appear in order, tags matched case-insensitively with
      whitespace allowed inside them, any text around them.
    - `answer` / `reasoning`: stripped content of the last closed tag pair (see `_last_pair`);
      None when there is no closed pair.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_output expects the decoded output as str, got {type(text).__name__}")
    body = _strip_stop_markers(text)
    answer = _last_pair(body, _ANSWER_OPEN, _ANSWER_CLOSE)
    reasoning = _last_pair(body, _REASONING_OPEN, _REASONING_CLOSE)

    exact = False
    match = _EXACT.fullmatch(body)
    if match is not None:
        inner_reasoning, inner_answer = match.group(1), match.group(2)
        exact = (
            bool(inner_reasoning.strip())
            and bool(inner_answer.strip())
            and not _ANY_TAG.search(inner_reasoning)
            and not _ANY_TAG.search(inner_answer)
        )
    approx = _APPROX.search(body) is not None
    return ParsedOutput(reasoning=reasoning, answer=answer, format_exact=exact, format_approx=approx)


# --------------------------------------------------------------------------- matching


def normalize_answer(text: str) -> str:
    """Strip, casefold, collapse whitespace and drop trailing periods."""
    text = " ".join(str(text).split()).casefold()
    return text.rstrip(".").rstrip()


_PLAIN_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?", re.IGNORECASE)
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_FRACTION = re.compile(r"(?:(\d+)\s+)?(\d+)\s*/\s*(\d+)")
_CURRENCY = "$£€¥"


def parse_number(text: str) -> float | None:
    """Parse an answer that is a single number, or return None.

    Accepted: `12`, `-12.5`, `1e3`, `1,234` (thousands groups only), `$12` / `-$12` / `$-12`,
    `3/4`, `1 3/4` (mixed number), `50%` (read as 50: answers state percentages as the
    number of percent, so `50%` matches `50`, not `0.5`), a trailing period. Anything with
    extra words (`12 apples`, `x = 12`) is not a number; such answers can still match exactly.
    """
    s = str(text).strip().replace("\u2212", "-").rstrip(".").strip()
    sign = 1.0
    if s and s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:].strip()
    if s and s[0] in _CURRENCY:
        s = s[1:].strip()
        if s and s[0] in "+-" and sign == 1.0:  # "$-12"
            sign = -1.0 if s[0] == "-" else 1.0
            s = s[1:].strip()
    if s.endswith("%"):
        s = s[:-1].strip()
    if not s:
        return None
    if "," in s:
        if not _THOUSANDS.fullmatch(s):
            return None  # "1,2" or "1,23,456" is a list or a locale we do not guess
        s = s.replace(",", "")
    fraction = _FRACTION.fullmatch(s)
    if fraction is not None:
        whole, num, den = fraction.groups()
        if int(den) == 0:
            return None
        value = Fraction(int(num), int(den)) + (int(whole) if whole else 0)
        return sign * float(value)
    # The regex guard keeps float() from accepting "nan", "inf" or "1_000".
    if _PLAIN_NUMBER.fullmatch(s):
        return sign * float(s)
    return None


def answers_match(
    predicted: str | None, expected: str | int | float, rel_tol: float = 1e-4
) -> tuple[bool, bool]:
    """Return `(exact, numeric)`; an answer is correct when either is True.

    exact: equal after `normalize_answer`. numeric: both parse with `parse_number` and
    agree within `rel_tol` (relative to the larger magnitude; 0 only matches 0).
    """
    if rel_tol < 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    if predicted is None:
        return False, False
    exact = normalize_answer(predicted) == normalize_answer(str(expected))
    a, b = parse_number(predicted), parse_number(str(expected))
    numeric = a is not None and b is not None and math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    return exact, numeric


# --------------------------------------------------------------------------- reasoning lines


_NUM = r"[$€£]?\d[\d,]*(?:\.\d+)?%?"
# "x" multiplies only between spaces ("75 x 80"); a unit word may follow a number on the left
# ("93 caterpillars + 186 ladybugs = 279"): it is ignored when the equation is checked.
_OP = r"(?:[-+*/×÷]|(?<=\s)x(?=\s))"
_UNIT = r"(?:\s+(?!x\s)[a-z]+)?"
_OPERAND = rf"\(*-?{_NUM}{_UNIT}\)*"
EQUATION = re.compile(
    rf"(?<![\w.])(?P<lhs>{_OPERAND}(?:\s*{_OP}\s*{_OPERAND})+)\s*=\s*(?P<rhs>-?{_NUM})"
    r"(?![\w])"
)
_ASCII_OPS = str.maketrans({"×": "*", "÷": "/", "\u2212": "-"})


def ascii_expression(expression: str) -> str:
    """ASCII operators, no unit words: "294 pages x 2/3" -> "294 * 2/3"."""
    expression = re.sub(r"(?<=\s)x(?=\s)", "*", expression.translate(_ASCII_OPS))
    return re.sub(r"(\d%?)\s+[a-z]+", r"\1", expression)


def _number(token: str) -> Fraction:
    token = re.sub(r"[$€£,]", "", token)
    if token.endswith("%"):
        return Fraction(token[:-1]) / 100
    return Fraction(token)


def evaluate_expression(expression: str) -> Fraction | None:
    """Value of `a op b op ...` (+ - * /, parentheses) as an exact fraction, or None."""
    expression = ascii_expression(expression)
    expression = re.sub(_NUM, lambda m: f"N({_number(m.group()).numerator},"
                                        f"{_number(m.group()).denominator})", expression)
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return None

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "N":  # made above
            num, den = (n.value for n in node.args)  # type: ignore[attr-defined]
            return Fraction(num, den)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            if isinstance(node.op, ast.Div):
                return left / right  # ZeroDivisionError -> None below
        raise ValueError("unsupported")

    try:
        return walk(tree)
    except (ValueError, ZeroDivisionError, TypeError):
        return None


def find_equations(text: str) -> list[tuple[str, str]]:
    """Every ``lhs = rhs`` equation in ``text`` with at least one operator, as (lhs, rhs)."""
    return [(m.group("lhs").strip(), m.group("rhs").strip()) for m in EQUATION.finditer(text)]


def equation_holds(lhs: str, rhs: str) -> bool:
    """True when ``lhs`` evaluates to ``rhs`` as written: exactly for a whole number, to the
    shown decimals for a decimal (``14 / 42 = 0.33`` holds, ``50 / 20 = 2`` does not)."""
    left = evaluate_expression(lhs)
    try:
        right = _number(rhs.lstrip("-\u2212")) * (-1 if rhs[:1] in "-\u2212" else 1)
    except (ValueError, ZeroDivisionError):
        return False
    if left is None:
        return False
    decimals = len(rhs.rstrip("%").partition(".")[2])
    return abs(left - right) <= Fraction(1, 2 * 10**decimals) if decimals else left == right


def check_reasoning_lines(text: str | None) -> tuple[int, int]:
    """(equations found, equations whose arithmetic holds) in ``text`` (the reasoning)."""
    found = find_equations(text or "")
    return len(found), sum(equation_holds(lhs, rhs) for lhs, rhs in found)

def reasoning_gym_score(answer: str | None, item: Mapping[str, Any]) -> float:
    """reasoning-gym's scorer (0..1) for an item of `kaggle_lib.data.reasoning_gym`, rebuilt
    from its `prompt`, `answer`, `rg_dataset` and `rg_metadata` fields."""
    if answer is None:
        return 0.0
    import reasoning_gym  # only items that came from it get here

    family = str(item.get("rg_dataset"))
    try:
        scorer = reasoning_gym.get_score_answer_fn(family)
    except Exception as exc:  # noqa: BLE001 - its registry raises plain errors for unknown names
        raise ValueError(f"item {item.get('id')!r}: rg_dataset {family!r} is not a "
                         f"reasoning-gym dataset ({exc})") from None
    entry = {"question": item["prompt"], "answer": item["answer"],
             "metadata": dict(item.get("rg_metadata") or {})}
    return float(scorer(answer=answer, entry=entry))


# --------------------------------------------------------------------------- records


def score_item(
    item: Mapping[str, Any],
    output: str,
    token_count: int,
    truncated: bool,
    *,
    stage: str | None = None,
    rel_tol: float = 1e-4,
) -> dict[str, Any]:
    """Score one generated output against its evaluation item -> a `predictions.jsonl` record.

    `stage` ("baseline" or "trained"), when given, is stored in the record so baseline and
    trained predictions can share one file.
    """
    if not isinstance(item, Mapping):
        raise TypeError(f"evaluation item must be a dict, got {type(item).__name__}")
    item_id = item.get("id", "<no id>")
    for field in ITEM_FIELDS:
        if field not in item:
            raise ValueError(
                f"evaluation item {item_id!r} is missing field {field!r} "
                f"(required: {', '.join(ITEM_FIELDS)})"
            )
    if isinstance(token_count, bool) or not isinstance(token_count, int) or token_count < 0:
        raise ValueError(
            f"evaluation item {item_id!r}: token_count must be an int >= 0, got {token_count!r}"
        )
    if not isinstance(truncated, bool):
        raise ValueError(
            f"evaluation item {item_id!r}: truncated must be a bool, got {truncated!r}"
        )
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    parsed = parse_output(output)
    exact, numeric = answers_match(parsed.answer, item["answer"], rel_tol=rel_tol)
    if item.get("rg_dataset") and not (exact or numeric) and parsed.answer is not None:
        # reasoning-gym items: its own scorer also decides (e.g. "Zoey is a knight, and ..."
        # in another order), so evaluation agrees with the reasoning-gym GRPO reward.
        exact = reasoning_gym_score(parsed.answer, item) >= 1.0
    # The reasoning block when there is one, else the whole output (a truncated reasoning).
    n_equations, n_correct = check_reasoning_lines(
        parsed.reasoning if parsed.reasoning is not None else output)
    record: dict[str, Any] = {} if stage is None else {"stage": stage}
    record.update(
        {
            "id": item["id"],
            "section": item["section"],
            "category": item["category"],
            "difficulty": item["difficulty"],
            "prompt": item["prompt"],
            "answer": item["answer"],
            "output": output,
            "parsed_answer": parsed.answer,
            "correct": exact or numeric,
            "exact_match": exact,
            "numeric_match": numeric,
            "format_exact": parsed.format_exact,
            "format_approx": parsed.format_approx,
            "token_count": token_count,
            "truncated": truncated,
            "equations": n_equations,
            "equations_correct": n_correct,
        }
    )
    return record


# --------------------------------------------------------------------------- scorecards


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (95% by default); None when n == 0.

    Chosen over the normal approximation because it stays inside [0, 1] and is not empty at
    0 or n successes, the usual case for small evaluations.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson_interval needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    # At 0 or n successes the bound is exactly 0 or 1; rounding would leave 1e-17 off.
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def _interval(records: Sequence[Mapping[str, Any]]) -> list[float] | None:
    ci = wilson_interval(sum(bool(r["correct"]) for r in records), len(records))
    return None if ci is None else [ci[0], ci[1]]


def _lines(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    # Records written before equations were counted have no such fields: they count as none.
    total = sum(int(r.get("equations", 0)) for r in records)
    correct = sum(int(r.get("equations_correct", 0)) for r in records)
    return {"equations": total, "correct": correct, "share": correct / total if total else None}



def _metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    n = len(records)
    if n == 0:
        return {"n": 0, **{m: None for m in DELTA_METRICS}}

    def rate(field: str) -> float:
        return sum(bool(r[field]) for r in records) / n

    return {
        "n": n,
        "accuracy": rate("correct"),
        "format_exact": rate("format_exact"),
        "format_approx": rate("format_approx"),
        "mean_tokens": sum(r["token_count"] for r in records) / n,
        "truncation_rate": rate("truncated"),
    }


_SCORED_FIELDS = (
    "section", "category", "difficulty", "correct", "format_exact", "format_approx",
    "token_count", "truncated",
)


def scorecard(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Metrics overall and per section / category / difficulty.

    Returns `{"overall": m, "by_section": {name: m}, "by_category": ..., "by_difficulty": ...,
    "ci95": ..., "reasoning_lines": ...}` where `m = {"n", "accuracy", "format_exact",
    "format_approx", "mean_tokens", "truncation_rate"}` (rates in [0, 1], None when n == 0).
    `ci95` is the 95% Wilson interval of the accuracy, `[lo, hi]` (None when n == 0), and
    `reasoning_lines` is `{"equations", "correct", "share"}` (the arithmetic of every
    `a op b = c` in the reasoning checked; share None without equations); both overall and
    by section. Group names are strings (so the scorecard survives a JSON round trip
    unchanged) in sorted order.
    """
    records = list(records)
    for index, record in enumerate(records):
        for field in _SCORED_FIELDS:
            if field not in record:
                raise ValueError(
                    f"prediction record {index} (id {record.get('id', '<no id>')!r}) is missing "
                    f"field {field!r} (records come from score_item)"
                )
    card: dict[str, Any] = {"overall": _metrics(records)}
    ci95: dict[str, Any] = {"overall": _interval(records)}
    lines: dict[str, Any] = {"overall": _lines(records)}
    for key, field in GROUP_FIELDS.items():
        groups: dict[str, list[Mapping[str, Any]]] = {}
        for record in records:
            groups.setdefault(str(record[field]), []).append(record)
        card[key] = {name: _metrics(groups[name]) for name in sorted(groups)}
        if key == "by_section":
            ci95[key] = {name: _interval(groups[name]) for name in sorted(groups)}
            lines[key] = {name: _lines(groups[name]) for name in sorted(groups)}
    card["ci95"] = ci95
    card["reasoning_lines"] = lines
    return card


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def scorecard_delta(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """`b - a` for each metric in `DELTA_METRICS`, overall and for groups present in both."""

    def metric_delta(ma: Mapping[str, Any], mb: Mapping[str, Any]) -> dict[str, float | None]:
        return {m: _diff(ma.get(m), mb.get(m)) for m in DELTA_METRICS}

    delta: dict[str, Any] = {"overall": metric_delta(a["overall"], b["overall"])}
    for key in GROUP_FIELDS:
        ga, gb = a.get(key, {}), b.get(key, {})
        delta[key] = {name: metric_delta(ga[name], gb[name]) for name in ga if name in gb}
    return delta


def better_baseline(cards: Mapping[str, Mapping[str, Any] | None]) -> str | None:
    """The baseline stage with the higher overall accuracy (zero-shot on a tie), or None."""
    present = [name for name in BASELINES
               if cards.get(name) is not None and cards[name]["overall"]["accuracy"] is not None]
    if not present:
        return None
    return max(present, key=lambda name: (cards[name]["overall"]["accuracy"],
                                          -BASELINES.index(name)))


def summarize(
    baseline_records: Iterable[Mapping[str, Any]] | None,
    trained_records: Iterable[Mapping[str, Any]] | None,
    meta: Mapping[str, Any] | None = None,
    *,
    fewshot_records: Iterable[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Build the `eval_summary.json` structure; any stage may be missing (None).

    `delta` is trained minus the better baseline (`better_baseline`: zero-shot or few-shot,
    named in `delta_against`), so training is credited only with what a good prompt alone
    could not do; None unless trained and a baseline are present.
    """
    if baseline_records is None and trained_records is None and fewshot_records is None:
        raise ValueError("summarize needs baseline_records, trained_records or both; got neither")
    cards = {
        "baseline": None if baseline_records is None else scorecard(baseline_records),
        "baseline_fewshot": None if fewshot_records is None else scorecard(fewshot_records),
    }
    trained = None if trained_records is None else scorecard(trained_records)
    against = better_baseline(cards)
    delta = None if against is None or trained is None else scorecard_delta(cards[against],
                                                                            trained)
    return {"baseline": cards["baseline"], "baseline_fewshot": cards["baseline_fewshot"],
            "trained": trained, "delta": delta, "delta_against": against,
            "meta": dict(meta or {})}


def first_answer_only(text: str) -> str:
    """``text`` up to and including its first ``</answer>``: what a stop at ``</answer>``
    gives. A few-shot prompt invites the model to go on with another invented question,
    whose answer would otherwise be the last one and be scored."""
    closing = _ANSWER_CLOSE.search(text)
    return text if closing is None else text[: closing.end()]


def trim_fewshot(text: str, n_tokens: int, truncated: bool,
                 count_tokens: Callable[[str], int]) -> tuple[str, int, bool]:
    """(text, token count, truncated) of a few-shot output cut by `first_answer_only`; an
    output cut there was not truncated. Unchanged when there is no `</answer>`."""
    cut = first_answer_only(text)
    if cut == text:
        return text, n_tokens, truncated
    return cut, count_tokens(cut), False


def generate_with_progress(generator: Any, prompts: Sequence[str], *, max_new_tokens: int,
                           batch_size: int, desc: str = "eval") -> list[Any]:
    """Greedy `generator.generate` batch by batch under a tqdm bar (items done, tokens/s).

    Same outputs as one call: greedy decoding does not depend on the batching, and each
    batch keeps the compiled shapes (`Generator` pads the last batch to `batch_size`).
    """
    from tqdm.auto import tqdm

    outputs: list[Any] = []
    started = time.monotonic()
    with tqdm(total=len(prompts), desc=desc, unit="item", file=sys.stderr) as bar:
        for start in range(0, len(prompts), batch_size):
            batch = generator.generate(list(prompts[start:start + batch_size]),
                                       max_new_tokens=max_new_tokens, batch_size=batch_size)
            outputs += batch
            tokens = sum(g.n_tokens for g in outputs)
            bar.update(len(batch))  # then the rate, so each refresh shows both up to date
            bar.set_postfix(tokens_per_s=f"{tokens / max(time.monotonic() - started, 1e-9):.1f}")
    return outputs


# --------------------------------------------------------------------------- files


def write_predictions(
    path: str | Path,
    records: Iterable[Mapping[str, Any]],
    *,
    stage: str | None = None,
    append: bool = False,
) -> Path:
    """Write records as JSON lines. `stage` stamps every record (the input is not modified);
    `append=True` adds to an existing file (e.g. trained after baseline)."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for record in records:
            row = dict(record)
            if stage is not None:  # stage first so the file reads well; overrides any old one
                row = {"stage": stage, **{k: v for k, v in row.items() if k != "stage"}}
            handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read a `predictions.jsonl`; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    records = []
    # A last line cut short (a killed kernel) is skipped: the rest still counts.
    for lineno, record in jsonl.read_lines(path, skip_bad="last", decode="replace"):
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
        records.append(record)
    return records


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write `eval_summary.json` (indented; NaN is refused so the file stays strict JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- text tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the rest right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def fmt_rate_delta(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}pp"


def fmt_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_scorecard_table(summary: Mapping[str, Any]) -> str:
    """Overall + per-section table of an `eval_summary.json` structure, for the notebook."""
    # The baseline columns show the baseline the delta is taken against.
    baseline = summary.get(summary.get("delta_against") or "baseline")
    if baseline is None:
        baseline = summary.get("baseline") or summary.get("baseline_fewshot")
    trained = summary.get("trained")
    if baseline is None and trained is None:
        raise ValueError("summary has neither a 'baseline' nor a 'trained' scorecard")
    empty: dict[str, Any] = {}

    def group(card: Mapping[str, Any] | None, name: str | None) -> Mapping[str, Any]:
        if card is None:
            return empty
        return card["overall"] if name is None else card["by_section"].get(name, empty)

    names = sorted(set((baseline or empty).get("by_section", {}))
                   | set((trained or empty).get("by_section", {})))
    rows = []
    for label, name in [("overall", None), *((f"  {s}", s) for s in names)]:
        b, t = group(baseline, name), group(trained, name)
        n = t.get("n", b.get("n"))
        rows.append([
            label,
            "-" if n is None else str(n),
            fmt_rate(b.get("accuracy")),
            fmt_rate(t.get("accuracy")),
            fmt_rate_delta(_diff(b.get("accuracy"), t.get("accuracy"))),
            fmt_rate(b.get("format_exact")),
            fmt_rate(t.get("format_exact")),
            fmt_number(t.get("mean_tokens", b.get("mean_tokens"))),
        ])
    fewshot = baseline is not None and baseline is summary.get("baseline_fewshot")
    base = "base few-shot" if fewshot else "base"
    headers = ["group", "n", f"acc {base}", "acc trained", "delta", f"fmt {base}", "fmt trained",
               "tokens"]
    return format_table(headers, rows)
