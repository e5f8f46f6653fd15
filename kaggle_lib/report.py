"""Closing a run record: loss curve, environment details, checkpoint list, secret scan, README,
and the evidence index."""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from kaggle_lib import auth, evidence

TEXT_SUFFIXES = {".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".ipynb", ".csv", ".log"}


class SecretLeakError(RuntimeError):
    """A secret value or token-shaped string reached a file of the run record."""


def plot_loss(run: Any) -> Path | None:
    """loss.png from metrics.jsonl (matplotlib, no display needed)."""
    records = [r for r in run.record.read_metrics() if r.get("stage") in ("sft", "grpo") and "loss" in r]
    if not records:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for stage_name in ("sft", "grpo"):
        points = sorted({r["step"]: r["loss"] for r in records if r["stage"] == stage_name}.items())
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=stage_name)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(f"run {run.run_id}")
    ax.grid(alpha=0.3)
    ax.legend()
    path = run.run_dir / "loss.png"
    fig.savefig(path, bbox_inches="tight")
    try:  # show it inline when running in a notebook
        from IPython.display import Image, display

        display(Image(filename=str(path)))
    except Exception:  # noqa: BLE001 - outside IPython there is nothing to show
        pass
    return path


def env_info() -> str:
    """Python, packages, jax devices and accelerator details (nvidia-smi / TPU when present)."""
    lines = [f"python: {sys.version}", f"platform: {platform.platform()}", ""]
    lines.append("packages:")
    lines += [f"  {k}=={v}" for k, v in evidence.package_versions().items() if v]
    try:
        import jax

        lines += ["", f"jax devices ({jax.device_count()}):"]
        lines += [f"  {d.id}: {d.platform} {d.device_kind}" for d in jax.devices()]
    except Exception as exc:  # noqa: BLE001
        lines.append(f"jax unavailable: {exc}")
    for cmd in (["nvidia-smi"], ["tpu-info"]):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            if out.returncode == 0:
                lines += ["", f"$ {' '.join(cmd)}", out.stdout]
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "\n".join(lines) + "\n"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_listing(run_dir: Path) -> list[dict[str, Any]]:
    """Every saved checkpoint step: path, step, total bytes, sha256 over its files."""
    root = run_dir / "checkpoints"
    entries = []
    if not root.is_dir():
        return entries
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for step_dir in sorted((p for p in stage_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            files = sorted(f for f in step_dir.rglob("*") if f.is_file())
            digest = hashlib.sha256()
            for f in files:
                digest.update(str(f.relative_to(step_dir)).encode())
                digest.update(_sha256(f).encode())
            entries.append({"stage": stage_dir.name, "step": int(step_dir.name),
                            "path": str(step_dir), "files": len(files),
                            "bytes": sum(f.stat().st_size for f in files),
                            "sha256": digest.hexdigest()})
    return entries


def scan_for_secrets(paths: list[Path], extra_values: set[str] | None = None) -> list[str]:
    """Redact secret values / token-shaped strings in place; return the files that had any."""
    values = set(auth.registered_secrets()) | (extra_values or set())
    for value in values:
        auth.register_secret(value)
    hits = []
    for path in paths:
        if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
            continue
        text = path.read_text(errors="replace")
        cleaned = auth.redact(text)
        if cleaned != text:
            path.write_text(cleaned)
            hits.append(str(path))
    return hits


def run_files(run_dir: Path) -> list[Path]:
    return [p for p in run_dir.rglob("*") if p.is_file() and "checkpoints" not in p.parts]


def headline_metrics(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for which in ("baseline", "trained"):
        card = (summary or {}).get(which) or {}
        overall = card.get("overall") if isinstance(card, dict) else None
        if overall:
            out[f"{which}_accuracy"] = overall["accuracy"]
            out[f"{which}_format_exact"] = overall["format_exact"]
            out[f"{which}_format_approx"] = overall["format_approx"]
    sft = run.train_results.get("sft") if run.train_results else None
    if sft:
        out["sft_steps"] = sft["steps"]
        out["sft_loss_first10_mean"] = sft["loss_first10_mean"]
        out["sft_loss_last10_mean"] = sft["loss_last10_mean"]
    grpo = run.train_results.get("grpo") if run.train_results else None
    if grpo:
        out["grpo_steps"] = grpo.get("steps")
        out["grpo_reward_last"] = grpo.get("reward_last")
    return out


def write_readme(run_dir: Path) -> Path:
    """A plain-words summary of what ran, on what, for how long, with what result."""
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    devices = m.get("devices") or {}
    model = m.get("model") or {}
    metrics = m.get("metrics") or {}
    stages = m.get("stages") or {}
    lines = [
        f"# Run {m.get('run_id')}",
        "",
        f"**Status: {m.get('status')}**" + (f" (failed in stage `{m['failure']['stage']}`: "
                                           f"{m['failure']['error_type']})" if m.get("failure") else ""),
        "",
        f"- config: `{m.get('config_path')}` (hash `{str(m.get('config_hash'))[:12]}`), run name "
        f"`{m.get('run_name')}`",
        f"- code: git `{(m.get('git') or {}).get('sha')}`"
        + (" (uncommitted changes)" if (m.get("git") or {}).get("dirty") else ""),
        f"- model: {model.get('name', '?')} from {model.get('source', '?')}, "
        f"{model.get('param_count', 0):,} parameters, {model.get('dtype', '?')}",
        f"- hardware: {devices.get('device_count', '?')} x {devices.get('device_kind', '?')} "
        f"({devices.get('platform', '?')})",
        f"- started {m.get('started_at')}, ended {m.get('ended_at')}",
        "",
        "## Stages",
        "",
        "| stage | status | seconds |",
        "|---|---|---|",
        *[f"| {k} | {v.get('status')} | {v.get('seconds', '')} |" for k, v in stages.items()],
    ]
    if metrics:
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "## Files", "",
              "- `executed.ipynb`: the notebook as it ran; `config.yaml`: the resolved config",
              "- `run_manifest.json`: identity, versions, devices, stage timings, metrics",
              "- `metrics.jsonl`, `training_log.txt`, `loss.png`: training progress",
              "- `eval_summary.json`, `predictions.jsonl`, `samples.md`: what the model says",
              "- `checkpoints.json`: saved checkpoints with sha256",
              ""]
    if m.get("status") == "failed":
        lines.insert(4, "See `failure_analysis.md` for what went wrong and what to do.\n")
    path = run_dir / "README.md"
    path.write_text(auth.redact("\n".join(lines)))
    return path


def append_index(run_dir: Path) -> None:
    """One line per run in <evidence root>/../index.jsonl (evidence/index.jsonl by default)."""
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    index = run_dir.parent.parent / "index.jsonl"
    entry = {"run_id": m.get("run_id"), "status": m.get("status"), "config": m.get("config_path"),
             "model": (m.get("model") or {}).get("name"), "ended_at": m.get("ended_at"),
             "path": str(run_dir), **(m.get("metrics") or {})}
    with index.open("a") as fh:
        fh.write(json.dumps(entry) + "\n")


def finalize(run: Any, status: str) -> None:
    """Write the closing files; a secret found anywhere fails the run (after redacting it)."""
    run.record.write_text("env_info.txt", auth.redact(env_info()))
    run.record.write_json("checkpoints.json", checkpoint_listing(run.run_dir))
    hits = scan_for_secrets(run_files(run.run_dir))
    if hits:
        raise SecretLeakError(f"secret values were found and redacted in: {', '.join(hits)}")
    run.record.succeed() if status == "succeeded" else None
    write_readme(run.run_dir)
    append_index(run.run_dir)


def close_failed(run: Any) -> None:
    """What a failed run still leaves: env info, checkpoint list, summary, README, index line."""
    run.record.write_text("env_info.txt", auth.redact(env_info()))
    run.record.write_json("checkpoints.json", checkpoint_listing(run.run_dir))
    if getattr(run, "records", None):
        from kaggle_lib import evaluation as ev

        ev.write_summary(run.run_dir / "eval_summary.json",
                         ev.summarize(run.records.get("baseline"), run.records.get("trained"),
                                      meta={"run_id": run.run_id}))
    if getattr(run, "train_results", None) or run.record.read_metrics():
        plot_loss(run)
    scan_for_secrets(run_files(run.run_dir))
    write_readme(run.run_dir)
    append_index(run.run_dir)
