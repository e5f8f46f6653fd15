"""`python -m kaggle_lib eval` (options: `cli.py`): evaluate a finished run's model on a jsonl.

`--model trained` (default): the run's latest SFT checkpoint (`--step N`: that one, e.g. for a
learning curve), stage "trained"; `--model base`: the untrained weights it started from, stage
"baseline" ("baseline_fewshot" with `--few-shot`).
The model is rebuilt as the run built it (`models.build`, the run's `config.yaml`, its pinned HF
commit, LoRA with its seed); items go through the notebook's loop (`evaluation.runner`) into
`<run>/eval/<name>/`, which must not hold an earlier evaluation's results unless `--overwrite`.
The last line printed is one JSON object (`final_line`).
Exit status: 0 done; 2 for a missing run directory, config or checkpoint, or bad data.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

from kaggle_lib import logs
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.evaluation.runner import PREDICTIONS, SUMMARY
from kaggle_lib.evidence.lock import close_if_writer_gone

log = logs.get_logger(__name__)

MODELS = ("base", "trained")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


class EvalError(KaggleLibError, Exception):
    """A problem with the inputs of `eval` (exit status 2); the message says what to fix."""


def final_line(summary: dict[str, Any]) -> dict[str, Any]:
    """The one-line JSON result of `eval` (the stage it evaluated, overall)."""
    meta = summary["meta"]
    card = summary[meta["stage"]]
    overall = card["overall"]
    return {"n": overall["n"], "accuracy": overall["accuracy"], "ci95": card["ci95"]["overall"],
            "format_exact": overall["format_exact"], "truncation_rate": overall["truncation_rate"],
            "equations_correct_share": card["reasoning_lines"]["overall"]["share"],
            "model": meta["model_weights"], "stage": meta["stage"], "out_dir": meta["out_dir"]}


def read_run_config(run_dir: Path) -> Any:
    """The run's resolved config (`<run>/config.yaml`) as a RunConfig."""
    from kaggle_lib.config import ConfigError, read_yaml, validate_config

    if not run_dir.is_dir():
        raise EvalError(f"run directory {run_dir} does not exist")
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise EvalError(f"{path} does not exist: {run_dir} is not a run directory "
                        "(`python -m kaggle_lib run` writes config.yaml at the start of a run)")
    # Not load_config: the files it checks (training data, resume_from) are not needed here.
    try:
        return validate_config(read_yaml(path), str(path))
    except ConfigError as exc:
        raise EvalError(str(exc)) from None


def sft_checkpoint(run_dir: Path, config: Any, step: int | None = None) -> tuple[Path, int]:
    """(checkpoint root, step) of the run's SFT stage: `step`, which must be a complete one
    (a learning curve scores several), or the latest complete step."""
    stages = list(config.train.stages)
    if "sft" not in stages:
        raise EvalError(f"the run's train.stages is {stages}: there is no SFT checkpoint to load")
    if "grpo" in stages:
        # Its trained model is SFT + GRPO; evaluating the SFT weights would mislabel them.
        raise EvalError("the run also trained GRPO; eval restores SFT checkpoints only, so it "
                        "would not evaluate the run's final model")
    from kaggle_lib.training import checkpoints

    # Orbax refuses relative paths ("Checkpoint path should be absolute").
    root = Path(run_dir).absolute() / "checkpoints" / "sft"
    if step is not None:
        complete = checkpoints.complete_steps(root)
        if step not in complete:
            raise EvalError(f"--step {step}: no complete SFT checkpoint of that step under {root}; "
                            f"complete steps: {complete or 'none'} (train.checkpoint_every and "
                            "train.keep_checkpoints decide which are kept)")
        return root, step
    step = checkpoints.latest_complete_step(root)
    if step is None:
        raise EvalError(f"no complete SFT checkpoint under {root} (a complete step is finalised "
                        "by Orbax and has model_params and optimizer_state; steps found: "
                        f"{checkpoints.finalised_steps(root) or 'none'}; see train.checkpoint_every)")
    return root, step


def load_run_model(config: Any, checkpoint: tuple[Path, int] | None, revision: str | None
                   ) -> tuple[Any, Any]:
    """(the run's model, the mesh it is sharded over), built as the run built it
    (`models.build`): its base weights (`revision`: the HF commit the run recorded), and with a
    `checkpoint` (root, step) the run's LoRA adapters and that step restored."""
    from kaggle_lib import auth, runtime
    from kaggle_lib import mesh as mesh_lib
    from kaggle_lib.models import build
    from kaggle_lib.training.checkpoints import CheckpointError

    runtime.configure_platform(config.device)
    devices = runtime.describe_devices(config.device)
    try:
        mesh = mesh_lib.make_mesh(config.mesh.fsdp, config.mesh.tp)
    except mesh_lib.MeshError as exc:
        # Another machine than the run's: sharding does not change the numbers.
        log.info(f"eval: the run's mesh does not fit here ({exc}); using all devices on fsdp")
        mesh = mesh_lib.make_mesh()
    token = auth.resolve_hf_token(runtime.detect_environment().on_kaggle,
                                  required=build.hf_source(config.model)[1])
    try:
        loaded = build.build_model(
            config, platform=devices["platform"], mesh=mesh, token=token.value if token else None,
            revision=revision, lora=checkpoint is not None, checkpoint=checkpoint)
    except CheckpointError as exc:
        raise EvalError(str(exc)) from None
    return loaded, mesh


