"""The synthetic generator: determinism, balance, and answers re-checked independently.

The checks below do not call the generator's own helpers: they parse the prompt (or the
equations written in the reasoning) and recompute the answer with their own code
(datetime, Fraction, brute force over orders / knight assignments).
"""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import operator
import re
from collections import Counter
from fractions import Fraction

import pytest

from kaggle_lib.data.datasets import load_builtin
from scripts import synthetic_data as synthetic
from scripts.synthetic_data import (
    CATEGORIES,
    DIFFICULTIES,
    canonical_number,
    generate_items,
    normalize_prompt,
)

# 1800 fresh items (100 per category x difficulty cell) with a seed other than the shipped one.
FRESH = generate_items(1800, seed=7)
# The answer checks also run over the shipped files, which are what training and eval use.
ITEMS = FRESH + load_builtin("eval") + load_builtin("train")

# ----------------------------------------------------------------------- equation checking

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}
_EQUATION = re.compile(
    r"(?<![\w.:-])(\d+(?:\.\d+)?(?:\s*[-+*/]\s*\d+(?:\.\d+)?)+)\s*=\s*(-?\d+(?:\.\d+)?)(?![\d:])"
)


def _eval(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return Fraction(str(node.value))
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    raise ValueError(f"unexpected expression node {ast.dump(node)}")


def equations(text: str) -> list[tuple[str, Fraction, Fraction]]:
    """(expression, value computed here, value written) for every `a op b ... = c`."""
    return [(lhs, _eval(ast.parse(lhs, mode="eval")), Fraction(rhs))
            for lhs, rhs in _EQUATION.findall(text)]


def test_equation_checker_catches_wrong_arithmetic() -> None:
    assert [v == w for _, v, w in equations("so 7 * 10 = 77 and 3 + 4 * 2 = 11.")] == [False, True]
    assert equations("2024-03-05 is a date, 09:45 a time") == []


def test_every_equation_in_every_reasoning_is_correct() -> None:
    n_checked = 0
    for item in ITEMS:
        for lhs, value, written in equations(item["reasoning"]):
            assert value == written, f"{item['id']}: {lhs} = {written}, but it is {value}"
            n_checked += 1
    assert n_checked > 3000  # the checker really saw the equations (about 2 per item)


@pytest.mark.parametrize("category", ["arithmetic", "unit_conversion", "sequence"])
def test_numeric_answer_is_the_result_of_the_last_equation(category: str) -> None:
    for item in (it for it in ITEMS if it["category"] == category):
        eqs = equations(item["reasoning"])
        assert eqs, item
        assert Fraction(item["answer"]) == eqs[-1][2], item


def test_arithmetic_lines_each_carry_an_equation_and_use_the_prompt_numbers() -> None:
    for item in (it for it in ITEMS if it["category"] == "arithmetic"):
        for line in item["reasoning"].splitlines():
            if "starts with" not in line:
                assert equations(line), f"{item['id']}: line without arithmetic: {line!r}"
        reasoning_numbers = set(re.findall(r"\d+", item["reasoning"]))
        for number in re.findall(r"\d+", item["prompt"]):
            assert number in reasoning_numbers, f"{item['id']}: {number} unused: {item}"


# ----------------------------------------------------------------------------- date & time

_DATE = r"(\d{4}-\d{2}-\d{2})"


def _recompute_date_time(prompt: str) -> str:
    d = dt.date.fromisoformat
    if m := re.fullmatch(rf"What is the date (\d+) days after {_DATE}\? .*", prompt):
        return (d(m[2]) + dt.timedelta(days=int(m[1]))).isoformat()
    if m := re.fullmatch(rf"How many days are there from {_DATE} to {_DATE}\?", prompt):
        return str((d(m[2]) - d(m[1])).days)
    if m := re.fullmatch(rf"{_DATE} is a (\w+)\. What day of the week is {_DATE}\?", prompt):
        assert d(m[1]).strftime("%A") == m[2], f"wrong weekday fact in {prompt!r}"
        return d(m[3]).strftime("%A")
    if m := re.fullmatch(r".* starts at (\d\d:\d\d) and ends at (\d\d:\d\d)\. How many .*", prompt):
        t0, t1 = (dt.datetime.strptime(t, "%H:%M") for t in m.groups())
        return str(int((t1 - t0).total_seconds() // 60))
    if m := re.fullmatch(r".* at (\d\d:\d\d) and (?:takes|lasts) (\d+) hours (\d+) minutes\. .*",
                         prompt):
        start = dt.datetime.strptime(m[1], "%H:%M")
        return (start + dt.timedelta(hours=int(m[2]), minutes=int(m[3]))).strftime("%H:%M")
    raise AssertionError(f"unparsed date_time prompt: {prompt!r}")


def test_date_time_answers_match_datetime() -> None:
    items = [it for it in ITEMS if it["category"] == "date_time"]
    for item in items:
        assert _recompute_date_time(item["prompt"]) == item["answer"], item
    # Leap days and year ends are exercised, not just easy cases.
    assert any("leap year" in it["reasoning"] for it in items)
    assert any(it["answer"][:4] != it["prompt"].split()[-1][:4] for it in items
               if re.match(r"\d{4}-\d\d-\d\d$", it["answer"]))


# --------------------------------------------------------------------------- unit conversion

# Base units: meter, gram, liter, second, meter^2 (kept independent of the generator's table).
_FACTOR = {
    "millimeter": Fraction(1, 1000), "centimeter": Fraction(1, 100), "meter": 1,
    "kilometer": 1000, "inch": Fraction(254, 10000), "foot": Fraction(3048, 10000),
    "yard": Fraction(9144, 10000), "mile": Fraction(1609344, 1000),
    "gram": 1, "kilogram": 1000, "tonne": 1_000_000, "ounce": Fraction(28349523125, 10**9),
    "pound": Fraction(45359237, 10**5), "milliliter": Fraction(1, 1000), "liter": 1,
    "quart": Fraction(946352946, 10**9), "gallon": Fraction(3785411784, 10**9),
    "second": 1, "minute": 60, "hour": 3600, "day": 86400, "week": 604800,
}
_PLURAL = {"feet": "foot", "inches": "inch"}


def _unit(word: str) -> Fraction:
    word = _PLURAL.get(word, word[:-1] if word.endswith("s") and word[:-1] in _FACTOR else word)
    return Fraction(_FACTOR[word])


def _recompute_unit(prompt: str) -> Fraction:
    q = r"([\d.]+) (\w+)"
    if m := (re.fullmatch(rf"Convert {q} to (\w+)\.", prompt)
             or re.fullmatch(rf"Express {q} in (\w+)\.", prompt)):
        return Fraction(m[1]) * _unit(m[2]) / _unit(m[3])
    if m := re.fullmatch(rf"How many (\w+) are in {q}\?", prompt):
        return Fraction(m[2]) * _unit(m[3]) / _unit(m[1])
    if m := re.fullmatch(r"A car travels at (\d+) kilometers per hour\. .* meters per second\?",
                         prompt):
        return Fraction(m[1]) * _unit("kilometer") / _unit("hour")
    if m := re.fullmatch(r"A cyclist rides at (\d+) meters per second\. .* kilometers per hour\?",
                         prompt):
        return Fraction(m[1]) / _unit("kilometer") * _unit("hour")
    if m := re.fullmatch(rf"A rectangle is {q} long and {q} wide\. What is its area in square "
                         r"(\w+)\?", prompt):
        return (Fraction(m[1]) * _unit(m[2]) * Fraction(m[3]) * _unit(m[4]) / _unit(m[5]) ** 2)
    if m := re.fullmatch(rf"What is {q} {q} plus {q} {q}, in (\w+)\?", prompt):
        total = sum(Fraction(m[i]) * _unit(m[i + 1]) for i in (1, 3, 5, 7))
        return total / _unit(m[9])
    raise AssertionError(f"unparsed unit_conversion prompt: {prompt!r}")


def test_unit_conversion_answers_match_an_independent_table() -> None:
    for item in (it for it in ITEMS if it["category"] == "unit_conversion"):
        assert _recompute_unit(item["prompt"]) == Fraction(item["answer"]), item


# -------------------------------------------------------------------------------- sequences


def _fits(terms: list[int]) -> list[int]:
    """Next terms predicted by every simple rule that reproduces all shown terms."""
    preds = []
    d = [b - a for a, b in itertools.pairwise(terms)]
    if len(set(d)) == 1:
        preds.append(terms[-1] + d[0])
    r = {Fraction(b, a) for a, b in itertools.pairwise(terms)} if 0 not in terms else set()
    if len(r) == 1:
        preds.append(terms[-1] * r.pop())
    dd = [b - a for a, b in itertools.pairwise(d)]
    if len(set(dd)) == 1:
        preds.append(terms[-1] + d[-1] + dd[0])
    if all(c == a + b for a, b, c in zip(terms, terms[1:], terms[2:], strict=False)):
        preds.append(terms[-1] + terms[-2])
    halves = terms[len(terms) % 2::2], terms[1 - len(terms) % 2::2]  # next term's parity first
    if all(len({b - a for a, b in itertools.pairwise(h)}) == 1 for h in halves):
        preds.append(halves[0][-1] + halves[0][1] - halves[0][0])
    for p in range(2, 4):  # x -> p*x + q
        q = terms[1] - p * terms[0]
        if all(b == p * a + q for a, b in itertools.pairwise(terms)):
            preds.append(p * terms[-1] + q)
    return preds


def test_sequence_answers_are_the_unique_prediction() -> None:
    for item in (it for it in ITEMS if it["category"] == "sequence"):
        shown = re.search(r"(\d+(?:, \d+)+), \.\.\.", item["prompt"])
        assert shown, item
        preds = _fits([int(x) for x in shown[1].split(", ")])
        assert preds and set(preds) == {Fraction(item["answer"])}, (item, preds)


# -------------------------------------------------------------------------------- ordering

_COMPARATIVES = {"taller": 1, "shorter": -1, "older": 1, "younger": -1, "heavier": 1,
                 "lighter": -1, "faster": 1, "slower": -1, "richer": 1, "poorer": -1}
_SUPERLATIVE = {"tallest": 1, "shortest": -1, "oldest": 1, "youngest": -1, "heaviest": 1,
                "lightest": -1, "fastest": 1, "slowest": -1, "richest": 1, "poorest": -1}


def _solve_ordering(prompt: str) -> str:
    facts = re.findall(r"(\w+) is (\w+) than (\w+)\.", prompt)
    people = sorted({p for a, _, b in facts for p in (a, b)})
    pairs = [(a, b) if _COMPARATIVES[c] > 0 else (b, a) for a, c, b in facts]  # (more, less)
    orders = [o for o in itertools.permutations(people)
              if all(o.index(a) < o.index(b) for a, b in pairs)]
    assert len(orders) == 1, f"{len(orders)} orders fit {prompt!r}"
    order = orders[0]  # most first
    if m := re.search(r"Who is the (second )?(\w+)\?$", prompt):
        ranked = order if _SUPERLATIVE[m[2]] > 0 else order[::-1]
        return ranked[1 if m[1] else 0]
    if m := re.search(r"Who is (\w+), (\w+) or (\w+)\?$", prompt):
        first = min(m[2], m[3], key=order.index)
        return first if _COMPARATIVES[m[1]] > 0 else ({m[2], m[3]} - {first}).pop()
    if m := re.search(r"How many people are (\w+) than (\w+)\?$", prompt):
        k = order.index(m[2])
        return str(k if _COMPARATIVES[m[1]] > 0 else len(order) - 1 - k)
    raise AssertionError(f"unparsed ordering question: {prompt!r}")


def test_ordering_answers_match_brute_force() -> None:
    for item in (it for it in ITEMS if it["category"] == "ordering"):
        assert _solve_ordering(item["prompt"]) == item["answer"], item


# --------------------------------------------------------------------------- knights/knaves


def _claim(text: str, speaker: str, k: dict[str, bool]) -> bool:
    text = text.replace(" and me ", f" and {speaker} ").replace(" and I ", f" and {speaker} ")
    rules = [
        (r"(\w+) is a knight\.", lambda a: k[a]),
        (r"(\w+) is a knave\.", lambda a: not k[a]),
        (r"(\w+) and (\w+) are both knights\.", lambda a, b: k[a] and k[b]),
        (r"(\w+) and (\w+) are both knaves\.", lambda a, b: not (k[a] or k[b])),
        (r"At least one of (\w+) and (\w+) is a knave\.", lambda a, b: not (k[a] and k[b])),
        (r"(\w+) and (\w+) are the same kind\.", lambda a, b: k[a] == k[b]),
        (r"(\w+) and (\w+) are different kinds\.", lambda a, b: k[a] != k[b]),
    ]
    for pattern, rule in rules:
        if m := re.fullmatch(pattern, text):
            return rule(*m.groups())
    raise AssertionError(f"unparsed statement {text!r}")


def _solve_knights(prompt: str) -> str:
    said = re.findall(r'(\w+) says: "([^"]+)"', prompt)
    people = re.search(r"You meet ([\w, ]+?)\. ", prompt)[1].replace(" and ", ", ").split(", ")
    solutions = []
    for values in itertools.product([True, False], repeat=len(people)):
        k = dict(zip(people, values, strict=True))
        if all(_claim(text, s, k) == k[s] for s, text in said):
            solutions.append(k)
    assert len(solutions) == 1, f"{len(solutions)} solutions for {prompt!r}"
    knights = sorted(p for p, v in solutions[0].items() if v)
    return ", ".join(knights) or "none"


def test_knights_knaves_answers_match_brute_force() -> None:
    items = [it for it in ITEMS if it["category"] == "knights_knaves"]
    for item in items:
        assert _solve_knights(item["prompt"]) == item["answer"], item
    assert Counter(it["answer"] == "none" for it in items)[True] > 0


# --------------------------------------------------------------------- driver and contract


def test_items_have_the_schema_and_balance() -> None:
    cells = Counter((it["category"], it["difficulty"]) for it in FRESH)
    assert set(cells) == {(c, d) for c in CATEGORIES for d in DIFFICULTIES}
    assert set(cells.values()) == {100}
    for it in FRESH:
        assert list(it) == ["id", "section", "category", "difficulty", "prompt", "reasoning",
                            "answer"]
        assert it["section"] == ("math" if it["category"] in
                                 ("arithmetic", "unit_conversion", "date_time") else "logic")
        assert all(isinstance(v, str) and v.strip() for v in it.values())
    assert len({normalize_prompt(it["prompt"]) for it in FRESH}) == len(FRESH)
    assert len({it["id"] for it in FRESH}) == len(FRESH)


def test_generation_is_deterministic_and_seeded() -> None:
    assert generate_items(40, seed=7) == FRESH[:40]
    other = generate_items(40, seed=8)
    assert [it["prompt"] for it in other] != [it["prompt"] for it in FRESH[:40]]


def test_category_filter_and_exclusion() -> None:
    items = generate_items(12, seed=1, categories=["sequence"], difficulties=["easy"])
    assert {(it["category"], it["difficulty"]) for it in items} == {("sequence", "easy")}
    again = generate_items(12, seed=1, categories=["sequence"], difficulties=["easy"],
                           exclude_prompts=[it["prompt"].upper() for it in items[:6]])
    banned = {normalize_prompt(it["prompt"]) for it in items[:6]}
    assert not banned & {normalize_prompt(it["prompt"]) for it in again}


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown category 'poetry'.*arithmetic"):
        generate_items(3, seed=0, categories=["poetry"])
    with pytest.raises(ValueError, match="unknown difficulty 'extreme'"):
        generate_items(3, seed=0, difficulties=["extreme"])


def test_canonical_number() -> None:
    assert canonical_number(12) == "12"
    assert canonical_number(Fraction(100, 1)) == "100"
    assert canonical_number(Fraction(5, 2)) == "2.5"
    assert canonical_number(Fraction(1, 8)) == "0.125"
    assert canonical_number(Fraction(-3, 40)) == "-0.075"
    assert canonical_number(Fraction(3048, 100)) == "30.48"
    with pytest.raises(ValueError, match="finite decimal"):
        canonical_number(Fraction(1, 3))


def test_generator_space_exhaustion_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "_MAX_ATTEMPTS", 3)
    def same(rng: object, difficulty: str) -> tuple[str, str, str]:
        return "same?", "1 + 1 = 2", "2"

    monkeypatch.setitem(synthetic.GENERATORS, "sequence", same)
    with pytest.raises(RuntimeError, match="no new prompt"):
        generate_items(2, seed=0, categories=["sequence"], difficulties=["easy"])
