"""Samples reuse the evaluation's generations when a second decode would repeat them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_lib.config import load_config
from kaggle_lib.evaluation.runner import reused_samples

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml"
GENERATIONS = [f"generation {n}" for n in range(6)]  # of 6 eval items, in item order


def _reused(generations: list | None = GENERATIONS, **sample: object) -> list | None:
    cfg = load_config(CONFIG)
    cfg = cfg.model_copy(update={"sample": cfg.sample.model_copy(update={
        "max_new_tokens": cfg.eval.max_new_tokens, "temperature": 0.0, **sample})})
    return reused_samples(cfg.sample, cfg.eval.max_new_tokens, generations)


def test_default_samples_are_the_first_evaluation_outputs() -> None:
    assert _reused() == ["generation 0", "generation 1", "generation 2", "generation 3"]


@pytest.mark.parametrize("change", [{"prompts": ["Why?"]}, {"temperature": 0.7},
                                    {"max_new_tokens": 7}])
def test_other_sample_settings_generate_anew(change: dict) -> None:
    assert _reused(**change) is None


def test_no_evaluation_yet_generates_anew() -> None:
    assert _reused(None) is None
