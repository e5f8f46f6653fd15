"""The learning-rate schedules of `training.common.lr_schedule` (optimizer step s uses s - 1)."""

from __future__ import annotations

import pytest

from kaggle_lib.training.common import lr_schedule


def test_wsd_holds_the_peak_then_decays_linearly_over_the_last_fifth() -> None:
    schedule = lr_schedule(1.0, 100, 10, "wsd")
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(0.5)            # warmup
    assert float(schedule(10)) == float(schedule(80)) == 1.0   # stable: 70 steps at the peak
    assert float(schedule(90)) == pytest.approx(0.55)          # halfway down to 10%
    assert float(schedule(100)) == pytest.approx(0.1)


def test_wsd_spends_more_steps_near_the_peak_than_cosine() -> None:
    def above_half(kind: str) -> int:
        schedule = lr_schedule(1.0, 60, 5, kind)
        return sum(float(schedule(s)) >= 0.5 for s in range(60))

    assert above_half("wsd") > above_half("cosine") + 10


def test_unknown_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="cosine or wsd"):
        lr_schedule(1.0, 10, 0, "linear")
