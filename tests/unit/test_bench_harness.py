"""The benchmark harness's summary: exactly the agreed keys, computed from the measured rows."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import harness  # noqa: E402


def _sft(impl: str, batch: int, length: int, **fields: object) -> dict[str, object]:
    return {"impl": impl, "batch": batch, "length": length, "status": "ok", **fields}


def _rss(batch: int, length: int, policy: str, status: str, peak: float) -> dict[str, object]:
    return {"batch": batch, "length": length, "policy": policy, "status": status,
            "peak_rss_gib": peak}


def test_summary_has_exactly_the_agreed_keys_and_ratios() -> None:
    sft = [_sft("ours", 4, 256, real_tok_s=120.0, model_flops_per_s=30e9),
           _sft("tunix", 4, 256, real_tok_s=40.0),
           # The shipped data's 4x1024 batches fill 512-token buckets: not the RSS figure.
           _sft("ours", 4, 1024, peak_rss_gb=3.0),
           {"impl": "tunix", "batch": 4, "length": 1024, "status": "oom", "compiled_gb": 28.7}]
    generation = {"identical_to_transformers": True, "rows": [
        {"impl": "ours", "batch": 8, "tok_s_median": 60.0},
        {"impl": "transformers", "batch": 8, "tok_s_median": 30.0}]}
    rss = [_rss(4, 1024, "decoder", "ok", 5.5), _rss(4, 2048, "decoder", "ok", 7.5),
           _rss(4, 2048, "none", "oom", 3.0)]
    summary = harness.summary(sft, generation, {"peak_flop_s": 100e9}, rss)
    assert tuple(summary) == harness.SUMMARY_KEYS == (
        "sft_real_tok_s_ours", "sft_real_tok_s_tunix_4x256",
        "sft_real_tok_s_ratio_vs_tunix_4x256", "sft_4x1024_peak_rss_gb",
        "sft_4x2048_peak_rss_gb", "gen_b8_tok_s_ours", "gen_b8_tok_s_transformers",
        "gen_b8_ratio_vs_transformers", "gen_tokens_identical", "mfu")
    assert summary["sft_real_tok_s_ratio_vs_tunix_4x256"] == 3.0
    assert summary["sft_4x1024_peak_rss_gb"] == 5.5
    assert summary["sft_4x2048_peak_rss_gb"] == 7.5
    assert summary["gen_b8_ratio_vs_transformers"] == 2.0
    assert summary["gen_tokens_identical"] is True
    assert summary["mfu"] == 0.3


def test_missing_or_failed_measurements_are_none_not_invented() -> None:
    sft = [{"impl": "ours", "batch": 4, "length": 1024, "status": "oom"}]
    rss = [_rss(4, 2048, "decoder", "oom", 3.0), _rss(4, 2048, "none", "ok", 9.0)]
    summary = harness.summary(sft, {"status": "failed"}, {}, rss)
    assert summary["sft_real_tok_s_ours"] is None
    assert summary["sft_real_tok_s_ratio_vs_tunix_4x256"] is None
    assert summary["sft_4x1024_peak_rss_gb"] is None  # not run: no RSS figure to claim
    assert summary["sft_4x2048_peak_rss_gb"] is None  # oom with the setting; not another's
    assert summary["gen_tokens_identical"] is False  # never claimed without a comparison
    assert summary["mfu"] is None


def test_steady_steps_leave_out_compiles_their_echo_and_the_last_step() -> None:
    import sft_speed

    # ours at 4x256 with buckets (768, 512, 1024, 768, ...): steps 0-2 compile, step 3 holds
    # the tail of step 2's compilation, the last runs to the end of training.
    first = [True, True, True, False, False, False, False, False]
    assert sft_speed.steady_steps(first) == [4, 5, 6]
    # Tunix's recipe: one shape.
    assert sft_speed.steady_steps([True, False, False, False, False]) == [2, 3]
    # Too short to leave anything out: every step counts rather than none.
    assert sft_speed.steady_steps([True, False]) == [0, 1]


def test_ours_is_the_faster_shipped_setting_at_4x256() -> None:
    sft = [_sft("ours", 4, 256, real_tok_s=120.0, model_flops_per_s=30e9),
           _sft("ours_packed", 4, 256, real_tok_s=150.0, model_flops_per_s=36e9),
           _sft("ours_packed", 4, 1024, real_tok_s=999.0),  # another shape: not a candidate
           _sft("tunix", 4, 256, real_tok_s=50.0)]
    summary = harness.summary(sft, {}, {"peak_flop_s": 100e9})
    assert summary["sft_real_tok_s_ours"] == 150.0
    assert summary["sft_real_tok_s_ratio_vs_tunix_4x256"] == 3.0
    assert summary["mfu"] == 0.36
    assert harness.best_ours_4x256(sft)["impl"] == "ours_packed"
    assert harness.best_ours_4x256(sft[:1] + sft[3:])["impl"] == "ours"
    assert harness.best_ours_4x256(sft[3:]) == {}


def test_rss_runs_parse_and_render_side_by_side() -> None:
    import sft_rss

    runs = sft_rss.parse_runs(sft_rss.DEFAULT_RUNS)
    # Today's 4x1024 with the shipped setting next to 4x2048 with and without it.
    assert runs == [(4, 1024, "decoder"), (4, 2048, "decoder"), (4, 2048, "none")]
    assert sft_rss.run_args(4, 2048, "none", 2, "full")[1:] == [
        "--worker", "none", "--batch", "4", "--length", "2048", "--steps", "2", "--mode", "full"]
    table = sft_rss.render_table([
        {"shape": "4x2048", "policy": "decoder", "mode": "lora", "status": "ok",
         "peak_rss_gib": 7.5, "compiled_gb": 3.1, "compiled_temp_gb": 1.9},
        {"shape": "4x2048", "policy": "none", "status": "oom", "compiled_gb": 30.0}])
    assert "| 4x2048 | decoder | lora | ok | 7.5 |" in table
    assert "| 4x2048 | none | - | oom | - |" in table
