"""The run record: everything a run leaves in `evidence/runs/<run_id>/`, good or failed.

Files: executed.ipynb (written by papermill), config.yaml, run_manifest.json (evidence.manifest),
metrics.jsonl, failure_analysis.md when failed, and what later stages add (eval, samples,
checkpoints). `RunRecord` reads and writes them, and moves an earlier attempt's files aside; in a
multi-process run the other processes keep a `ProcessLogRecord` instead (`make_record`).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
import traceback
from pathlib import Path
from typing import Any

import yaml

from kaggle_lib import auth, jsonl, logs, multihost
from kaggle_lib.config import ConfigChangeError, RunConfig, config_changes
from kaggle_lib.errors import as_disk_error
from kaggle_lib.evidence.failure import failure_analysis
from kaggle_lib.evidence.identity import git_info, host_info, load_average, package_versions
from kaggle_lib.evidence.manifest import (
    MANIFEST,
    SCHEMA_VERSION,
    Attempt,
    AttemptFailure,
    ManifestError,
    manifest_errors,
    read_manifest,
    validate_manifest,
)

METRICS = "metrics.jsonl"
FAILURE = "failure_analysis.md"
LOCK = "run.lock"  # held by the run writing the directory (evidence.lock)
# Earlier attempts of a run re-run in its own directory: attempts/<n>/ holds attempt n's files.
ATTEMPTS = "attempts"
# What a new attempt keeps in place: the checkpoints it resumes from, the earlier attempts, the
# other processes' logs of a multi-process run (they may start before process 0 archives;
# their log lines carry times, and each notebook there is the latest attempt's), and its lock.
KEPT_ACROSS_ATTEMPTS = ("checkpoints", ATTEMPTS, "processes", LOCK)
# Files and folders a run writes at the top of its directory (besides KEPT_ACROSS_ATTEMPTS).
RECORD_NAMES = frozenset({
    MANIFEST, METRICS, FAILURE, "executed.ipynb", "config.yaml",
    "env_info.txt", "training_log.txt", "loss.png", "eval_summary.json", "predictions.jsonl",
    "samples.md", "checkpoints.json", "README.md", "tensorboard", "export", "eval",
})
# The first line of config.yaml when the config did not load (`close`: the file as given).
RAW_CONFIG_MARK = "# The config as given (it did not load"
log = logs.get_logger(__name__)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


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


def write_atomically(path: Path, text: str, errors: str = "strict") -> Path:
    """Write `text` (UTF-8, `errors` as in str.encode) to `path` through `<path>.tmp` and a
    rename, so a write cut short (a full disk) never replaces a good file; on failure the .tmp
    is removed and a DiskError names the path and the free space."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8", errors=errors)
        return tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise as_disk_error(exc, path) or exc from exc


