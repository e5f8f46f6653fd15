"""The notebook's training stages, SFT then GRPO, as adapters from a run (`StageInputs`) to
`training.sft.run_sft` / `training.grpo.run_grpo`: they load the data, prepare the checkpoint
directory, record metrics, the training log and the manifest, and summarise. `run_stages` runs
the configured stages in order under one wall-clock budget.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from kaggle_lib import auth, logs, multihost
from kaggle_lib.compat.remat import remat
from kaggle_lib.config import RunConfig
from kaggle_lib.data.batching import (
    SFTBatches,
    TokenizedSet,
    packed_padding_fraction,
    padding_stats,
    tokenize_items,
)
from kaggle_lib.data.datasets import normalize_text
from kaggle_lib.data.sources import load_items, load_sources
from kaggle_lib.data_spec import DataError
from kaggle_lib.evidence import RunRecord, plots, readme
from kaggle_lib.models import build
from kaggle_lib.models.loader import LoadedModel
from kaggle_lib.training import checkpoints
from kaggle_lib.training.common import CheckpointSettings, MetricsSettings
from kaggle_lib.training.grpo import run_grpo, select_prompts
from kaggle_lib.training.sft import run_sft

log = logs.get_logger(__name__)


@dataclasses.dataclass
class StageInputs:
    """What a training stage takes from the run. `loaded.model` is trained in place (and
    replaced by its LoRA-wrapped self when a stage adds LoRA)."""

    config: RunConfig
    loaded: LoadedModel
    mesh: jax.sharding.Mesh
    run_dir: Path
    record: RunRecord
    # Hears the path of each newest complete checkpoint (failure_analysis.md names it).
    on_checkpoint: Callable[[str], None] = lambda path: None

    def checkpoint_dir(self, stage: str) -> Path:
        """The run's own checkpoint directory (on Kaggle the run dir is under /kaggle/working)."""
        return self.run_dir / "checkpoints" / stage

    def checkpointing(self, stage: str) -> CheckpointSettings:
        train = self.config.train
        return CheckpointSettings(self.checkpoint_dir(stage), every=train.checkpoint_every,
                                  keep=train.keep_checkpoints)

    def training_log(self, line: str) -> None:
        if multihost.is_writer():  # process 0 keeps the run's training log
            with (self.run_dir / "training_log.txt").open("a") as fh:
                fh.write(auth.redact(line) + "\n")

    def note_checkpoint(self, root: Path) -> None:
        step = checkpoints.latest_complete_step(root)
        if step is not None:
            self.on_checkpoint(str(root / str(step)))

    def add_lora(self) -> None:
        """The run's LoRA adapters on the model (`models.build.add_lora`: none in full-weights
        mode, and none added twice: several processes add them before sharding)."""
        source = self.record.read_manifest().get("config_path") or "the run's config"
        self.loaded.model = build.add_lora(self.loaded.model, build.lora_settings(self.config),
                                           seed=self.config.seed, mesh=self.mesh, source=source)


def _seed_from_previous(resume_from: str, target: Path) -> int | None:
    """Copy every complete step of a previous run's checkpoints into this run (Kaggle inputs are
    read-only; each run's record stays self-contained) -> the newest. All are copied so that a
    newest step that does not restore is set aside for the previous one, as on a resume."""
    source = Path(resume_from)
    steps = checkpoints.complete_steps(source)
    if not steps:
        found = checkpoints.finalised_steps(source)
        raise FileNotFoundError(
            f"train.resume_from = {resume_from!r} holds no complete checkpoint step (steps found: "
            f"{found or 'none'}; a complete step has model_params and optimizer_state)")
    for step in steps:
        if not (target / str(step)).exists():
            target.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source / str(step), target / str(step))
    return steps[-1]


def continued_from(resume_from: str, step: int) -> dict[str, Any]:
    """The manifest's `continued_from`: the run owning the checkpoints (its run_manifest.json two
    folders up), and the kernel version `push --continue-from` baked into the bundle info."""
    out: dict[str, Any] = {"checkpoints": resume_from, "step": step}
    with contextlib.suppress(OSError, ValueError, KeyError):
        manifest = json.loads((Path(resume_from).parents[1] / "run_manifest.json").read_text())
        out["run_id"] = manifest["run_id"]
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        cont = json.loads(Path(os.environ["KAGGLE_LIB_BUNDLE_INFO"]).read_text())["continues_from"]
        out.update(run_id=cont["run_id"], kernel_id=cont["kernel_id"], version=cont["version"])
    return out


