"""`python -m kaggle_lib eval` (in process) on a real finished run (configs/cpu_tiny.yaml through
`python -m kaggle_lib run`, shared: tests/conftest.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kaggle_lib import cli, eval_cli
from kaggle_lib.data.datasets import write_jsonl
from kaggle_lib.data.sources import pick_eval_items
from kaggle_lib.evaluation import runner, scoring

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG = REPO_ROOT / "configs" / "cpu_tiny.yaml"


@pytest.fixture(scope="module")
def finished_run(tiny_notebook_run: tuple[Path, subprocess.CompletedProcess[str]],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of tests/conftest.py's shared cpu_tiny run (the notebook's stages through
    `python -m kaggle_lib run`): these tests write eval/ folders into it."""
    shared, result = tiny_notebook_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path_factory.mktemp("eval_cli") / shared.name
    shutil.copytree(shared, run_dir)
    assert json.loads((run_dir / "run_manifest.json").read_text())["status"] == "succeeded"
    return run_dir


def _by_stage(run_dir: Path, stage: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in runner.read_predictions(run_dir / "predictions.jsonl")
            if r["stage"] == stage}


def test_eval_restores_the_trained_model(finished_run: Path, tmp_path: Path) -> None:
    trained = _by_stage(finished_run, "trained")
    baseline = _by_stage(finished_run, "baseline")
    # The check below only tells trained from base weights if training changed some output.
    changed = [i for i in trained if trained[i]["output"] != baseline[i]["output"]]
    assert changed, "training changed no output; the test could not tell the models apart"
    # Five of the run's eval items, in another order and other batches than the run's.
    ids = sorted(trained)[:5]
    data = tmp_path / "heldout.jsonl"
    write_jsonl(data, [{k: trained[i][k] for k in scoring.ITEM_FIELDS} for i in reversed(ids)])

    code = cli.main(["eval", "--run-dir", str(finished_run), "--data", str(data),
                          "--batch-size", "2"])
    assert code == 0
    out = finished_run / "eval" / "heldout"
    records = runner.read_predictions(out / eval_cli.PREDICTIONS)
    assert [r["id"] for r in records] == list(reversed(ids))
    for record in records:
        assert record["stage"] == "trained"
        # Greedy decoding of the restored weights reproduces what the run generated.
        assert record["output"] == trained[record["id"]]["output"], record["id"]
        assert record["token_count"] == trained[record["id"]]["token_count"]
    summary = json.loads((out / eval_cli.SUMMARY).read_text())
    assert summary["baseline"] is None and summary["delta"] is None
    assert summary["trained"] == scoring.scorecard(records)
    assert summary["trained"]["overall"]["n"] == 5
    meta = summary["meta"]
    steps = sorted(int(p.name) for p in (finished_run / "checkpoints" / "sft").iterdir()
                   if p.name.isdigit())
    assert meta["checkpoint_step"] == steps[-1] == 4
    assert meta["restored"] == "lora" and meta["batch_size"] == 2 and meta["max_new_tokens"] == 16

    # --out-name and --limit: a second folder with the first two items only.
    assert cli.main(["eval", "--run-dir", str(finished_run), "--data", str(data),
                          "--out-name", "first2", "--limit", "2"]) == 0
    first2 = runner.read_predictions(finished_run / "eval" / "first2" / eval_cli.PREDICTIONS)
    assert [r["output"] for r in first2] == [r["output"] for r in records[:2]]
    # The same --out-name again replaces the earlier results only with --overwrite.
    again = ["eval", "--run-dir", str(finished_run), "--data", str(data), "--out-name", "first2",
             "--limit", "1"]
    assert cli.main(again) == 2
    assert len(runner.read_predictions(finished_run / "eval" / "first2" / eval_cli.PREDICTIONS)) == 2
    assert cli.main([*again, "--overwrite"]) == 0
    assert len(runner.read_predictions(finished_run / "eval" / "first2" / eval_cli.PREDICTIONS)) == 1


