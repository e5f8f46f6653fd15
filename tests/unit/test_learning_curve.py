"""scripts/learning_curve.py: steps already scored are read back, training progress comes from
the run's metrics, and the table puts the baselines beside the curve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import learning_curve  # noqa: E402

from kaggle_lib.config import load_config  # noqa: E402


def _card(accuracy: float, fmt: float, n: int = 4) -> dict:
    return {"overall": {"n": n, "accuracy": accuracy, "format_exact": fmt, "format_approx": fmt,
                        "mean_tokens": 10.0, "truncation_rate": 0.0},
            "ci95": {"overall": [0.0, 0.5]}}


def test_scored_steps_are_read_back_and_tabulated_with_the_baselines(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(load_config(REPO_ROOT / "configs" / "cpu_tiny.yaml").to_yaml())
    rows = [{"stage": "eval_baseline", "seconds": 1.0},
            {"stage": "sft", "step": 1, "loss": 2.0, "tokens": 100, "elapsed_s": 3.0},
            {"stage": "sft", "step": 2, "loss": 1.5, "tokens": 120, "elapsed_s": 5.5},
            {"stage": "sft", "step": 3, "loss": 1.0, "tokens": 80, "elapsed_s": 8.0}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for step, accuracy in ((2, 0.25), (3, 0.5)):
        out = run / "eval" / f"step-{step}"
        out.mkdir(parents=True)
        (out / "eval_summary.json").write_text(json.dumps({"trained": _card(accuracy, 1.0)}))
    base = tmp_path / "base"
    base.mkdir()
    (base / "eval_summary.json").write_text(json.dumps(
        {"baseline": _card(0.0, 0.0), "baseline_fewshot": _card(0.25, 0.5), "trained": None}))

    assert learning_curve.main(["--run-dir", str(run), "--steps", "3", "2",
                                "--baselines", str(base)]) == 0
    curve = json.loads((run / "learning_curve" / "learning_curve.json").read_text())
    assert [(p["step"], p["accuracy"], p["train_seconds"], p["train_tokens"])
            for p in curve["points"]] == [(2, 0.25, 5.5, 220), (3, 0.5, 8.0, 300)]
    assert set(curve["baselines"]) == {"baseline", "baseline_fewshot"}
    table = (run / "learning_curve" / "learning_curve.md").read_text()
    assert "| baseline_fewshot |  |  | 25.0% | 0.0%-50.0% | 50.0% | 0.0% |" in table
    assert "| 3 | 8 | 300 | 50.0% |" in table
    assert (run / "learning_curve" / "learning_curve.png").stat().st_size > 0
    items = (run / "learning_curve" / "items.jsonl").read_text().splitlines()
    assert len(items) == curve["items"] > 0