def record_set_aside(record: RunRecord, stage: str) -> Callable[[checkpoints.SetAside], None]:
    """A callback that lists a checkpoint step moved aside in the manifest at once (so that a
    failing run records it too; failure_analysis.md reads the list from there) and in earlier
    attempts' checkpoints.json, which listed it where it was."""

    def note(entry: checkpoints.SetAside) -> None:
        listed = list(record.read_manifest().get("checkpoints_set_aside") or [])
        listed.append({"stage": stage, **entry.to_dict()})
        record.update_manifest(checkpoints_set_aside=listed)
        target = Path(entry.path)  # <root>/corrupt/<step>[-n]
        record.relist_moved_checkpoint(target.parent.parent / str(entry.step), target, entry.reason)
        log.info(f"checkpoint {stage} step {entry.step} set aside to {entry.path}: {entry.reason}")

    return note


def data_fingerprint(tokenized: TokenizedSet) -> str:
    """sha256 over every example's tokens and loss mask: two runs with the same config trained
    on the same data exactly when these match (the shipped data files can be regenerated)."""
    digest = hashlib.sha256()
    for tokens, mask in zip(tokenized.tokens, tokenized.loss_masks, strict=True):
        digest.update(np.asarray(tokens, np.int32).tobytes())
        digest.update(np.asarray(mask, np.int32).tobytes())
    return digest.hexdigest()


def run_sft_stage(inputs: StageInputs, max_wall_time_s: float | None = None) -> dict[str, Any]:
    """LoRA/full SFT of `inputs.loaded.model` in place; checkpoints in the run's own directory."""
    cfg, loaded, mesh = inputs.config, inputs.loaded, inputs.mesh
    sft = cfg.train.sft
    items, sources = load_sources(cfg.data.train, limit=cfg.data.train_limit)
    # An example cut before its answer would teach the model to stop mid-reasoning: drop it
    # (counted in the manifest's data.dropped, the console and the run's README).
    tokenized = tokenize_items(loaded.tokenizer, items, cfg.data.max_seq_len,
                               instruct=loaded.spec.instruct, drop_truncated=True)
    # Recorded at once: also when nothing is left to train on.
    inputs.record.update_manifest(data={"train": cfg.data.train, "train_items": len(items),
                                        "train_sources": sources, **tokenized.summary()})
    if not tokenized.tokens:
        raise DataError(f"data.train {cfg.data.train!r}: all {len(items)} training items are "
                        f"longer than data.max_seq_len ({cfg.data.max_seq_len} tokens); nothing "
                        "to train on: raise data.max_seq_len or use shorter items")
    buckets = tuple(cfg.data.length_buckets or length_buckets(cfg.data.max_seq_len))
    # Several processes: each builds only its rows; the global batch is assembled on devices.
    rows = multihost.local_rows(sft.batch_size, mesh) if multihost.is_multiprocess() else None
    batches = SFTBatches(tokenized, sft.batch_size, seed=cfg.seed, length_buckets=buckets,
                         pad_id=loaded.tokenizer.pad_id(), rows=rows, packing=cfg.data.packing)
    padding = padding_stats(tokenized.lengths, sft.batch_size, cfg.data.max_seq_len,
                            seed=cfg.seed, length_buckets=buckets)
    stats = {"tokens_sha256": data_fingerprint(tokenized),
             "length_buckets": list(buckets), "padding_fraction_fixed": round(padding["fixed"], 4),
             "padding_fraction_bucketed": round(padding["bucketed"], 4)}
    if cfg.data.packing:
        stats["padding_fraction_packed"] = round(packed_padding_fraction(batches), 4)
    inputs.record.update_manifest(data=stats)
    log.info(f"data: {len(items)} training items -> {len(tokenized.tokens)} examples "
             f"({tokenized.n_dropped} dropped: longer than data.max_seq_len "
             f"{cfg.data.max_seq_len} tokens); padding {padding['fixed']:.1%} (pad to max_len) "
             f"-> {padding['bucketed']:.1%} (length buckets {list(buckets)})"
             + (f"; packed: {stats['padding_fraction_packed']:.1%}, "
                f"{batches.steps_per_epoch} steps per epoch" if cfg.data.packing else ""))

    validation = validation_batches(inputs, items, buckets, rows)

    def tokens_per_step(step: int) -> int:
        return int(tokenized.lengths[batches.indices_at(step)].sum())

    inputs.add_lora()
    ckpt_dir = inputs.checkpoint_dir("sft")
    if multihost.is_writer():  # the checkpoint directory is shared: process 0 prepares it
        if cfg.train.resume == "never" and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        if cfg.train.resume_from:
            step = _seed_from_previous(cfg.train.resume_from, ckpt_dir)
            log.info(f"resume: continuing from step {step} of {cfg.train.resume_from}")
            inputs.record.update_manifest(continued_from=continued_from(cfg.train.resume_from,
                                                                        step))
    multihost.barrier("sft_checkpoints_ready")

    def on_step(record: dict[str, Any]) -> None:
        inputs.record.log_metrics(record)
        if record["stage"] == "sft_validation":
            inputs.training_log(f"sft step {record['step']:>5}/{sft.max_steps} validation loss "
                                f"{record['val_loss']:.4f} ({record['batches']} batches)")
            return
        if record["step"] % cfg.train.log_every == 0 or record["step"] == sft.max_steps:
            inputs.training_log(
                f"sft step {record['step']:>5}/{sft.max_steps} loss {record['loss']:.4f} "
                f"lr {record['learning_rate'] or 0:.2e} grad_norm {record['grad_norm'] or 0:.3f} "
                f"{record['step_time_s']:.2f}s/step {record['tokens_per_s'] or 0:.0f} tok/s")
        inputs.note_checkpoint(ckpt_dir)

    started = time.monotonic()
    with remat(loaded.model, cfg.train.remat):  # train.remat: recompute activations
        try:
            result = run_sft(
                loaded.model,
                multihost.GlobalBatches(batches, mesh, sft.batch_size) if rows is not None else batches,
                sft, mesh=mesh, checkpointing=inputs.checkpointing("sft"),
                validation_batches=validation,
                metrics=MetricsSettings(inputs.run_dir / "tensorboard", wandb=cfg.evidence.wandb,
                                        run_name=cfg.run_name) if cfg.evidence.tensorboard else None,
                max_wall_time_s=max_wall_time_s, pad_id=loaded.tokenizer.pad_id(),
                tokens_per_step=tokens_per_step, on_step=on_step,
                on_set_aside=record_set_aside(inputs.record, "sft"),
            )
        finally:
            # Also on failure: failure_analysis.md names the last good checkpoint.
            inputs.note_checkpoint(ckpt_dir)
    losses = result.losses
    return _summary(
        result, started, loss_first10_mean=_mean(losses[:10]), loss_last10_mean=_mean(losses[-10:]),
        mode=sft.mode, checkpoints_set_aside=len(result.set_aside),
        **({"validation_loss": [[step, round(loss, 5)] for step, loss in result.validation]}
           if result.validation else {}))


