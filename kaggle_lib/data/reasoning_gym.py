"""Training and evaluation problems from reasoning-gym, in the project's item schema.

reasoning-gym (PyPI ``reasoning-gym``, Apache-2.0) generates verifiable problems procedurally
from a seed and scores answers to them. This module turns its entries into our items::

    {"id", "section", "category", "difficulty", "prompt", "answer"}
    (+ "reasoning" where a worked solution can be rendered in our line format)
    (+ "rg_dataset", "rg_metadata": what reasoning-gym's scorer needs)

Line format. The shipped data writes one ``a op b = c`` equation per reasoning line
(``He buys 16 more: 19 + 16 = 35.``). ``gsm_symbolic`` entries carry a prose worked solution
(``metadata["answer_cot"]``); :func:`derive_lines` keeps each of its lines that holds an
equation, rewrites the equation with ASCII operators and single spaces (``35 × 3=105`` ->
``35 * 3 = 105``), drops bullets, numbering, headings and lines without an equation, and
refuses the whole solution (None) when an equation is arithmetically wrong or the last
equation does not produce the answer. Refused entries are skipped, so every rendered line
checks out with :func:`kaggle_lib.evaluation.check_reasoning_lines`. ``gsm_symbolic`` has a single
difficulty; ours is derived from the number of equations (1-2 easy, 3 medium, 4+ hard).
Other families carry no worked solution, so their items have no ``reasoning`` (GRPO and
evaluation use them; SFT needs ``reasoning``: use ``wide_sft`` there).

``basic_arithmetic`` and ``chain_sum`` carry their expression: :func:`expression_lines`
writes one line per operation, innermost first.

Mixes. A mix maps a family to a weight. ``gsm`` is gsm_symbolic alone; ``wide`` (the TPU
recipes; GRPO and evaluation) adds arithmetic, logic, counting and algorithmic families and two
categories of our own that reasoning-gym lacks: ``unit_conversion`` and ``ordering``
(``ours.<category>``, drawn from the shipped training file). ``wide_sft`` is the part of that
with worked solutions, plus our knights_knaves, sequence and date_time items (reasoning-gym has
those tasks, but without worked solutions). The data spec ``rg:<mix>[@<seed>]`` names one, where
``<mix>`` is a preset name or ``family=weight,...`` (see :func:`parse_mix`).

Determinism and disjointness. Items depend only on (mix, count, seed). Every generated item
whose normalised prompt (:func:`normalize_text`) is in the committed evaluation split
(``files/eval_rg.jsonl``, made by ``scripts/make_eval_split.py``), in the second scorecard
(``files/eval.jsonl``) or already drawn is skipped, so training never sees an evaluation
problem and holds no duplicates.
"""

from __future__ import annotations

import ast
import json
import random
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kaggle_lib.data.datasets import (
    FILES_DIR,
    GENERATED_KINDS,
    DataError,
    load_builtin,
    validate_items,
)
from kaggle_lib.evaluation import (
    EQUATION,
    answers_match,
    ascii_expression,
    equation_holds,
    evaluate_expression,
    parse_output,
    reasoning_gym_score,
)

EVAL_SPLIT_FILE = FILES_DIR / "eval_rg.jsonl"
OURS_PREFIX = "ours."

# family -> section; the category is the family name, so scorecards show it.
FAMILIES: dict[str, str] = {
    "gsm_symbolic": "math",
    "basic_arithmetic": "math",
    "chain_sum": "math",
    "knights_knaves": "logic",
    "syllogism": "logic",
    "number_sequence": "logic",
    "leg_counting": "counting",
    "letter_counting": "counting",
    "spell_backward": "algorithmic",
    "word_sorting": "algorithmic",
    "calendar_arithmetic": "date_time",
}
# Our shipped categories kept: unit_conversion and ordering have no reasoning-gym counterpart;
# knights_knaves, sequence and date_time have one, but without a worked solution, so only ours
# can teach their reasoning in SFT.
OURS_CATEGORIES: dict[str, str] = {"unit_conversion": "math", "ordering": "logic",
                                   "knights_knaves": "logic", "sequence": "logic",
                                   "date_time": "math"}

