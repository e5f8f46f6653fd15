"""Training and evaluation problems from reasoning-gym (PyPI, Apache-2.0) as project items,
plus ``rg_dataset`` / ``rg_metadata`` (what its scorer needs) and ``reasoning`` where a worked
solution can be rendered in our line format: one ``a op b = c`` equation per line, every line
checked (:func:`kaggle_lib.answer_format.check_reasoning_lines`); unrenderable entries are
skipped. ``gsm_symbolic``'s prose solution is kept line by line where it holds a correct
equation (:func:`derive_lines`); arithmetic expressions give one line per operation; a few
families get theirs from metadata (:data:`RENDERED`). Others have no ``reasoning`` (GRPO and
evaluation only). ``place_value`` lines add place-value steps before each operation: Gemma's
tokenizer writes a number digit by digit, so one ``8528 - 5771 = 2757`` asks for every borrow
at once. Mixes and the spec ``rg:<mix>[@<seed>][/<lines>]`` are in ``data_spec``.

Items depend only on (mix, count, seed); a prompt (normalised) already drawn, in the committed
evaluation split (``files/eval_rg.jsonl``, ``scripts/make_eval_split.py``) or in
``files/eval.jsonl`` is skipped, so training never sees an evaluation problem.
"""

from __future__ import annotations

import ast
import itertools
import json
import random
import re
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from kaggle_lib import jsonl
from kaggle_lib.answer_format import (
    EQUATION,
    answers_match,
    ascii_expression,
    equation_holds,
    evaluate_expression,
)
from kaggle_lib.data.datasets import FILES_DIR, load_builtin, normalize_text, validate_items
from kaggle_lib.data_spec import FAMILIES, OURS_PREFIX, DataError, parse_mix, split_rg_spec

EVAL_SPLIT_FILE = FILES_DIR / "eval_rg.jsonl"
# Evaluation split: seed and per-family counts (128 items over 4 sections).
EVAL_SEED = 14_014
EVAL_COUNTS: dict[str, int] = {
    "gsm_symbolic": 48, "basic_arithmetic": 8, "chain_sum": 8, "knights_knaves": 16,
    "syllogism": 16, "leg_counting": 8, "letter_counting": 8, "spell_backward": 8,
    "word_sorting": 8,
}


_BULLET = re.compile(r"^\s*(?:[-•*]|\d+[.)])\s+")


def _spaced(lhs: str, rhs: str) -> str:
    lhs = re.sub(r"\s*([-+*/])\s*", r" \1 ", ascii_expression(lhs)).strip()
    lhs = re.sub(r"^- ", "-", lhs)  # a leading minus sign, not an operator
    lhs = re.sub(r"([*/+(]) - (\d)", r"\1 -\2", lhs)  # "3 * -2" keeps its sign
    return f"{lhs} = {ascii_expression(rhs)}"


def derive_lines(answer_cot: str, answer: str) -> list[str] | None:
    """A prose worked solution's lines that hold an equation, each equation rewritten with ASCII
    operators and single spaces (``35 × 3=105`` -> ``35 * 3 = 105``), bullets and numbering
    dropped. None when there is none, any is wrong, or the last does not give ``answer``."""
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
    if not lines or last_rhs is None \
            or evaluate_expression(last_rhs) != evaluate_expression(str(answer)):
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
    return lines if lines and evaluate_expression(str(answer)) == result else None


def _place_parts(number: int) -> list[int]:
    """The signed nonzero place values of ``number``, largest first (-736 -> -700, -30, -6)."""
    digits = str(abs(number))
    sign = -1 if number < 0 else 1
    return [sign * int(d) * 10 ** (len(digits) - 1 - i) for i, d in enumerate(digits) if d != "0"]


def _add_steps(left: int, right: int) -> tuple[list[str], int]:
    """``left + right`` one place value of ``right`` at a time (``239 + 30 = 269``)."""
    lines, value = [], left
    for part in _place_parts(right):
        lines.append(f"{value} {'+' if part > 0 else '-'} {abs(part)} = {value + part}")
        value += part
    return lines, value


