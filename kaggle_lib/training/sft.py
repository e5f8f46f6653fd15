"""Supervised fine-tuning on Tunix's PeftTrainer: LoRA (qwix) or full weights.

Tunix owns the step, the Orbax checkpoints and skipping trained batches on resume; this module
adds the schedule, the loss, per-step metrics, the non-finite guard and the wall-clock stop.
Guarantees (tests/integration/test_training_sft.py, tests/unit/test_training_nan.py): same seed
and data -> same losses on any mesh or process count; a run killed after checkpoint K resumes at
K + 1 with an uninterrupted run's losses; a NaN/inf loss or weight raises `NonFiniteLossError`
and no checkpoint of that step or a later one exists; a stop signal (SIGTERM, SIGINT) dispatches
no further step, saves the last one and raises `Interrupted` (tests/unit/test_stop_signals.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import qwix
from flax import nnx
from tunix.sft import utils as sft_utils
from tunix.sft.peft_trainer import TrainingConfig

from kaggle_lib import runtime
from kaggle_lib.compat.lora_backward import lora_matmul_gradients
from kaggle_lib.compat.trainer import CheckedPeftTrainer
from kaggle_lib.config import SftSection
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.models.loader import shard_model
from kaggle_lib.training import checkpoints
from kaggle_lib.training.common import (
    CheckpointSettings,
    MetricsSettings,
    StageHooks,
    lr_schedule,
    make_newest_checkpoint_restorable,
    make_optimizer,
    metrics_options,
)
from kaggle_lib.training.loss import sft_loss

log = logging.getLogger(__name__)


class NonFiniteLossError(KaggleLibError, FloatingPointError):
    """The loss or updated weights became NaN/inf at `step`; no later checkpoint exists."""

    hint = ("Lower train.sft.learning_rate, keep max_grad_norm set, check the data for empty "
            "responses; the last good checkpoint is listed below and `resume: auto` continues "
            "from it.")

    def __init__(self, step: int, loss: float, params_finite: bool = True):
        what = (f"loss became {loss}" if not math.isfinite(loss)
                else "the updated weights became non-finite")
        super().__init__(f"{what} at step {step}; training stopped there (no checkpoint of step "
                         f"{step} or later was written)")
        self.step, self.loss, self.params_finite = step, loss, params_finite


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
    # (train step, mean validation loss) of each validation pass, step 0 first.
    validation: list[tuple[int, float]] = dataclasses.field(default_factory=list)


def apply_lora(model: nnx.Module, *, rank: int, alpha: float, target_modules: str, seed: int = 0,
               mesh: jax.sharding.Mesh | None = None) -> nnx.Module:
    """Wrap matching linear layers with LoRA adapters (qwix); only nnx.LoRAParam then trains."""
    provider = qwix.LoraProvider(module_path=target_modules, rank=rank, alpha=alpha)
    lora_model = qwix.apply_lora_to_model(model, provider, rngs=nnx.Rngs(params=seed),
                                          **model.get_model_input())
    n_lora = sum(x.size for x in jax.tree.leaves(nnx.state(lora_model, nnx.LoRAParam)))
    if n_lora == 0:
        raise ValueError(
            f"train.sft.lora.target_modules = {target_modules!r} matched no module of the model; "
            "check the module names (e.g. '.*attn.*|.*mlp.*')")
    return lora_model if mesh is None else shard_model(lora_model, mesh)


def packed_positions_and_mask(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positions restarting at 0 with each example of a packed row, and the causal mask [B, T, T]
    keeping each example to itself; padding (segment id 0) attends to nothing."""
    length = segment_ids.shape[-1]
    index = jnp.arange(length, dtype=jnp.int32)
    starts = jnp.concatenate([jnp.ones_like(segment_ids[:, :1], dtype=bool),
                              segment_ids[:, 1:] != segment_ids[:, :-1]], axis=-1)
    first = jax.lax.cummax(jnp.where(starts, index, 0), axis=segment_ids.ndim - 1)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = index[:, None] >= index[None, :]
    return index - first, same & causal & (segment_ids[:, None, :] > 0)


def model_inputs(batch: dict[str, Any], pad_id: int = 0) -> dict[str, Any]:
    """Positions and causal mask from the padding mask (Tunix) or a packed batch's segment ids."""
    tokens = batch["input_tokens"]
    if "segment_ids" in batch:
        positions, mask = packed_positions_and_mask(jnp.asarray(batch["segment_ids"]))
    else:
        segment = batch.get("segment_mask")
        if segment is None:
            segment = tokens != pad_id
        positions = sft_utils.build_positions_from_mask(segment)
        mask = sft_utils.make_causal_attn_mask(segment)
    return {"input_tokens": tokens, "input_mask": batch["input_mask"], "positions": positions,
            "attention_mask": mask}


