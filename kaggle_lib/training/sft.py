"""Supervised fine-tuning on Tunix's PeftTrainer: LoRA (qwix) or full weights.

Read top to bottom: build the optimizer, wrap the model with LoRA, make the trainer with our
chunked loss and hooks, train, return what happened. Tunix owns the step, the Orbax checkpoints
(restored automatically from the run's checkpoint directory) and skipping already-trained batches
on resume; this module adds the schedule, the loss, per-step metrics, the non-finite guard and the
wall-clock stop.

Guarantees (tests/test_training_sft.py, tests/test_training_nan.py):
- Same seed, same data -> same losses, on one device or any (fsdp, tp) mesh, in any process:
  the LoRA init is seeded, the batch order is a pure function of (seed, step).
- A run killed after checkpoint K and started again continues at step K + 1 with the losses an
  uninterrupted run has. Checkpoints: every `checkpoint_every` steps, on stopping, and (Orbax's
  own rule) the first step of a fresh run.
- A NaN/inf loss or weight raises `NonFiniteLossError` naming the step; no checkpoint of that
  step or any later one exists.
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
import optax
from flax import nnx

from kaggle_lib.errors import KaggleLibError
from kaggle_lib.training import checkpoints
from kaggle_lib.training.loss import sft_loss

log = logging.getLogger(__name__)


class NonFiniteLossError(KaggleLibError, FloatingPointError):
    """The loss (or the weights after the update) became NaN/inf at `step`; that step and every
    later one were never checkpointed."""

    hint = (
        "Lower train.sft.learning_rate, keep max_grad_norm set, check the data for empty "
        "responses; the last good checkpoint is listed below and `resume: auto` continues from "
        "it."
    )

    def __init__(self, step: int, loss: float, params_finite: bool = True):
        what = (f"loss became {loss}" if not math.isfinite(loss)
                else "the updated weights became non-finite")
        super().__init__(f"{what} at step {step}; training stopped there (no checkpoint of step "
                         f"{step} or later was written)")
        self.step = step
        self.loss = loss
        self.params_finite = params_finite


@dataclasses.dataclass
class SftResult:
    steps_done: int
    start_step: int
    stopped_reason: str  # "max_steps" | "max_wall_time" | "data_exhausted"
    losses: list[float]
    checkpoint_dir: str | None
    last_checkpoint_step: int | None
    seconds: float
    # Checkpoint steps moved aside because they did not restore (training.checkpoints.SetAside).
    set_aside: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def lr_schedule(learning_rate: float, max_steps: int, warmup_steps: int = 0) -> optax.Schedule:
    """Linear warmup then cosine decay to 10%. Optimizer step s (1-based) uses schedule(s - 1)."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0 if warmup_steps else learning_rate,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=max(max_steps, warmup_steps + 1),
        end_value=learning_rate * 0.1,
    )


def make_optimizer(
    *, learning_rate: float, max_steps: int, warmup_steps: int = 0, optimizer: str = "adamw",
    weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
) -> optax.GradientTransformation:
    """`lr_schedule`; gradient clipping; AdamW or Adafactor. The LR is an injected hyperparameter
    so that it is part of the checkpointed optimizer state."""
    schedule = lr_schedule(learning_rate, max_steps, warmup_steps)

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


