"""Samples reuse the evaluation's generations when a second decode would repeat them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_lib import pipeline
from kaggle_lib.config import load_config

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml"


def _run(**sample: object) -> pipeline.Run:
    cfg = load_config(CONFIG)
    cfg = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={
        "max_new_tokens": cfg.eval.max_new_tokens, "temperature": 0.0, **sample})})
    items = [{"id": f"i{n}", "prompt": f"question {n}"} for n in range(6)]
    run = pipeline.Run(run_id="r", run_dir=Path("."), record=None, config_path=str(CONFIG),
                       env=None, config=cfg, eval_items=items)
    run.generations["trained"] = [f"generation {n}" for n in range(6)]
    return run


def test_default_samples_are_the_first_evaluation_outputs() -> None:
    assert pipeline._samples_from_evaluation(_run(), "trained") == [
        "generation 0", "generation 1", "generation 2", "generation 3"]


@pytest.mark.parametrize("change", [{"prompts": ["Why?"]}, {"temperature": 0.7},
                                    {"max_new_tokens": 7}])
def test_other_sample_settings_generate_anew(change: dict) -> None:
    assert pipeline._samples_from_evaluation(_run(**change), "trained") is None


def test_no_evaluation_yet_generates_anew() -> None:
    assert pipeline._samples_from_evaluation(_run(), "baseline") is None
