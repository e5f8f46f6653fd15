"""reasoning-gym items: rendered lines, determinism, disjointness from the eval split, scoring."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from kaggle_lib.answer_format import check_reasoning_lines
from kaggle_lib.data import reasoning_gym as rgdata
from kaggle_lib.data.datasets import load_builtin
from kaggle_lib.data.sources import load_items
from kaggle_lib.data_spec import MIXES, DataError
from kaggle_lib.training.rewards import make_answer_reward

REPO = Path(__file__).resolve().parents[2]
COT = (
    "Let's solve this step by step:\n\n1. Initial amounts:\n"
    "   \u2022 John has 35 apple\n"
    "   \u2022 He has 3 times as many kiwi, so 35 \u00d7 3 = 105 kiwi\n"
    "2. Bought: 93 - 38=55 kiwi\n"
    "Therefore the total is 105 + 55 = 160.\n#### 160"
)


def _prompts(items: list[dict]) -> set[str]:
    return {rgdata.normalize_text(item["prompt"]) for item in items}


def test_derive_lines_renders_one_checked_equation_per_line() -> None:
    assert rgdata.derive_lines(COT, "160") == [
        "He has 3 times as many kiwi, so 35 * 3 = 105 kiwi",
        "Bought: 93 - 38 = 55 kiwi",
        "Therefore the total is 105 + 55 = 160.",
    ]
    # Unit words between numbers and "x" as a product are read, then written plainly.
    assert rgdata.derive_lines("So 294 pages x 2/3 = 196 pages.\n#### 196", "196") == [
        "So 294 * 2 / 3 = 196 pages."]


def test_derive_lines_refuses_wrong_or_unfinished_solutions() -> None:
    assert rgdata.derive_lines(COT.replace("= 105", "= 106"), "160") is None
    assert rgdata.derive_lines(COT, "161") is None  # the last equation must give the answer
    assert rgdata.derive_lines("No arithmetic here.\n#### 5", "5") is None
    assert rgdata.derive_lines("She needs 50 / 20 = 2 racks.\n#### 2", "2") is None


def test_same_seed_same_items_other_seed_other_items() -> None:
    first = rgdata.generate_items("gsm", 12, seed=3)
    assert first == rgdata.generate_items("gsm", 12, seed=3)
    assert _prompts(first) != _prompts(rgdata.generate_items("gsm", 12, seed=4))
    for item in first:  # every rendered equation checks out
        found, correct = check_reasoning_lines(item["reasoning"])
        assert found >= 1 and correct == found, item
        assert item["section"] == "math" and item["difficulty"] in ("easy", "medium", "hard")


def test_training_items_are_duplicate_free_and_disjoint_from_the_eval_split() -> None:
    eval_prompts = _prompts(load_builtin("eval_rg")) | _prompts(load_builtin("eval"))
    for mix, seed in (("gsm", 0), ("wide", 0), ("wide", 7)):
        items = rgdata.generate_items(mix, 160, seed=seed)
        assert len(_prompts(items)) == len(items) == 160
        assert not _prompts(items) & eval_prompts
    # The exclusion is what keeps them apart: excluding one draw empties the overlap with it.
    drawn = rgdata.generate_items({"syllogism": 1.0}, 40, seed=0, exclude=[])
    again = rgdata.generate_items({"syllogism": 1.0}, 40, seed=0,
                                  exclude=[i["prompt"] for i in drawn])
    assert len(again) == 40 and not _prompts(again) & _prompts(drawn)


def test_wide_mix_covers_its_families_including_ours() -> None:
    items = rgdata.generate_items("wide", 64, seed=1)
    categories = {item["category"] for item in items}
    assert {"gsm_symbolic", "knights_knaves", "leg_counting", "word_sorting",
            "unit_conversion", "ordering"} <= categories
    assert rgdata.quotas(MIXES["wide"], 64)["gsm_symbolic"] == 16


def test_eval_split_file_is_the_generators_output_and_disjoint_from_shipped_data() -> None:
    script = REPO / "scripts" / "make_eval_split.py"
    spec = importlib.util.spec_from_file_location("make_eval_split", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check"]) == 0
    items = load_builtin("eval_rg")
    assert len(items) >= 96
    assert {item["section"] for item in items} >= {"math", "logic", "counting", "algorithmic"}
    assert sum(item["category"] == "gsm_symbolic" for item in items) >= 32
    shipped = _prompts(load_builtin("train")) | _prompts(load_builtin("eval"))
    assert not _prompts(items) & shipped
    assert len(_prompts(items)) == len(items)


def test_rg_data_spec(tmp_path: Path) -> None:
    items = load_items("rg:gsm@5", limit=4)
    assert items == rgdata.generate_items("gsm", 4, seed=5)
    assert [i["id"] for i in load_items("rg:chain_sum=1,ours.ordering=1", limit=2)]
    with pytest.raises(DataError, match=r"'nope=1' is not allowed.*gsm_symbolic"):
        load_items("rg:nope=1", limit=2)
    with pytest.raises(DataError, match="seed"):
        load_items("rg:gsm@x", limit=2)


def test_score_answer_uses_reasoning_gyms_scorer() -> None:
    items: dict[str, dict] = {}
    for item in load_builtin("eval_rg"):
        items.setdefault(item["category"], item)  # the first of each family
    gsm, knights = items["gsm_symbolic"], items["knights_knaves"]
    assert rgdata.score_answer(gsm["answer"], gsm) == 1.0
    assert rgdata.score_answer(str(int(gsm["answer"]) + 1), gsm) < 1.0
    assert rgdata.score_answer(None, gsm) == 0.0
    assert rgdata.score_answer(knights["answer"], knights) == 1.0
    reward = make_answer_reward()
    completions = [f"<reasoning>r</reasoning><answer>{gsm['answer']}</answer>", "no tags",
                   "<reasoning>r</reasoning><answer>Liam is an altruist, and Isabella is an "
                   "egoist</answer>"]
    as_text = [json.dumps(gsm), json.dumps(gsm), json.dumps(knights)]  # a numpy string column
    truths = [gsm["answer"], gsm["answer"], knights["answer"]]
    scores = reward(["p"] * 3, completions, answer=truths, rg_item=as_text)
    # knights: one of two roles right earns reasoning-gym's partial credit 0.3 + 0.7 / 2
    assert scores == [1.0, 0.0, pytest.approx(0.65)]
    assert knights["answer"] == "Liam is an altruist, and Isabella is an altruist."
    # without the rg_item column the same completions are scored by exact/numeric match only
    assert reward(["p"] * 3, completions, answer=truths) == [1.0, 0.0, 0.0]
    ours = json.loads(json.dumps(load_builtin("eval")[0]))
    assert rgdata.score_answer(ours["answer"], ours) == 1.0


def test_kaggle_pins_cover_reasoning_gym_and_its_exact_requirements() -> None:
    import importlib.metadata as md

    from packaging.requirements import Requirement

    from kaggle_lib.kaggle.bundle import normalize, read_lock, read_pins

    pins = {normalize(n): v for n, v in read_pins(REPO / "requirements-kaggle.txt").items()}
    lock = read_lock(REPO / "requirements.lock")
    assert pins["reasoning-gym"] == lock["reasoning-gym"] == md.version("reasoning-gym")
    # Installed --no-deps on Kaggle: what reasoning-gym pins exactly must be pinned the same.
    exact = [Requirement(r) for r in md.requires("reasoning-gym") or []]
    exact = [r for r in exact if r.marker is None and str(r.specifier).startswith("==")]
    assert exact, "reasoning-gym 0.1.25 pins some requirements exactly"
    for req in exact:
        assert pins.get(normalize(req.name)) == str(req.specifier)[2:], req


def test_expression_lines_one_operation_per_line() -> None:
    assert rgdata.expression_lines("( ( -9 - 6 ) - -( -3 * 4 ) ) * 2 / 2", "-27") == [
        "-9 - 6 = -15", "-3 * 4 = -12", "-15 - 12 = -27", "-27 * 2 = -54", "-54 / 2 = -27"]
    assert rgdata.expression_lines("57 + 87 + 70", "214") == ["57 + 87 = 144", "144 + 70 = 214"]
    assert rgdata.expression_lines("57 + 87 + 70", "215") is None
    assert rgdata.expression_lines("7 / 2 * 2", "7") is None  # 3.5 is not a whole number
    assert rgdata.expression_lines("__import__('os')", "0") is None


def test_wide_sft_items_all_have_checked_reasoning() -> None:
    items = rgdata.generate_items("wide_sft", 64, seed=2)
    assert {"gsm_symbolic", "chain_sum", "basic_arithmetic", "knights_knaves", "syllogism",
            "leg_counting", "letter_counting", "spell_backward", "word_sorting"} <= {
        i["category"] for i in items}
    for item in items:
        assert item["reasoning"].strip(), item["id"]
        found, correct = check_reasoning_lines(item["reasoning"])
        assert found == correct, item  # every equation we render is right
        if item["category"] in ("chain_sum", "basic_arithmetic", "leg_counting"):
            assert found == len(item["reasoning"].splitlines()), item
        if item["category"] == "gsm_symbolic":
            assert found >= 1, item


def test_knights_knaves_case_analysis_rules_out_all_but_the_solution() -> None:
    metadata = {"names": ["Liam", "Isabella"], "solution": [True, True],
                "statements": [["telling-truth", 1],
                               ["<=>", ["telling-truth", 1], ["telling-truth", 0]]],
                "knight_knave_terms": {"a_knight": "an altruist", "a_knave": "an egoist"}}
    assert rgdata.knights_knaves_lines(metadata) == [
        "If Liam is an altruist and Isabella is an altruist, every statement fits.",
        "If Liam is an altruist and Isabella is an egoist, Liam's statement is false: "
        "impossible.",
        "If Liam is an egoist and Isabella is an altruist, Liam's statement is true: impossible.",
        "If Liam is an egoist and Isabella is an egoist, Isabella's statement is true: "
        "impossible."]
    # a solution the statements do not single out is refused, not rendered
    assert rgdata.knights_knaves_lines({**metadata, "solution": [False, False]}) is None


def test_counting_and_text_renderers() -> None:
    legs = rgdata.leg_counting_lines({"animals": {"dog": 3, "bee": 2}, "total_legs": 24})
    assert legs == ["3 dog: 3 * 4 = 12", "2 bee: 2 * 6 = 12", "12 + 12 = 24"]
    assert rgdata.leg_counting_lines({"animals": {"dog": 3}, "total_legs": 13}) is None
    letters = rgdata.letter_counting_lines({"target_letter": "s",
                                            "span": ["miss", "a", "Sea"]})
    assert letters == ["miss (m i s s): 2", "Sea (S e a): 1", "2 + 1 = 3"]
    assert rgdata.simple_lines("spell_backward", {"word": "sun"}, "nus") == [
        "Letters: s u n", "Backward: n u s"]
    assert rgdata.simple_lines("spell_backward", {"word": "sun"}, "sun") is None
    assert rgdata.simple_lines("syllogism", {"premise1": "all cats are animals",
                                             "premise2": "all animals breathe",
                                             "conclusion": "All cats breathe",
                                             "is_valid": True}, "Yes")[-1] == \
        'So "All cats breathe" follows.'


def test_operation_steps_by_place_value() -> None:
    assert rgdata.operation_steps(97, "+", 98) == ["97 + 90 = 187", "187 + 8 = 195", "97 + 98 = 195"]
    assert rgdata.operation_steps(-461, "+", 736) == [
        "-461 + 700 = 239", "239 + 30 = 269", "269 + 6 = 275", "-461 + 736 = 275"]
    assert rgdata.operation_steps(770, "-", -933) == [
        "770 + 900 = 1670", "1670 + 30 = 1700", "1700 + 3 = 1703", "770 - -933 = 1703"]
    # partial products by the operand with fewer nonzero places, then their sum in steps
    assert rgdata.operation_steps(55, "*", -26) == [
        "55 * -20 = -1100", "55 * -6 = -330", "-1100 - 300 = -1400", "-1400 - 30 = -1430",
        "55 * -26 = -1430"]
    assert rgdata.operation_steps(12, "*", 305) == [
        "12 * 300 = 3600", "12 * 5 = 60", "3600 + 60 = 3660", "12 * 305 = 3660"]
    assert rgdata.operation_steps(45, "*", 123) == [
        "123 * 40 = 4920", "123 * 5 = 615", "4920 + 600 = 5520", "5520 + 10 = 5530",
        "5530 + 5 = 5535", "45 * 123 = 5535"]
    # one nonzero place, and division, stay one line
    assert rgdata.operation_steps(406, "+", 700) == ["406 + 700 = 1106"]
    assert rgdata.operation_steps(3, "-", 0) == ["3 - 0 = 3"]
    assert rgdata.operation_steps(5808, "/", 16) == ["5808 / 16 = 363"]


def test_place_value_lines_keep_every_line_and_check_out() -> None:
    lines = ["Of the 122 pupils, 21 are girls, so 122 - 21 = 101 boys.", "2 * 7 = 14",
             "So 0.5 * 30 = 15.0 liters.", "Each gets 10 / 4 = 2.5 cakes."]
    assert rgdata.place_value_lines(lines) == [
        "122 - 20 = 102", "102 - 1 = 101", *lines]  # decimals and division stay as they are
    items = rgdata.generate_items("wide_sft", 48, seed=3, lines="place_value")
    plain = rgdata.generate_items("wide_sft", 48, seed=3)
    assert [i["prompt"] for i in items] == [i["prompt"] for i in plain]  # same problems
    longer = 0
    for item, before in zip(items, plain, strict=True):
        found, correct = check_reasoning_lines(item["reasoning"])
        assert found == correct, item  # every step is right
        assert item["reasoning"].split("\n")[-1] == before["reasoning"].split("\n")[-1]
        assert set(before["reasoning"].split("\n")) <= set(item["reasoning"].split("\n"))
        longer += item["reasoning"] != before["reasoning"]
    assert longer >= 10


def test_rg_spec_line_style() -> None:
    items = load_items("rg:chain_sum@4/place_value", limit=3)
    assert items == rgdata.generate_items("chain_sum", 3, seed=4, lines="place_value")
    assert items != load_items("rg:chain_sum@4", limit=3)
    with pytest.raises(DataError, match=r"after '/' must be one of op, place_value, got 'digits'"):
        load_items("rg:chain_sum@4/digits", limit=3)


def test_wide_sft_arith_is_wide_sft_with_arithmetic_weighed_up() -> None:
    wide, arith = rgdata.parse_mix("wide_sft"), rgdata.parse_mix("wide_sft_arith")
    assert {k: v for k, v in arith.items() if k not in ("basic_arithmetic", "chain_sum")} == {
        k: v for k, v in wide.items() if k not in ("basic_arithmetic", "chain_sum")}
    shares = rgdata.quotas(arith, 2000)
    assert shares["basic_arithmetic"] == shares["chain_sum"] == 333  # 3 / 18 of 2000
    assert shares["gsm_symbolic"] == 444
