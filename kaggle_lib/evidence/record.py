"""The run record: everything a run leaves in `evidence/runs/<run_id>/`, good or failed.

Files: executed.ipynb (written by papermill), config.yaml, run_manifest.json, metrics.jsonl,
failure_analysis.md when failed, and what later stages add (eval, samples, checkpoints).

`run_manifest.json` is a `RunManifest` (pydantic), checked on every write: a write that would
break it raises `ManifestError` and leaves the file as it was, except the write that records a
failure, which is never lost (see `RunRecord.fail`). The JSON schema for readers outside Python,
kaggle_lib/schemas/run_manifest.schema.json, is generated from the model
(scripts/write_manifest_schema.py); a test keeps the two equal.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kaggle_lib import auth, logs
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.evidence.failure import failure_analysis
from kaggle_lib.hashing import sha256_hex

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
log = logs.get_logger(__name__)
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "run_manifest.schema.json"
SCHEMA_VERSION = 1
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class ManifestError(KaggleLibError, ValueError):
    """A manifest write that does not match RunManifest (run_manifest.schema.json)."""

    hint = (
        "A stage wrote a manifest field the schema does not allow (named above); fix that stage or "
        "the field's type in kaggle_lib/evidence/record.py (RunManifest)."
    )


# ---------------------------------------------------------------------------- the manifest

Timestamp = Annotated[str, Field(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$",
                                 description="UTC, second precision, e.g. 2026-01-31T12:00:00Z")]
Seconds = Annotated[float, Field(ge=0)]
Count = Annotated[int, Field(ge=1)]


class _Section(BaseModel):
    """A manifest object: typed where named, open to fields stages add (as the record grows)."""

    model_config = ConfigDict(extra="allow", strict=True)


class GitInfo(_Section):
    sha: Annotated[str, Field(pattern=r"^[0-9a-f]{7,64}$")] | None
    dirty: bool | None
    source: Literal["git", "bundle", "unknown"]


class HostInfo(_Section):
    system: str
    machine: str
    node: str | None = None
    cpu_count: int | None = None
    # 1/5/15-minute load averages when the run started and when it closed: a run's times mean
    # little without knowing what else the machine was doing (None where the OS has none).
    load_average_start: list[float] | None = None
    load_average_end: list[float] | None = None


class Packages(_Section):
    """Versions of TRACKED_PACKAGES (None: not installed)."""

    __pydantic_extra__: dict[str, str | None]
    google_tunix: str | None = Field(alias="google-tunix")
    jax: str | None
    flax: str | None


class KaggleImage(BaseModel):
    """Kaggle image identity, from /etc/git_commit and /etc/build_date."""

    model_config = ConfigDict(extra="forbid", strict=True)
    git_commit: str | None = None
    build_date: str | None = None


class EnvironmentInfo(_Section):
    on_kaggle: bool
    run_type: str | None = Field(None, description="KAGGLE_KERNEL_RUN_TYPE: 'Interactive' or "
                                 "'Batch' today; not an enum, so a new Kaggle value cannot break a "
                                 "run. Required (non-empty) on Kaggle.")
    working_dir: str | None = None
    notebook_url: Annotated[str, Field(pattern=r"^https://www\.kaggle\.com/code/[^/]+/[^/]+")] | None = None
    notebook_version: str | int | None = None
    kaggle_image: KaggleImage | None = None

    @model_validator(mode="after")
    def _run_type_on_kaggle(self) -> EnvironmentInfo:
        if self.on_kaggle and not self.run_type:
            raise ValueError("run_type: required (non-empty) when on_kaggle is true")
        return self


class DeviceInfo(_Section):
    platform: str
    device_kind: str
    device_count: Count
    local_device_count: Count | None = None
    memory_per_device_bytes: int | None = None
    process_count: Count | None = None
    jax_version: str | None = None


class ModelInfo(_Section):
    name: str
    source: str
    dtype: str | None = None
    param_count: Annotated[int, Field(ge=0)] | None = None


class StageEntry(_Section):
    status: Literal["running", "succeeded", "failed", "skipped"]
    seconds: Seconds | None = None


class Failure(_Section):
    stage: Annotated[str, Field(min_length=1)]
    error_type: Annotated[str, Field(min_length=1)]
    message: str
    last_good_checkpoint: str | None


class SecretScan(_Section):
    files_scanned: Annotated[int, Field(ge=0)]
    hits: list[str]
    removed: list[str] = Field(default_factory=list, description="Binary files with a hit, "
                               "deleted from the record (masking would break their framing).")


class ExportEntry(_Section):
    path: str
    format: str


class AttemptFailure(_Section):
    stage: str | None = None
    error_type: str | None = None
    message: str | None = None


class Attempt(_Section):
    """An earlier attempt of this run (its files are under attempts/<n>/)."""

    n: Count
    status: Literal["succeeded", "failed", "interrupted", "unknown"] = Field(
        description="interrupted: that attempt never closed its record (e.g. the runner was killed).")
    started_at: str | None = None
    ended_at: str | None = None
    failure: AttemptFailure | None = None
    path: Annotated[str, Field(pattern=r"^attempts/[0-9]+$")]


class SetAsideCheckpoint(_Section):
    """A checkpoint step that did not restore, moved to checkpoints/<stage>/corrupt/<step>/."""

    stage: str
    step: Annotated[int, Field(ge=0)]
    path: str
    reason: str


Metric = bool | int | float | str | None


class RunManifest(_Section):
    """Identity, code, config, versions, devices, times, status, stage timings and headline
    metrics of one run. While status is 'running' the closing fields may be missing;
    'succeeded' and 'failed' require ended_at, duration_s and stages; 'succeeded' also
    config_hash, devices, model and metrics, and no failed stage; 'failed' requires failure."""

    model_config = ConfigDict(extra="allow", strict=True, title="kaggle_lib run manifest")

    schema_version: Literal[1]
    run_id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._+-]+$")]
    run_name: str | None = None
    status: Literal["running", "succeeded", "failed"]
    config_path: str
    config_hash: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None
    config_resolved: dict[str, Any] | None = None
    started_at: Timestamp
    ended_at: Timestamp | None = None
    duration_s: Seconds | None = None
    notebook_wall_seconds: Seconds | None = None
    git: GitInfo
    python: Annotated[str, Field(pattern=r"^[0-9]+\.[0-9]+")]
    host: HostInfo
    packages: Packages
    environment: EnvironmentInfo | None = None
    devices: DeviceInfo | None = None
    model: ModelInfo | None = None
    stages: dict[str, StageEntry] | None = None
    metrics: dict[str, Metric] | None = None
    failure: Failure | None = None
    secret_scan: SecretScan | None = None
    exports: dict[str, ExportEntry] | None = None
    attempt: Count = Field(1, description="Which attempt of this run this manifest records: a "
                           "re-run in the same run directory is the next attempt.")
    attempts: list[Attempt] = Field(default_factory=list,
                                    description="Earlier attempts of this run, oldest first.")
    checkpoints_set_aside: list[SetAsideCheckpoint] = Field(default_factory=list)
    prepared_by_runner: bool = Field(False, description="Set by `python -m kaggle_lib run` "
                                     "before the kernel starts; start_run then keeps this fresh "
                                     "manifest instead of archiving it.")

    @model_validator(mode="after")
    def _closing_fields(self) -> RunManifest:
        if self.status == "running":
            return self
        required = ["ended_at", "duration_s", "stages"]
        required += (["config_hash", "devices", "model", "metrics"] if self.status == "succeeded"
                     else ["failure"])
        missing = [name for name in required if getattr(self, name) is None]
        if missing:
            raise ValueError(f"required when status is {self.status}: {', '.join(missing)}")
        if self.status == "succeeded":
            if self.failure is not None:
                raise ValueError("failure: a succeeded run has no failure")
            if not self.stages:
                raise ValueError("stages: a succeeded run lists at least one stage")
            for name, stage in self.stages.items():
                # 'running' is allowed: the finish stage marks the run succeeded from inside
                # itself, before its own entry is closed.
                if stage.status == "failed":
                    raise ValueError(f"stages.{name}.status: a succeeded run has no failed stage")
        return self


# A model-level rule names its field as 'field.path: message' (pydantic's location is the model).
_FIELD_IN_MESSAGE = re.compile(r"^(?:Value error, )?([A-Za-z_][\w.-]*): (.*)$", re.S)


def manifest_errors(manifest: dict[str, Any]) -> list[str]:
    """Violations as 'field.path: message' lines (empty when the manifest is valid)."""
    try:
        RunManifest.model_validate(manifest)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = [str(part) for part in error["loc"]]
            message = error["msg"]
            if error["type"] == "value_error" and (match := _FIELD_IN_MESSAGE.match(message)):
                where.append(match.group(1))
                message = match.group(2)
            lines.append(f"{'.'.join(where) or '<top level>'}: {message}")
        return sorted(lines)
    return []


def validate_manifest(manifest: dict[str, Any], source: str = MANIFEST) -> None:
    """Raise ManifestError naming the file, each bad field and what is allowed."""
    errors = manifest_errors(manifest)
    if errors:
        raise ManifestError(
            f"{source} does not match {SCHEMA_PATH.name} (RunManifest):\n  " + "\n  ".join(errors[:20])
        )


def load_manifest(path: Path) -> RunManifest | None:
    """The manifest at `path`, typed; None when it does not validate (a failure that was
    recorded with `schema_errors`), so that its reader can say so instead of breaking."""
    try:
        return RunManifest.model_validate(json.loads(Path(path).read_text()))
    except ValidationError:
        return None


def manifest_json_schema() -> dict[str, Any]:
    """The JSON schema of run_manifest.json, generated from RunManifest."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **RunManifest.model_json_schema(by_alias=True)}


