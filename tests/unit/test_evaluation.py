"""Tests for kaggle_lib.answer_format and kaggle_lib.evaluation: parsing, matching, records,
scorecards, summaries, the runner's files and progress."""

from __future__ import annotations

import json

import pytest

from kaggle_lib.answer_format import (
    answers_match,
    check_reasoning_lines,
    equation_holds,
    first_answer_only,
    parse_number,
    parse_output,
)
from kaggle_lib.evaluation.runner import (
    generate_with_progress,
    read_predictions,
    write_predictions,
    write_summary,
)
from kaggle_lib.evaluation.scoring import (
    RECORD_FIELDS,
    format_scorecard_table,
    score_item,
    scorecard,
    summarize,
    wilson_interval,
)

GOOD = "<reasoning>2 + 2 is 4.</reasoning><answer>4</answer>"


# --------------------------------------------------------------------------- parse_output


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        "  \n" + GOOD + "\n",
        GOOD + "<end_of_turn>",
        GOOD + "<end_of_turn>\n<eos>",
        "<reasoning>\nline one\nline two\n</reasoning>\n\n<answer> 4 </answer>",
    ],
)
def test_exact_format_accepted(text: str) -> None:
    parsed = parse_output(text)
    assert parsed.format_exact and parsed.format_approx
    assert parsed.answer == "4"
    assert parsed.reasoning is not None and parsed.reasoning.startswith(("2 + 2", "line one"))


@pytest.mark.parametrize(
    ("text", "approx"),
    [
        ("Sure! " + GOOD, True),  # text before
        (GOOD + " Hope that helps.", True),  # text after
        ("<REASONING>x</Reasoning><Answer>4</ANSWER>", True),  # case
        ("< reasoning >x</ reasoning ><answer >4< /answer>", True),  # whitespace in tags
        ("<reasoning>x</reasoning> and so <answer>4</answer>", True),  # text between blocks
        ("<reasoning>x</reasoning><answer>3</answer><answer>4</answer>", True),  # duplicate
        ("<reasoning>a<reasoning>b</reasoning></reasoning><answer>4</answer>", True),  # nested
        ("<reasoning>x<answer>3</answer></reasoning><answer>4</answer>", True),  # answer inside
        ("<reasoning></reasoning><answer>4</answer>", True),  # empty reasoning
        ("<answer>4</answer><reasoning>x</reasoning>", False),  # wrong order
        ("<reasoning>x</reasoning>", False),  # no answer
        ("<answer>4</answer>", False),  # no reasoning
        ("<reasoning>x</reasoning><answer>4", False),  # truncated
    ],
)
def test_not_exact(text: str, approx: bool) -> None:
    parsed = parse_output(text)
    assert not parsed.format_exact
    assert parsed.format_approx is approx


def test_answer_extraction_rules() -> None:
    assert parse_output("The answer is 4.").answer is None
    assert parse_output("").answer is None
    assert parse_output("<reasoning>x</reasoning><answer>4").answer is None  # unclosed
    # Last closed pair wins; an unclosed trailing tag falls back to the previous pair.
    assert parse_output("<answer>3</answer> no wait <answer>5</answer>").answer == "5"
    assert parse_output("<answer>3</answer> no wait <answer>5").answer == "3"
    # Nested: the innermost (last opened) pair.
    assert parse_output("<answer><answer> 7 </answer></answer>").answer == "7"
    assert parse_output("<Answer>\n  42 \n</ANSWER>").answer == "42"
    assert parse_output("<reasoning> why </reasoning>").reasoning == "why"
    assert parse_output("<answer>4</answer>").reasoning is None


def test_parse_output_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="str"):
        parse_output(None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("12", 12.0), ("12.0", 12.0), ("-3.5", -3.5), ("+2", 2.0), (".5", 0.5), ("1e3", 1000.0),
        ("1,234", 1234.0), ("1,234,567.5", 1234567.5), ("$12", 12.0), ("-$12", -12.0),
        ("$-12", -12.0), ("$1,000.50", 1000.5), ("3/4", 0.75), ("1 1/2", 1.5), ("-3/4", -0.75),
        ("50%", 50.0), ("12.", 12.0), ("\u22127", -7.0), (" 8 ", 8.0),
    ],
)
def test_parse_number_accepts(text: str, value: float) -> None:
    assert parse_number(text) == pytest.approx(value)


