"""Run the configured training stages in order (SFT, then GRPO) for a pipeline Run."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from kaggle_lib import auth, distributed
from kaggle_lib.models.remat import remat


def checkpoint_dir(run: Any, stage: str) -> Path:
    """The run's own checkpoint directory (on Kaggle the run dir is under /kaggle/working)."""
    return run.run_dir / "checkpoints" / stage


def _seed_from_previous(resume_from: str, target: Path) -> int | None:
    """Copy the complete steps of a previous run's checkpoints into this run (inputs on Kaggle
    are read-only, and the record of each run stays self-contained); returns the newest.
    Whether it restores is checked with the run's own steps before training (`checkpoints`):
    every complete step is copied, so that a newest step that does not restore is set aside
    for the previous one, as on a resume in place."""
    from kaggle_lib.training import checkpoints

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


def record_set_aside(run: Any, stage: str) -> Any:
    """A callback that lists a checkpoint step moved aside in the manifest at once (so that a
    failing run records it too); failure_analysis.md reads the list from there."""

    def note(entry: Any) -> None:
        listed = list(run.record.read_manifest().get("checkpoints_set_aside") or [])
        listed.append({"stage": stage, **entry.to_dict()})
        run.record.update_manifest(checkpoints_set_aside=listed)
        print(f"checkpoint {stage} step {entry.step} set aside to {entry.path}: {entry.reason}")

    return note


def _training_log(run: Any, line: str) -> None:
    if not distributed.is_writer():  # process 0 keeps the run's training log
        return
    with (run.run_dir / "training_log.txt").open("a") as fh:
        fh.write(auth.redact(line) + "\n")


def data_fingerprint(tokenized: Any) -> str:
    """sha256 over every example's tokens and loss mask: two runs with the same config trained
    on the same data exactly when these match (the shipped data files can be regenerated)."""
    digest = hashlib.sha256()
    for tokens, mask in zip(tokenized.tokens, tokenized.loss_masks, strict=True):
        digest.update(np.asarray(tokens, np.int32).tobytes())
        digest.update(np.asarray(mask, np.int32).tobytes())
    return digest.hexdigest()


