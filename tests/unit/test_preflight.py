"""Memory preflight: refuse what cannot fit (with the arithmetic and alternatives), accept LoRA."""

from __future__ import annotations

import pytest

from kaggle_lib.config import validate_config
from kaggle_lib.models import preflight

ONE_16GB_TPU = {"platform": "tpu", "device_kind": "TPU v5 lite", "device_count": 1,
                "memory_per_device_bytes": 16 * 10**9}


def config(mode: str, optimizer: str = "adamw", force: bool = False, name: str = "gemma2-2b"):
    return validate_config({
        "model": {"name": name, "source": "hf"}, "force": force,
        "data": {"max_seq_len": 512},
        "train": {"sft": {"mode": mode, "optimizer": optimizer, "batch_size": 4,
                          "loss_chunk_size": 512}},
    })


def test_full_finetune_of_gemma2_2b_on_one_16gb_device_is_refused() -> None:
    with pytest.raises(preflight.PreflightError) as err:
        preflight.check(config("full"), ONE_16GB_TPU)
    text = str(err.value)
    assert "DOES NOT FIT" in text
    # Counted from Tunix's architecture (Kaggle vocabulary of 256,128 rows), not typed in.
    assert "2,614,636,800 params" in text
    assert "optimizer_state" in text and "LoRA (train.sft.mode: lora) needs" in text
    assert "8 devices (fsdp=8)" in text


def test_lora_on_the_same_device_fits_and_prints_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    report = preflight.check(config("lora"), ONE_16GB_TPU)
    assert report.fits and report.params == 2_614_636_800
    # bf16 weights on TPU: 2 bytes each
    assert report.breakdown["weights"] == pytest.approx(2_614_636_800 * 2)
    assert report.total < 0.9 * 16 * 10**9
    assert "-> fits" in report.text and "GiB / device" in report.text


def test_full_finetune_fits_when_sharded_over_eight_devices() -> None:
    eight = {**ONE_16GB_TPU, "device_count": 8}
    report = preflight.check(config("full"), eight, mesh_shape={"fsdp": 8, "tp": 1})
    assert report.fits
    one = preflight.check(config("full"), ONE_16GB_TPU, raise_on_fail=False)
    assert report.breakdown["optimizer_state"] == pytest.approx(one.breakdown["optimizer_state"] / 8)


def test_force_overrides_with_a_loud_warning() -> None:
    report = preflight.check(config("full", force=True), ONE_16GB_TPU)
    assert not report.fits and report.forced
    assert "force: true" in report.text and "!!!" in report.text


def test_adafactor_is_suggested_and_smaller() -> None:
    adamw = preflight.check(config("full"), ONE_16GB_TPU, raise_on_fail=False)
    ada = preflight.check(config("full", optimizer="adafactor"), ONE_16GB_TPU, raise_on_fail=False)
    assert ada.breakdown["optimizer_state"] < adamw.breakdown["optimizer_state"] / 50
    assert any("Adafactor" in s for s in adamw.suggestions)
