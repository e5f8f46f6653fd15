"""The run record: everything a run leaves in `evidence/runs/<run_id>/`, good or failed.

Files: executed.ipynb (written by papermill), config.yaml, run_manifest.json, metrics.jsonl,
failure_analysis.md when failed, and what later stages add (eval, samples, checkpoints).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import platform
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

MANIFEST = "run_manifest.json"
METRICS = "metrics.jsonl"
FAILURE = "failure_analysis.md"

# Versions recorded in every manifest: what decides numerics and behaviour.
TRACKED_PACKAGES = (
    "google-tunix", "jax", "jaxlib", "libtpu", "flax", "optax", "qwix", "orbax-checkpoint",
    "numpy", "sentencepiece", "safetensors", "gguf", "transformers", "torch", "papermill",
    "huggingface-hub", "kagglehub", "kaggle", "kaggle-lib",
)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_run_id(config_hash: str, when: dt.datetime | None = None) -> str:
    """UTC time + short config hash: sortable, and says which config ran."""
    when = when or dt.datetime.now(dt.UTC)
    return f"{when:%Y%m%dT%H%M%SZ}-{config_hash[:8]}"


def hash_text(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return hashlib.sha256(data).hexdigest()


def git_info(repo: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout the code came from (bundles bake their own)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--untracked-files=no"],
                cwd=repo, capture_output=True, text=True, check=True,
            ).stdout.strip()
        )
        return {"sha": sha, "dirty": dirty, "source": "git"}
    except (OSError, subprocess.CalledProcessError):
        baked = Path(__file__).resolve().parent / "_build_info.json"
        if baked.is_file():
            info = json.loads(baked.read_text())
            return {"sha": info.get("git_sha"), "dirty": info.get("git_dirty"), "source": "bundle"}
        return {"sha": None, "dirty": None, "source": "unknown"}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# What to do next, by error type name: the user reads this in failure_analysis.md.
_HINTS = {
    "ConfigError": "Fix the config key named above (the message lists what is allowed), then re-run.",
    "DeviceError": "Set `device: auto` (or the platform that is present) or run where that "
    "accelerator exists. On Kaggle: Settings -> Accelerator -> TPU v5e-8.",
    "AuthError": "Attach the secret named above (Kaggle: Add-ons -> Secrets; locally: export it) "
    "and accept the model licence on its hub page with the same account.",
    "PreflightError": "Choose a training mode that fits (see the arithmetic above), add devices, "
    "or set `force: true` to try anyway.",
    "NonFiniteLossError": "Lower train.sft.learning_rate, keep max_grad_norm set, check the data "
    "for empty responses; the last good checkpoint is listed below and `resume: auto` continues from it.",
    "SecretLeakError": "A secret value reached an output. The offending text was redacted; find "
    "what printed it and remove that print before sharing the run.",
    "TokenizerError": "The tokenizer's special ids are missing; rebuild it with bos/eos/pad pieces set.",
    "DeadKernelError": "The notebook kernel died, usually out of host memory: reduce "
    "data.max_seq_len or the batch size, or use LoRA.",
    "XlaRuntimeError": "If the message says RESOURCE_EXHAUSTED, the device ran out of memory: "
    "reduce batch size or max_seq_len, use LoRA, or shard over more devices.",
    "TimeoutError": "The run hit its time limit; resume from the last checkpoint with `resume: auto`.",
    "KeyboardInterrupt": "The run was interrupted; re-run, or resume from the last checkpoint.",
}


class RunRecord:
    """Reads and writes one run directory. Every write leaves the directory consistent."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @property
    def manifest_path(self) -> Path:
        return self.run_dir / MANIFEST

    def read_manifest(self) -> dict[str, Any]:
        if self.manifest_path.is_file():
            return json.loads(self.manifest_path.read_text())
        return {}

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        manifest = self.read_manifest()
        for key, value in fields.items():
            if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                manifest[key] = {**manifest[key], **value}
            else:
                manifest[key] = value
        self._write_json(self.manifest_path, manifest)
        return manifest

    def _write_json(self, path: Path, payload: Any) -> None:
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")
        tmp.replace(path)

    def write_json(self, name: str, payload: Any) -> Path:
        path = self.run_dir / name
        self._write_json(path, payload)
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.run_dir / name
        path.write_text(text)
        return path

    def start(self, run_id: str, run_name: str, config_path: str) -> None:
        self.update_manifest(
            run_id=run_id,
            run_name=run_name,
            status="running",
            config_path=config_path,
            started_at=utc_now(),
            git=git_info(),
            python=sys.version.split()[0],
            host={"system": platform.system(), "machine": platform.machine(), "node": platform.node()},
            packages=package_versions(),
        )

    def log_metrics(self, record: dict[str, Any]) -> None:
        with (self.run_dir / METRICS).open("a") as fh:
            fh.write(json.dumps(record, default=float) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.run_dir / METRICS
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def stage(self, name: str, status: str, seconds: float | None = None, **extra: Any) -> None:
        entry = {"status": status, **({"seconds": round(seconds, 3)} if seconds is not None else {}), **extra}
        self.update_manifest(stages={name: entry})

    def fail(self, stage: str, error: BaseException, *, checkpoint: str | None = None,
             details: str = "") -> None:
        """Mark the run failed and write failure_analysis.md (idempotent: first failure wins)."""
        manifest = self.read_manifest()
        if manifest.get("status") == "failed" and (self.run_dir / FAILURE).is_file():
            return
        kind = type(error).__name__
        message = str(error) or kind
        hint = _HINTS.get(kind, "Read the traceback below; the stage and the error say where it broke.")
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        lines = [
            f"# Run failed in stage `{stage}`",
            "",
            f"- run: `{manifest.get('run_id', self.run_dir.name)}`",
            f"- stage: `{stage}`",
            f"- error: `{kind}`",
            f"- last good checkpoint: {f'`{checkpoint}`' if checkpoint else 'none'}",
            "",
            "## What happened",
            "",
            "```",
            message,
            "```",
            "",
            "## What to do",
            "",
            hint,
        ]
        if details:
            lines += ["", "## Details", "", details]
        lines += ["", "## Traceback", "", "```", tb.rstrip(), "```", ""]
        from kaggle_lib.auth import redact  # local import: auth imports nothing heavy

        self.write_text(FAILURE, redact("\n".join(lines)))
        self.update_manifest(
            status="failed",
            ended_at=utc_now(),
            failure={"stage": stage, "error_type": kind, "message": redact(message)[:2000],
                     "last_good_checkpoint": checkpoint},
        )

    def succeed(self, **fields: Any) -> None:
        self.update_manifest(status="succeeded", ended_at=utc_now(), **fields)