# ---------------------------------------------------------------------------- identity

# Versions recorded in every manifest: what decides numerics and behaviour.
TRACKED_PACKAGES = (
    "google-tunix", "jax", "jaxlib", "libtpu", "flax", "optax", "qwix", "orbax-checkpoint",
    "numpy", "sentencepiece", "safetensors", "gguf", "transformers", "torch", "papermill",
    "huggingface-hub", "kagglehub", "kaggle", "kaggle-lib",
)


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, rounded; None where the OS does not have them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


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


def make_run_id(config_hash: str, when: dt.datetime | None = None) -> str:
    """UTC time + short config hash: sortable, and says which config ran."""
    when = when or dt.datetime.now(dt.UTC)
    return f"{when:%Y%m%dT%H%M%SZ}-{config_hash[:8]}"


def hash_text(text: str | bytes) -> str:
    """sha256 of a config's text or bytes (the run id's config hash)."""
    return sha256_hex(text)


def git_info(repo: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout the code came from (bundles bake their own)."""
    package_dir = Path(__file__).resolve().parent.parent
    repo = repo or package_dir.parent
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
        baked = package_dir / "_build_info.json"
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


# ---------------------------------------------------------------------------- files


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
            log.warning("[kaggle_lib] warning: %s:%d: skipped a line that is not JSON "
                        "(a write cut short?)", path, lineno)
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _attempt_summary(n: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the manifest of the next attempt says about attempt `n` (`manifest` may be partial
    or broken: it is whatever that attempt left)."""
    failure = manifest.get("failure") or {}
    status = manifest.get("status")
    summary = Attempt(
        n=n,
        # "running" in a manifest that is being archived: the attempt never closed its record.
        status={"running": "interrupted"}.get(status, status) or "unknown",
        started_at=manifest.get("started_at"), ended_at=manifest.get("ended_at"),
        failure=(AttemptFailure(stage=failure.get("stage"), error_type=failure.get("error_type"),
                                message=str(failure.get("message") or "")[:500])
                 if failure else None),
        path=f"{ATTEMPTS}/{n}",
    )
    return summary.model_dump(mode="json")


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

    def manifest(self) -> RunManifest:
        """The manifest, typed (raises ManifestError if the file does not match)."""
        data = self.read_manifest()
        validate_manifest(data, str(self.manifest_path))
        return RunManifest.model_validate(data)

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        """Merge `fields` (dicts one level deep) and write; raises ManifestError, leaving the
        file untouched, if the result does not match RunManifest."""
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
        log.info("[kaggle_lib] attempt %d of this run moved to %s; this is attempt %d",
                 n, target, n + 1)
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
            host={"system": platform.system(), "machine": platform.machine(),
                  "node": platform.node(), "cpu_count": os.cpu_count(),
                  "load_average_start": load_average()},
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
        """ended_at, duration_s (from the manifest's own started_at) and the closing load."""
        ended = utc_now()
        duration = seconds_between(manifest.get("started_at"), ended)
        return {"ended_at": ended, "duration_s": duration if duration is not None else 0.0,
                "host": {**(manifest.get("host") or {}), "load_average_end": load_average()}}

    def fail(self, stage: str, error: BaseException, *, checkpoint: str | None = None,
             details: str = "") -> None:
        """Mark the run failed and write failure_analysis.md (idempotent: first failure wins).

        Works on any directory, even one whose notebook never started (identity fields are
        filled in), and never loses the failure: if the merged manifest breaks the schema it is
        written anyway with the violations under `schema_errors`.
        """
        manifest = self.read_manifest()
        if manifest.get("status") == "failed" and (self.run_dir / FAILURE).is_file():
            return
        checkpoint = checkpoint or last_good_checkpoint(self.run_dir)
        self.write_text(FAILURE, auth.redact(failure_analysis(
            run_id=manifest.get("run_id") or self.run_dir.name, stage=stage, error=error,
            checkpoint=checkpoint, recent_metrics=self.read_metrics()[-5:],
            set_aside=manifest.get("checkpoints_set_aside") or [], details=details)))
        fields: dict[str, Any] = {}
        if not manifest.get("run_id"):  # nothing recorded yet: the notebook never started
            fields.update(self._identity(self.run_dir.name, "", manifest.get("config_path", "")))
            manifest = {**fields, **manifest}
        kind = type(error).__name__
        fields.update(
            status="failed",
            stages=manifest.get("stages") or {},
            failure={"stage": stage, "error_type": kind,
                     "message": auth.redact(str(error) or kind)[:2000],
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