@functools.cache
def make_trainer_class() -> type:
    """Tunix's PeftTrainer plus a non-finite guard that never lets a bad step be checkpointed.

    Tunix keeps up to two steps in flight and logs losses a step late, after that step may
    already be saved. Each step here also returns whether the updated trainable weights are
    finite (a finite loss can still come with an update that overflows the weights). Finished
    steps are checked as they complete, without waiting; before a step that will be
    checkpointed, and at the end, the check waits for every pending step.
    """
    import jax.numpy as jnp
    from tunix.sft.metrics_logger import Mode
    from tunix.sft.peft_trainer import PeftTrainer

    class GuardedPeftTrainer(PeftTrainer):
        def __init__(self, *args: Any, checkpoint_every: int = 1, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.checkpoint_every = checkpoint_every
            self._pending_checks: list[tuple[int, jax.Array, jax.Array]] = []

        def _train_step(self, model: nnx.Module, optimizer: nnx.Optimizer,
                        inputs: Any) -> tuple[Any, Any, Any]:
            loss, aux, grad_norm = super()._train_step(model, optimizer, inputs)
            trainable = nnx.state(model, nnx.LoRAParam if self._lora_enabled else nnx.Param)
            finite = [jnp.isfinite(x).all() for x in jax.tree.leaves(trainable)]
            aux = {**(aux or {}), "loss": loss, "params_finite": jnp.stack(finite).all()}
            return loss, aux, grad_norm

        def _post_process_train_step(self, aux: Any) -> None:
            pending = self._pending_checks
            step = self._train_steps + 1  # the optimizer step this (micro) batch belongs to
            pending.append((step, aux["loss"], aux["params_finite"]))
            accum = self.config.get_with_default("gradient_accumulation_steps", 1)
            completes_step = (self._iter_steps + 1) % accum == 0
            self.check_finite(wait=completes_step and self._will_save(step))

        def _will_save(self, step: int) -> bool:
            # Step-interval saves, plus Orbax's save of the first step of a fresh run.
            if self.config.checkpoint_root_directory is None:
                return False
            return step % self.checkpoint_every == 0 or self.checkpoint_manager.latest_step() is None

        def _may_update_pbar(self, metrics: list[str], step: int | None = None,
                             loss: Any = None) -> None:
            # Tunix's body, except the LR: Tunix shows the mean of all logged LRs rounded to 3
            # decimals (any LR below 5e-4 reads 0); the bar gets the latest, 3 significant digits.
            if self._pbar is not None:
                self._pbar.update_metrics(metrics, self._mode, ndigits=3)
                key = f"{self.metrics_prefix}_{self._mode}_learning_rate"
                if key in self._pbar.metrics:
                    history = self.metrics_logger.get_metric_history(
                        self.metrics_prefix, "learning_rate", self._mode)
                    self._pbar.metrics[key] = float(f"{float(history[-1]):.3g}")
                self._pbar.update()
            if self.training_hooks and self._mode == Mode.TRAIN:
                self.training_hooks.on_train_step_end(self, step, loss)

        def check_finite(self, wait: bool) -> None:
            """Raise NonFiniteLossError for the first bad pending step (waiting if `wait`)."""
            pending = self._pending_checks
            while pending:
                step, loss, ok = pending[0]
                if not wait and not (loss.is_ready() and ok.is_ready()):
                    return
                pending.pop(0)
                value, finite = float(jax.device_get(loss)), bool(jax.device_get(ok))
                if not (math.isfinite(value) and finite):
                    raise NonFiniteLossError(step, value, params_finite=finite)

    return GuardedPeftTrainer


class NoopHooks:
    """tunix.sft.hooks.TrainingHooks with every callback a no-op; subclasses override what they use."""

    def on_train_start(self, trainer: Any) -> None:
        pass

    def on_train_end(self, trainer: Any) -> None:
        pass

    def on_train_step_start(self, trainer: Any) -> None:
        pass

    def on_eval_step_start(self, trainer: Any) -> None:
        pass

    def on_eval_step_end(self, trainer: Any, eval_loss: float) -> None:
        pass

    def on_train_step_end(self, trainer: Any, step: int, loss: float) -> None:
        pass


class _StepHooks(NoopHooks):
    """Per-step metrics into the run record, progress, and the wall-clock stop."""

    def __init__(self, on_step: Callable[[dict[str, Any]], None], tokens_per_step: Callable[[int], int],
                 max_wall_time_s: float | None, schedule: optax.Schedule):
        self.on_step = on_step
        self.tokens_per_step = tokens_per_step
        self.max_wall_time_s = max_wall_time_s
        self.schedule = schedule
        self.started = time.monotonic()
        # When each optimizer step was dispatched, and when training ended: step k took
        # dispatch(k + 1) - dispatch(k) (the last one: end - dispatch(k)). Tunix calls
        # on_train_step_end a step late, and for the last step only after close() work, so
        # the time between those calls is not the step's.
        self.dispatched: dict[int, float] = {}
        self.ended: float | None = None
        self.stopped_for_time = False
        self.losses: list[float] = []

    # tunix.sft.hooks.TrainingHooks interface
    def on_train_start(self, trainer: Any) -> None:
        self.started = time.monotonic()

    def on_train_step_start(self, trainer: Any) -> None:
        accum = trainer.config.get_with_default("gradient_accumulation_steps", 1)
        if trainer.iter_steps % accum == 0:  # the first micro-batch of optimizer step k
            self.dispatched[trainer.train_steps + 1] = time.monotonic()

    def on_train_end(self, trainer: Any) -> None:
        # Tunix has waited for every dispatched step by now.
        self.ended = time.monotonic()
        # Before Tunix's close() saves the last checkpoint: every pending step must be finite.
        trainer.check_finite(wait=True)

    def step_time(self, step: int) -> float:
        began = self.dispatched.get(step)
        finished = self.dispatched.get(step + 1, self.ended)
        if began is None or finished is None:
            return 0.0
        return finished - began

    def on_train_step_end(self, trainer: Any, step: int, loss: float) -> None:
        now = time.monotonic()
        step_time = self.step_time(int(step))
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
            # Tunix logs the LR of the optimizer state when it writes the (late) metrics, i.e.
            # the next step's; the schedule gives the one this step used.
            "learning_rate": float(self.schedule(step - 1)),
            "grad_norm": latest("grad_norm"),
            "step_time_s": round(step_time, 4),
            "tokens": tokens,
            "tokens_per_s": round(tokens / step_time, 2) if step_time > 0 else None,
            "elapsed_s": round(now - self.started, 3),
        })
        if self.max_wall_time_s is not None and now - self.started >= self.max_wall_time_s:
            # PeftTrainer stops before its next step once train_steps >= max_steps; its close()
            # then saves a checkpoint of the last finished step.
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
    on_set_aside: Callable[[Any], None] = lambda entry: None,
) -> SftResult:
    """Train `model` in place on `batches` for `max_steps` optimizer steps.

    `batches` must be re-iterable from step 0 with a fixed order (e.g. `SFTBatches`): on resume
    Tunix restores the latest checkpoint in `checkpoint_dir` and skips the batches already
    trained. Stops early, with a checkpoint, once `max_wall_time_s` has passed; raises
    `NonFiniteLossError` (with no checkpoint of the bad step) if the loss or weights go NaN/inf.
    A newest checkpoint that does not restore (or lacks its optimizer state) is moved to
    `<checkpoint_dir>/corrupt/` first (`on_set_aside` hears of it) and training resumes from the
    step before; `checkpoints.CheckpointError` when none restores.
    """
    import orbax.checkpoint as ocp
    from tunix.sft.peft_trainer import TrainingConfig

    schedule = lr_schedule(learning_rate, max_steps, warmup_steps)
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

    def step_tokens(step_index: int) -> int:
        # One optimizer step consumes grad_accum_steps batches.
        if tokens_per_step is None:
            return 0
        first = step_index * grad_accum_steps
        return sum(tokens_per_step(i) for i in range(first, first + grad_accum_steps))

    hooks = _StepHooks(on_step, step_tokens, max_wall_time_s, schedule)
    started = time.monotonic()
    with mesh:
        # Constructing the trainer restores the latest checkpoint (LoRA weights + optimizer):
        # first make sure the latest one restores.
        _, set_aside = checkpoints.resume_from_newest_restorable(
            checkpoint_dir, checkpoints.restore_probe(checkpoint_dir, model, tx), on_set_aside)
        trainer = make_trainer_class()(model, tx, training_config, checkpoint_every=checkpoint_every)
        start_step = trainer.train_steps
        if start_step:
            log.info("resuming SFT from checkpoint step %d", start_step)
        trainer.with_loss_fn(_loss_with_chunk(loss_chunk_size), has_aux=True)
        trainer.with_gen_model_input_fn(functools.partial(model_inputs, pad_id=pad_id))
        trainer.with_training_hooks(hooks)
        try:
            trainer.train(batches)
        except BaseException:
            # Let pending async saves (all of good steps) finish; the failing step is never saved.
            trainer.checkpoint_manager.close()
            trainer.metrics_logger.close()
            raise
        steps_done = trainer.train_steps
    if hooks.stopped_for_time:
        reason = "max_wall_time"
    elif steps_done >= max_steps:
        reason = "max_steps"
    else:
        reason = "data_exhausted"
    return SftResult(
        steps_done=steps_done, start_step=start_step, stopped_reason=reason,
        losses=list(hooks.losses), checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
        last_checkpoint_step=latest_checkpoint_step(checkpoint_dir),
        seconds=time.monotonic() - started,
        set_aside=[entry.to_dict() for entry in set_aside],
    )


def latest_checkpoint_step(checkpoint_dir: Path | str | None) -> int | None:
    """Highest complete step in an Orbax checkpoint root (the rule of `training.checkpoints`)."""
    return checkpoints.latest_complete_step(checkpoint_dir)