MIXES: dict[str, dict[str, float]] = {
    "gsm": {"gsm_symbolic": 1.0},
    "wide": {
        "gsm_symbolic": 4.0, "basic_arithmetic": 1.0, "chain_sum": 1.0,
        "knights_knaves": 1.0, "syllogism": 1.0, "number_sequence": 1.0,
        "leg_counting": 1.0, "letter_counting": 1.0,
        "spell_backward": 1.0, "word_sorting": 1.0, "calendar_arithmetic": 1.0,
        "ours.unit_conversion": 1.0, "ours.ordering": 1.0,
    },
    # SFT needs a worked solution in every item: only families that have one.
    "wide_sft": {
        "gsm_symbolic": 4.0, "basic_arithmetic": 1.0, "chain_sum": 1.0,
        "ours.unit_conversion": 1.0, "ours.ordering": 1.0, "ours.knights_knaves": 1.0,
        "ours.sequence": 1.0, "ours.date_time": 1.0,
    },
}

# Evaluation split: seed and per-family counts (128 items over 4 sections).
EVAL_SEED = 14_014
EVAL_COUNTS: dict[str, int] = {
    "gsm_symbolic": 48, "basic_arithmetic": 8, "chain_sum": 8,
    "knights_knaves": 16, "syllogism": 16,
    "leg_counting": 8, "letter_counting": 8,
    "spell_backward": 8, "word_sorting": 8,
}


def _import_rg() -> Any:
    try:
        import reasoning_gym
    except ImportError as exc:  # a declared dependency; a clear message if an env lacks it
        raise DataError("reasoning-gym data needs the package reasoning-gym==0.1.25 "
                        "(pip install -r requirements.lock)") from exc
    return reasoning_gym


# ----------------------------------------------------------------------------- text and lines