def test_eval_and_the_run_write_identical_predictions(finished_run: Path, tmp_path: Path) -> None:
    """One evaluation loop: `eval` on the run's own eval items (same order and batches) writes,
    line for line, the predictions the run's trained evaluation wrote, and with `--model base
    --few-shot` those of the run's few-shot baseline."""
    lines = (finished_run / "predictions.jsonl").read_text().splitlines()
    config = eval_cli.read_run_config(finished_run)
    items, _ = pick_eval_items(config.data.eval, config.data.eval_limit)
    data = tmp_path / "run_items.jsonl"
    write_jsonl(data, items)
    for stage, kwargs in (("trained", {}), ("baseline_fewshot", {"model": "base", "few_shot": True})):
        summary = eval_cli.evaluate_run(finished_run, data, out_name=f"same-{stage}", **kwargs)
        written = (Path(summary["meta"]["out_dir"]) / eval_cli.PREDICTIONS).read_text()
        run_lines = [line for line in lines if json.loads(line)["stage"] == stage]
        assert len(run_lines) == len(items) == config.data.eval_limit
        assert written.splitlines() == run_lines, stage


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str], message: str) -> None:
    assert cli.main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_clear_errors(finished_run: Path, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    write_jsonl(good, [{"id": "a", "section": "math", "category": "arithmetic",
                        "difficulty": "easy", "prompt": "1+1?", "answer": "2"}])
    _fails(["--run-dir", str(tmp_path / "nope"), "--data", str(good)], capsys, "does not exist")
    empty = tmp_path / "empty_run"
    empty.mkdir()
    _fails(["--run-dir", str(empty), "--data", str(good)], capsys, "config.yaml does not exist")
    shutil.copy(finished_run / "config.yaml", empty / "config.yaml")
    _fails(["--run-dir", str(empty), "--data", str(good)], capsys, "no complete SFT checkpoint")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "1+1?"}\n')
    _fails(["--run-dir", str(finished_run), "--data", str(bad)], capsys, "bad.jsonl:1: missing field")
    _fails(["--run-dir", str(finished_run), "--data", str(tmp_path / "missing.jsonl")], capsys,
           "no such file")
    _fails(["--run-dir", str(finished_run), "--data", str(good), "--out-name", "../x"], capsys,
           "--out-name")
    assert cli.main(["eval", "--run-dir", str(finished_run)]) == 2  # --data is required
    capsys.readouterr()
    assert not (finished_run / "eval" / "good").exists()


