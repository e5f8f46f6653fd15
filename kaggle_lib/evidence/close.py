"""Closing a run record, whichever way it ends (`finalize`: the notebook's last stage;
`close_failed`: a stage raised; `close_after_kernel`: papermill's runner, also when the kernel
died): env info, checkpoint list, README, index line, and the secret scan, whose hit fails the
run with `SecretLeakError` and is named in failure_analysis.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kaggle_lib import auth, multihost
from kaggle_lib.evidence.identity import env_info
from kaggle_lib.evidence.index import append_index, index_path
from kaggle_lib.evidence.lock import release_run_dir
from kaggle_lib.evidence.manifest import ManifestError
from kaggle_lib.evidence.plots import plot_loss
from kaggle_lib.evidence.readme import write_readme
from kaggle_lib.evidence.record import FAILURE, RAW_CONFIG_MARK, RunRecord
from kaggle_lib.evidence.scan import SecretLeakError, removed_files, scan_files, scan_for_secrets
from kaggle_lib.hashing import sha256_hex


def tree_digest(directory: Path) -> tuple[str, int, int]:
    """(sha256 over relative paths and file digests, file count, bytes) of a directory tree."""
    files = sorted(f for f in directory.rglob("*") if f.is_file())
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(sha256_hex(f).encode() + b"\n")
    return digest.hexdigest(), len(files), sum(f.stat().st_size for f in files)


def checkpoint_listing(run_dir: Path) -> list[dict[str, Any]]:
    """Every checkpoint step and export: relative path, step, files, bytes, tree sha256."""
    run_dir = Path(run_dir)
    entries: list[dict[str, Any]] = []

    def add(tree: Path, **fields: Any) -> None:
        sha, n, size = tree_digest(tree)
        entries.append({**fields, "path": tree.relative_to(run_dir).as_posix(), "files": n,
                        "bytes": size, "sha256": sha})

    def subdirs(root: Path) -> list[Path]:
        return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    for stage_dir in subdirs(run_dir / "checkpoints"):
        for step_dir in sorted((p for p in subdirs(stage_dir) if p.name.isdigit()),
                               key=lambda p: int(p.name)):
            add(step_dir, kind="checkpoint", stage=stage_dir.name, step=int(step_dir.name))
    exports = RunRecord(run_dir).read_manifest().get("exports") or {}
    for export_dir in subdirs(run_dir / "export"):
        info = exports.get(export_dir.name) or {}
        add(export_dir, kind="export", stage=export_dir.name, step=info.get("step"),
            format=info.get("format"))
    return entries


@dataclasses.dataclass(frozen=True)
class ScanOutcome:
    """Files (relative to the run directory) where the closing scan found a secret."""

    redacted: list[str]
    removed: list[str]  # binary files, deleted from the record

    def __bool__(self) -> bool:
        return bool(self.redacted or self.removed)

    def message(self) -> str:
        parts = []
        if self.redacted:
            parts.append(f"secret values were found and redacted in: {', '.join(self.redacted)}")
        if self.removed:
            parts.append("binary files holding a secret value were removed from the record "
                         f"(masking would corrupt them): {', '.join(self.removed)}")
        return "; ".join(parts)


def _scan_and_record(record: RunRecord, notebook: Path | None = None) -> ScanOutcome:
    files = scan_files(record.run_dir, notebook)
    hits = scan_for_secrets(files)

    def relative(path: str) -> str:
        p = Path(path)
        return p.relative_to(record.run_dir).as_posix() if p.is_relative_to(record.run_dir) else p.name

    removed = [relative(h) for h in removed_files(hits)]
    outcome = ScanOutcome([relative(h) for h in hits if relative(h) not in removed], removed)
    previous = record.read_manifest().get("secret_scan") or {}
    with contextlib.suppress(ManifestError):  # also in the raised error, failure_analysis.md
        record.update_manifest(secret_scan={
            "files_scanned": len(files),
            "hits": sorted(set(previous.get("hits") or []) | set(outcome.redacted) | set(removed)),
            "removed": sorted(set(previous.get("removed") or []) | set(removed))})
    return outcome


def headline_metrics(summary: dict[str, Any] | None,
                     train_results: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's `metrics`: overall scores of each evaluation and each stage's losses."""
    out: dict[str, Any] = {}
    for which in ("baseline", "baseline_fewshot", "trained"):
        card = (summary or {}).get(which) or {}
        overall = card.get("overall") if isinstance(card, dict) else None
        if overall:
            for key in ("accuracy", "format_exact", "format_approx"):
                out[f"{which}_{key}"] = overall[key]
            out["eval_items"] = overall.get("n")
    if sft := (train_results or {}).get("sft"):
        for key in ("steps", "loss_first10_mean", "loss_last10_mean"):
            out[f"sft_{key}"] = sft[key]
    if grpo := (train_results or {}).get("grpo"):
        out.update(grpo_steps=grpo.get("steps"), grpo_reward_last=grpo.get("reward_last"))
    return out