def normalize_text(text: str) -> str:
    """Casefold, keep letters and digits, single spaces: the key for duplicate checks."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", str(text).casefold()).split())


_BULLET = re.compile(r"^\s*(?:[-•*]|\d+[.)])\s+")


def _spaced(lhs: str, rhs: str) -> str:
    lhs = re.sub(r"\s*([-+*/])\s*", r" \1 ", ascii_expression(lhs)).strip()
    lhs = re.sub(r"^- ", "-", lhs)  # a leading minus sign, not an operator
    lhs = re.sub(r"([*/+(]) - (\d)", r"\1 -\2", lhs)  # "3 * -2" keeps its sign
    return f"{lhs} = {ascii_expression(rhs)}"


def derive_lines(answer_cot: str, answer: str) -> list[str] | None:
    """Render a prose worked solution as our reasoning lines (see the module docstring).

    None when a line holds no checkable equation at all, when any equation is wrong, or when
    the last equation's result is not ``answer``.
    """
    lines: list[str] = []
    last_rhs: str | None = None
    for raw in answer_cot.splitlines():
        line = raw.strip()
        if not line or line.startswith("####"):
            continue
        found = list(EQUATION.finditer(line))
        if not found:
            continue
        pieces, cursor = [], 0
        for match in found:
            lhs, rhs = match.group("lhs").strip(), match.group("rhs").strip()
            if not equation_holds(lhs, rhs):
                return None
            before = line[cursor:match.start()]
            pieces += [before + (" " if before.endswith(":") else ""), _spaced(lhs, rhs)]
            cursor = match.end()
            last_rhs = rhs
        pieces.append(line[cursor:])
        text = _BULLET.sub("", "".join(pieces)).strip()
        lines.append(text[0].upper() + text[1:] if text else text)
    if not lines or last_rhs is None:
        return None
    if evaluate_expression(last_rhs) != evaluate_expression(str(answer)):
        return None
    return lines


_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def expression_lines(expression: str, answer: str) -> list[str] | None:
    """One ``a op b = c`` line per operation of an arithmetic expression, innermost first
    (``( 56 + -33 ) - 84`` -> ``56 + -33 = 23``, ``23 - 84 = -61``); a unary minus is folded
    into its operand. None unless every value is a whole number and the last is ``answer``."""
    lines: list[str] = []

    def walk(node: ast.AST) -> int:
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            left, right = walk(node.left), walk(node.right)
            value = evaluate_expression(f"{left} {_AST_OPS[type(node.op)]} {right}")
            if value is None or value.denominator != 1:
                raise ValueError("not a whole number")
            lines.append(f"{left} {_AST_OPS[type(node.op)]} {right} = {value.numerator}")
            return value.numerator
        raise ValueError("unsupported")

    try:
        result = walk(ast.parse(expression.strip().rstrip("="), mode="eval").body)
    except (SyntaxError, ValueError):
        return None
    if not lines or evaluate_expression(str(answer)) != result:
        return None
    return lines


def _difficulty(n_equations: int) -> str:
    return "easy" if n_equations <= 2 else "medium" if n_equations == 3 else "hard"


# ----------------------------------------------------------------------------- items


def entry_to_item(entry: Mapping[str, Any], family: str, item_id: str) -> dict[str, Any] | None:
    """One reasoning-gym entry -> our item, or None when it cannot be rendered faithfully."""
    answer = entry.get("answer")
    if answer is None or not str(answer).strip():
        return None  # open-ended tasks (e.g. propositional_logic) have no reference answer
    metadata = json.loads(json.dumps(entry.get("metadata", {}), default=str))
    item: dict[str, Any] = {
        "id": item_id, "section": FAMILIES[family], "category": family, "difficulty": "unrated",
        "prompt": str(entry["question"]).strip(), "answer": str(answer).strip(),
    }
    if family == "gsm_symbolic":
        lines = derive_lines(str(metadata.get("answer_cot", "")), item["answer"])
        if lines is None:
            return None
        item["difficulty"] = _difficulty(len(lines))
        item["reasoning"] = "\n".join(lines)
    elif family in ("basic_arithmetic", "chain_sum"):
        # No worked solution in the entry: the expression itself gives one line per operation.
        lines = expression_lines(str(metadata.get("expression", "")), item["answer"])
        if lines is None:
            return None
        item["difficulty"] = _difficulty(len(lines))
        item["reasoning"] = "\n".join(lines)
    # The scorer reads only these; answer_cot is in `reasoning` already.
    metadata.pop("answer_cot", None)
    item["rg_dataset"] = family
    item["rg_metadata"] = metadata
    return item


def family_seed(family: str, seed: int) -> int:
    """A stable per-family seed (crc32, not hash(): that changes between processes)."""
    return (zlib.crc32(family.encode()) + 1_000_003 * seed) % (2**31)


def _family_stream(family: str, seed: int, chunk: int = 256) -> Iterable[tuple[int, Any]]:
    """(index, entry) pairs of a family, chunk after chunk, without end."""
    rg = _import_rg()
    for block in range(1_000_000):
        dataset = rg.create_dataset(family, seed=family_seed(family, seed) + block, size=chunk)
        for index in range(chunk):
            yield block * chunk + index, dataset[index]
    raise DataError(f"reasoning-gym family {family!r}: no more items")  # pragma: no cover


def _ours_stream(category: str, seed: int) -> Iterable[tuple[int, dict[str, Any]]]:
    items = [i for i in load_builtin("train") if i["category"] == category]
    random.Random(seed).shuffle(items)
    yield from enumerate(items)


def quotas(mix: Mapping[str, float], count: int) -> dict[str, int]:
    """Split ``count`` over the mix by weight (largest remainder, ties by name)."""
    total = sum(mix.values())
    exact = {name: count * weight / total for name, weight in mix.items()}
    out = {name: int(value) for name, value in exact.items()}
    rest = sorted(mix, key=lambda n: (-(exact[n] - out[n]), n))
    for name in rest[: count - sum(out.values())]:
        out[name] += 1
    return out


def eval_split_prompts(path: Path = EVAL_SPLIT_FILE) -> set[str]:
    """Normalised prompts of the committed evaluation split (empty if it is not there yet)."""
    if not path.is_file():
        return set()
    return {normalize_text(json.loads(line)["prompt"])
            for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def generate_items(mix: Mapping[str, float] | str, count: int, *, seed: int = 0,
                   exclude: Iterable[str] | None = None, id_prefix: str = "rg") -> list[dict]:
    """``count`` items drawn from ``mix`` (a preset name or family -> weight), deterministic
    for (mix, count, seed). Prompts whose normalised text is in ``exclude`` (default: both
    scorecards' files, the reasoning-gym split and ``builtin:eval``) or already drawn are
    skipped. Order: shuffled with ``seed``."""
    if isinstance(mix, str):
        mix = parse_mix(mix)
    if count < 1:
        raise DataError(f"reasoning-gym items: count must be >= 1, got {count}")
    if exclude is None:
        seen = eval_split_prompts() | {normalize_text(i["prompt"]) for i in load_builtin("eval")}
    else:
        seen = {normalize_text(text) for text in exclude}
    items: list[dict[str, Any]] = []
    for family, quota in quotas(mix, count).items():
        if quota == 0:
            continue
        ours = family.startswith(OURS_PREFIX)
        stream = (_ours_stream(family[len(OURS_PREFIX):], seed) if ours
                  else _family_stream(family, seed))
        taken = 0
        for index, entry in stream:
            if taken == quota:
                break
            if ours:
                item: dict[str, Any] | None = dict(entry, id=f"{id_prefix}-{family}-{seed}-{index}")
            else:
                item = entry_to_item(entry, family, f"{id_prefix}-{family}-{seed}-{index}")
            if item is None or normalize_text(item["prompt"]) in seen:
                continue
            seen.add(normalize_text(item["prompt"]))
            items.append(item)
            taken += 1
        if taken < quota:
            raise DataError(f"reasoning-gym mix: family {family!r} gave {taken} items, "
                            f"{quota} asked for")
    random.Random(seed).shuffle(items)
    return validate_items(items, source=f"reasoning-gym mix {dict(mix)} seed {seed}")


def build_eval_split(seed: int = EVAL_SEED) -> list[dict[str, Any]]:
    """The evaluation split: :data:`EVAL_COUNTS` items per family, family by family.

    Its families are seeded with ``seed`` (training uses its own run seed and additionally
    drops every evaluation prompt), and it excludes the shipped train and eval prompts.
    """
    shipped = [i["prompt"] for split in ("train", "eval") for i in load_builtin(split)]
    items: list[dict[str, Any]] = []
    for family, count in EVAL_COUNTS.items():
        taken = {normalize_text(i["prompt"]) for i in items}
        items += generate_items({family: 1.0}, count, seed=seed,
                                exclude=[*shipped, *taken], id_prefix="rgeval")
    return items  # family after family, so the file reads by section


# ----------------------------------------------------------------------------- specs


def parse_mix(text: str) -> dict[str, float]:
    """A preset name (``gsm``, ``wide``) or ``family=weight,...`` -> {family: weight}."""
    allowed = (f"a preset ({', '.join(MIXES)}) or family=weight,... with families from "
               f"{', '.join(FAMILIES)} and {', '.join(OURS_PREFIX + c for c in OURS_CATEGORIES)}")
    if text in MIXES:
        return dict(MIXES[text])
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, eq, weight = part.strip().partition("=")
        known = name in FAMILIES or name.removeprefix(OURS_PREFIX) in OURS_CATEGORIES and \
            name.startswith(OURS_PREFIX)
        try:
            value = float(weight) if eq else 1.0
        except ValueError:
            value = -1.0
        if not known or value <= 0:
            raise DataError(f"reasoning-gym mix {text!r}: {part.strip()!r} is not allowed; "
                            f"use {allowed} (weights > 0)")
        mix[name] = value
    return mix


def check_spec(body: str) -> str:
    """Check the body of a data spec ``rg:<mix>[@<seed>]`` (no generation) and return it."""
    mix_text, _, seed_text = body.partition("@")
    if seed_text and not seed_text.isdigit():
        raise DataError(f"data spec 'rg:{body}': the seed after '@' must be an integer >= 0, "
                        f"got {seed_text!r}")
    parse_mix(mix_text)
    return body


def load_spec(body: str, limit: int | None) -> list[dict[str, Any]]:
    """Items for the data spec ``rg:<mix>[@<seed>]``; ``limit`` is the count (default 1000)."""
    mix_text, _, seed_text = check_spec(body).partition("@")
    return generate_items(parse_mix(mix_text), limit or 1000, seed=int(seed_text or 0))


# ----------------------------------------------------------------------------- scoring


def score_answer(answer: str | None, item: Mapping[str, Any]) -> float:
    """reasoning-gym's own score (0..1) of ``answer`` for ``item`` (an item from this module).

    Items of ours (no ``rg_dataset``) are scored 1.0/0.0 with the evaluation's matching rules.
    """
    if item.get("rg_dataset") is None:
        return 1.0 if answer is not None and any(answers_match(answer, item["answer"])) else 0.0
    return reasoning_gym_score(answer, item)


def make_reward(column: str = "item") -> Callable[..., list[float]]:
    """A GRPO reward in Tunix's signature: each completion's parsed ``<answer>`` scored by
    :func:`score_answer` against the item in batch column ``column``, given as the item dict
    or as its JSON text (batch columns travel as numpy arrays, where text is safest)."""

    def reasoning_gym_reward(prompts: Sequence[str], completions: Sequence[str],
                             **columns: Any) -> list[float]:
        items = columns.get(column)
        if items is None or len(items) != len(completions):
            raise ValueError(f"reasoning_gym_reward: needs batch column {column!r} with one "
                             f"item per completion ({len(completions)})")
        return [score_answer(parse_output(str(c)).answer,
                             json.loads(item) if isinstance(item, str) else item)
                for c, item in zip(completions, items, strict=True)]

    return reasoning_gym_reward


GENERATED_KINDS["rg"] = (check_spec, load_spec)  # the data spec rg:<mix>[@<seed>]