@pytest.mark.parametrize(
    "text", ["", "abc", "12 apples", "x = 12", "1,2", "12,34", "nan", "inf", "1_000", "3/0", "$",
             "--5", "1.2.3"],
)
def test_parse_number_rejects(text: str) -> None:
    assert parse_number(text) is None


def test_answers_match() -> None:
    assert answers_match("Paris", " paris. ") == (True, False)
    assert answers_match("New   York", "new york") == (True, False)
    assert answers_match("1,234", "1234") == (False, True)
    assert answers_match("12", "12") == (True, True)
    assert answers_match("12.0", 12) == (False, True)  # JSON ints as expected answers
    assert answers_match("$12", "12") == (False, True)
    assert answers_match("0.75", "3/4") == (False, True)
    assert answers_match("London", "Paris") == (False, False)
    assert answers_match(None, "4") == (False, False)
    assert answers_match("0", "0") == (True, True)
    assert answers_match("0.0", "0") == (False, True)


def test_numeric_tolerance() -> None:
    # rel_tol is relative to the larger magnitude.
    assert answers_match("100.009", "100")[1]  # 9e-5 relative
    assert not answers_match("100.02", "100")[1]  # 2e-4 relative
    assert answers_match("100.02", "100", rel_tol=1e-3)[1]
    assert not answers_match("0.33", "1/3")[1]
    assert answers_match("0.33333", "1/3")[1]
    assert not answers_match("1e-9", "0")[1]  # zero only matches zero
    with pytest.raises(ValueError, match="rel_tol"):
        answers_match("1", "1", rel_tol=-1)


# --------------------------------------------------------------------------- score_item


def _item(i: int = 1, **over: object) -> dict:
    item = {"id": f"q{i}", "section": "math", "category": "arith", "difficulty": 1,
            "prompt": "What is 2+2?", "answer": "4"}
    item.update(over)
    return item


def test_score_item_record() -> None:
    record = score_item(_item(), GOOD + "<end_of_turn>", 17, False, stage="trained")
    assert set(record) == {"stage", *RECORD_FIELDS}
    assert record["stage"] == "trained"
    assert record["parsed_answer"] == "4"
    assert record["correct"] and record["exact_match"] and record["numeric_match"]
    assert record["format_exact"] and record["format_approx"]
    assert record["token_count"] == 17 and record["truncated"] is False
    assert record["answer"] == "4" and record["prompt"] == "What is 2+2?"

    wrong = score_item(_item(), "I think 5", 3, True)
    assert "stage" not in wrong
    assert wrong["parsed_answer"] is None
    assert not wrong["correct"] and not wrong["format_approx"] and wrong["truncated"]

    numeric = score_item(_item(answer="1234"), "<reasoning>r</reasoning><answer>1,234</answer>",
                         5, False)
    assert numeric["correct"] and not numeric["exact_match"] and numeric["numeric_match"]


def test_score_item_bad_input() -> None:
    bad = _item()
    del bad["category"]
    with pytest.raises(ValueError, match=r"'q1'.*'category'"):
        score_item(bad, GOOD, 1, False)
    with pytest.raises(ValueError, match="token_count"):
        score_item(_item(), GOOD, -1, False)
    with pytest.raises(ValueError, match="truncated"):
        score_item(_item(), GOOD, 1, "no")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stage"):
        score_item(_item(), GOOD, 1, False, stage="final")


# --------------------------------------------------------------------------- scorecards


def _rec(i: int, section: str, category: str, difficulty: int, correct: bool,
         fmt_exact: bool, fmt_approx: bool, tokens: int, truncated: bool) -> dict:
    return {"id": f"q{i}", "section": section, "category": category, "difficulty": difficulty,
            "correct": correct, "format_exact": fmt_exact, "format_approx": fmt_approx,
            "token_count": tokens, "truncated": truncated}


