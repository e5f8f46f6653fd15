"""A NaN in training stops the run at that step, fails the record and keeps the last good checkpoint.

The run goes through the notebook's own stages (cpu_tiny + overrides). After step 2 has been
reported, one LoRA weight of the model being trained is set to NaN, as a diverging update
would; the next step's loss is then NaN.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kaggle_lib import evidence, pipeline
from kaggle_lib.training.sft import NonFiniteLossError

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml")


def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path) -> None:
    overrides = {"train.sft.max_steps": 8, "train.sft.warmup_steps": 0,
                 "train.checkpoint_every": 2, "data.train_limit": 64, "data.max_seq_len": 256,
                 "evidence.tensorboard": False}
    run = pipeline.start_run(CONFIG, overrides=overrides, run_dir=str(tmp_path / "runs" / "nan"))
    pipeline.load_model(run)

    log_metrics = run.record.log_metrics
    poisoned: list[int] = []

    def log_and_poison(record: dict) -> None:
        log_metrics(record)
        if record.get("stage") == "sft" and record["step"] == 2:
            # run.loaded.model is the LoRA-wrapped model the trainer is updating in place.
            lora_a = run.loaded.model.layers[0].mlp.down_proj.kernel_lora_a
            lora_a.value = jnp.full_like(lora_a.value, jnp.nan)
            poisoned.append(record["step"])

    run.record.log_metrics = log_and_poison
    with pytest.raises(NonFiniteLossError) as info:
        pipeline.train(run)
    assert poisoned == [2]
    # Tunix reports step s while step s+1 already runs: the poisoned weight is first read by
    # step 4, and the run stops exactly there.
    bad_step = info.value.step
    assert bad_step == 4, str(info.value)

    manifest = json.loads((run.run_dir / evidence.MANIFEST).read_text())
    assert manifest["status"] == "failed"
    assert manifest["failure"]["error_type"] == "NonFiniteLossError"
    analysis = (run.run_dir / evidence.FAILURE).read_text()
    ckpt_root = run.run_dir / "checkpoints" / "sft"
    assert "NonFiniteLossError" in analysis and f"step {bad_step}" in analysis
    assert str(ckpt_root / "2") in analysis  # named as the last good checkpoint
    steps_logged = [r["step"] for r in run.record.read_metrics() if r.get("stage") == "sft"]
    assert max(steps_logged) < bad_step

    saved = sorted(int(p.name) for p in ckpt_root.iterdir() if p.name.isdigit())
    assert saved and max(saved) == 2 < bad_step, saved
    # The last good checkpoint restores, and its weights are finite.
    from tunix.sft.checkpoint_manager import CheckpointManager

    fresh = nnx.clone(run.loaded.model)
    lora = nnx.state(fresh, nnx.LoRAParam)
    nnx.update(fresh, jax.tree.map(jnp.zeros_like, lora))
    manager = CheckpointManager(str(ckpt_root))
    step, _ = manager.maybe_restore(fresh, restore_only_lora_params=True)
    manager.close()
    assert step == 2
    restored = jax.tree.leaves(nnx.state(fresh, nnx.LoRAParam))
    assert all(bool(np.isfinite(np.asarray(x)).all()) for x in restored)
    assert any(float(np.abs(np.asarray(x)).sum()) > 0 for x in restored)  # really restored


def test_nan_on_the_first_step_leaves_no_checkpoint(tmp_path: Path) -> None:
    """Orbax saves the first step of a fresh run whatever the interval: the guard must still
    stop before that save."""
    from kaggle_lib.mesh import make_mesh
    from kaggle_lib.training.checkpoints import latest_complete_step
    from tests import training_helpers as th

    base = th.build_model(th.tiny_config())
    table = base.embedder.input_embedding
    table.value = table.value.at[5].set(jnp.nan)  # a token every batch contains
    with pytest.raises(NonFiniteLossError) as info:
        th.train_tiny(make_mesh(), base, steps=4, checkpoint_dir=tmp_path / "ckpt",
                      checkpoint_every=2)
    assert info.value.step == 1
    assert latest_complete_step(tmp_path / "ckpt") is None
    leftovers = list((tmp_path / "ckpt").iterdir()) if (tmp_path / "ckpt").exists() else []
    assert not [p for p in leftovers if p.name.isdigit()], leftovers