def _write_environment(record: RunRecord) -> None:
    record.write_text("env_info.txt", auth.redact(env_info()))
    record.write_json("checkpoints.json", checkpoint_listing(record.run_dir))


def finalize(record: RunRecord, status: str) -> None:
    """Write the closing files; a secret found anywhere fails the run (after redacting it)."""
    if not multihost.is_writer():  # process 0 writes the record's closing files
        if status == "succeeded":
            record.succeed()
        return
    _write_environment(record)
    found = _scan_and_record(record)
    if found:
        raise SecretLeakError(f"{found.message()}. Find what printed them (a log line, a "
                              "print, a config value) and remove it.")
    if status == "succeeded":
        record.succeed()
    write_readme(record.run_dir)
    append_index(record.run_dir)
    release_run_dir(record.run_dir)


def _raw_config_copy(record: RunRecord) -> None:
    """config.yaml even when the config never loaded: the file as given, redacted."""
    if (record.run_dir / "config.yaml").is_file():
        return
    source = Path(str(record.read_manifest().get("config_path") or ""))
    if source.is_file():
        record.write_text("config.yaml", f"{RAW_CONFIG_MARK}; see failure_analysis.md)\n"
                          + auth.redact(source.read_text(errors="replace")))


def close_failed(record: RunRecord, run_id: str,
                 write_eval_summary: Callable[[], object] | None = None) -> None:
    """What a failed run still leaves: env info, eval summary, loss curve, scan, README, index."""
    if not multihost.is_writer():
        return
    try:
        _write_environment(record)
        _raw_config_copy(record)
        if write_eval_summary is not None:
            write_eval_summary()
        if record.read_metrics():
            plot_loss(record, run_id)
        _scan_and_record(record)
        write_readme(record.run_dir)
        append_index(record.run_dir)
    finally:
        release_run_dir(record.run_dir)


def close_after_kernel(run_dir: Path, notebook: Path | None, error: BaseException | None,
                       seconds: float) -> dict[str, Any]:
    """Finish the record after papermill returns; a failure the kernel could not record (it died,
    timed out) goes to the running stage. Returns the final manifest."""
    record = RunRecord(run_dir)
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
    with contextlib.suppress(ManifestError):
        record.update_manifest(notebook_wall_seconds=round(seconds, 1))
    found = _scan_and_record(record, notebook)
    if found:
        if record.read_manifest().get("status") == "failed":
            # The first failure stays the headline; the scan's finding goes below it.
            record.update_manifest(secret_leak=found.redacted + found.removed)
            path = record.run_dir / FAILURE
            if path.is_file() and found.message() not in path.read_text():
                with path.open("a") as fh:
                    fh.write(f"\n## Secret scan\n\n{found.message()}\n")
        else:
            record.fail("secret-scan", SecretLeakError(found.message()))
    write_readme(record.run_dir)
    append_index(record.run_dir)
    # The README and index may quote failure messages: scan once more (redaction only).
    scan_for_secrets([record.run_dir / "README.md", index_path(record.run_dir)])
    return record.read_manifest()