def refuse_earlier_results(out_dir: Path) -> None:
    """EvalError, naming what an earlier eval left in `out_dir`, when it holds results."""
    found = [p.name for p in (out_dir / PREDICTIONS, out_dir / SUMMARY) if p.exists()]
    if not found:
        return
    try:
        meta = json.loads((out_dir / SUMMARY).read_text()).get("meta") or {}
        step = meta.get("checkpoint_step")
        what = (f" of the {meta.get('model_weights')} model (stage {meta.get('stage')}"
                + (f", checkpoint step {step}" if step is not None else "")
                + f") on {meta.get('eval_data')}")
    except (OSError, ValueError, AttributeError):
        what = ""
    raise EvalError(f"{out_dir} already holds an earlier evaluation's results{what} "
                    f"({', '.join(found)}); choose another --out-name, or pass --overwrite to "
                    "replace them")


def evaluate_run(run_dir: str | Path, data: str | Path, *, out_name: str | None = None,
                 limit: int | None = None, max_new_tokens: int | None = None,
                 batch_size: int | None = None, model: str = "trained",
                 few_shot: bool = False, overwrite: bool = False,
                 step: int | None = None) -> dict[str, Any]:
    """Evaluate the run's SFT checkpoint `step` (default: the latest; `model="trained"`) or its
    untrained weights (`model="base"`) on `data`; returns the written summary. Results already in the output
    folder are an EvalError unless `overwrite`."""
    from kaggle_lib import evidence
    from kaggle_lib.data.datasets import DataError, load_jsonl
    from kaggle_lib.evaluation import runner

    if model not in MODELS:
        raise EvalError(f"--model {model!r} is not allowed; allowed: {', '.join(MODELS)}")
    # Absolute once, here: Orbax needs absolute paths and the outputs name where they went.
    run_dir, data = Path(run_dir).absolute(), Path(data).absolute()
    close_if_writer_gone(run_dir)
    config = read_run_config(run_dir)
    if step is not None and model != "trained":
        raise EvalError(f"--step {step} names a checkpoint; it goes with --model trained only")
    # The base weights need no checkpoint; trained ones need an SFT step (default: the latest).
    root, step = sft_checkpoint(run_dir, config, step) if model == "trained" else (None, None)
    stage = "trained" if model == "trained" else ("baseline_fewshot" if few_shot else "baseline")
    style = "few-shot" if few_shot else "zero-shot"
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    try:
        items = load_jsonl(data, limit=limit)
    except DataError as exc:
        raise EvalError(f"bad data: {exc}") from None
    # Default folder: the data file's stem, plus the stage for the untrained model, so a base
    # evaluation does not overwrite the trained one on the same file.
    default_name = data.stem if stage == "trained" else f"{data.stem}-{stage}"
    name = out_name if out_name is not None else default_name
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise EvalError(f"--out-name {name!r} is not allowed; use letters, digits, '_', '-', '.'")
    out_dir = run_dir / "eval" / name
    if not overwrite:
        refuse_earlier_results(out_dir)
    max_new = max_new_tokens if max_new_tokens is not None else config.eval.max_new_tokens
    batch = batch_size if batch_size is not None else config.eval.batch_size
    if max_new < 1 or batch < 1:
        raise EvalError(f"--max-new-tokens ({max_new}) and --batch-size ({batch}) must be >= 1")
    try:
        manifest = evidence.read_manifest(run_dir / evidence.MANIFEST)
    except ValueError:
        manifest = {}
    status = manifest.get("status")
    if status and status != "succeeded" and model == "trained":
        log.info(f"eval: warning: the run's status is {status!r}; evaluating checkpoint step {step}")

    started = time.monotonic()
    # The same weights as the run: its resolved HF commit unless the config pinned one.
    loaded, mesh = load_run_model(config, (root, step) if model == "trained" else None,
                                  (manifest.get("model") or {}).get("hf_commit"))
    restored = loaded.info.get("restored", "none")
    what = f"{restored} checkpoint step {step}" if model == "trained" else "untrained base weights"
    log.info(f"eval: {config.model.name} + {what} loaded in {time.monotonic() - started:.1f} s; "
             f"{len(items)} items from {data}")
    out_dir = run_dir / "eval" / name
    try:
        result = runner.evaluate(loaded, items, stage=stage, max_new_tokens=max_new,
                                 max_prompt_tokens=config.eval.max_prompt_tokens, batch_size=batch,
                                 predictions=out_dir / PREDICTIONS, source=str(data), mesh=mesh,
                                 style=style)
    except DataError as exc:
        raise EvalError(f"bad data: {exc}") from None
    timing = {k: v for k, v in result.metrics().items()
              if k in ("seconds", "generated_tokens", "tokens_per_s")}
    meta = {"run_id": manifest.get("run_id", run_dir.name), "eval_data": str(data),
            "model": config.model.name, "model_weights": model, "stage": stage, "prompt": style,
            "checkpoint": loaded.info.get("checkpoint"), "checkpoint_step": step,
            "restored": restored, "items": len(result.records),
            "items_dropped_long": len(result.dropped),
            "max_prompt_tokens": config.eval.max_prompt_tokens, "limit": limit,
            "max_new_tokens": max_new, "batch_size": batch, "decoding": "greedy", **timing, "out_dir": str(out_dir)}
    summary = runner.summary_of({stage: result.records}, meta)
    runner.write_summary(out_dir / SUMMARY, summary)
    return summary