def _loss_with_chunk(chunk_size: int) -> Callable[..., Any]:
    # nnx.value_and_grad resolves keyword arguments by signature: no functools.partial here.
    def loss_fn(model: nnx.Module, input_tokens: jax.Array, input_mask: jax.Array,
                positions: jax.Array, attention_mask: jax.Array) -> tuple[jax.Array, Any]:
        return sft_loss(model, input_tokens, input_mask, positions, attention_mask,
                        chunk_size=chunk_size)

    return loss_fn


class GuardedPeftTrainer(CheckedPeftTrainer):
    """Tunix's PeftTrainer plus a non-finite guard: each step's loss and weights flag is checked
    once ready, and waited for before a step that will be saved, so no bad step is saved."""

    def __init__(self, *args: Any, checkpoint_every: int = 1, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.checkpoint_every = checkpoint_every
        self._pending_checks: list[tuple[int, jax.Array, jax.Array]] = []

    def on_train_step_dispatched(self, step: int, loss: jax.Array, params_finite: jax.Array,
                                 completes_step: bool) -> None:
        self._pending_checks.append((step, loss, params_finite))
        if completes_step and runtime.stop_requested():
            # A stop signal: no step after this one is dispatched; close() saves this one.
            runtime.at_step_boundary()
            self.config.max_steps = min(self.config.max_steps, step)
        # Wait before a step that will be saved: step-interval saves, plus Orbax's save of the
        # first step of a fresh run.
        self.check_finite(wait=completes_step and self.config.checkpoint_root_directory is not None
                          and (step % self.checkpoint_every == 0
                               or self.checkpoint_manager.latest_step() is None))

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


class _StepHooks(StageHooks):
    """Per-step metrics into the run record, progress, and the wall-clock stop."""

    def __init__(self, on_step: Callable[[dict[str, Any]], None],
                 tokens_per_step: Callable[[int], int], max_wall_time_s: float | None,
                 schedule: optax.Schedule):
        self.on_step, self.tokens_per_step = on_step, tokens_per_step
        self.max_wall_time_s, self.schedule = max_wall_time_s, schedule
        self.started = time.monotonic()
        # Step k took dispatch(k + 1) - dispatch(k) (the last: end - dispatch(k)): Tunix calls
        # on_train_step_end a step late (the last after close() work), so not its interval.
        self.dispatched: dict[int, float] = {}
        self.ended: float | None = None
        self.stopped_for_time, self.eval_batches = False, 0
        self.losses: list[float] = []
        self.validation: list[tuple[int, float]] = []

    def on_train_start(self, trainer: Any) -> None:
        self.started = time.monotonic()

    def on_eval_step_start(self, trainer: Any) -> None:
        self.eval_batches += 1

    def on_eval_step_end(self, trainer: Any, eval_loss: float) -> None:
        # Tunix calls this once per validation pass with the sum of its batch losses.
        mean = float(np.asarray(eval_loss)) / max(self.eval_batches, 1)
        self.validation.append((int(trainer.train_steps), mean))
        self.on_step({"stage": "sft_validation", "step": int(trainer.train_steps),
                      "val_loss": mean, "batches": self.eval_batches})
        self.eval_batches = 0

    def on_train_step_start(self, trainer: Any) -> None:
        accum = trainer.config.get_with_default("gradient_accumulation_steps", 1)
        if trainer.iter_steps % accum == 0:  # the first micro-batch of optimizer step k
            self.dispatched[trainer.train_steps + 1] = time.monotonic()

    def on_train_end(self, trainer: Any) -> None:
        # Tunix has waited for every dispatched step by now.
        self.ended = time.monotonic()
        # Before Tunix's close() saves the last checkpoint: every pending step must be finite.
        trainer.check_finite(wait=True)

    def on_train_step_end(self, trainer: Any, step: int, loss: float) -> None:
        now = time.monotonic()
        began = self.dispatched.get(int(step))
        finished = self.dispatched.get(int(step) + 1, self.ended)
        step_time = 0.0 if began is None or finished is None else finished - began
        loss = float(loss)
        self.losses.append(loss)
        tokens = self.tokens_per_step(step - 1)
        self.on_step({
            "stage": "sft", "step": int(step), "loss": loss,
            # Tunix logs the LR of the optimizer state when it writes the (late) metrics, i.e.
            # the next step's; the schedule gives the one this step used.
            "learning_rate": float(self.schedule(step - 1)),
            "grad_norm": self.latest_metric(trainer, "grad_norm"),
            "step_time_s": round(step_time, 4), "tokens": tokens,
            "tokens_per_s": round(tokens / step_time, 2) if step_time > 0 else None,
            "elapsed_s": round(now - self.started, 3),
        })
        if self.max_wall_time_s is not None and now - self.started >= self.max_wall_time_s:
            # PeftTrainer stops before its next step once train_steps >= max_steps; its close()
            # then saves a checkpoint of the last finished step.
            self.stopped_for_time = True
            trainer.config.max_steps = trainer.train_steps


def run_sft(
    model: nnx.Module, batches: Iterable[Any], sft: SftSection, *, mesh: jax.sharding.Mesh,
    validation_batches: Iterable[Any] | None = None,
    checkpointing: CheckpointSettings | None = None, metrics: MetricsSettings | None = None,
    max_wall_time_s: float | None = None, pad_id: int = 0,
    tokens_per_step: Callable[[int], int] | None = None,
    on_step: Callable[[dict[str, Any]], None] = lambda record: None,
    on_set_aside: Callable[[checkpoints.SetAside], None] = lambda entry: None,
) -> SftResult:
    """Train `model` in place for `sft.max_steps` steps. `batches` must re-iterate from step 0 in
    a fixed order: on resume Tunix restores the latest checkpoint and skips trained batches.
    Stops, with a checkpoint, after `max_wall_time_s`. `validation_batches`: mean loss before
    step 1 and every `sft.validate_every` steps, as "sft_validation" records to `on_step`."""
    checkpointing = checkpointing or CheckpointSettings()
    max_steps, accum = sft.max_steps, sft.grad_accum_steps
    schedule = lr_schedule(sft.learning_rate, max_steps, sft.warmup_steps, sft.lr_schedule)
    tx = make_optimizer(
        learning_rate=sft.learning_rate, max_steps=max_steps, warmup_steps=sft.warmup_steps,
        optimizer=sft.optimizer, weight_decay=sft.weight_decay, max_grad_norm=sft.max_grad_norm,
        schedule_kind=sft.lr_schedule)
    checkpoint_dir = checkpointing.directory
    training_config = TrainingConfig(
        eval_every_n_steps=sft.validate_every if validation_batches is not None else max_steps + 1,
        max_steps=max_steps, gradient_accumulation_steps=accum if accum > 1 else None,
        checkpoint_root_directory=str(checkpoint_dir) if checkpoint_dir else None,
        checkpointing_options=checkpointing.orbax_options(),
        metrics_logging_options=metrics_options(metrics), pbar_description="SFT")

    def step_tokens(step_index: int) -> int:
        # One optimizer step consumes grad_accum_steps batches.
        if tokens_per_step is None:
            return 0
        return sum(tokens_per_step(i) for i in range(step_index * accum, (step_index + 1) * accum))

    hooks = _StepHooks(on_step, step_tokens, max_wall_time_s, schedule)
    started = time.monotonic()
    # Constructing the trainer restores the latest checkpoint (LoRA weights + optimizer):
    # first make sure the latest one restores.
    set_aside = make_newest_checkpoint_restorable(checkpoint_dir, model, tx, mesh, on_set_aside)
    # lora_matmul_gradients: the LoRA backward as plain products (a 1.3x faster CPU step).
    with mesh, lora_matmul_gradients():
        trainer = GuardedPeftTrainer(model, tx, training_config,
                                     checkpoint_every=checkpointing.every)
        start_step = trainer.train_steps
        if start_step:
            log.info("resuming SFT from checkpoint step %d", start_step)
        trainer.with_loss_fn(_loss_with_chunk(sft.loss_chunk_size), has_aux=True)
        trainer.with_gen_model_input_fn(functools.partial(model_inputs, pad_id=pad_id))
        trainer.with_training_hooks(hooks)
        try:
            with runtime.stop_at_step_boundary():
                trainer.train(batches, validation_batches)
        except BaseException:
            # Let pending async saves (all of good steps) finish; the failing step is never saved.
            trainer.checkpoint_manager.close()
            trainer.metrics_logger.close()
            raise
        steps_done = trainer.train_steps
    last_saved = checkpoints.latest_complete_step(checkpoint_dir)
    runtime.raise_if_stopped(f"SFT stopped after step {steps_done} of {max_steps}; newest "
                             f"complete checkpoint: step {last_saved}")
    # The wall-time stop may land on the last step (the hook sees each step late): not early.
    reason = ("max_steps" if steps_done >= max_steps
              else "max_wall_time" if hooks.stopped_for_time else "data_exhausted")
    return SftResult(
        steps_done=steps_done, start_step=start_step, stopped_reason=reason,
        losses=list(hooks.losses), checkpoint_dir=str(checkpoint_dir) if checkpoint_dir else None,
        last_checkpoint_step=last_saved,
        seconds=time.monotonic() - started,
        set_aside=[entry.to_dict() for entry in set_aside], validation=list(hooks.validation))
