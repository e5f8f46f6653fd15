"""The runs index, evidence/index.jsonl: one line per (run id, attempt) with its headline."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kaggle_lib import jsonl
from kaggle_lib.evidence.manifest import MANIFEST, load_manifest, read_manifest

INDEX_NAME = "index.jsonl"


def index_path(run_dir: Path) -> Path:
    """evidence/index.jsonl for evidence/runs/<id>; <parent>/index.jsonl for any other layout."""
    run_dir = Path(run_dir).resolve()
    parent = run_dir.parent
    return (parent.parent if parent.name == "runs" else parent) / INDEX_NAME


def index_entry(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir).resolve()
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
    and reported, not fatal."""
    return [e for e in jsonl.read(path) if e.get("run_id")]


def _index_key(entry: dict[str, Any]) -> tuple[Any, int]:
    return entry.get("run_id"), int(entry.get("attempt") or 1)


def append_index(run_dir: Path) -> Path:
    """Add or update this attempt's line in the index: one line per (run id, attempt), in
    first-seen order."""
    entry = index_entry(run_dir)
    path = index_path(run_dir)
    entries, seen = [], False
    for old in read_index(path):
        same = _index_key(old) == _index_key(entry)
        if not (same and seen):  # a duplicate line of this attempt is dropped
            entries.append(entry if same else old)
        seen = seen or same
    if not seen:
        entries.append(entry)
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
    tmp.replace(path)
    return path