RECORDS = [
    _rec(1, "math", "arith", 1, True, True, True, 10, False),
    _rec(2, "math", "arith", 2, False, False, True, 30, True),
    _rec(3, "math", "algebra", 2, True, True, True, 20, False),
    _rec(4, "logic", "puzzle", 1, False, False, False, 40, True),
    _rec(5, "logic", "puzzle", 3, True, False, True, 50, False),
]


def test_scorecard_overall_and_groups() -> None:
    card = scorecard(RECORDS)
    assert card["overall"] == {"n": 5, "accuracy": 3 / 5, "format_exact": 2 / 5,
                               "format_approx": 4 / 5, "mean_tokens": 150 / 5,
                               "truncation_rate": 2 / 5}
    assert list(card["by_section"]) == ["logic", "math"]
    assert card["by_section"]["math"] == {"n": 3, "accuracy": 2 / 3, "format_exact": 2 / 3,
                                          "format_approx": 1.0, "mean_tokens": 20.0,
                                          "truncation_rate": 1 / 3}
    assert card["by_section"]["logic"]["accuracy"] == 0.5
    assert card["by_category"]["arith"]["n"] == 2
    assert card["by_category"]["algebra"]["accuracy"] == 1.0
    assert card["by_category"]["puzzle"]["mean_tokens"] == 45.0
    # Difficulty keys are strings so the scorecard survives JSON unchanged.
    assert set(card["by_difficulty"]) == {"1", "2", "3"}
    assert card["by_difficulty"]["2"]["accuracy"] == 0.5
    assert card["by_difficulty"]["1"]["truncation_rate"] == 0.5
    assert json.loads(json.dumps(card)) == card


def test_scorecard_empty_and_bad() -> None:
    card = scorecard([])
    assert card["overall"]["n"] == 0 and card["overall"]["accuracy"] is None
    assert card["by_section"] == {}
    broken = dict(RECORDS[0])
    del broken["truncated"]
    with pytest.raises(ValueError, match=r"record 1 .*'q1'.*'truncated'"):
        scorecard([RECORDS[0], broken])


def test_summarize_deltas() -> None:
    baseline = [dict(r, correct=False) for r in RECORDS]
    baseline[0]["correct"] = True  # baseline: 1/5 correct, trained: 3/5
    summary = summarize(baseline, RECORDS, {"run_id": "r1"})
    assert summary["meta"] == {"run_id": "r1"}
    assert summary["baseline"]["overall"]["accuracy"] == pytest.approx(0.2)
    delta = summary["delta"]
    assert delta["overall"]["accuracy"] == pytest.approx(0.4)
    assert delta["overall"]["mean_tokens"] == 0.0
    assert delta["by_section"]["math"]["accuracy"] == pytest.approx(2 / 3 - 1 / 3)
    assert delta["by_section"]["logic"]["accuracy"] == pytest.approx(0.5)
    assert delta["by_difficulty"]["3"]["accuracy"] == pytest.approx(1.0)

    # Groups present on one side only are left out of the delta.
    extra = [*RECORDS, _rec(6, "code", "py", 1, True, True, True, 5, False)]
    assert "code" not in summarize(baseline, extra)["delta"]["by_section"]


def test_summarize_one_stage() -> None:
    only_trained = summarize(None, RECORDS, {})
    assert only_trained["baseline"] is None and only_trained["delta"] is None
    assert only_trained["trained"]["overall"]["n"] == 5
    only_baseline = summarize(RECORDS, None)
    assert only_baseline["trained"] is None and only_baseline["meta"] == {}
    with pytest.raises(ValueError, match="neither"):
        summarize(None, None, {})


