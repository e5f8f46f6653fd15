"""GRPO after SFT on Tunix 0.1.7: `RLCluster` + `GRPOLearner`, vanilla (Tunix Sampler) rollouts.

The actor is the SFT-trained model; the KL reference a frozen copy of it. Batch order and each
step's sampling seed are pure functions of (seed, step), so a resumed run (Tunix restores
`checkpoints/grpo/actor/<step>`) continues exactly. Once the wall-clock budget is spent no
rollouts are handed out and Tunix closes the learner, which saves the last step; so it is after
a stop signal (SIGTERM, SIGINT), and then `Interrupted` is raised.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx
from tunix.rl import rl_cluster as rl
from tunix.rl.grpo.grpo_learner import GRPOConfig, GRPOLearner
from tunix.rl.rollout.base_rollout import RolloutConfig

from kaggle_lib import runtime
from kaggle_lib.compat.lora_backward import lora_matmul_gradients
from kaggle_lib.config import GrpoSection
from kaggle_lib.data.template import format_prompt
from kaggle_lib.mesh import check_batch
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
from kaggle_lib.training.rewards import RewardFn, default_reward_fns

log = logging.getLogger(__name__)


@dataclasses.dataclass
class GrpoResult:
    steps_done: int
    start_step: int
    stopped_reason: str  # "max_steps" | "max_wall_time"
    rewards: list[float]  # mean reward of each step run in this process
    checkpoint_dir: str | None
    last_checkpoint_step: int | None
    seconds: float


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str  # formatted with the shared template, without <bos>
    answer: str
    # JSON of the fields reasoning-gym's scorer needs, for items that came from it; else "".
    rg_item: str = ""


class PromptBatches:
    """Deterministic, endless batches of prompts: batch s is a pure function of (seed, s)."""

    def __init__(self, prompts: Sequence[Prompt], batch_size: int, seed: int = 0):
        if len(prompts) < batch_size:
            raise ValueError(f"{len(prompts)} GRPO prompts cannot fill one batch of {batch_size}; "
                             "lower train.grpo.batch_size or add data")
        self.prompts, self.batch_size, self.seed = list(prompts), batch_size, seed
        self.steps_per_epoch = len(self.prompts) // batch_size

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        epoch, k = divmod(step, self.steps_per_epoch)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts))
        picked = [self.prompts[i] for i in order[k * self.batch_size:(k + 1) * self.batch_size]]
        # Arrays, not lists: Tunix repeats every column per generation with np.repeat.
        return {column: np.array([getattr(p, field) for p in picked], dtype=object)
                for column, field in (("prompts", "text"), ("answer", "answer"),
                                      ("rg_item", "rg_item"))}


_RG_FIELDS = ("id", "prompt", "answer", "rg_dataset", "rg_metadata")


def select_prompts(items: Sequence[dict[str, Any]], tokenizer: Any, max_prompt_len: int, *,
                   instruct: bool) -> tuple[list[Prompt], int]:
    """(kept prompts, number dropped): items longer than `max_prompt_len` tokens (+bos) drop."""
    kept, dropped = [], 0
    for i, item in enumerate(items):
        if not item.get("prompt") or item.get("answer") in (None, ""):
            raise ValueError(f"GRPO item {i} (id {item.get('id')!r}) needs 'prompt' and 'answer'")
        text = format_prompt(item["prompt"], instruct=instruct)
        if len(tokenizer.encode(text)) + 1 > max_prompt_len:
            dropped += 1
            continue
        rg_item = json.dumps({k: item[k] for k in _RG_FIELDS if k in item}) \
            if item.get("rg_dataset") else ""
        kept.append(Prompt(text=text, answer=str(item["answer"]), rg_item=rg_item))
    return kept, dropped


def _rollout_stream(batches: PromptBatches, rollout_config: Any, deadline: float | None,
                    state: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
    """Batches, each setting its step's sampling seed first (Tunix asks for one just before
    generating it); ends at the deadline, but not before the first (Tunix reads its size)."""
    step = 0
    while True:
        if step > 0 and runtime.stop_requested():  # a stop signal: the same clean end
            runtime.at_step_boundary()
            return
        if step > 0 and deadline is not None and time.monotonic() >= deadline:
            state["stopped_for_time"] = True
            return
        rollout_config.seed = batches.seed * 1_000_003 + step
        yield batches.batch_at(step)
        step += 1


class _ActorHooks(StageHooks):
    """Per-step actor loss into the run record."""

    def __init__(self, on_record: Callable[[dict[str, Any]], None], schedule: Any):
        self.on_record, self.schedule, self.last = on_record, schedule, time.monotonic()

    def on_train_step_end(self, trainer: Any, step: int, loss: float) -> None:
        now = time.monotonic()
        self.on_record({"stage": "grpo", "step": int(step), "loss": float(loss),
                        "kl": self.latest_metric(trainer, "kl"),
                        "grad_norm": self.latest_metric(trainer, "grad_norm"),
                        "learning_rate": float(self.schedule(step - 1)),
                        "step_time_s": round(now - self.last, 4)})
        self.last = now


def rewards_record(buffer: Any) -> dict[str, Any] | None:
    """One `metrics.jsonl` record from a Tunix MetricsBuffer of one GRPO step (train mode)."""
    metrics = buffer.metrics
    if str(buffer.mode) != "train" or "rewards/sum" not in metrics:
        return None

    def value(name: str) -> float | None:
        if name not in metrics:
            return None
        values, op = metrics[name]
        arr = np.asarray(values, dtype=np.float64)
        return float(op(arr) if op is not None else arr.mean())

    record: dict[str, Any] = {
        "stage": "grpo", "step": int(buffer.global_steps) + 1,
        "reward_mean": value("rewards/sum"), "reward_min": value("rewards/min"),
        "reward_max": value("rewards/max"),
        "completion_mean_tokens": value("completions/mean_length"),
    }
    for name in metrics:
        if name.startswith("rewards/") and name.count("/") == 1 and name not in (
                "rewards/sum", "rewards/mean", "rewards/min", "rewards/max"):
            record[f"reward_{name.split('/', 1)[1]}"] = value(name)
    return record


def run_grpo(
    actor: nnx.Module, tokenizer: Any, prompts: Sequence[Prompt], grpo: GrpoSection, *,
    mesh: jax.sharding.Mesh, eos_ids: Sequence[int], seed: int = 0,
    reward_fns: Sequence[RewardFn] | None = None, checkpointing: CheckpointSettings | None = None,
    metrics: MetricsSettings | None = None, max_wall_time_s: float | None = None,
    on_record: Callable[[dict[str, Any]], None] = lambda record: None,
    on_set_aside: Callable[[checkpoints.SetAside], None] = lambda entry: None,
) -> GrpoResult:
    """GRPO-train `actor` in place for `grpo.max_steps` steps, KL penalty towards a frozen copy.
    Checkpoints: `<checkpointing.directory>/actor/<step>`."""
    checkpointing = checkpointing or CheckpointSettings()
    checkpoint_dir = checkpointing.directory
    max_steps, num_iterations = grpo.max_steps, grpo.num_iterations
    max_prompt_len, max_new_tokens = grpo.max_prompt_len, grpo.max_new_tokens
    check_batch(grpo.batch_size * grpo.num_generations, mesh,
                what="train.grpo.batch_size x train.grpo.num_generations (rollouts per step)")
    if tokenizer.pad_id() < 0 or tokenizer.eos_id() < 0 or tokenizer.bos_id() < 0:
        raise ValueError("the GRPO tokenizer reports a negative bos/eos/pad id; load it with "
                         "kaggle_lib.models.tokenizer.load_tokenizer")
    if max_wall_time_s is not None and max_wall_time_s <= 0:
        log.warning("GRPO skipped: no wall-clock time left (train.max_wall_time)")
        return GrpoResult(steps_done=0, start_step=0, stopped_reason="max_wall_time", rewards=[],
                          checkpoint_dir=None, last_checkpoint_step=None, seconds=0.0)
    actor_steps = max_steps * num_iterations  # Tunix counts optimizer steps
    schedule = lr_schedule(grpo.learning_rate, actor_steps)
    # The KL reference: a frozen copy of the SFT result. nnx.clone shares the (immutable)
    # base weight arrays, so it costs no memory; only the actor's LoRA weights change.
    reference = nnx.clone(actor)
    rollout_config = RolloutConfig(
        max_tokens_to_generate=max_new_tokens, max_prompt_length=max_prompt_len,
        kv_cache_size=max_prompt_len + max_new_tokens, temperature=grpo.temperature,
        top_p=grpo.top_p, top_k=grpo.top_k, eos_tokens=[int(e) for e in eos_ids], seed=seed)
    actor_tx = make_optimizer(learning_rate=grpo.learning_rate, max_steps=actor_steps,
                              max_grad_norm=grpo.max_grad_norm)
    actor_dir = Path(checkpoint_dir) / "actor" if checkpoint_dir else None
    # The actor trainer restores its newest step on construction: make sure that one does.
    make_newest_checkpoint_restorable(actor_dir, actor, actor_tx, mesh, on_set_aside)
    training_config = rl.RLTrainingConfig(
        actor_optimizer=actor_tx, eval_every_n_steps=actor_steps + 1, max_steps=actor_steps,
        checkpoint_root_directory=str(checkpoint_dir) if checkpoint_dir else None,
        checkpointing_options=checkpointing.orbax_options(),
        metrics_logging_options=metrics_options(metrics), pbar_description="GRPO")
    cluster = rl.RLCluster(
        actor=actor, reference=reference, tokenizer=tokenizer,
        cluster_config=rl.ClusterConfig(
            role_to_mesh={rl.Role.ACTOR: mesh, rl.Role.REFERENCE: mesh, rl.Role.ROLLOUT: mesh},
            rollout_engine="vanilla", offload_to_cpu=False,
            training_config=training_config, rollout_config=rollout_config))
    rewards: list[float] = []

    def on_buffer(buffer: Any) -> None:
        record = rewards_record(buffer)
        if record is not None:
            rewards.append(record["reward_mean"])
            on_record(record)

    cluster.with_external_metrics_logger(on_buffer)
    learner = GRPOLearner(
        rl_cluster=cluster,
        algo_config=GRPOConfig(num_generations=grpo.num_generations, num_iterations=num_iterations,
                               beta=grpo.beta, epsilon=grpo.epsilon),
        reward_fns=list(reward_fns or default_reward_fns()))
    cluster.actor_trainer.with_training_hooks(_ActorHooks(on_record, schedule))
    start_step = cluster.actor_trainer.train_steps // num_iterations
    if start_step:
        log.info("resuming GRPO from checkpoint step %d", start_step)
    state: dict[str, Any] = {"stopped_for_time": False}
    deadline = None if max_wall_time_s is None else time.monotonic() + max_wall_time_s
    started = time.monotonic()
    stream = _rollout_stream(PromptBatches(prompts, grpo.batch_size, seed=seed),
                             rollout_config, deadline, state)
    # Tunix's learner checks max_steps only after a step: a finished run must not start one.
    if start_step < max_steps:
        with mesh, lora_matmul_gradients(), runtime.stop_at_step_boundary():
            learner.train(stream)
    else:
        cluster.close()
    steps_done = cluster.actor_trainer.train_steps // num_iterations
    last = checkpoints.latest_complete_step(actor_dir)
    runtime.raise_if_stopped(f"GRPO stopped after step {steps_done} of {max_steps}; newest "
                             f"complete checkpoint: actor step {last}")
    return GrpoResult(
        steps_done=steps_done, start_step=start_step,
        stopped_reason="max_wall_time" if state["stopped_for_time"] else "max_steps",
        rewards=rewards, checkpoint_dir=str(actor_dir) if actor_dir else None,
        last_checkpoint_step=None if last is None else math.ceil(last / num_iterations),
        seconds=time.monotonic() - started)
