"""Scoring of model outputs against evaluation items: records (`score_item`, one per line of
`predictions.jsonl`), scorecards, summaries (`summarize`: `eval_summary.json`), tables.
Pure Python, no model and no files, so saved outputs can be scored again; reasoning-gym items
are also judged by reasoning-gym's own scorer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from kaggle_lib.answer_format import answers_match, check_reasoning_lines, parse_output
from kaggle_lib.data.reasoning_gym import reasoning_gym_score

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
_SCORED_FIELDS = ("section", "category", "difficulty", "correct", "format_exact",
                  "format_approx", "token_count", "truncated")


def score_item(item: Mapping[str, Any], output: str, token_count: int, truncated: bool, *,
               stage: str | None = None, rel_tol: float = 1e-4) -> dict[str, Any]:
    """Score one generated output against its evaluation item -> a `predictions.jsonl` record
    (with `stage`, when given, first)."""
    if not isinstance(item, Mapping):
        raise TypeError(f"evaluation item must be a dict, got {type(item).__name__}")
    item_id = item.get("id", "<no id>")
    for field in ITEM_FIELDS:
        if field not in item:
            raise ValueError(f"evaluation item {item_id!r} is missing field {field!r} "
                             f"(required: {', '.join(ITEM_FIELDS)})")
    if isinstance(token_count, bool) or not isinstance(token_count, int) or token_count < 0:
        raise ValueError(f"evaluation item {item_id!r}: token_count must be an int >= 0, "
                         f"got {token_count!r}")
    if not isinstance(truncated, bool):
        raise ValueError(f"evaluation item {item_id!r}: truncated must be a bool, "
                         f"got {truncated!r}")
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
    record.update({field: item[field] for field in ITEM_FIELDS})
    record.update(output=output, parsed_answer=parsed.answer, correct=exact or numeric,
                  exact_match=exact, numeric_match=numeric, format_exact=parsed.format_exact,
                  format_approx=parsed.format_approx, token_count=token_count,
                  truncated=truncated, equations=n_equations, equations_correct=n_correct)
    return record


# --------------------------------------------------------------------------- scorecards


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054
                    ) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (95% by default); None when n == 0. Unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0 or n successes."""
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

    return {"n": n, "accuracy": rate("correct"), "format_exact": rate("format_exact"),
            "format_approx": rate("format_approx"),
            "mean_tokens": sum(r["token_count"] for r in records) / n,
            "truncation_rate": rate("truncated")}


def scorecard(records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Metrics (`_metrics`; None when n == 0) overall and `by_section` / `by_category` /
    `by_difficulty`, plus `ci95` (the accuracy's Wilson interval) and `reasoning_lines` (the
    equations of the reasoning checked), both overall and by section. Group names are strings
    (the scorecard survives a JSON round trip unchanged), in sorted order."""
    records = list(records)
    for index, record in enumerate(records):
        for field in _SCORED_FIELDS:
            if field not in record:
                raise ValueError(
                    f"prediction record {index} (id {record.get('id', '<no id>')!r}) is missing "
                    f"field {field!r} (records come from score_item)")
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
    return {**card, "ci95": ci95, "reasoning_lines": lines}


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def scorecard_delta(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """`b - a` for each metric in `DELTA_METRICS`, overall and for groups present in both."""

    def metric_delta(ma: Mapping[str, Any], mb: Mapping[str, Any]) -> dict[str, float | None]:
        return {m: diff(ma.get(m), mb.get(m)) for m in DELTA_METRICS}

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


def summarize(baseline_records: Iterable[Mapping[str, Any]] | None,
              trained_records: Iterable[Mapping[str, Any]] | None,
              meta: Mapping[str, Any] | None = None, *,
              fewshot_records: Iterable[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The `eval_summary.json` structure; any stage may be missing (None). `delta` is trained
    minus the better baseline (named in `delta_against`), so training is credited only with
    what a good prompt alone could not do; None unless trained and a baseline are present."""
    if baseline_records is None and trained_records is None and fewshot_records is None:
        raise ValueError("summarize needs baseline_records, trained_records or both; got neither")
    stages = zip(STAGES, (baseline_records, fewshot_records, trained_records), strict=True)
    cards = {stage: None if records is None else scorecard(records) for stage, records in stages}
    against, trained = better_baseline(cards), cards["trained"]
    delta = None if against is None or trained is None else scorecard_delta(cards[against],
                                                                            trained)
    return {**cards, "delta": delta, "delta_against": against, "meta": dict(meta or {})}


# --------------------------------------------------------------------------- tables
# Plain text: the notebook's summary, `eval`'s and `compare`'s output.


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
        rows.append([label, "-" if n is None else str(n), fmt_rate(b.get("accuracy")),
                     fmt_rate(t.get("accuracy")),
                     fmt_rate_delta(diff(b.get("accuracy"), t.get("accuracy"))),
                     fmt_rate(b.get("format_exact")), fmt_rate(t.get("format_exact")),
                     fmt_number(t.get("mean_tokens", b.get("mean_tokens")))])
    fewshot = baseline is not None and baseline is summary.get("baseline_fewshot")
    base = "base few-shot" if fewshot else "base"
    headers = ["group", "n", f"acc {base}", "acc trained", "delta", f"fmt {base}", "fmt trained",
               "tokens"]
    return format_table(headers, rows)