def test_an_earlier_evaluation_in_the_output_folder_is_refused_before_the_model_loads(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kaggle_lib.config import load_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(load_config(CONFIG).to_yaml())
    data = tmp_path / "items.jsonl"
    write_jsonl(data, [{"id": "a", "section": "math", "category": "arithmetic",
                        "difficulty": "easy", "prompt": "1+1?", "answer": "2"}])
    earlier = run_dir / "eval" / "items-baseline"
    earlier.mkdir(parents=True)
    summary = {"meta": {"model_weights": "base", "stage": "baseline", "checkpoint_step": None,
                        "eval_data": str(data)}}
    (earlier / eval_cli.SUMMARY).write_text(json.dumps(summary))
    _fails(["--run-dir", str(run_dir), "--data", str(data), "--model", "base"], capsys,
           f"{earlier} already holds an earlier evaluation's results of the base model (stage "
           f"baseline) on {data} (eval_summary.json); choose another "
           "--out-name, or pass --overwrite to replace them")
    assert json.loads((earlier / eval_cli.SUMMARY).read_text()) == summary


def test_module_entry_point_routes_to_eval(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kaggle_lib", "eval", "--run-dir", str(tmp_path / "missing"),
         "--data", str(tmp_path / "x.jsonl")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "eval: error: run directory" in result.stderr


def test_relative_run_dir_as_docs_show_it(finished_run: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`eval --run-dir evidence/runs/<id>` (relative) works: Orbax needs absolute paths."""
    trained = _by_stage(finished_run, "trained")
    first = sorted(trained)[0]
    data = finished_run.parent / "one.jsonl"
    write_jsonl(data, [{k: trained[first][k] for k in scoring.ITEM_FIELDS}])
    monkeypatch.chdir(finished_run.parent)
    assert cli.main(["eval", "--run-dir", finished_run.name, "--data", "one.jsonl"]) == 0
    [record] = runner.read_predictions(finished_run / "eval" / "one" / eval_cli.PREDICTIONS)
    assert record["output"] == trained[first]["output"]


def test_eval_model_base_scores_the_untrained_weights(finished_run: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    trained = _by_stage(finished_run, "trained")
    baseline = _by_stage(finished_run, "baseline")
    ids = sorted(baseline)[:6]
    assert any(trained[i]["output"] != baseline[i]["output"] for i in ids), \
        "training changed none of these outputs; the test could not tell the models apart"
    data = tmp_path / "items.jsonl"
    write_jsonl(data, [{k: baseline[i][k] for k in scoring.ITEM_FIELDS} for i in ids])

    assert cli.main(["eval", "--run-dir", str(finished_run), "--data", str(data),
                          "--model", "base", "--batch-size", "4"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = finished_run / "eval" / "items-baseline"
    records = runner.read_predictions(out / eval_cli.PREDICTIONS)
    # The untrained weights reproduce the run's own baseline outputs, not the trained ones.
    assert [r["output"] for r in records] == [baseline[i]["output"] for i in ids]
    assert {r["stage"] for r in records} == {"baseline"}
    summary = json.loads((out / eval_cli.SUMMARY).read_text())
    assert summary["trained"] is None and summary["baseline"] == scoring.scorecard(records)
    assert summary["meta"]["restored"] == "none" and summary["meta"]["checkpoint"] is None
    card = summary["baseline"]
    assert last["n"] == 6 and last["model"] == "base" and last["stage"] == "baseline"
    assert last["accuracy"] == card["overall"]["accuracy"]
    assert last["format_exact"] == card["overall"]["format_exact"]
    correct = sum(r["correct"] for r in records)
    assert last["ci95"] == pytest.approx(list(scoring.wilson_interval(correct, 6)))
    assert last["out_dir"] == str(out)

    # --few-shot: the few-shot prompt, its own stage and folder.
    assert cli.main(["eval", "--run-dir", str(finished_run), "--data", str(data),
                          "--model", "base", "--few-shot", "--limit", "2"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["stage"] == "baseline_fewshot" and last["n"] == 2
    fewshot = runner.read_predictions(finished_run / "eval" / "items-baseline_fewshot"
                                  / eval_cli.PREDICTIONS)
    assert [r["stage"] for r in fewshot] == ["baseline_fewshot"] * 2
    assert all(r["output"].count("</answer>") <= 1 for r in fewshot)


def test_run_record_holds_zero_and_few_shot_baselines(finished_run: Path) -> None:
    summary = json.loads((finished_run / "eval_summary.json").read_text())
    zero, few = _by_stage(finished_run, "baseline"), _by_stage(finished_run, "baseline_fewshot")
    assert set(zero) == set(few) == set(_by_stage(finished_run, "trained"))
    assert summary["baseline_fewshot"] == scoring.scorecard(few.values())
    # The delta is taken against whichever baseline scored higher.
    cards = {name: summary[name] for name in scoring.BASELINES}
    assert summary["delta_against"] == scoring.better_baseline(cards)
    reference = summary[summary["delta_against"]]["overall"]["accuracy"]
    assert summary["delta"]["overall"]["accuracy"] == pytest.approx(
        summary["trained"]["overall"]["accuracy"] - reference)
    manifest = json.loads((finished_run / "run_manifest.json").read_text())
    assert "baseline_fewshot_accuracy" in manifest["metrics"]


def test_eval_step_scores_an_earlier_checkpoint(finished_run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # A learning curve scores several checkpoints of one run: --step picks one (cpu_tiny keeps
    # steps 2 and 4); a step that is not a complete checkpoint is refused, naming those that are.
    trained = _by_stage(finished_run, "trained")
    data = tmp_path / "two.jsonl"
    write_jsonl(data, [{k: trained[i][k] for k in scoring.ITEM_FIELDS} for i in sorted(trained)[:2]])
    _fails(["--run-dir", str(finished_run), "--data", str(data), "--step", "3"], capsys,
           "--step 3: no complete SFT checkpoint of that step")
    _fails(["--run-dir", str(finished_run), "--data", str(data), "--step", "2", "--model", "base"],
           capsys, "goes with --model trained only")
    assert cli.main(["eval", "--run-dir", str(finished_run), "--data", str(data), "--step", "2",
                     "--out-name", "step2"]) == 0
    meta = json.loads((finished_run / "eval" / "step2" / eval_cli.SUMMARY).read_text())["meta"]
    assert meta["checkpoint_step"] == 2 and meta["restored"] == "lora"
    assert meta["checkpoint"].endswith("/sft/2")
