"""The run manifest, `run_manifest.json`: its schema (`RunManifest`, pydantic), validation and
reading.

Checked on every write: a write that would break it raises `ManifestError` and leaves the file
as it was, except the write that records a failure, which is never lost (see `RunRecord.fail`).
The JSON schema for readers outside Python, kaggle_lib/schemas/run_manifest.schema.json, is
generated from the model (scripts/make_manifest_schema.py); a test keeps the two equal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from kaggle_lib.errors import KaggleLibError, format_validation_error

MANIFEST = "run_manifest.json"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "run_manifest.schema.json"
SCHEMA_VERSION = 1


class ManifestError(KaggleLibError, ValueError):
    """A manifest write that does not match RunManifest (run_manifest.schema.json)."""

    hint = (
        "A stage wrote a manifest field the schema does not allow (named above); fix that stage or "
        "the field's type in kaggle_lib/evidence/manifest.py (RunManifest)."
    )


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


class ContinuedFrom(_Section):
    """The checkpoints this run was seeded from (train.resume_from; on Kaggle, `push
    --continue-from`): the run they belong to and, after a push, its kernel and version."""

    checkpoints: str
    step: Annotated[int, Field(ge=0)] = Field(description="Their newest complete step when "
                                               "copied; training resumes from the newest that "
                                               "restores (checkpoints_set_aside lists others).")
    run_id: str | None = None
    kernel_id: str | None = None
    version: Annotated[int, Field(ge=1)] | None = None


class ConfigChangeEntry(_Section):
    key: str = Field(description="Dotted config key, e.g. train.sft.max_steps.")
    old: Any = None
    new: Any = None
    resumable: bool = Field(description="false: the earlier attempt's checkpoints do not continue "
                            "under the new value (allowed only when there were none).")
    note: str = ""


class ConfigChanges(_Section):
    """How this attempt's resolved config differs from the earlier attempt's."""

    compared_with: str = Field(description="The earlier config.yaml, relative to the run dir.")
    checkpoints: bool = Field(description="Whether checkpoints to resume from existed.")
    changes: list[ConfigChangeEntry]


Metric = bool | int | float | str | None


class RunManifest(_Section):
    """Identity, code, config, versions, devices, times, status, stage timings and headline
    metrics of one run. While status is 'running' the closing fields may be missing;
    'succeeded', 'failed' and 'interrupted' require ended_at, duration_s and stages; 'succeeded'
    also config_hash, devices, model and metrics, and no failed stage; 'failed' and
    'interrupted' (closed by a later command: the process that wrote it was gone) require
    failure."""

    model_config = ConfigDict(extra="allow", strict=True, title="kaggle_lib run manifest")

    schema_version: Literal[1]
    run_id: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._+-]+$")]
    run_name: str | None = None
    status: Literal["running", "succeeded", "failed", "interrupted"]
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
    continued_from: ContinuedFrom | None = None
    config_changes: ConfigChanges | None = Field(None, description="Set on a re-run in a run "
                                                 "directory whose earlier attempt's config loaded.")
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


def _field_line(error: dict[str, Any]) -> str:
    where, message = [str(part) for part in error["loc"]], error["msg"]
    if error["type"] == "value_error" and (match := _FIELD_IN_MESSAGE.match(message)):
        where.append(match.group(1))
        message = match.group(2)
    return f"{'.'.join(where) or '<top level>'}: {message}"


def manifest_errors(manifest: dict[str, Any]) -> list[str]:
    """Violations as 'field.path: message' lines (empty when the manifest is valid)."""
    try:
        RunManifest.model_validate(manifest)
    except ValidationError as exc:
        return sorted(format_validation_error(exc, explain=_field_line, bullet="").splitlines())
    return []


def validate_manifest(manifest: dict[str, Any], source: str = MANIFEST) -> None:
    """Raise ManifestError naming the file, each bad field and what is allowed."""
    errors = manifest_errors(manifest)
    if errors:
        raise ManifestError(f"{source} does not match {SCHEMA_PATH.name} (RunManifest):\n  "
                            + "\n  ".join(errors[:20]))


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest at `path` as written, unchecked ({} when there is none yet)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def load_manifest(path: Path) -> RunManifest | None:
    """The manifest at `path`, typed; None when it does not validate (a failure that was
    recorded with `schema_errors`), so that its reader can say so instead of breaking."""
    try:
        return RunManifest.model_validate(read_manifest(path))
    except ValidationError:
        return None


def manifest_json_schema() -> dict[str, Any]:
    """The JSON schema of run_manifest.json, generated from RunManifest."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            **RunManifest.model_json_schema(by_alias=True)}