def test_files_round_trip(tmp_path) -> None:
    records = [score_item(_item(i), GOOD, 5, False) for i in range(3)]
    path = write_predictions(tmp_path / "run" / "predictions.jsonl", records, stage="baseline")
    write_predictions(path, records, stage="trained", append=True)
    back = read_predictions(path)
    assert [r["stage"] for r in back] == ["baseline"] * 3 + ["trained"] * 3
    assert back[0] == {"stage": "baseline", **records[0]}
    assert "stage" not in records[0]  # input not modified

    summary = summarize(records, records, {"run_id": "x"})
    out = write_summary(tmp_path / "run" / "eval_summary.json", summary)
    assert json.loads(out.read_text()) == summary
    with pytest.raises(ValueError):
        write_summary(tmp_path / "nan.json", {"x": float("nan")})

    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_predictions(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_predictions(tmp_path / "missing.jsonl")


def test_format_scorecard_table() -> None:
    baseline = [dict(r, correct=False) for r in RECORDS]
    text = format_scorecard_table(summarize(baseline, RECORDS))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["group", "n"]
    overall = next(line for line in lines if line.startswith("overall"))
    assert overall.split() == ["overall", "5", "0.0%", "60.0%", "+60.0pp", "40.0%", "40.0%",
                               "30.0"]
    math_row = next(line for line in lines if line.strip().startswith("math"))
    assert "66.7%" in math_row and "+66.7pp" in math_row
    assert any(line.strip().startswith("logic") for line in lines)

    one = format_scorecard_table(summarize(None, RECORDS))
    assert next(line for line in one.splitlines() if line.startswith("overall")).split()[2:5] == [
        "-", "60.0%", "-"]
    with pytest.raises(ValueError, match="neither"):
        format_scorecard_table({"baseline": None, "trained": None})


# --------------------------------------------------------------------------- intervals, lines


def test_wilson_interval_matches_hand_computation() -> None:
    # 2 of 32, z = 1.96: centre (0.0625 + 3.8415/64) / (1 + 3.8415/32) = 0.10939,
    # half-width 1.96 * sqrt(0.0625 * 0.9375 / 32 + 3.8415 / 4096) / 1.12005 = 0.09208.
    lo, hi = wilson_interval(2, 32)
    assert lo == pytest.approx(0.01731, abs=5e-5) and hi == pytest.approx(0.20147, abs=5e-5)
    lo, hi = wilson_interval(0, 10)  # not empty at 0 successes, unlike the normal interval
    assert lo == 0.0 and hi == pytest.approx(0.27753, abs=5e-5)
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) is None
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)


def test_check_reasoning_lines_checks_each_equation() -> None:
    text = ("Hours: 8 + 8 = 16.\nParts: 12 * 16 = 192.\nBoxes: 7*10 = 77\n"
            "Rate: 14/42 = 0.33 per minute\n$5 x 3 = $15\n93 caterpillars + 186 ladybugs = 279")
    assert check_reasoning_lines(text) == (6, 5)
    assert check_reasoning_lines("16 + 64 = 80 and 50 / 20 = 2") == (2, 1)  # 2.5 is not 2
    assert check_reasoning_lines("no arithmetic 12 here") == (0, 0)
    assert check_reasoning_lines(None) == (0, 0)
    assert equation_holds("3 * -2", "-6") and not equation_holds("3 * -2", "6")


def test_scorecard_intervals_and_line_share() -> None:
    records = [score_item(_item(1), "<reasoning>2 + 2 = 4</reasoning><answer>4</answer>", 5,
                          False),
               score_item(_item(2, section="logic"), "<reasoning>2 + 2 = 5, 1 + 1 = 2"
                          "</reasoning><answer>5</answer>", 5, False),
               score_item(_item(3), "<reasoning>2 + 2 = 4 and then", 9, True)]
    assert [r["equations"] for r in records] == [1, 2, 1]
    assert [r["equations_correct"] for r in records] == [1, 1, 1]
    card = scorecard(records)
    assert card["ci95"]["overall"] == pytest.approx(list(wilson_interval(1, 3)))
    assert card["ci95"]["by_section"]["logic"] == pytest.approx(list(wilson_interval(0, 1)))
    assert card["reasoning_lines"]["overall"] == {"equations": 4, "correct": 3, "share": 0.75}
    assert card["reasoning_lines"]["by_section"]["logic"]["share"] == 0.5
    assert card["overall"]["truncation_rate"] == pytest.approx(1 / 3)
    # Records of older runs carry no equation counts: they count as none.
    assert scorecard(RECORDS)["reasoning_lines"]["overall"]["share"] is None


