"""SFT that holds up: same losses on any mesh, exact resume after SIGKILL, clean wall-clock stop.

All runs go through `kaggle_lib.training.sft.run_sft` (Tunix PeftTrainer + our chunked loss)
with LoRA on a tiny random Gemma 3 (4 heads, 2 kv heads: tp=2 divides both), built once and
copied onto each mesh so that every run starts from the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

from kaggle_lib.mesh import make_mesh
from tests import training_helpers as th

STEPS = 5
EVERY = 2  # checkpoint interval; the resume test kills the run right after checkpoint 2


@pytest.fixture(scope="module")
def base_model() -> Any:
    return th.build_model(th.tiny_config())


@pytest.fixture(scope="module")
def reference(base_model: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """An uninterrupted run on the (8, 1) mesh: STEPS steps, checkpoints every EVERY."""
    records: list[dict[str, Any]] = []
    model, result = th.train_tiny(make_mesh(8, 1), base_model, steps=STEPS,
                                  checkpoint_dir=tmp_path_factory.mktemp("ref") / "ckpt",
                                  checkpoint_every=EVERY, on_step=records.append)
    assert result.steps_done == STEPS and result.stopped_reason == "max_steps"
    # The weights really were spread over all 8 devices.
    table = model.embedder.input_embedding.value
    assert len(table.sharding.device_set) == 8
    return {r["step"]: r for r in records}


def test_losses_equal_on_every_mesh(base_model: Any, reference: dict[int, dict]) -> None:
    single = th.train_tiny(th.single_device_mesh(), base_model, steps=3)[1].losses
    model, result = th.train_tiny(make_mesh(4, 2), base_model, steps=3)
    spec = model.embedder.input_embedding.value.sharding.spec
    assert tuple(spec) == ("tp", "fsdp")
    sharded_8x1 = [reference[s]["loss"] for s in (1, 2, 3)]
    print(f"losses single {single}\n  (8,1) {sharded_8x1}\n  (4,2) {result.losses}")
    assert np.all(np.isfinite(single)) and len(single) == 3
    # Training moved the loss, so equal losses mean equal updates, not just an equal start.
    assert single[2] != single[0]
    np.testing.assert_allclose(sharded_8x1, single, rtol=1e-4, atol=0)
    np.testing.assert_allclose(result.losses, single, rtol=1e-4, atol=0)


def _worker(ckpt: Path, metrics: Path, pause_at: int = 0) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(th.__file__)), "--ckpt", str(ckpt), "--steps", str(STEPS),
           "--every", str(EVERY), "--metrics", str(metrics)]
    if pause_at:
        cmd += ["--pause-at", str(pause_at)]
    # The session's persistent compilation cache (tests/conftest.py) comes along: the workers
    # load the train step this module's in-process runs compiled on the same mesh instead of
    # compiling it again (about 30 s each on 2 cores). It changes no numerics.
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def test_resume_after_sigkill_continues_with_the_same_losses(
    reference: dict[int, dict], tmp_path: Path
) -> None:
    ckpt, metrics = tmp_path / "ckpt", tmp_path / "metrics.jsonl"
    killed = _worker(ckpt, metrics, pause_at=EVERY)
    deadline = time.monotonic() + 300
    while not (th.checkpoint_committed(ckpt, EVERY) and (ckpt / "paused").is_file()):
        if killed.poll() is not None:
            pytest.fail(f"worker exited before checkpoint {EVERY}:\n{killed.stdout.read()}")
        if time.monotonic() > deadline:
            killed.kill()
            pytest.fail("no checkpoint within 300 s")
        time.sleep(0.05)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(30)
    assert killed.returncode == -signal.SIGKILL
    saved = sorted(int(p.name) for p in ckpt.iterdir() if p.name.isdigit())
    assert max(saved) == EVERY, saved

    resumed = _worker(ckpt, metrics)
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    assert json.loads(out.strip().splitlines()[-1]) == {"done": STEPS, "start": EVERY}

    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    second = [r for r in records if r["pid"] == resumed.pid]
    assert [r["step"] for r in second] == list(range(EVERY + 1, STEPS + 1))
    for r in second:
        ref = reference[r["step"]]
        print(f"step {r['step']}: resumed {r['loss']:.7f} uninterrupted {ref['loss']:.7f} "
              f"diff {abs(r['loss'] - ref['loss']):.2e}")
        assert abs(r["loss"] - ref["loss"]) <= 1e-5
        assert r["learning_rate"] == pytest.approx(ref["learning_rate"], rel=1e-6)
    # The killed process's own steps matched too (same start, same data order).
    first = [r for r in records if r["pid"] == killed.pid and r["step"] <= EVERY]
    assert [r["loss"] for r in first] == pytest.approx(
        [reference[r["step"]]["loss"] for r in first], abs=1e-5)


def test_max_wall_time_stops_cleanly_with_a_checkpoint(base_model: Any, tmp_path: Path) -> None:
    records: list[dict[str, Any]] = []
    _, result = th.train_tiny(make_mesh(), base_model, steps=50, checkpoint_dir=tmp_path / "ckpt",
                              checkpoint_every=100, max_wall_time_s=0.0, on_step=records.append)
    assert result.stopped_reason == "max_wall_time"
    assert 0 < result.steps_done < 50
    # checkpoint_every=100 never fired: this checkpoint is the one written on stopping.
    assert result.last_checkpoint_step == result.steps_done
    assert (tmp_path / "ckpt" / str(result.steps_done) / "commit_success.txt").is_file()
    assert [r["step"] for r in records] == list(range(1, result.steps_done + 1))
    assert jax.device_count() == 8


def test_the_run_log_says_a_stage_stopped_early_for_max_wall_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from kaggle_lib import evidence
    from kaggle_lib.config import load_config
    from kaggle_lib.training import stages

    tiny = Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml"
    record = evidence.RunRecord(tmp_path / "runs" / "r1")
    record.start("r1", "demo", str(tiny))
    config = load_config(tiny, {"train.max_wall_time": "0s"})
    inputs = stages.StageInputs(config=config, loaded=None, mesh=None,  # type: ignore[arg-type]
                                run_dir=record.run_dir, record=record)
    stopped = {"steps": 2, "stopped_reason": "max_wall_time"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(stages.STAGES, "sft", lambda inputs, max_wall_time_s: stopped)
        stages.run_stages(inputs)
    assert "sft stopped early at step 2 of 4: train.max_wall_time (0s) ran out" in caplog.text


def test_step_times_are_each_steps_own_including_the_last(
    base_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step spends >= 0.3 s on the host after its dispatch; each recorded step time,
    the last one's too, must include it (Tunix reports the last step only after its close())."""
    from kaggle_lib.training.sft import GuardedPeftTrainer as trainer_class
    original = trainer_class._post_process_train_step

    def slow_post_process(self: Any, aux: Any) -> None:
        original(self, aux)
        time.sleep(0.3)

    monkeypatch.setattr(trainer_class, "_post_process_train_step", slow_post_process)
    records: list[dict[str, Any]] = []
    th.train_tiny(th.single_device_mesh(), base_model, steps=3, on_step=records.append)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(r["step_time_s"] >= 0.3 for r in records), records


