"""Tunix's PeftTrainer with public hooks over its private step methods, and a readable LR.

Written against google-tunix 0.1.7 (orbax-checkpoint 0.12.8, optax 0.2.8). Changes:
`CheckedPeftTrainer` overrides the private `_train_step` (also reports whether the updated
trainable weights are finite), `_post_process_train_step` (hands each step's loss and that flag
to the public `on_train_step_dispatched`) and `_may_update_pbar` (reads `_pbar`, `_mode`). Goes
away when PeftTrainer has a public per-step aux hook with the step number and its progress bar
shows the latest LR; no upstream issue filed yet.
Why: Tunix keeps up to two steps in flight and logs losses a step late, after that step may be
saved; the non-finite guard (`training.sft.GuardedPeftTrainer`) needs each step's loss and
weights check (a finite loss can come with overflowing weights) as soon as it is dispatched.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from tunix.sft.metrics_logger import Mode
from tunix.sft.peft_trainer import PeftTrainer


class CheckedPeftTrainer(PeftTrainer):
    """PeftTrainer that reports every dispatched (micro-)step to `on_train_step_dispatched`."""

    def on_train_step_dispatched(self, step: int, loss: jax.Array, params_finite: jax.Array,
                                 completes_step: bool) -> None:
        """Override: (micro-)batch `iter_steps + 1` of optimizer `step` was dispatched, with its
        loss and weights-finite flag (on device) and whether it completes the step."""

    def _train_step(self, model: nnx.Module, optimizer: nnx.Optimizer,
                    inputs: Any) -> tuple[Any, Any, Any]:
        loss, aux, grad_norm = super()._train_step(model, optimizer, inputs)
        trainable = nnx.state(model, nnx.LoRAParam if self._lora_enabled else nnx.Param)
        finite = [jnp.isfinite(x).all() for x in jax.tree.leaves(trainable)]
        aux = {**(aux or {}), "loss": loss, "params_finite": jnp.stack(finite).all()}
        return loss, aux, grad_norm

    def _post_process_train_step(self, aux: Any) -> None:
        accum = self.config.get_with_default("gradient_accumulation_steps", 1)
        # Tunix counts this (micro-)batch in iter_steps/train_steps only after this call.
        self.on_train_step_dispatched(self.train_steps + 1, aux["loss"], aux["params_finite"],
                                      completes_step=(self.iter_steps + 1) % accum == 0)

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
