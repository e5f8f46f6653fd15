"""Supervised fine-tuning on Tunix's PeftTrainer: LoRA (qwix) or full weights.

Read top to bottom: build the optimizer, wrap the model with LoRA, make the trainer with our
chunked loss and hooks, train, return what happened. Tunix owns the step, the Orbax checkpoints
(restored automatically from the run's checkpoint directory) and skipping already-trained batches
on resume; this module adds the schedule, the loss, per-step metrics, the non-finite guard and the
wall-clock stop.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx

from kaggle_lib.training.loss import sft_loss

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf; training stopped before that step was checkpointed."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"loss became {loss} at step {step}; training stopped at that step")
        self.step = step
        self.loss = loss


@dataclasses.dataclass
class SftResult:
    steps_done: int
    start_step: int
    stopped_reason: str  # "max_steps" | "max_wall_time" | "data_exhausted"
    losses: list[float]
    checkpoint_dir: str | None
    last_checkpoint_step: int | None
    seconds: float


def make_optimizer(
    *, learning_rate: float, max_steps: int, warmup_steps: int = 0, optimizer: str = "adamw",
    weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """Warmup then cosine decay; clipping; AdamW or Adafactor. The LR is an injected hyperparam
    so Tunix logs it every step."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(max_steps, warmup_steps + 1),
        end_value=learning_rate * 0.1,
    )

    def build(learning_rate: Any) -> optax.GradientTransformation:
        if optimizer == "adafactor":
            # Factored second moments: ~no optimizer memory for full fine-tuning of 2B models.
            opt = optax.adafactor(learning_rate=learning_rate, weight_decay_rate=weight_decay or None)
        else:
            opt = optax.adamw(learning_rate=learning_rate, b1=0.9, b2=0.99, weight_decay=weight_decay)
        parts = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
        return optax.chain(*parts, opt)

    return optax.inject_hyperparams(build)(learning_rate=schedule)


def apply_lora(model: nnx.Module, *, rank: int, alpha: float, target_modules: str, seed: int = 0,
               mesh: Any = None) -> nnx.Module:
    """Wrap matching linear layers with LoRA adapters (qwix); only nnx.LoRAParam then trains."""
    import qwix

    provider = qwix.LoraProvider(module_path=target_modules, rank=rank, alpha=alpha)
    lora_model = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(params=seed),
                                          **model.get_model_input())
    n_lora = sum(x.size for x in jax.tree.leaves(nnx.state(lora_model, nnx.LoRAParam)))
    if n_lora == 0:
        raise ValueError(
            f"train.sft.lora.target_modules = {target_modules!r} matched no module of the model; "
            "check the module names (e.g. '.*attn.*|.*mlp.*')"
        )
    if mesh is not None:
        from kaggle_lib.models.loader import shard_model

        lora_model = shard_model(lora_model, mesh)
    return lora_model


def model_inputs(batch: dict[str, Any], pad_id: int = 0) -> dict[str, Any]:
    """Positions and causal attention mask from the padding mask (Tunix's own helpers)."""
    from tunix.sft import utils as sft_utils

    tokens = batch["input_tokens"]
    segment = batch.get("segment_mask")
    if segment is None:
        segment = tokens != pad_id
    return {
        "input_tokens": tokens,
        "input_mask": batch["input_mask"],
        "positions": sft_utils.build_positions_from_mask(segment),
        "attention_mask": sft_utils.make_causal_attn_mask(segment),
    }


def _metrics_options(log_dir: Path | None, wandb: bool, run_name: str) -> Any:
    """TensorBoard in the run dir; W&B only when asked (Tunix turns it on whenever importable)."""
    from metrax.logging.tensorboard_backend import TensorboardBackend
    from tunix.sft.metrics_logger import MetricsLoggerOptions

    if log_dir is None:
        return None
    factories: list[Callable[[], Any]] = [
        functools.partial(TensorboardBackend, log_dir=str(log_dir), flush_every_n_steps=10)
    ]
    if wandb:
        from metrax.logging.wandb_backend import WandbBackend

        factories.append(functools.partial(WandbBackend, project="kaggle-lib", name=run_name))
    return MetricsLoggerOptions(log_dir=str(log_dir), backend_kwargs={"custom_backend": factories})


def _loss_with_chunk(chunk_size: int) -> Callable[..., Any]:
    # nnx.value_and_grad resolves keyword arguments by signature: no functools.partial here.
    def loss_fn(model: nnx.Module, input_tokens: jax.Array, input_mask: jax.Array,
                positions: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, dict[str, Any]]:
        return sft_loss(model, input_tokens, input_mask, positions, attention_mask,
                        chunk_size=chunk_size)

    return loss_fn


def make_trainer_class() -> type:
    """PeftTrainer with a synchronous non-finite check (Tunix logs losses one step late, after
    that step may already be checkpointed)."""
    from tunix.sft.peft_trainer import PeftTrainer

    class GuardedPeftTrainer(PeftTrainer):
        def _post_process_train_step(self, aux: Any) -> None:
            loss = float(jax.device_get(aux["loss"]))
            if not math.isfinite(loss):
                raise NonFiniteLossError(self._train_steps + 1, loss)

    return GuardedPeftTrainer