def test_progress_bar_shows_the_learning_rate_not_zero(
    base_model: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tunix rounds progress-bar metrics to 3 decimals: an LR of 3e-4 used to show as 0."""
    from tunix.sft import progress_bar

    shown: list[dict[str, Any]] = []
    original = progress_bar.ProgressBar.update

    def record_update(self: Any, n: int = 1) -> None:
        shown.append(dict(self.metrics))
        original(self, n)

    monkeypatch.setattr(progress_bar.ProgressBar, "update", record_update)
    records: list[dict[str, Any]] = []
    th.train_tiny(th.single_device_mesh(), base_model, steps=3, learning_rate=3e-4,
                  on_step=records.append)
    rates = [m["_train_learning_rate"] for m in shown if "_train_learning_rate" in m]
    assert len(rates) == 3, shown
    assert all(r > 0 for r in rates)
    # The bar shows the LR Tunix logged last (the optimizer's current one), 3 significant digits.
    assert rates[-1] == pytest.approx(3e-4, rel=0.5)


def test_validation_loss_before_training_and_every_k_steps(base_model: Any) -> None:
    """The validation pass runs before step 1 and after steps 2 and 4; its first loss is the
    untrained model's mean batch loss on the held-out batches, computed here independently."""
    from kaggle_lib.training.loss import sft_loss
    from kaggle_lib.training.sft import model_inputs

    held_out = th.tiny_batches(n_items=32, spec="builtin:eval", num_epochs=1)
    assert len(held_out) >= 2
    mesh = th.single_device_mesh()
    untrained = th.on_mesh(base_model, mesh)
    expected = np.mean([float(sft_loss(untrained, **model_inputs(batch), chunk_size=128)[0])
                        for batch in held_out])
    records: list[dict[str, Any]] = []
    _, result = th.train_tiny(mesh, base_model, steps=4, validate_every=2,
                              validation_batches=held_out, on_step=records.append)
    validation = [r for r in records if r["stage"] == "sft_validation"]
    assert [r["step"] for r in validation] == [0, 2, 4]
    assert all(r["batches"] == len(held_out) for r in validation)
    # LoRA starts as a no-op (B = 0), so step 0 is the base model's loss.
    assert validation[0]["val_loss"] == pytest.approx(expected, rel=1e-5)
    assert result.validation == [(r["step"], r["val_loss"]) for r in validation]
    assert validation[-1]["val_loss"] != validation[0]["val_loss"]
    assert [r["step"] for r in records if r["stage"] == "sft"] == [1, 2, 3, 4]


def test_packed_batches_train_through_run_sft_on_a_sharded_mesh(base_model: Any) -> None:
    """data.packing's batches go through Tunix's trainer (their segment ids sharded with the
    rest of the batch) to model_inputs: step 1's loss is the packed batch's loss computed
    here independently, and training moves it."""
    from kaggle_lib.training.loss import sft_loss
    from kaggle_lib.training.sft import model_inputs

    packed = th.tiny_batches(packing=True, max_len=512)
    first = packed.batch_at(0)
    assert first["segment_ids"].max() >= 2  # several examples share a row
    expected = float(sft_loss(base_model, **model_inputs(first), chunk_size=128)[0])
    records: list[dict[str, Any]] = []
    _, result = th.train_tiny(make_mesh(8, 1), base_model, steps=3, batches=packed,
                              on_step=records.append)
    losses = [r["loss"] for r in records if r["stage"] == "sft"]
    assert result.steps_done == 3 and len(losses) == 3
    # LoRA starts as a no-op (B = 0): step 1's loss is the base model's on the packed batch.
    assert losses[0] == pytest.approx(expected, rel=1e-5)
    assert losses[-1] < losses[0]