def test_score_item_uses_reasoning_gym_scorer_for_its_items() -> None:
    from kaggle_lib.data.datasets import load_builtin

    knights = next(i for i in load_builtin("eval_rg") if i["category"] == "knights_knaves")
    # The same verdict with its clauses in the other order: not equal as text.
    clauses = knights["answer"].rstrip(".").split(", and ")
    reordered = ", and ".join(reversed(clauses)) + "."
    assert reordered != knights["answer"]
    output = f"<reasoning>r</reasoning><answer>{reordered}</answer>"
    assert score_item(knights, output, 5, False)["correct"]
    plain = {k: v for k, v in knights.items() if k not in ("rg_dataset", "rg_metadata")}
    assert not score_item(plain, output, 5, False)["correct"]


def test_summarize_takes_the_delta_against_the_better_baseline() -> None:
    zero = [dict(r, correct=False) for r in RECORDS]  # 0/5
    few = [dict(r, correct=r["id"] in ("q1", "q2")) for r in RECORDS]  # 2/5
    summary = summarize(zero, RECORDS, {}, fewshot_records=few)  # trained 3/5
    assert summary["delta_against"] == "baseline_fewshot"
    assert summary["baseline"]["overall"]["accuracy"] == 0.0
    assert summary["baseline_fewshot"]["overall"]["accuracy"] == pytest.approx(0.4)
    assert summary["delta"]["overall"]["accuracy"] == pytest.approx(0.2)
    table = format_scorecard_table(summary).splitlines()
    assert "acc base few-shot" in table[0] and "40.0%" in table[2]  # the few-shot baseline
    # A tie goes to zero-shot; without a few-shot run nothing changes.
    assert summarize(few, RECORDS, fewshot_records=few)["delta_against"] == "baseline"
    plain = summarize(zero, RECORDS)
    assert plain["delta_against"] == "baseline" and plain["baseline_fewshot"] is None
    assert plain["delta"]["overall"]["accuracy"] == pytest.approx(0.6)


def test_first_answer_only_cuts_an_invented_next_question() -> None:
    text = "<reasoning>r</reasoning><answer>24</answer>\n\nQuestion: more?\nAnswer:\n<answer>7</answer>"
    assert first_answer_only(text) == "<reasoning>r</reasoning><answer>24</answer>"
    assert parse_output(first_answer_only(text)).format_exact
    assert first_answer_only("no answer tag") == "no answer tag"