def operation_steps(left: int, op: str, right: int) -> list[str]:
    """Lines for one operation in steps a small model can compute, the last ``left op right =
    value``: ``+``/``-`` add the second operand's place values one at a time (``97 + 90 = 187``,
    ``187 + 8 = 195``); ``*`` takes partial products by the operand with fewer places, then sums
    them so. One nonzero place (``700``), or division, stays one line. ValueError unless whole."""
    value = evaluate_expression(f"{left} {op} {right}")
    if value is None or value.denominator != 1:
        raise ValueError(f"{left} {op} {right}: not a whole number")
    whole = f"{left} {op} {right} = {value.numerator}"
    if op in "+-":
        lines, _ = _add_steps(left, right if op == "+" else -right)
        return [whole] if len(lines) < 2 else [*lines, whole]
    if op != "*":
        return [whole]
    big, small = (left, right) if len(_place_parts(right)) <= len(_place_parts(left)) \
        else (right, left)
    parts = _place_parts(small)
    if len(parts) < 2:
        return [whole]
    lines = [f"{big} * {part} = {big * part}" for part in parts]
    total = big * parts[0]
    for part in parts[1:]:
        more, total = _add_steps(total, big * part)
        lines += more
    return [*lines, whole]


def place_value_lines(lines: Sequence[str]) -> list[str]:
    """Rendered reasoning lines with place-value steps (:func:`operation_steps`) before each
    line whose equation is one operation on whole numbers; the line itself stays last."""
    out: list[str] = []
    for line in lines:
        for match in EQUATION.finditer(line):
            # Two whole numbers and one of + - * ("122 - 21").
            operation = re.fullmatch(r"\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*", match.group("lhs"))
            if operation is not None:
                out += operation_steps(int(operation[1]), operation[2], int(operation[3]))[:-1]
        out.append(line)
    return out


def _truth(statement: Sequence[Any], world: Sequence[bool]) -> bool:
    """A knights_knaves statement (reasoning-gym's nested tuples) under an assignment."""
    op, *args = statement
    if op == "telling-truth":
        return bool(world[args[0]])
    if op == "lying":
        return not world[args[0]]
    if op == "not":
        return not _truth(args[0], world)
    if op == "and":
        return all(_truth(a, world) for a in args)
    if op == "or":
        return any(_truth(a, world) for a in args)
    if op == "->":
        return not _truth(args[0], world) or _truth(args[1], world)
    if op == "<=>":
        return _truth(args[0], world) == _truth(args[1], world)
    raise ValueError(f"unknown knights_knaves operator {op!r}")


def knights_knaves_lines(metadata: Mapping[str, Any]) -> list[str] | None:
    """Case analysis: per assignment of roles, whose statement rules it out or that all fit.
    None for more than two people (four lines fit the evaluation's token budget, eight would
    not) or when the metadata disagrees with reasoning-gym's solution."""
    names, statements = metadata.get("names"), metadata.get("statements")
    terms, solution = metadata.get("knight_knave_terms") or {}, metadata.get("solution")
    if not names or len(names) > 2 or not statements or not solution:
        return None
    lines, fits = [], []
    for world in itertools.product((True, False), repeat=len(names)):
        roles = " and ".join(f"{n} is {terms['a_knight'] if w else terms['a_knave']}"
                             for n, w in zip(names, world, strict=True))
        wrong = [n for n, w, st in zip(names, world, statements, strict=True)
                 if _truth(st, world) != w]
        if wrong:
            verdict = "true" if _truth(statements[names.index(wrong[0])], world) else "false"
            lines.append(f"If {roles}, {wrong[0]}'s statement is {verdict}: impossible.")
        else:
            fits.append(list(world))
            lines.append(f"If {roles}, every statement fits.")
    return lines if fits == [list(solution)] else None


def leg_counting_lines(metadata: Mapping[str, Any]) -> list[str] | None:
    """``3 dogs: 3 * 4 = 12`` per animal, then a running sum; None for an unknown animal."""
    from reasoning_gym.arithmetic.leg_counting import ANIMALS  # a declared dependency

    animals = metadata.get("animals") or {}
    if not animals or any(a not in ANIMALS for a in animals):
        return None
    lines, counts = [], []
    for animal, n in animals.items():
        counts.append(int(n) * ANIMALS[animal])
        lines.append(f"{n} {animal}: {n} * {ANIMALS[animal]} = {counts[-1]}")
    total = counts[0]
    for count in counts[1:]:
        lines.append(f"{total} + {count} = {total + count}")
        total += count
    return lines if total == int(metadata.get("total_legs", -1)) else None