def validation_batches(inputs: StageInputs, train_items: list[dict[str, Any]],
                       buckets: tuple[int, ...], rows: slice | None) -> Any:
    """One epoch of batches of `data.validation` (None when the config names none): problems
    whose normalised prompt is a training prompt are dropped, so the loss is on unseen ones."""
    cfg, loaded = inputs.config, inputs.loaded
    if cfg.data.validation is None:
        return None
    seen = {normalize_text(item["prompt"]) for item in train_items}
    items = load_items(cfg.data.validation, limit=cfg.data.validation_limit)
    held_out = [item for item in items if normalize_text(item["prompt"]) not in seen]
    tokenized = tokenize_items(loaded.tokenizer, held_out, cfg.data.max_seq_len,
                               instruct=loaded.spec.instruct, drop_truncated=True)
    batch_size = cfg.train.sft.batch_size
    if len(tokenized.tokens) < batch_size:
        raise ValueError(f"config data.validation {cfg.data.validation!r}: {len(tokenized.tokens)} "
                         f"usable held-out examples, fewer than one batch of {batch_size}; raise "
                         "data.validation_limit")
    batches = SFTBatches(tokenized, batch_size, seed=cfg.seed, num_epochs=1,
                         length_buckets=buckets, pad_id=loaded.tokenizer.pad_id(), rows=rows)
    inputs.record.update_manifest(data={
        "validation": cfg.data.validation, "validation_items": len(items),
        "validation_dropped_as_training": len(items) - len(held_out),
        "validation_examples": len(tokenized.tokens), "validation_batches": len(batches)})
    log.info(f"data: {len(held_out)} validation items ({len(items) - len(held_out)} dropped as "
             f"training prompts), {len(batches)} batches every {cfg.train.sft.validate_every} steps")
    return (multihost.GlobalBatches(batches, inputs.mesh, batch_size) if rows is not None
            else batches)


