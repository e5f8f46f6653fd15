"""One run per run directory, and no record left `running` by a process that is gone.

The lock is an flock(2) on <run_dir>/run.lock, taken before anything in the directory is moved
or written and held while the run writes its record: by the runner (`python -m kaggle_lib run`)
for its whole life, or, when the notebook runs without one (plain papermill, as on Kaggle), by
process 0's kernel from `start_run` until the record closes. The kernel under a runner finds the
runner's token in KAGGLE_LIB_RUN_LOCK and works under the runner's lock. The file says who holds
it (JSON: host, pid, start time, command) for the message that refuses a second run.

The operating system frees an flock when its process ends, however it ends, so a lock file whose
flock is free is stale: its holder is gone, or it was taken on another host (a directory fetched
from Kaggle). It is taken over, and a record its holder left `running` is closed as
`interrupted`; eval, compare and package do the same first (`close_if_writer_gone`).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import fcntl
import json
import os
import platform
import sys
import uuid
from pathlib import Path
from typing import Any

from kaggle_lib import auth, logs
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.evidence.index import append_index
from kaggle_lib.evidence.manifest import MANIFEST, read_manifest
from kaggle_lib.evidence.readme import write_readme
from kaggle_lib.evidence.record import LOCK, RunRecord, utc_now

LOCK_ENV = "KAGGLE_LIB_RUN_LOCK"  # the runner's token, inherited by its kernel
log = logs.get_logger(__name__)
_held: dict[Path, RunDirLock] = {}  # this process's locks, so that a second start reuses its own


class RunDirBusy(KaggleLibError, RuntimeError):
    """Another live process holds the run directory's lock."""

    hint = ("Another run is writing this run directory: wait for it to end, or give another "
            "--run-dir.")


class WriterGone(KaggleLibError, RuntimeError):
    """The process that wrote a `running` record no longer exists."""

    hint = ("The process that wrote this run ended without closing its record (killed, or its "
            "machine or Kaggle session ended). Run again in the same run directory to resume from "
            "the last good checkpoint (`train.resume: auto`).")


@dataclasses.dataclass
class RunDirLock:
    """A held lock: `fd` keeps the flock; `token` tells the runner's kernel the lock is its run's."""

    path: Path
    fd: int
    token: str

    def release(self) -> None:
        if self.fd < 0:
            return
        # Removed while still locked: whoever opened this file meanwhile sees it gone and retries.
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1
        _held.pop(self.path, None)

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock(path: Path) -> int | None:
    """An open fd of `path` (created if missing) holding its exclusive flock; None while another
    open file holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        os.close(fd)  # its holder removed the file between our open and flock: take the new one


def _holder(path: Path) -> dict[str, Any]:
    """Who the lock file says holds it ({} when empty or half written)."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    command = f", command `{holder['command']}`" if holder.get("command") else ""
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
            f"{holder.get('started_at', '?')}{command}")


def lock_run_dir(run_dir: Path) -> RunDirLock | None:
    """Hold `run_dir` for this run. A second run is refused (`RunDirBusy`, naming the holder)
    before anything is written; a stale lock is taken over, saying so, and a record its holder
    left `running` is closed as `interrupted`. None under the runner of this very run (its
    kernel); this process's own lock again when it already holds it (a notebook run twice)."""
    path = Path(run_dir).absolute() / LOCK
    if path in _held:
        return _held[path]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = _flock(path)
    if fd is None:
        holder = _holder(path)
        if holder.get("token") and holder["token"] == os.environ.get(LOCK_ENV):
            return None
        raise RunDirBusy(f"run directory {run_dir} is held by another run ({_describe(holder)});"
                         " nothing in it was changed")
    previous = _holder(path)
    if previous:
        why = ("its process no longer exists" if previous.get("host") == platform.node()
               else "it was taken on another host")
        log.warning(f"[kaggle_lib] taking over the stale lock {path} ({_describe(previous)}): "
                    f"{why}")
    held = RunDirLock(path, fd, uuid.uuid4().hex)
    mine = {"host": platform.node(), "pid": os.getpid(), "started_at": utc_now(),
            "command": auth.redact(" ".join(sys.argv)), "token": held.token}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode(), 0)
    _held[path] = held
    atexit.register(held.release)  # on any exit that runs Python's exit; flock frees the rest
    try:
        if _status(path.parent) == "running":
            _close_interrupted(path.parent, previous)
    except BaseException:
        held.release()
        raise
    return held


def release_run_dir(run_dir: Path) -> None:
    """Free this process's lock of `run_dir`, if it holds one (the record is closed)."""
    if (held := _held.get(Path(run_dir).absolute() / LOCK)) is not None:
        held.release()


def _status(run_dir: Path) -> str | None:
    try:
        return read_manifest(run_dir / MANIFEST).get("status")
    except (OSError, ValueError):  # no manifest that parses: its readers say so
        return None


def _close_interrupted(run_dir: Path, holder: dict[str, Any]) -> None:
    """Close a record whose writer is gone: status `interrupted`, the running stage failed,
    failure_analysis.md naming the last good checkpoint, README and index line."""
    record = RunRecord(run_dir)
    stages = record.read_manifest().get("stages") or {}
    running = [name for name, v in stages.items() if v.get("status") == "running"]
    stage = running[-1] if running else "notebook"
    if running:
        record.stage(stage, "failed")
    who = f" ({_describe(holder)})" if holder else ""
    record.fail(stage, WriterGone(f"the process that wrote this record{who} no longer exists; "
                                  "it ended without closing the record"), status="interrupted")
    write_readme(run_dir)
    append_index(run_dir)
    log.warning(f"[kaggle_lib] {run_dir}: the record its writer left running is closed as "
                f"interrupted (stage {stage}); see {run_dir / 'failure_analysis.md'}")


def close_if_writer_gone(run_dir: str | Path) -> None:
    """What eval, compare and package do first: a record left `running` by a process that no
    longer exists is closed as `interrupted`; one whose writer is alive is left as it is."""
    run_dir = Path(run_dir).absolute()
    if _status(run_dir) != "running" or run_dir / LOCK in _held:  # not running, or ours
        return
    try:
        held = lock_run_dir(run_dir)
    except RunDirBusy:  # its writer is alive
        return
    except OSError as exc:  # e.g. a read-only copy: it stays as it is, said so
        log.warning(f"[kaggle_lib] {run_dir} is marked running; could not check its writer: {exc}")
        return
    if held is not None:
        held.release()