def _attempt_summary(n: int, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the manifest of the next attempt says about attempt `n` (`manifest` may be partial
    or broken: it is whatever that attempt left)."""
    failure = manifest.get("failure") or {}
    status = manifest.get("status")
    summary = Attempt(
        # "running" in a manifest that is being archived: the attempt never closed its record.
        n=n, status={"running": "interrupted"}.get(status, status) or "unknown",
        started_at=manifest.get("started_at"), ended_at=manifest.get("ended_at"),
        failure=(AttemptFailure(stage=failure.get("stage"), error_type=failure.get("error_type"),
                                message=str(failure.get("message") or "")[:500])
                 if failure else None),
        path=f"{ATTEMPTS}/{n}")
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
        return read_manifest(self.manifest_path)

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

    def _write_json(self, path: Path, payload: Any) -> Path:
        return write_atomically(path, json.dumps(payload, indent=2, sort_keys=False, default=str)
                                + "\n")

    def write_json(self, name: str, payload: Any) -> Path:
        return self._write_json(self.run_dir / name, payload)

    def write_text(self, name: str, text: str) -> Path:
        return write_atomically(self.run_dir / name, text)

    def start(self, run_id: str, run_name: str, config_path: str,
              config: RunConfig | None = None) -> None:
        """Begin this attempt with a fresh manifest; an earlier attempt's files first go to
        attempts/<n>/, unless the runner already did that (`prepare_attempt`). `config`: this
        attempt's, checked against the earlier attempt's first (`check_config_change`)."""
        try:
            manifest = self.read_manifest()
        except ValueError:
            manifest = {}
        if not (manifest.get("prepared_by_runner") and not manifest.get("stages")):
            manifest = self._archive_checked(config)
        self._fresh_manifest(run_id, run_name, config_path, manifest)

    def prepare_attempt(self, run_id: str, run_name: str, config_path: str,
                        config: RunConfig | None = None) -> dict[str, Any]:
        """The runner's part, before papermill writes executed.ipynb: earlier files to
        attempts/<n>/, and a fresh manifest marked so that `start` in the kernel keeps it."""
        return self._fresh_manifest(run_id, run_name, config_path, self._archive_checked(config),
                                    prepared_by_runner=True)

    def _fresh_manifest(self, run_id: str, run_name: str, config_path: str,
                        attempts: dict[str, Any], **extra: Any) -> dict[str, Any]:
        changes = {"config_changes": attempts["config_changes"]} \
            if attempts.get("config_changes") else {}
        fresh = {**self._identity(run_id, run_name, config_path),
                 "attempt": attempts.get("attempt", 1), "attempts": attempts.get("attempts", []),
                 **changes, **extra}
        validate_manifest(fresh, str(self.manifest_path))
        self._write_json(self.manifest_path, fresh)
        return fresh

    def _archive_checked(self, config: RunConfig | None) -> dict[str, Any]:
        """`check_config_change`, then `archive_previous_attempt`, with the changes added."""
        changes = self.check_config_change(config)
        archived = self.archive_previous_attempt()
        if changes is not None:
            if changes["compared_with"] == "config.yaml":  # the attempt just archived
                changes["compared_with"] = f"{ATTEMPTS}/{archived['attempt'] - 1}/config.yaml"
            archived["config_changes"] = changes
        return archived

    def earlier_config(self) -> tuple[Path, dict[str, Any]] | None:
        """(path, tree) of the newest earlier attempt's resolved config.yaml: the one at the top
        (the attempt about to be archived), else under attempts/<n>/, newest first; None when
        no attempt's config loaded."""
        archive = self.run_dir / ATTEMPTS
        numbered = sorted((p for p in archive.iterdir() if p.name.isdigit()),
                          key=lambda p: -int(p.name)) if archive.is_dir() else []
        for folder in (self.run_dir, *numbered):
            path = folder / "config.yaml"
            try:
                text = path.read_text()
                tree = yaml.safe_load(text)
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(tree, dict) and not text.startswith(RAW_CONFIG_MARK):
                return path, tree
        return None

    def holds_checkpoints(self) -> bool:
        """Whether checkpoints/<stage>/ (GRPO's <stage>/actor/) holds a step to resume from."""
        root = self.run_dir / "checkpoints"
        return any(p.name.isdigit() for pattern in ("*/*", "*/actor/*") for p in root.glob(pattern))

    def check_config_change(self, config: RunConfig | None) -> dict[str, Any] | None:
        """Compare `config` with the earlier attempt's (`earlier_config`) before anything moves:
        with checkpoints to resume, a change to a key that shapes them (`config.config_changes`)
        raises ConfigChangeError naming each key, old and new value; without checkpoints every
        change is allowed. Returns the manifest's `config_changes` (None: nothing to compare)."""
        earlier = self.earlier_config() if config is not None else None
        if earlier is None:
            return None
        path, tree = earlier
        changes = config_changes(tree, config)  # type: ignore[arg-type]  # not None here
        checkpoints = self.holds_checkpoints()
        refused = [c for c in changes if not c.resumable]
        if refused and checkpoints:
            raise ConfigChangeError(
                f"run directory {self.run_dir} holds checkpoints of an earlier attempt whose "
                f"config ({path}) differs from this one in {len(refused)} key(s) that shape "
                "them (they would not restore, or would continue another run):\n  "
                + "\n  ".join(c.describe() for c in refused)
                + f"\nNothing was moved. Use a new run directory for this config, or delete "
                f"{self.run_dir / 'checkpoints'} to start this run over.")
        for change in changes:
            log.info("[kaggle_lib] config changed since the earlier attempt: %s",
                     change.describe())
        return {"compared_with": path.relative_to(self.run_dir).as_posix(),
                "checkpoints": checkpoints,
                "changes": [{"key": c.key, "old": c.old, "new": c.new, "resumable": c.resumable,
                             "note": c.note} for c in changes]}

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
        # <name>.tmp: a `write_atomically` cut short by a kill
        foreign = sorted(p.name for p in leftovers if p.name.removesuffix(".tmp") not in RECORD_NAMES)
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

    def relist_moved_checkpoint(self, source: Path, target: Path, reason: str) -> None:
        """A checkpoint step moved from `source` to `target` (set aside: it did not restore):
        earlier attempts' checkpoints.json entries for it now give where it is, and why."""
        try:
            before, after = (Path(p).relative_to(self.run_dir).as_posix() for p in (source, target))
        except ValueError:  # not under this run directory: no listing names it
            return
        for listing in sorted((self.run_dir / ATTEMPTS).glob("*/checkpoints.json")):
            try:
                entries = json.loads(listing.read_text())
            except (OSError, ValueError):
                continue  # an unreadable listing is that attempt's evidence: left as it is
            moved = [e for e in entries if isinstance(e, dict) and e.get("path") == before] \
                if isinstance(entries, list) else []
            for entry in moved:
                entry.update(path=after, moved_from=before, set_aside=reason)
            if moved:
                self._write_json(listing, entries)

    @staticmethod
    def _identity(run_id: str, run_name: str, config_path: str) -> dict[str, Any]:
        return dict(schema_version=SCHEMA_VERSION, run_id=run_id, run_name=run_name,
                    status="running", config_path=config_path, started_at=utc_now(),
                    git=git_info(), python=sys.version.split()[0], host=host_info(),
                    packages=package_versions())

    def log_metrics(self, record: dict[str, Any]) -> None:
        try:
            jsonl.append(self.run_dir / METRICS, record, default=float)
        except OSError as exc:
            raise as_disk_error(exc, self.run_dir / METRICS) or exc from exc

    def read_metrics(self) -> list[dict[str, Any]]:
        return jsonl.read(self.run_dir / METRICS)

    def stage(self, name: str, status: str, seconds: float | None = None, **extra: Any) -> None:
        timing = {"seconds": round(seconds, 3)} if seconds is not None else {}
        self.update_manifest(stages={name: {"status": status, **timing, **extra}})

    def _closing(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """ended_at, duration_s (from the manifest's own started_at) and the closing load."""
        ended = utc_now()
        duration = seconds_between(manifest.get("started_at"), ended)
        return {"ended_at": ended, "duration_s": duration if duration is not None else 0.0,
                "host": {**(manifest.get("host") or {}), "load_average_end": load_average()}}

    def fail(self, stage: str, error: BaseException, *, checkpoint: str | None = None,
             details: str = "", status: str = "failed") -> None:
        """Mark the run failed (or `interrupted`: its writer is gone) and write
        failure_analysis.md (idempotent: first failure wins).

        Works on any directory, even one whose notebook never started (identity fields are
        filled in), and never loses the failure: if the merged manifest breaks the schema it is
        written anyway with the violations under `schema_errors`.
        """
        manifest = self.read_manifest()
        if manifest.get("status") in ("failed", "interrupted") and (self.run_dir / FAILURE).is_file():
            return
        checkpoint = checkpoint or last_good_checkpoint(self.run_dir)
        unwritten: OSError | None = None
        try:
            self.write_text(FAILURE, auth.redact(failure_analysis(
                run_id=manifest.get("run_id") or self.run_dir.name, stage=stage, error=error,
                checkpoint=checkpoint, recent_metrics=self.read_metrics()[-5:],
                set_aside=manifest.get("checkpoints_set_aside") or [], details=details)))
        except OSError as exc:  # a full disk: the smaller manifest may still fit; raised below
            unwritten = exc
        fields: dict[str, Any] = {}
        if not manifest.get("run_id"):  # nothing recorded yet: the notebook never started
            fields.update(self._identity(self.run_dir.name, "", manifest.get("config_path", "")))
            manifest = {**fields, **manifest}
        kind = type(error).__name__
        fields.update(status=status, stages=manifest.get("stages") or {},
                      failure={"stage": stage, "error_type": kind,
                               "message": auth.redact(str(error) or kind)[:2000],
                               "last_good_checkpoint": checkpoint},
                      **self._closing(manifest))
        try:
            self.update_manifest(**fields)
        except ManifestError:
            merged = self._merged(fields)
            merged["schema_errors"] = manifest_errors(merged)
            self._write_json(self.manifest_path, merged)
        if unwritten is not None:
            raise unwritten

    def succeed(self, **fields: Any) -> None:
        self.update_manifest(status="succeeded", **self._closing(self.read_manifest()), **fields)


class ProcessLogRecord(RunRecord):
    """What a process other than 0 of a multi-process run keeps: its own log,
    <run_dir>/processes/<id>/log.jsonl, and its manifest in memory. Same interface as
    RunRecord; nothing is written to the run directory itself (process 0 owns the record)."""

    def __init__(self, run_dir: str | Path, process_id: int):  # no mkdir of the shared run dir
        self.run_dir = Path(run_dir)
        self.process_id = process_id
        self.log_dir = multihost.process_dir(self.run_dir, process_id)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._manifest: dict[str, Any] = {}

    def _log(self, kind: str, payload: Any) -> None:
        jsonl.append(self.log_dir / "log.jsonl", {"time": utc_now(), kind: payload},
                     text_filter=auth.redact)

    def read_manifest(self) -> dict[str, Any]:
        return dict(self._manifest)

    def start(self, run_id: str, run_name: str, config_path: str,
              config: RunConfig | None = None) -> None:
        # Process 0 moves earlier attempts aside; here only this process's log starts.
        self.update_manifest(**self._identity(run_id, run_name, config_path))

    def archive_previous_attempt(self) -> dict[str, Any]:
        raise RuntimeError("only process 0 archives a run directory's earlier attempts")

    def relist_moved_checkpoint(self, source: Path, target: Path, reason: str) -> None:
        pass  # process 0 rewrites the listings

    def update_manifest(self, **fields: Any) -> dict[str, Any]:
        self._manifest = self._merged(fields)
        self._log("manifest", fields)
        return dict(self._manifest)

    def write_text(self, name: str, text: str) -> Path:
        self._log("skipped_write", name)  # process 0 writes the run's files
        return self.log_dir / name

    write_json = write_text  # type: ignore[assignment]  # (name, payload): same skip
    def log_metrics(self, record: dict[str, Any]) -> None:
        self._log("metrics", record)

    def read_metrics(self) -> list[dict[str, Any]]:
        return []

    def fail(self, stage: str, error: BaseException, *, checkpoint: str | None = None,
             details: str = "", status: str = "failed") -> None:
        self._manifest["status"] = status
        self._log("failure", {"stage": stage, "error_type": type(error).__name__,
                              "message": str(error)[:2000]})
        tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        (self.log_dir / "failure.txt").write_text(auth.redact(
            f"process {self.process_id} failed in stage {stage}: {type(error).__name__}: "
            f"{error}\n\n{tb}"))

    def succeed(self, **fields: Any) -> None:
        self._manifest["status"] = "succeeded"
        self._log("status", "succeeded")


def make_record(run_dir: Path) -> RunRecord:
    """The run record on process 0 (or alone); a ProcessLogRecord on the other processes."""
    if multihost.is_writer():
        return RunRecord(run_dir)
    return ProcessLogRecord(run_dir, multihost.process_index())
