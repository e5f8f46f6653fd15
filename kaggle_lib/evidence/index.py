"""The runs index, evidence/index.jsonl: one line per (run id, attempt) with its headline."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kaggle_lib import jsonl, logs
from kaggle_lib.errors import as_disk_error
from kaggle_lib.evidence.manifest import MANIFEST, load_manifest, read_manifest

INDEX_NAME = "index.jsonl"
REJECTED_NAME = "index.rejected.jsonl"  # lines of the index that were not entries, kept
log = logs.get_logger(__name__)


def index_path(run_dir: Path) -> Path:
    """evidence/index.jsonl for evidence/runs/<id>; <parent>/index.jsonl for any other layout.
    The path as named, not resolved: a run dir reached through a symlink (evidence/runs/<link>)
    belongs to the evidence root the user named, not to the link's target's."""
    parent = _absolute(run_dir).parent
    return (parent.parent if parent.name == "runs" else parent) / INDEX_NAME


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path))  # `..` removed by name; symlinks kept


def index_entry(run_dir: Path) -> dict[str, Any]:
    run_dir = _absolute(run_dir)
    path = os.path.relpath(run_dir, index_path(run_dir).parent)
    m = load_manifest(run_dir / MANIFEST)
    if m is None:  # a failure recorded with schema_errors: say what can be said
        raw = read_manifest(run_dir / MANIFEST)
        return {"run_id": raw.get("run_id") or run_dir.name, "attempt": raw.get("attempt", 1),
                "status": raw.get("status"), "schema_errors": True, "path": path}
    failure = m.failure
    return {"run_id": m.run_id, "attempt": m.attempt, "status": m.status,
            "config": m.config_path, "model": m.model.name if m.model else None,
            "started_at": m.started_at, "ended_at": m.ended_at, "duration_s": m.duration_s,
            "git_sha": m.git.sha, "failed_stage": failure.stage if failure else None,
            "error_type": failure.error_type if failure else None, "path": path,
            **(m.metrics or {})}


def read_index(path: Path) -> list[dict[str, Any]]:
    """Index entries; a line that is not JSON (a merge conflict, a write cut short) is skipped
    and reported, not fatal (the next `append_index` moves it to index.rejected.jsonl)."""
    return [e for e in jsonl.read(path) if e.get("run_id")]


def _index_key(entry: dict[str, Any]) -> tuple[Any, int]:
    return entry.get("run_id"), int(entry.get("attempt") or 1)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on <path>.lock (fcntl.flock: released when the holder dies too)."""
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _split_lines(path: Path) -> tuple[list[dict[str, Any]], list[tuple[int, bytes]]]:
    """(index entries, (line number, bytes) of every line that is not one)."""
    entries: list[dict[str, Any]] = []
    rejected: list[tuple[int, bytes]] = []
    if not path.is_file():
        return entries, rejected
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            value = None
        if isinstance(value, dict) and value.get("run_id"):
            entries.append(value)
        else:
            rejected.append((lineno, raw))
    return entries, rejected


def append_index(run_dir: Path) -> Path:
    """Add or update this attempt's line in the index: one line per (run id, attempt), in
    first-seen order. Writers take turns (a lock beside the index) and each replaces the file
    through its own temporary file; a line that is not an index entry is moved, never dropped,
    to index.rejected.jsonl beside it, and named in a warning."""
    entry = index_entry(run_dir)
    path = index_path(run_dir)
    with _locked(path):
        old_entries, rejected = _split_lines(path)
        entries, seen = [], False
        for old in old_entries:
            same = _index_key(old) == _index_key(entry)
            if not (same and seen):  # a duplicate line of this attempt is dropped
                entries.append(entry if same else old)
            seen = seen or same
        if not seen:
            entries.append(entry)
        tmp: Path | None = None
        try:
            if rejected:  # kept before the index is rewritten without them
                kept = path.with_name(REJECTED_NAME)
                with kept.open("ab") as out:
                    out.writelines(raw + b"\n" for _, raw in rejected)
                log.warning(f"warning: {path}: line(s) {', '.join(str(n) for n, _ in rejected)} "
                            "are not index entries (a merge conflict, a write cut short?); moved "
                            f"to {kept}")
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp", delete=False) as fh:
                tmp = Path(fh.name)
                os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
                fh.write("".join(json.dumps(e) + "\n" for e in entries))
            tmp.replace(path)
        except OSError as exc:  # a full disk: the index stays as it was
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            raise as_disk_error(exc, path) or exc from exc
    return path