class _StepHooks:
    """Per-step metrics into the run record, progress, and the wall-clock stop."""

    def __init__(self, on_step: Callable[[dict[str, Any]], None], tokens_per_step: Callable[[int], int],
                 max_wall_time_s: float | None, max_steps: int):
        self.on_step = on_step
        self.tokens_per_step = tokens_per_step
        self.max_wall_time_s = max_wall_time_s
        self.max_steps = max_steps
        self.started = time.monotonic()
        self.last = self.started
        self.stopped_for_time = False
        self.losses: list[float] = []

    # tunix.sft.hooks.TrainingHooks interface
    def on_train_start(self, trainer: Any) -> None:
        self.started = self.last = time.monotonic()

    def on_train_end(self, trainer: Any) -> None:
        pass

    def on_train_step_start(self, trainer: Any) -> None:
        pass

    def on_eval_step_start(self, trainer: Any) -> None:
        pass

    def on_eval_step_end(self, trainer: Any, eval_loss: float) -> None:
        pass

    def on_train_step_end(self, trainer: Any, step: int, loss: float) -> None:
        now = time.monotonic()
        step_time = now - self.last
        self.last = now
        logger = trainer.metrics_logger
        prefix = trainer.metrics_prefix

        def latest(name: str) -> float | None:
            if not logger.metric_exists(prefix, name, "train"):
                return None
            return float(logger.get_metric_history(prefix, name, "train")[-1])

        loss = float(loss)
        self.losses.append(loss)
        tokens = self.tokens_per_step(step - 1)
        self.on_step({
            "stage": "sft",
            "step": int(step),
            "loss": loss,
            "learning_rate": latest("learning_rate"),
            "grad_norm": latest("grad_norm"),
            "step_time_s": round(step_time, 4),
            "tokens": tokens,
            "tokens_per_s": round(tokens / step_time, 2) if step_time > 0 else None,
            "elapsed_s": round(now - self.started, 3),
        })
        if self.max_wall_time_s is not None and now - self.started >= self.max_wall_time_s:
            # PeftTrainer stops before its next step once train_steps >= max_steps, then saves.
            self.stopped_for_time = True
            trainer.config.max_steps = trainer.train_steps


def run_sft(
    model: nnx.Module,
    batches: Any,
    *,
    mesh: Any,
    max_steps: int,
    learning_rate: float,
    warmup_steps: int = 0,
    optimizer: str = "adamw",
    weight_decay: float = 0.0,
    max_grad_norm: float | None = 1.0,
    grad_accum_steps: int = 1,
    loss_chunk_size: int = 512,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 50,
    keep_checkpoints: int = 3,
    max_wall_time_s: float | None = None,
    on_step: Callable[[dict[str, Any]], None] = lambda record: None,
    tokens_per_step: Callable[[int], int] | None = None,
    log_dir: Path | None = None,
    wandb: bool = False,
    run_name: str = "run",
    pad_id: int = 0,
) -> SftResult:
    """Train `model` in place on `batches` (an iterable of numpy batch dicts, restartable)."""
    import orbax.checkpoint as ocp
    from tunix.sft.peft_trainer import TrainingConfig

    tx = make_optimizer(
        learning_rate=learning_rate, max_steps=max_steps, warmup_steps=warmup_steps,
        optimizer=optimizer, weight_decay=weight_decay, max_grad_norm=max_grad_norm,
    )
    training_config = TrainingConfig(
        eval_every_n_steps=max_steps + 1,
        max_steps=max_steps,
        gradient_accumulation_steps=grad_accum_steps if grad_accum_steps > 1 else None,
        checkpoint_root_directory=str(checkpoint_dir) if checkpoint_dir else None,
        # Step-based saving (Tunix defaults to every 180 s): resume points are reproducible.
        checkpointing_options=ocp.CheckpointManagerOptions(
            save_interval_steps=checkpoint_every, max_to_keep=keep_checkpoints
        ),
        metrics_logging_options=_metrics_options(log_dir, wandb, run_name),
        pbar_description="SFT",
    )
    trainer_cls = make_trainer_class()

    def step_tokens(step_index: int) -> int:
        # One optimizer step consumes grad_accum_steps batches.
        if tokens_per_step is None:
            return 0
        first = step_index * grad_accum_steps
        return sum(tokens_per_step(i) for i in range(first, first + grad_accum_steps))

    hooks = _StepHooks(on_step, step_tokens, max_wall_time_s, max_steps)
    started = time.monotonic()
    with mesh:
        trainer = trainer_cls(model, tx, training_config)
        start_step = trainer.train_steps
        if start_step:
            log.info("resuming SFT from checkpoint step %d", start_step)
        trainer = trainer.with_loss_fn(_loss_with_chunk(loss_chunk_size), has_aux=True)
        trainer = trainer.with_gen_model_input_fn(functools.partial(model_inputs, pad_id=pad_id))
        trainer.with_training_hooks(hooks)
        try:
            trainer.train(batches)
        except BaseException:
            # Pending async saves are of good steps (the failing step is never saved).
            trainer.checkpoint_manager.close()
            raise
        steps_done = trainer.train_steps
    last_ckpt = None
    if checkpoint_dir is not None and Path(checkpoint_dir).is_dir():
        steps = [int(p.name) for p in Path(checkpoint_dir).iterdir() if p.name.isdigit()]
        last_ckpt = max(steps) if steps else None
    if hooks.stopped_for_time:
        reason = "max_wall_time"
    elif steps_done >= max_steps:
        reason = "max_steps"
    else:
        reason = "data_exhausted"
    return SftResult(
        steps_done=steps_done, start_step=start_step, stopped_reason=reason,
        losses=[float(x) for x in np.asarray(hooks.losses)], checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
        last_checkpoint_step=last_ckpt, seconds=time.monotonic() - started,
    )