def letter_counting_lines(metadata: Mapping[str, Any]) -> list[str] | None:
    """Each word holding the letter, spelled out with its count, then the sum."""
    letter, span = str(metadata.get("target_letter", "")), metadata.get("span") or []
    if len(letter) != 1 or not span:
        return None
    found = [(w, w.lower().count(letter.lower())) for w in span if letter.lower() in w.lower()]
    if not found:
        return [f'No word contains "{letter}".']
    lines = [f"{w} ({' '.join(w)}): {k}" for w, k in found]
    total = found[0][1]
    for _, k in found[1:]:
        lines.append(f"{total} + {k} = {total + k}")
        total += k
    return lines


def simple_lines(family: str, metadata: Mapping[str, Any], answer: str) -> list[str] | None:
    """Short worked steps for the families whose solution is a procedure on the text."""
    if family == "spell_backward":
        word = str(metadata.get("word", ""))
        return [f"Letters: {' '.join(word)}", f"Backward: {' '.join(reversed(word))}"] \
            if word and word[::-1] == answer else None
    if family == "word_sorting":
        words, direction = metadata.get("original_words") or [], metadata.get("direction")
        if not words or direction not in ("ascending", "descending"):
            return None
        return [f"Words: {', '.join(words)}",
                f"{direction.capitalize()} ASCII order (capital letters before small ones): "
                f"{answer}"]
    if family == "syllogism":
        p1, p2, c = (metadata.get(k) for k in ("premise1", "premise2", "conclusion"))
        valid = metadata.get("is_valid")
        if not (p1 and p2 and c) or valid is None or answer != ("Yes" if valid else "No"):
            return None
        return [*(p[:1].upper() + p[1:] + ("" if p.endswith(".") else ".") for p in (p1, p2)),
                f'So "{c}" {"follows" if valid else "does not follow"}.']
    return None


# family -> its reasoning lines from (family, metadata, answer); None: the entry is skipped.
# gsm_symbolic has a worked solution, the arithmetic families an expression; the others carry
# no worked solution, so ours is rendered from their metadata.
RENDERED: dict[str, Callable[[str, Mapping[str, Any], str], list[str] | None]] = {
    "gsm_symbolic": lambda f, m, a: derive_lines(str(m.get("answer_cot", "")), a),
    "basic_arithmetic": lambda f, m, a: expression_lines(str(m.get("expression", "")), a),
    "chain_sum": lambda f, m, a: expression_lines(str(m.get("expression", "")), a),
    "knights_knaves": lambda f, m, a: knights_knaves_lines(m),
    "leg_counting": lambda f, m, a: leg_counting_lines(m),
    "letter_counting": lambda f, m, a: letter_counting_lines(m),
    "spell_backward": simple_lines, "word_sorting": simple_lines, "syllogism": simple_lines,
}


def entry_to_item(entry: Mapping[str, Any], family: str, item_id: str) -> dict[str, Any] | None:
    """One reasoning-gym entry -> our item, or None when it cannot be rendered faithfully."""
    answer = entry.get("answer")
    if answer is None or not str(answer).strip():
        return None  # open-ended tasks (e.g. propositional_logic) have no reference answer
    metadata = json.loads(json.dumps(entry.get("metadata", {}), default=str))
    item: dict[str, Any] = {
        "id": item_id, "section": FAMILIES[family], "category": family, "difficulty": "unrated",
        "prompt": str(entry["question"]).strip(), "answer": str(answer).strip()}
    if family in RENDERED:
        lines = RENDERED[family](family, metadata, item["answer"])
        if lines is None:
            return None
        if family in ("gsm_symbolic", "basic_arithmetic", "chain_sum"):
            # gsm_symbolic has a single difficulty: ours is 1-2 equations easy, 3 medium, 4+ hard.
            n = len(lines)
            item["difficulty"] = "easy" if n <= 2 else "medium" if n == 3 else "hard"
        item["reasoning"] = "\n".join(lines)
    # The scorer reads only these; answer_cot is in `reasoning` already.
    metadata.pop("answer_cot", None)
    return {**item, "rg_dataset": family, "rg_metadata": metadata}


def _family_stream(family: str, seed: int, chunk: int = 256) -> Iterable[tuple[int, Any]]:
    """(index, entry) pairs of a family, chunk after chunk, without end."""
    try:
        import reasoning_gym as rg
    except ImportError as exc:  # a declared dependency; a clear message if an env lacks it
        raise DataError("reasoning-gym data needs the package reasoning-gym==0.1.25 "
                        "(pip install -r requirements.lock)") from exc
    # A stable per-family seed (crc32, not hash(): that changes between processes).
    first = (zlib.crc32(family.encode()) + 1_000_003 * seed) % (2**31)
    for block in range(1_000_000):
        dataset = rg.create_dataset(family, seed=first + block, size=chunk)
        for index in range(chunk):
            yield block * chunk + index, dataset[index]
    raise DataError(f"reasoning-gym family {family!r}: no more items")  # pragma: no cover


