"""What SFT and GRPO share: the optimizer and its LR schedule, Tunix's metrics options, a hooks
base class, and the checkpoint settings and resume check both trainers go through."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx
from metrax.logging.tensorboard_backend import TensorboardBackend
from tunix.sft.hooks import TrainingHooks
from tunix.sft.metrics_logger import MetricsLoggerOptions

from kaggle_lib.training import checkpoints


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """Where a trainer keeps its Orbax checkpoints (None: no checkpoints) and how often."""

    directory: Path | None = None
    every: int = 50  # save every N optimizer steps (train.checkpoint_every)
    keep: int = 3  # newest N kept (train.keep_checkpoints)

    def orbax_options(self) -> ocp.CheckpointManagerOptions:
        # Step-based saving (Tunix defaults to every 180 s): resume points are reproducible.
        return ocp.CheckpointManagerOptions(save_interval_steps=self.every, max_to_keep=self.keep)


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    """Tunix's metric backends: TensorBoard under `log_dir`; W&B only when `wandb` is asked."""

    log_dir: Path | None = None
    wandb: bool = False
    run_name: str = "run"


def lr_schedule(learning_rate: float, max_steps: int, warmup_steps: int = 0,
                kind: str = "cosine", decay_fraction: float = 0.2) -> optax.Schedule:
    """The LR of optimizer step s (1-based) is schedule(s - 1). Linear warmup, then ``cosine``
    decay to 10% at ``max_steps``, or ``wsd`` (warmup-stable-decay): the peak until the last
    ``decay_fraction`` of the steps, then linear decay to 10% (a short run spends most steps at
    the peak, not a third of them below half of it as with cosine)."""
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup_steps else learning_rate,
            peak_value=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=max(max_steps, warmup_steps + 1),
            end_value=learning_rate * 0.1,
        )
    if kind != "wsd":
        raise ValueError(f"lr_schedule: kind must be cosine or wsd, got {kind!r}")
    decay_steps = max(1, round(max_steps * decay_fraction))
    stable_steps = max(0, max_steps - warmup_steps - decay_steps)
    pieces = [optax.constant_schedule(learning_rate),
              optax.linear_schedule(learning_rate, learning_rate * 0.1, decay_steps)]
    boundaries = [warmup_steps + stable_steps]
    if warmup_steps:
        pieces.insert(0, optax.linear_schedule(0.0, learning_rate, warmup_steps))
        boundaries.insert(0, warmup_steps)
    return optax.join_schedules(pieces, boundaries)


def make_optimizer(
    *, learning_rate: float, max_steps: int, warmup_steps: int = 0, optimizer: str = "adamw",
    weight_decay: float = 0.0, max_grad_norm: float | None = 1.0, schedule_kind: str = "cosine",
) -> optax.GradientTransformation:
    """`lr_schedule`; gradient clipping; AdamW or Adafactor. The LR is an injected hyperparameter
    so that it is part of the checkpointed optimizer state."""
    schedule = lr_schedule(learning_rate, max_steps, warmup_steps, schedule_kind)

    def build(learning_rate: Any) -> optax.GradientTransformation:
        if optimizer == "adafactor":
            # Factored second moments: ~no optimizer memory for full fine-tuning of 2B models.
            opt = optax.adafactor(learning_rate=learning_rate,
                                  weight_decay_rate=weight_decay or None)
        else:
            opt = optax.adamw(learning_rate=learning_rate, b1=0.9, b2=0.99,
                              weight_decay=weight_decay)
        parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
        return optax.chain(*parts, opt)

    return optax.inject_hyperparams(build)(learning_rate=schedule)


def metrics_options(settings: MetricsSettings | None) -> MetricsLoggerOptions | None:
    """TensorBoard in the run dir; W&B only when asked (Tunix turns it on whenever importable)."""
    if settings is None or settings.log_dir is None:
        return None
    log_dir = str(settings.log_dir)
    factories: list[Callable[[], Any]] = [
        functools.partial(TensorboardBackend, log_dir=log_dir, flush_every_n_steps=10)]
    if settings.wandb:
        # Imported only when asked: importing wandb is what makes Tunix start it.
        from metrax.logging.wandb_backend import WandbBackend

        factories.append(functools.partial(WandbBackend, project="kaggle-lib",
                                           name=settings.run_name))
    return MetricsLoggerOptions(log_dir=log_dir, backend_kwargs={"custom_backend": factories})


class StageHooks(TrainingHooks):
    """Tunix's `TrainingHooks` with every callback a no-op; subclasses override what they use."""

    def on_train_start(self, train_ctx: Any) -> None: ...
    def on_train_end(self, train_ctx: Any) -> None: ...
    def on_train_step_start(self, train_ctx: Any) -> None: ...
    def on_train_step_end(self, train_ctx: Any, train_step: int, train_loss: float) -> None: ...
    def on_eval_step_start(self, train_ctx: Any) -> None: ...
    def on_eval_step_end(self, train_ctx: Any, eval_loss: float) -> None: ...

    @staticmethod
    def latest_metric(trainer: Any, name: str) -> float | None:
        """The newest logged value of a train metric (e.g. grad_norm), None if never logged."""
        logger, prefix = trainer.metrics_logger, trainer.metrics_prefix
        if not logger.metric_exists(prefix, name, "train"):
            return None
        return float(np.asarray(logger.get_metric_history(prefix, name, "train")[-1]))


def make_newest_checkpoint_restorable(
    root: Path | None, model: nnx.Module, tx: optax.GradientTransformation, mesh: jax.sharding.Mesh,
    on_set_aside: Callable[[checkpoints.SetAside], None],
) -> list[checkpoints.SetAside]:
    """Before a Tunix trainer is built (it restores its newest step then): set aside newest steps
    that do not restore into `model` and `tx` (`training.checkpoints`' rule)."""
    if root is None:
        return []
    with mesh:
        _, removed = checkpoints.resume_from_newest_restorable(
            root, checkpoints.restore_probe(root, model, tx), on_set_aside)
    return removed