class _CountingGenerator:
    """Stands in for kaggle_lib.generation.Generator: echoes prompts, records calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def generate(self, prompts, *, max_new_tokens, batch_size):  # type: ignore[no-untyped-def]
        from kaggle_lib.generation import Generation

        self.calls.append((list(prompts), batch_size))
        return [Generation(prompt=p, text=p.upper(), token_ids=[1] * len(p), truncated=False)
                for p in prompts]


def test_generate_with_progress_batches_and_reports(capsys) -> None:  # type: ignore[no-untyped-def]
    generator = _CountingGenerator()
    gens = generate_with_progress(generator, ["a", "bb", "ccc"], max_new_tokens=4, batch_size=2,
                                  desc="unit")
    assert [g.text for g in gens] == ["A", "BB", "CCC"]
    assert generator.calls == [(["a", "bb"], 2), (["ccc"], 2)]
    err = capsys.readouterr().err
    assert "unit" in err and "3/3" in err and "tokens_per_s" in err


# --------------------------------------------------------------------------- prompt limit

# ~1 MB: tokenized once per pass (~0.6 s); sizing a Generator to it would need gigabytes.
HUGE_PROMPT = "What is 2 + 3? " * 70_000


def _eval_item(item_id: str, prompt: str) -> dict:
    return _item(id=item_id, prompt=prompt, difficulty="easy")


def test_a_prompt_over_the_limit_is_dropped_counted_and_never_sizes_the_generator(
        tiny_loaded, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    from kaggle_lib.evaluation import runner

    items = [_eval_item("short-1", "What is 2 + 3?"), _eval_item("huge", HUGE_PROMPT),
             _eval_item("short-2", "Tom has 2 apples and buys 3. How many now?")]
    generator = _CountingGenerator()
    with caplog.at_level("INFO"):
        result = runner.evaluate(tiny_loaded, items, stage="baseline", max_new_tokens=4,
                                 max_prompt_tokens=64, batch_size=2,
                                 predictions=tmp_path / "p.jsonl", source="jsonl:huge.jsonl",
                                 generator=generator)
    assert result.dropped == ["huge"]
    assert [r["id"] for r in read_predictions(tmp_path / "p.jsonl")] == ["short-1", "short-2"]
    assert [len(prompts) for prompts, _ in generator.calls] == [2]  # the huge one never fed
    assert result.metrics()["items"] == 2 and result.metrics()["items_dropped_long"] == 1
    assert "1 of 3 items dropped: zero-shot prompt longer than eval.max_prompt_tokens (64 " \
        "tokens): huge" in caplog.text
    # The Generator is sized by the longest prompt within the limit, never by the huge one.
    prompts = runner.render_prompts([i["prompt"] for i in items], style="zero-shot",
                                    instruct=False)
    longest_kept = max(runner.prompt_tokens(tiny_loaded, p) for p in (prompts[0], prompts[2]))
    sized = runner.make_generator(tiny_loaded, prompts, 4, 64)
    assert longest_kept <= sized.max_prompt_len <= 64
    assert sized.sampler.cache_config.cache_size == sized.max_prompt_len + 4


def test_all_items_over_the_limit_fail_naming_the_data(tiny_loaded, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kaggle_lib.data_spec import DataError
    from kaggle_lib.evaluation import runner

    with pytest.raises(DataError, match=r"jsonl:/data/long.jsonl: all 2 eval items have few-shot "
                                        r"prompts longer than eval.max_prompt_tokens \(64 tokens\)"):
        runner.evaluate(tiny_loaded, [_eval_item("a", HUGE_PROMPT), _eval_item("b", "x " * 200)],
                        stage="baseline_fewshot", style="few-shot", max_new_tokens=4,
                        max_prompt_tokens=64, batch_size=2, predictions=tmp_path / "p.jsonl",
                        source="jsonl:/data/long.jsonl", generator=_CountingGenerator())
    assert not (tmp_path / "p.jsonl").exists()


def test_a_run_drops_counts_and_records_long_eval_items(tiny_loaded, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Through `Evaluations`, as the notebook runs it: the shared Generator stays within the
    limit, the samples skip the dropped item, the manifest counts it per stage."""
    from kaggle_lib import evidence
    from kaggle_lib.config import validate_config
    from kaggle_lib.data.datasets import write_jsonl
    from kaggle_lib.evaluation import runner

    data = write_jsonl(tmp_path / "eval.jsonl", [
        _eval_item("huge", HUGE_PROMPT), _eval_item("s1", "What is 2 + 3?"), _eval_item("s2", "What is 4 + 1?")])
    config = validate_config({"model": {"name": "gemma3-tiny", "source": "random"},
                              "data": {"eval": f"jsonl:{data}"},
                              "eval": {"max_prompt_tokens": 64, "max_new_tokens": 4,
                                       "batch_size": 2, "fewshot_baseline": False},
                              "sample": {"max_new_tokens": 4}})
    record = evidence.RunRecord(tmp_path / "run")
    record.start("run", "demo", "configs/cpu_tiny.yaml")
    evals = runner.Evaluations(config, record)
    result = evals.evaluate(tiny_loaded, "baseline")
    assert result is not None and [r["id"] for r in result.records] == ["s1", "s2"]
    assert evals.generator.max_prompt_len <= 64
    assert evals.questions(tiny_loaded) == ["What is 2 + 3?", "What is 4 + 1?"]
    data_record = record.read_manifest()["data"]
    assert data_record["eval_dropped_long"] == {"baseline": 1}
    assert data_record["eval_dropped_ids"] == ["huge"]
    assert data_record["eval_max_prompt_tokens"] == 64