def run_grpo_stage(inputs: StageInputs, max_wall_time_s: float | None = None) -> dict[str, Any]:
    """GRPO of the model in place: the SFT result (LoRA) trained further. Without an SFT stage
    before it, the model gets the run's LoRA adapters first, as SFT would add them."""
    cfg, loaded = inputs.config, inputs.loaded
    grpo = cfg.train.grpo
    # The same data.train as SFT: with reasoning-gym items in it, the answer reward scores them
    # with reasoning-gym's own scorer (rewards.py).
    items, sources = load_sources(cfg.data.train, limit=cfg.data.train_limit)
    prompts, dropped = select_prompts(items, loaded.tokenizer, grpo.max_prompt_len,
                                      instruct=loaded.spec.instruct)
    if not prompts:
        raise DataError(f"data.train {cfg.data.train!r}: all {len(items)} prompts are longer "
                        f"than train.grpo.max_prompt_len ({grpo.max_prompt_len} tokens); nothing "
                        "to train on: raise train.grpo.max_prompt_len or use shorter items")
    log.info(f"grpo: {len(prompts)} prompts ({dropped} longer than max_prompt_len "
          f"{grpo.max_prompt_len} dropped); {grpo.batch_size} x {grpo.num_generations} "
          f"rollouts of up to {grpo.max_new_tokens} tokens per step")
    inputs.record.update_manifest(data={"grpo_prompts": len(prompts), "grpo_dropped_long": dropped,
                                        "grpo_sources": sources})
    inputs.add_lora()
    ckpt_dir = inputs.checkpoint_dir("grpo")

    def on_record(record: dict[str, Any]) -> None:
        inputs.record.log_metrics(record)
        if "reward_mean" in record:
            inputs.training_log(
                f"grpo step {record['step']:>5}/{grpo.max_steps} reward {record['reward_mean']:.3f}"
                f" (min {record['reward_min']:.3f} max {record['reward_max']:.3f}) completions "
                f"{record['completion_mean_tokens'] or 0:.1f} tokens")

    started = time.monotonic()
    try:
        result = run_grpo(
            loaded.model, loaded.tokenizer.processor, prompts, grpo, mesh=inputs.mesh,
            eos_ids=loaded.eos_ids, seed=cfg.seed, checkpointing=inputs.checkpointing("grpo"),
            metrics=MetricsSettings(inputs.run_dir / "tensorboard" / "grpo", run_name="grpo")
            if cfg.evidence.tensorboard else None,
            max_wall_time_s=max_wall_time_s, on_record=on_record,
            on_set_aside=record_set_aside(inputs.record, "grpo"),
        )
    finally:
        inputs.note_checkpoint(ckpt_dir / "actor")
    rewards = result.rewards
    return _summary(result, started, prompts=len(prompts),
                    reward_first=rewards[0] if rewards else None,
                    reward_last=rewards[-1] if rewards else None,
                    reward_mean=round(float(np.mean(rewards)), 5) if rewards else None)


def length_buckets(max_len: int) -> tuple[int, ...]:
    """Default row lengths: 1/2, 3/4 and all of max_len (multiples of 16). Each distinct length is
    one XLA compilation of the train step, so few shapes; most reasoning examples fall in the top
    half of max_len, where these buckets keep padding low."""
    half = max(16, (max_len // 2 + 15) // 16 * 16)
    three_quarters = max(half, (max_len * 3 // 4 + 15) // 16 * 16)
    return tuple(sorted({half, three_quarters, max_len}))


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


def _summary(result: Any, started: float, **stage_fields: Any) -> dict[str, Any]:
    """A stage's summary for the manifest: what both trainers report, then the stage's own."""
    return {"steps": result.steps_done, "start_step": result.start_step,
            "stopped_reason": result.stopped_reason,
            "seconds": round(time.monotonic() - started, 2),
            "checkpoint_dir": result.checkpoint_dir,
            "last_checkpoint_step": result.last_checkpoint_step, **stage_fields}


# The stage list: a stage is one adapter here, one config section and its name in train.stages.
STAGES: dict[str, Callable[..., dict[str, Any]]] = {"sft": run_sft_stage, "grpo": run_grpo_stage}


def run_stages(inputs: StageInputs) -> dict[str, Any]:
    """The configured stages in order, then loss.png. train.max_wall_time bounds them all
    together, counted from here: each stage gets what the previous ones left."""
    results: dict[str, Any] = {}
    budget = inputs.config.train.max_wall_time_s
    started = time.monotonic()

    def remaining() -> float | None:
        return None if budget is None else max(0.0, budget - (time.monotonic() - started))

    for name in inputs.config.train.stages:
        results[name] = STAGES[name](inputs, max_wall_time_s=remaining())
        log.info(f"{name}: {results[name]}")
        inputs.record.update_manifest(training={name: results[name]})
        if early := readme.stopped_early(name, results[name], inputs.config.train.model_dump()):
            log.warning(f"[kaggle_lib] {early}; the run goes on with the model trained so far "
                        "(a re-run in this run directory resumes from the last checkpoint)")
    plots.plot_loss(inputs.record, inputs.run_dir.name)
    return results