def run_sft_stage(run: Any, max_wall_time_s: float | None = None) -> dict[str, Any]:
    """LoRA/full SFT of `run.loaded.model` in place; checkpoints in the run's own directory."""
    from kaggle_lib.data.batching import SFTBatches, padding_stats, tokenize_items
    from kaggle_lib.data.datasets import load_items
    from kaggle_lib.training.sft import apply_lora, run_sft

    cfg = run.cfg
    sft = cfg.train.sft
    loaded = run.loaded
    items = load_items(cfg.data.train, limit=cfg.data.train_limit)
    # An example cut before its answer would teach the model to stop mid-reasoning: drop it
    # (the count is in the manifest's data.n_dropped).
    tokenized = tokenize_items(loaded.tokenizer, items, cfg.data.max_seq_len,
                               instruct=loaded.spec.instruct, drop_truncated=True)
    buckets = tuple(cfg.data.length_buckets or length_buckets(cfg.data.max_seq_len))
    # Several processes: each builds only its rows; the global batch is assembled on devices.
    rows = distributed.local_rows(sft.batch_size, run.mesh) if distributed.is_multiprocess() else None
    batches = SFTBatches(tokenized, sft.batch_size, seed=cfg.seed, length_buckets=buckets,
                         pad_id=loaded.tokenizer.pad_id(), rows=rows)
    padding = padding_stats(tokenized.lengths, sft.batch_size, cfg.data.max_seq_len,
                            seed=cfg.seed, length_buckets=buckets)
    stats = {**tokenized.summary(), "tokens_sha256": data_fingerprint(tokenized),
             "length_buckets": list(buckets),
             "padding_fraction_fixed": round(padding["fixed"], 4),
             "padding_fraction_bucketed": round(padding["bucketed"], 4)}
    run.record.update_manifest(data={"train": cfg.data.train, "train_items": len(items), **stats})
    print(f"data: {len(items)} training items -> {len(tokenized.tokens)} examples; padding "
          f"{padding['fixed']:.1%} (pad to max_len) -> {padding['bucketed']:.1%} (length buckets "
          f"{list(buckets)})")

    def tokens_per_step(step: int) -> int:
        indices = batches.indices_at(step)
        return int(tokenized.lengths[indices].sum())

    if sft.mode == "lora" and not getattr(run, "lora_applied", False):
        loaded.model = apply_lora(loaded.model, rank=sft.lora.rank, alpha=sft.lora.alpha,
                                  target_modules=sft.lora.target_modules, mesh=run.mesh, seed=cfg.seed)
    ckpt_dir = checkpoint_dir(run, "sft")
    if distributed.is_writer():  # the checkpoint directory is shared: process 0 prepares it
        if cfg.train.resume == "never" and ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        if cfg.train.resume_from:
            step = _seed_from_previous(cfg.train.resume_from, ckpt_dir)
            print(f"resume: continuing from step {step} of {cfg.train.resume_from}")
    distributed.barrier("sft_checkpoints_ready")

    def on_step(record: dict[str, Any]) -> None:
        run.record.log_metrics(record)
        if record["step"] % cfg.train.log_every == 0 or record["step"] == sft.max_steps:
            _training_log(run, (
                f"sft step {record['step']:>5}/{sft.max_steps} loss {record['loss']:.4f} "
                f"lr {record['learning_rate'] or 0:.2e} grad_norm {record['grad_norm'] or 0:.3f} "
                f"{record['step_time_s']:.2f}s/step {record['tokens_per_s'] or 0:.0f} tok/s"))
        _note_checkpoint(run, ckpt_dir)

    started = time.monotonic()
    with remat(loaded.model, cfg.train.remat):  # train.remat: recompute activations
        try:
            result = run_sft(
                loaded.model,
                distributed.GlobalBatches(batches, run.mesh, sft.batch_size) if rows is not None else batches,
                mesh=run.mesh, max_steps=sft.max_steps,
                learning_rate=sft.learning_rate, warmup_steps=sft.warmup_steps,
                optimizer=sft.optimizer, weight_decay=sft.weight_decay,
                max_grad_norm=sft.max_grad_norm, grad_accum_steps=sft.grad_accum_steps,
                loss_chunk_size=sft.loss_chunk_size, checkpoint_dir=ckpt_dir,
                checkpoint_every=cfg.train.checkpoint_every,
                keep_checkpoints=cfg.train.keep_checkpoints, max_wall_time_s=max_wall_time_s,
                on_step=on_step, tokens_per_step=tokens_per_step,
                log_dir=run.run_dir / "tensorboard" if cfg.evidence.tensorboard else None,
                wandb=cfg.evidence.wandb, run_name=cfg.run_name, pad_id=loaded.tokenizer.pad_id(),
                on_set_aside=record_set_aside(run, "sft"),
            )
        finally:
            # Also on failure: failure_analysis.md names the last good checkpoint.
            _note_checkpoint(run, ckpt_dir)
    losses = result.losses
    summary = {
        "steps": result.steps_done, "start_step": result.start_step,
        "stopped_reason": result.stopped_reason, "seconds": round(time.monotonic() - started, 2),
        "checkpoint_dir": result.checkpoint_dir, "last_checkpoint_step": result.last_checkpoint_step,
        "loss_first10_mean": _mean(losses[:10]), "loss_last10_mean": _mean(losses[-10:]),
        "mode": sft.mode, "checkpoints_set_aside": len(result.set_aside),
    }
    print(f"sft: {summary}")
    return summary


def _note_checkpoint(run: Any, ckpt_dir: Path) -> None:
    from kaggle_lib.training.sft import latest_checkpoint_step

    step = latest_checkpoint_step(ckpt_dir)
    if step is not None:
        run.last_checkpoint = str(ckpt_dir / str(step))


def length_buckets(max_len: int) -> tuple[int, ...]:
    """Default row lengths: 1/2, 3/4 and all of max_len (multiples of 16). Each distinct length is
    one XLA compilation of the train step, so few shapes; most reasoning examples fall in the top
    half of max_len, where these buckets keep padding low."""
    half = max(16, (max_len // 2 + 15) // 16 * 16)
    three_quarters = max(half, (max_len * 3 // 4 + 15) // 16 * 16)
    return tuple(sorted({half, three_quarters, max_len}))


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 5) if values else None


def run_stages(run: Any) -> dict[str, Any]:
    """The configured stages in order. train.max_wall_time bounds them all together, counted
    from here: each stage gets what the previous ones left."""
    results: dict[str, Any] = {}
    budget = run.cfg.train.max_wall_time_s
    started = time.monotonic()

    def remaining() -> float | None:
        return None if budget is None else max(0.0, budget - (time.monotonic() - started))

    for name in run.cfg.train.stages:
        if name == "sft":
            results["sft"] = run_sft_stage(run, max_wall_time_s=remaining())
        elif name == "grpo":
            from kaggle_lib.training.grpo import run_grpo_stage

            results["grpo"] = run_grpo_stage(run, max_wall_time_s=remaining())
        run.record.update_manifest(training={name: results[name]})
    from kaggle_lib import report

    report.plot_loss(run)
    return results
