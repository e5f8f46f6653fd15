"""Tests for kaggle_lib.compare on fabricated run directories (written with evaluate's writers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_lib import cli
from kaggle_lib.evaluation.runner import write_predictions, write_summary
from kaggle_lib.evaluation.scoring import score_item, summarize
from kaggle_lib.evidence import lock
from kaggle_lib.evidence.compare import (
    CompareError,
    compare_runs,
    compare_to_baseline,
    load_run_scores,
    mark_baseline,
    plot_category_accuracy,
)

CATEGORIES = ["arith", "arith", "algebra", "algebra", "puzzle", "puzzle", "count", "count",
              "arith", "puzzle"]
ITEMS = [
    {"id": f"q{i}", "section": "math" if c != "puzzle" else "logic", "category": c,
     "difficulty": 1 + i % 3, "prompt": f"question {i}", "answer": str(i)}
    for i, c in enumerate(CATEGORIES)
]


def _output(item: dict, correct: bool) -> str:
    answer = item["answer"] if correct else "wrong"
    return f"<reasoning>work for {item['id']}</reasoning><answer>{answer}</answer>"


def make_run(root: Path, name: str, trained_ok: set[int], baseline_ok: set[int] | None = None,
             ) -> Path:
    """A run dir whose trained stage gets items `trained_ok` right (and baseline `baseline_ok`)."""
    run = root / name
    trained = [score_item(it, _output(it, i in trained_ok), 10 + i, False)
               for i, it in enumerate(ITEMS)]
    baseline = None
    if baseline_ok is not None:
        baseline = [score_item(it, _output(it, i in baseline_ok), 20, False)
                    for i, it in enumerate(ITEMS)]
        write_predictions(run / "predictions.jsonl", baseline, stage="baseline")
    write_predictions(run / "predictions.jsonl", trained, stage="trained",
                      append=baseline is not None)
    write_summary(run / "eval_summary.json", summarize(baseline, trained, {"run_id": name}))
    return run


ALL = set(range(10))


def test_load_run_scores(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1", ALL, baseline_ok=set())
    summary, predictions = load_run_scores(run)
    assert summary["trained"]["overall"]["accuracy"] == 1.0
    assert summary["baseline"]["overall"]["accuracy"] == 0.0
    assert len(predictions) == 20
    assert {p["stage"] for p in predictions} == {"baseline", "trained"}


def test_load_run_scores_errors(tmp_path: Path) -> None:
    with pytest.raises(CompareError, match="run directory not found"):
        load_run_scores(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompareError, match="eval_summary.json and predictions.jsonl"):
        load_run_scores(empty)
    run = make_run(tmp_path, "r1", ALL)
    (run / "predictions.jsonl").unlink()
    with pytest.raises(CompareError, match=r"lacks predictions\.jsonl"):
        load_run_scores(run)
    run = make_run(tmp_path, "r2", ALL)
    (run / "eval_summary.json").write_text("{not json")
    with pytest.raises(CompareError, match=r"eval_summary\.json: not valid JSON"):
        load_run_scores(run)


def test_compare_runs_table_and_regressions(tmp_path: Path) -> None:
    a = make_run(tmp_path, "run_a", {0, 1, 2, 3, 4, 5, 6, 7})  # 80%
    b = make_run(tmp_path, "run_b", {0, 1, 2, 3, 4, 8, 9})  # 70%; 5, 6, 7 regressed
    result = compare_runs(a, b)
    assert result.accuracy_a == pytest.approx(0.8) and result.accuracy_b == pytest.approx(0.7)
    assert result.regressed
    assert [r["id"] for r in result.regressed_items] == ["q5", "q6", "q7"]
    assert result.regressed_items[0] == {
        "id": "q5", "section": "logic", "category": "puzzle", "difficulty": 3, "expected": "5",
        "a_answer": "5", "b_answer": "wrong"}
    assert result.unmatched_ids == []
    assert result.delta["overall"]["accuracy"] == pytest.approx(-0.1)

    table = result.table
    assert "A: run_a [trained]" in table and "B: run_b [trained]" in table
    acc_row = next(line for line in table.splitlines() if line.startswith("accuracy "))
    assert acc_row.split() == ["accuracy", "80.0%", "70.0%", "-10.0pp"]
    for header in ("accuracy by_section", "accuracy by_category", "accuracy by_difficulty"):
        assert header in table
    # count: A 2/2, B 0/2.
    count_row = next(line for line in table.splitlines() if line.startswith("count "))
    assert count_row.split() == ["count", "2", "2", "100.0%", "0.0%", "-100.0pp"]

    # Same comparison the other way: B -> A improves, no regression.
    reverse = compare_runs(b, a)
    assert not reverse.regressed
    assert [r["id"] for r in reverse.regressed_items] == ["q8", "q9"]


def test_threshold_is_absolute_and_strict(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", ALL)  # 100%
    b = make_run(tmp_path, "b", ALL - {3})  # 90%
    assert compare_runs(a, b, threshold=0.2).regressed is False
    assert compare_runs(a, b, threshold=0.1).regressed is False  # drop == threshold: not more
    # 0.8 - 0.7 is 0.10000000000000009 in floats; still "equal", so still no regression.
    c = make_run(tmp_path, "c", set(range(8)))
    d = make_run(tmp_path, "d", set(range(7)))
    assert compare_runs(c, d, threshold=0.1).regressed is False
    assert compare_runs(c, d, threshold=0.099).regressed is True
    assert compare_runs(a, b, threshold=0.05).regressed is True
    with pytest.raises(CompareError, match="threshold"):
        compare_runs(a, b, threshold=-0.1)


def test_unmatched_and_stage_errors(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", ALL)
    b = make_run(tmp_path, "b", ALL)
    lines = (b / "predictions.jsonl").read_text().splitlines()
    (b / "predictions.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # drop q9
    assert compare_runs(a, b).unmatched_ids == ["q9"]

    with pytest.raises(CompareError, match=r"'baseline' is empty.*\['trained'\]"):
        compare_runs(a, b, a_stage="baseline")

    row = json.loads(lines[0])
    row["stage"] = "final"
    (b / "predictions.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(CompareError, match=r"record 1 has 'stage' 'final'"):
        compare_runs(a, b)
    row["stage"] = "trained"
    (b / "predictions.jsonl").write_text((json.dumps(row) + "\n") * 2)
    with pytest.raises(CompareError, match="'q0' appears twice"):
        compare_runs(a, b)


def test_single_run_baseline_vs_trained(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r", {0, 1, 2, 3, 4}, baseline_ok={0, 9})
    result = compare_runs(run, run, a_stage="baseline", b_stage="trained")
    assert result.a_label == "r [baseline]" and result.b_label == "r [trained]"
    assert not result.regressed
    assert [r["id"] for r in result.regressed_items] == ["q9"]


def test_mark_and_compare_to_baseline(tmp_path: Path) -> None:
    evidence = tmp_path / "evidence"
    good = make_run(evidence / "runs", "good", ALL)
    bad = make_run(evidence / "runs", "bad", {0, 1, 2, 3, 4, 5})

    with pytest.raises(CompareError, match=r"no baseline marked.*baseline\.json"):
        compare_to_baseline(bad, evidence)

    out = mark_baseline(good, evidence)
    assert out == evidence / "baseline.json"
    record = json.loads(out.read_text())
    assert record["run_id"] == "good"
    assert record["path"] == "runs/good"  # relative: the evidence tree can move
    assert record["accuracy"] == 1.0

    result = compare_to_baseline(bad, evidence, threshold=0.02)
    assert result.regressed and len(result.regressed_items) == 4
    assert not compare_to_baseline(good, evidence).regressed

    # A run outside the evidence root is stored by absolute path.
    outside = make_run(tmp_path / "elsewhere", "other", ALL)
    mark_baseline(outside, evidence)
    assert Path(json.loads(out.read_text())["path"]) == outside.resolve()
    assert not compare_to_baseline(good, evidence).regressed


@pytest.mark.parametrize("status", ["failed", "running"])
def test_a_run_that_did_not_succeed_cannot_be_marked_the_baseline(
        tmp_path: Path, status: str, capsys: pytest.CaptureFixture[str]) -> None:
    evidence = tmp_path / "evidence"
    run = make_run(evidence / "runs", "r", ALL)
    with lock.lock_run_dir(run):  # a live writer (a gone one's record is closed as interrupted)
        (run / "run_manifest.json").write_text(json.dumps({"status": status}))
        assert cli.main(["compare", "--mark-baseline", str(run), "--evidence-root",
                         str(evidence)]) == 2
    assert (f"refusing to mark {run} as the baseline: {run / 'run_manifest.json'} says status "
            f"'{status}'; a baseline must be a run that succeeded") in capsys.readouterr().err
    assert not (evidence / "baseline.json").exists()
    (run / "run_manifest.json").write_text(json.dumps({"status": "succeeded"}))
    assert cli.main(["compare", "--mark-baseline", str(run), "--evidence-root", str(evidence)]) == 0


def test_plot_category_accuracy(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", ALL, baseline_ok={1})
    b = make_run(tmp_path, "b", {0, 1})
    png = plot_category_accuracy(compare_runs(a, b), tmp_path / "charts" / "result.png")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR" and len(data) > 2000


# --------------------------------------------------------------------------- CLI


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_run(tmp_path, "run_a", ALL)
    same = make_run(tmp_path, "run_same", ALL - {9})  # -10pp
    worse = make_run(tmp_path, "run_worse", {0, 1, 2})

    assert cli.main(["compare", str(a), str(worse), "--png", str(tmp_path / "c.png")]) == 1
    out = capsys.readouterr().out
    assert "accuracy by_category" in out and "REGRESSION" in out
    assert "7 regressed item(s)" in out and "q3 [math/algebra] expected '3'" in out
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"

    assert cli.main(["compare", str(a), str(same), "--threshold", "0.15"]) == 0
    out = capsys.readouterr().out
    assert "OK: accuracy 100.0% -> 90.0%" in out and "1 regressed item(s)" in out
    assert cli.main(["compare", str(a), str(same)]) == 1  # default threshold 0.02
    capsys.readouterr()


def test_main_baseline_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    evidence = tmp_path / "evidence"
    a = make_run(evidence / "runs", "a", ALL)
    worse = make_run(evidence / "runs", "worse", {0})
    root = ["--evidence-root", str(evidence)]
    assert cli.main(["compare", "--baseline", str(worse), *root]) == 2  # nothing marked yet
    assert "no baseline marked" in capsys.readouterr().err
    assert cli.main(["compare", "--mark-baseline", str(a), *root]) == 0
    assert "baseline marked" in capsys.readouterr().out
    assert cli.main(["compare", "--baseline", str(a), *root]) == 0
    assert cli.main(["compare", "--baseline", str(worse), *root]) == 1
    capsys.readouterr()


def test_main_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = make_run(tmp_path, "a", ALL, baseline_ok={0})
    assert cli.main(["compare"]) == 2
    assert cli.main(["compare", str(a), str(a), str(a)]) == 2
    assert cli.main(["compare", str(a), "--mark-baseline", str(a)]) == 2
    assert cli.main(["compare", str(a), str(tmp_path / "missing")]) == 2
    assert "run directory not found" in capsys.readouterr().err
    assert cli.main(["compare", str(a), str(a), "--threshold", "abc"]) == 2  # argparse error
    assert cli.main(["compare", str(a), str(a), "--threshold", "1.5"]) == 2
    capsys.readouterr()
    # One run: its baseline stage (10%) vs trained stage (100%).
    assert cli.main(["compare", str(a)]) == 0
    assert "a [baseline]" in capsys.readouterr().out
