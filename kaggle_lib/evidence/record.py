"""The run record: everything a run leaves in `evidence/runs/<run_id>/`, good or failed.

Files: executed.ipynb (written by papermill), config.yaml, run_manifest.json, metrics.jsonl,
failure_analysis.md when failed, and what later stages add (eval, samples, checkpoints).

`run_manifest.json` follows `kaggle_lib/schemas/run_manifest.schema.json` and is validated on
every write: a write that would break the schema raises `ManifestError` and leaves the file as
it was, except the write that records a failure, which is never lost (see `RunRecord.fail`).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import importlib.metadata
import json
import logging
import platform
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

MANIFEST = "run_manifest.json"
METRICS = "metrics.jsonl"
FAILURE = "failure_analysis.md"
# Earlier attempts of a run re-run in its own directory: attempts/<n>/ holds attempt n's files.
ATTEMPTS = "attempts"
# What a new attempt keeps in place: the checkpoints it resumes from, the earlier attempts, and
# the other processes' logs of a multi-process run (they may start before process 0 archives;
# their log lines carry times, and each notebook there is the latest attempt's).
KEPT_ACROSS_ATTEMPTS = ("checkpoints", ATTEMPTS, "processes")
# Files and folders a run writes at the top of its directory (besides KEPT_ACROSS_ATTEMPTS).
RECORD_NAMES = frozenset({
    MANIFEST, MANIFEST + ".tmp", METRICS, FAILURE, "executed.ipynb", "config.yaml",
    "env_info.txt", "training_log.txt", "loss.png", "eval_summary.json", "predictions.jsonl",
    "samples.md", "checkpoints.json", "README.md", "tensorboard", "export", "eval",
})
log = logging.getLogger(__name__)
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "run_manifest.schema.json"
SCHEMA_VERSION = 1
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ManifestError(ValueError):
    """A manifest write that does not match run_manifest.schema.json."""


# Versions recorded in every manifest: what decides numerics and behaviour.
TRACKED_PACKAGES = (
    "google-tunix", "jax", "jaxlib", "libtpu", "flax", "optax", "qwix", "orbax-checkpoint",
    "numpy", "sentencepiece", "safetensors", "gguf", "transformers", "torch", "papermill",
    "huggingface-hub", "kagglehub", "kaggle", "kaggle-lib",
)


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)


def seconds_between(start: str | None, end: str | None) -> float | None:
    """Seconds from one manifest timestamp to another (None if either is missing or odd)."""
    try:
        t0 = dt.datetime.strptime(str(start), TIME_FORMAT)
        t1 = dt.datetime.strptime(str(end), TIME_FORMAT)
    except ValueError:
        return None
    return max(0.0, (t1 - t0).total_seconds())


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def manifest_errors(manifest: dict[str, Any]) -> list[str]:
    """Schema violations as 'field.path: message' lines (empty when the manifest is valid)."""
    errors = sorted(_validator().iter_errors(manifest), key=lambda e: list(map(str, e.path)))
    return [f"{'.'.join(map(str, e.path)) or '<top level>'}: {e.message}" for e in errors]


def validate_manifest(manifest: dict[str, Any], source: str = MANIFEST) -> None:
    """Raise ManifestError naming the file, each bad field and what the schema allows."""
    errors = manifest_errors(manifest)
    if errors:
        raise ManifestError(
            f"{source} does not match {SCHEMA_PATH.name}:\n  " + "\n  ".join(errors[:20])
        )


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
    "AuthError": "Provide a Hugging Face token as the secret `HF_TOKEN`. On Kaggle: notebook "
    "editor -> Add-ons -> Secrets -> add a secret labelled `HF_TOKEN`, tick it for this notebook, "
    "then run again (secrets cannot be attached to a pushed batch run from outside the editor). "
    "Locally: `export HF_TOKEN=hf_...` in the shell that runs `make run`. The token's account "
    "must have accepted the model licence on its Hugging Face page.",
    "PreflightError": "Choose a training mode that fits (see the arithmetic above), add devices, "
    "or set `force: true` to try anyway.",
    "NonFiniteLossError": "Lower train.sft.learning_rate, keep max_grad_norm set, check the data "
    "for empty responses; the last good checkpoint is listed below and `resume: auto` continues from it.",
    "SecretLeakError": "A secret value reached an output. The offending text was redacted; find "
    "what printed it and remove that print before sharing the run.",
    "ManifestError": "A stage wrote a manifest field the schema does not allow (named above); fix "
    "that stage or kaggle_lib/schemas/run_manifest.schema.json.",
    "PapermillExecutionError": "A notebook cell raised before the run record could note it; the "
    "cell and the error are above and in executed.ipynb.",
    "TokenizerError": "The tokenizer's special ids are missing; rebuild it with bos/eos/pad pieces set.",
    "DeadKernelError": "The notebook kernel died, usually out of host memory: reduce "
    "data.max_seq_len or the batch size, or use LoRA.",
    "XlaRuntimeError": "If the message says RESOURCE_EXHAUSTED, the device ran out of memory: "
    "reduce batch size or max_seq_len, use LoRA, or shard over more devices.",
    "TimeoutError": "The run hit its time limit; resume from the last checkpoint with `resume: auto` "
    "(set train.max_wall_time below the session limit so training stops cleanly with a checkpoint).",
    "CellTimeoutError": "A notebook cell ran past its time limit; resume from the last checkpoint "
    "with `resume: auto` and set train.max_wall_time below the limit.",
    "CheckpointError": "No checkpoint step of this run restores; each is listed above with the "
    "reason and was moved to checkpoints/<stage>/corrupt/. Re-run in the same directory to train "
    "from the start, or set train.resume_from to another run's checkpoint directory.",
    "PeerProcessError": "Another process of this multi-process run died or hung (named above; its "
    "log is under processes/<id>/). Fix its cause, then start every process again with the same "
    "command and run directory and `train.resume: auto`: training continues from the last checkpoint.",
    "DistributedStartError": "Start every process with the same JAX_COORDINATOR_ADDRESS and "
    "JAX_NUM_PROCESSES and its own JAX_PROCESS_ID (0..N-1), within the initialization timeout "
    "(docs/MULTIHOST.md).",
    "DistributedConfigError": "Fix the environment variable named above (docs/MULTIHOST.md).",
    "KeyboardInterrupt": "The run was interrupted; re-run, or resume from the last checkpoint.",
}


_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def hint_for(kind: str, message: str) -> str:
    """What to do next for an error type (out-of-memory is recognised by its message too)."""
    if kind not in ("DeadKernelError",) and any(m in message for m in _OOM_MARKERS):
        return _HINTS["XlaRuntimeError"]
    return _HINTS.get(kind, "Read the traceback below; the stage and the error say where it broke.")


def last_good_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint step under <run_dir>/checkpoints/<stage>/ (GRPO's under
    <stage>/actor/), by the rule of `kaggle_lib.training.checkpoints`: finalised by Orbax, with
    model params and optimizer state. Steps that failed to restore were already moved aside."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return None
    from kaggle_lib.training import checkpoints  # imports orbax only when there are checkpoints

    best: tuple[float, str] | None = None
    for stage_dir in (p for p in root.iterdir() if p.is_dir()):
        for step_root in (stage_dir, stage_dir / "actor"):
            step = checkpoints.latest_complete_step(step_root)
            if step is None:
                continue
            step_dir = step_root / str(step)
            key = (step_dir.stat().st_mtime, str(step_dir))
            best = key if best is None or key > best else best
    return best[1] if best else None


def _ends_without_newline(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            fh.seek(-1, 2)
            return fh.read(1) != b"\n"
    except OSError:  # missing or empty
        return False


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """JSON objects of one of our own jsonl files. A line that does not parse (a write cut short
    by a killed kernel) is skipped and reported, so that the record can still be closed."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for lineno, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            log.warning("%s:%d: skipped a line that is not JSON (a write cut short?): %.80s",
                        path, lineno, line)
            print(f"[kaggle_lib] warning: {path}:{lineno}: skipped a line that is not JSON "
                  "(a write cut short?)", file=sys.stderr)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _attempt_summary(n: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the manifest of the next attempt says about attempt `n`."""
    failure = manifest.get("failure") or {}
    status = manifest.get("status")
    return {
        "n": n,
        # "running" in a manifest that is being archived: the attempt never closed its record.
        "status": {"running": "interrupted"}.get(status, status) or "unknown",
        "started_at": manifest.get("started_at"), "ended_at": manifest.get("ended_at"),
        "failure": ({"stage": failure.get("stage"), "error_type": failure.get("error_type"),
                     "message": str(failure.get("message") or "")[:500]} if failure else None),
        "path": f"{ATTEMPTS}/{n}",
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
        """Merge `fields` (dicts one level deep) and write; raises ManifestError, leaving the
        file untouched, if the result does not match the schema."""
        manifest = self._merged(fields)
        validate_manifest(manifest, str(self.manifest_path))
        self._write_json(self.manifest_path, manifest)
        return manifest

    def _merged(self, fields: dict[str, Any]) -> dict[str, Any]:
        # A JSON round trip so that what is validated is exactly what is written.
        manifest = self.read_manifest()
        for key, value in json.loads(json.dumps(fields, default=str)).items():
            if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                manifest[key] = {**manifest[key], **value}
            else:
                manifest[key] = value
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
        """Begin this attempt with a fresh manifest (identity, status running, the earlier
        attempts). Files of an earlier attempt are first moved to attempts/<n>/, unless the
        runner already did that for this attempt (`prepare_attempt`)."""
        try:
            manifest = self.read_manifest()
        except ValueError:
            manifest = {}
        if not (manifest.get("prepared_by_runner") and not manifest.get("stages")):
            manifest = self.archive_previous_attempt()
        self._fresh_manifest(run_id, run_name, config_path, manifest)

    def prepare_attempt(self, run_id: str, run_name: str, config_path: str) -> dict[str, Any]:
        """The runner's part, before papermill writes executed.ipynb: earlier files to
        attempts/<n>/, and a fresh manifest marked so that `start` in the kernel keeps it."""
        attempts = self.archive_previous_attempt()
        return self._fresh_manifest(run_id, run_name, config_path, attempts,
                                    prepared_by_runner=True)

    def _fresh_manifest(self, run_id: str, run_name: str, config_path: str,
                        attempts: dict[str, Any], **extra: Any) -> dict[str, Any]:
        fresh = {**self._identity(run_id, run_name, config_path),
                 "attempt": attempts.get("attempt", 1), "attempts": attempts.get("attempts", []),
                 **extra}
        validate_manifest(fresh, str(self.manifest_path))
        self._write_json(self.manifest_path, fresh)
        return fresh

    def archive_previous_attempt(self) -> dict[str, Any]:
        """Move every file of an earlier attempt (all but checkpoints/ and attempts/) into
        attempts/<n>/ and return {"attempt": this attempt's number, "attempts": [summaries]}."""
        try:
            old = self.read_manifest()
        except ValueError:  # a manifest that does not parse still belongs to that attempt
            old = {}
        leftovers = [p for p in self.run_dir.iterdir() if p.name not in KEPT_ACROSS_ATTEMPTS]
        attempts = list(old.get("attempts") or [])
        if not leftovers:
            return {"attempt": len(attempts) + 1, "attempts": attempts}
        foreign = sorted(p.name for p in leftovers if p.name not in RECORD_NAMES)
        if not self.manifest_path.is_file() and foreign:
            # Not a run directory (e.g. --run-dir . by mistake): moving its files would be wrong.
            raise ValueError(
                f"run directory {self.run_dir} holds files that are not a run record "
                f"({', '.join(foreign[:5])}) and no {MANIFEST}; choose a new or empty directory")
        archive = self.run_dir / ATTEMPTS
        taken = [int(p.name) for p in archive.iterdir() if p.name.isdigit()] if archive.is_dir() else []
        n = max([len(attempts), *taken]) + 1
        target = archive / str(n)
        target.mkdir(parents=True)
        for path in leftovers:
            shutil.move(str(path), str(target / path.name))
        attempts.append(_attempt_summary(n, old))
        print(f"[kaggle_lib] attempt {n} of this run moved to {target}; this is attempt {n + 1}")
        return {"attempt": n + 1, "attempts": attempts}

    @staticmethod
    def _identity(run_id: str, run_name: str, config_path: str) -> dict[str, Any]:
        return dict(
            schema_version=SCHEMA_VERSION,
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
        path = self.run_dir / METRICS
        # A line cut short by a killed writer must not swallow this record.
        separator = "\n" if _ends_without_newline(path) else ""
        with path.open("a") as fh:
            fh.write(separator + json.dumps(record, default=float) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / METRICS)

    def stage(self, name: str, status: str, seconds: float | None = None, **extra: Any) -> None:
        entry = {"status": status, **({"seconds": round(seconds, 3)} if seconds is not None else {}), **extra}
        self.update_manifest(stages={name: entry})

    def _closing(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """ended_at and duration_s, from the manifest's own started_at."""
        ended = utc_now()
        duration = seconds_between(manifest.get("started_at"), ended)
        return {"ended_at": ended, "duration_s": duration if duration is not None else 0.0}

    def fail(self, stage: str, error: BaseException, *, checkpoint: str | None = None,
             details: str = "") -> None:
        """Mark the run failed and write failure_analysis.md (idempotent: first failure wins).

        Works on any directory, even one whose notebook never started (identity fields are
        filled in), and never loses the failure: if the merged manifest breaks the schema it is
        written anyway with the violations under `schema_errors`.
        """
        from kaggle_lib.auth import redact  # local import: auth imports nothing heavy

        manifest = self.read_manifest()
        if manifest.get("status") == "failed" and (self.run_dir / FAILURE).is_file():
            return
        checkpoint = checkpoint or last_good_checkpoint(self.run_dir)
        kind = type(error).__name__
        message = str(error) or kind
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
            hint_for(kind, message),
        ]
        if checkpoint:
            lines += ["", f"Training resumes from `{checkpoint}` when the same run directory is used "
                      "again with `train.resume: auto`, or from another run directory with "
                      f"`train.resume_from: {Path(checkpoint).parent}`."]
        recent = self.read_metrics()[-5:]
        if recent:
            lines += ["", "## Last metrics before the failure", "", "```"]
            lines += [json.dumps(r) for r in recent] + ["```"]
        aside = manifest.get("checkpoints_set_aside") or []
        if aside:
            lines += ["", "## Checkpoints set aside (they did not restore)", ""]
            lines += [f"- `{e.get('stage')}` step {e.get('step')}, now `{e.get('path')}`: "
                      f"{e.get('reason')}" for e in aside]
        if details:
            lines += ["", "## Details", "", details]
        lines += ["", "## Traceback", "", "```", tb.rstrip(), "```", "",
                  "The executed notebook (`executed.ipynb`) shows every cell's output up to the error.",
                  ""]
        self.write_text(FAILURE, redact("\n".join(lines)))
        fields: dict[str, Any] = {}
        if not manifest.get("run_id"):  # nothing recorded yet: the notebook never started
            fields.update(self._identity(self.run_dir.name, "", manifest.get("config_path", "")))
            manifest = {**fields, **manifest}
        fields.update(
            status="failed",
            stages=manifest.get("stages") or {},
            failure={"stage": stage, "error_type": kind, "message": redact(message)[:2000],
                     "last_good_checkpoint": checkpoint},
            **self._closing(manifest),
        )
        try:
            self.update_manifest(**fields)
        except ManifestError:
            merged = self._merged(fields)
            merged["schema_errors"] = manifest_errors(merged)
            self._write_json(self.manifest_path, merged)

    def succeed(self, **fields: Any) -> None:
        self.update_manifest(status="succeeded", **self._closing(self.read_manifest()), **fields)