def quotas(mix: Mapping[str, float], count: int) -> dict[str, int]:
    """Split ``count`` over the mix by weight (largest remainder, ties by name)."""
    total = sum(mix.values())
    exact = {name: count * weight / total for name, weight in mix.items()}
    out = {name: int(value) for name, value in exact.items()}
    rest = sorted(mix, key=lambda n: (-(exact[n] - out[n]), n))
    for name in rest[: count - sum(out.values())]:
        out[name] += 1
    return out


def generate_items(mix: Mapping[str, float] | str, count: int, *, seed: int = 0,
                   exclude: Iterable[str] | None = None, id_prefix: str = "rg",
                   lines: str = "op") -> list[dict]:
    """``count`` items of ``mix`` (a preset name or family -> weight), shuffled with ``seed``;
    prompts already drawn or in ``exclude`` (default: both scorecards' files) are skipped.
    ``lines="place_value"`` renders every worked solution with :func:`place_value_lines`."""
    if isinstance(mix, str):
        mix = parse_mix(mix)
    if count < 1:
        raise DataError(f"reasoning-gym items: count must be >= 1, got {count}")
    if exclude is None:  # the evaluation split may not be written yet
        split = jsonl.read_lines(EVAL_SPLIT_FILE) if EVAL_SPLIT_FILE.is_file() else []
        seen = {normalize_text(r["prompt"]) for _, r in split}
        seen |= {normalize_text(i["prompt"]) for i in load_builtin("eval")}
    else:
        seen = {normalize_text(text) for text in exclude}
    items: list[dict[str, Any]] = []
    for family, quota in quotas(mix, count).items():
        if quota == 0:
            continue
        ours = family.startswith(OURS_PREFIX)
        if ours:  # our shipped training items of that category, shuffled
            mine = [i for i in load_builtin("train") if i["category"] == family[len(OURS_PREFIX):]]
            random.Random(seed).shuffle(mine)
        stream = enumerate(mine) if ours else _family_stream(family, seed)
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
            if lines == "place_value" and item.get("reasoning"):
                item["reasoning"] = "\n".join(place_value_lines(item["reasoning"].split("\n")))
            seen.add(normalize_text(item["prompt"]))
            items.append(item)
            taken += 1
        if taken < quota:
            raise DataError(f"reasoning-gym mix: family {family!r} gave {taken} items, "
                            f"{quota} asked for")
    random.Random(seed).shuffle(items)
    return validate_items(items, source=f"reasoning-gym mix {dict(mix)} seed {seed}")


def build_eval_split(seed: int = EVAL_SEED) -> list[dict[str, Any]]:
    """:data:`EVAL_COUNTS` items per family, seeded with ``seed`` (training uses its run seed and
    drops every evaluation prompt too), without the shipped train and eval prompts."""
    shipped = [i["prompt"] for split in ("train", "eval") for i in load_builtin(split)]
    items: list[dict[str, Any]] = []
    for family, count in EVAL_COUNTS.items():
        taken = {normalize_text(i["prompt"]) for i in items}
        items += generate_items({family: 1.0}, count, seed=seed,
                                exclude=[*shipped, *taken], id_prefix="rgeval")
    return items  # family after family, so the file reads by section


def load_spec(body: str, limit: int | None) -> list[dict[str, Any]]:
    """Items of the spec ``rg:<mix>[@<seed>][/<lines>]``; ``limit`` is the count (default 1000)."""
    mix, seed, style = split_rg_spec(body)
    return generate_items(mix, limit or 1000, seed=seed, lines=style)


def reasoning_gym_score(answer: str | None, item: Mapping[str, Any]) -> float:
    """reasoning-gym's scorer (0..1) for an item of this module, rebuilt from its `prompt`,
    `answer`, `rg_dataset` and `rg_metadata` fields (evaluation's `score_item` uses it too)."""
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


def score_answer(answer: str | None, item: Mapping[str, Any]) -> float:
    """GRPO's answer reward for an item of this module: reasoning-gym's score (0..1), or for
    items of ours (no ``rg_dataset``) 1.0/0.0 by the evaluation's matching rules."""
    if item.get("rg_dataset") is None:
        return 1.0 if answer is not None and any(answers_match(answer, item["answer"])) else 0.0
    return reasoning_gym_score(answer, item)

