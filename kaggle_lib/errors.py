"""The one base of kaggle_lib's errors: each carries what the user should do next.

Every error class of the package subclasses `KaggleLibError` and keeps its builtin base too
(`class MeshError(KaggleLibError, ValueError)`), so `except ValueError` still catches it; only
`Interrupted` (a stop signal) is a KeyboardInterrupt instead, with a hint of its own.
`hint` is read into failure_analysis.md; a class sets it once, one raise may override it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEFAULT_HINT = "Read the traceback below; the stage and the error say where it broke."


class KaggleLibError(Exception):
    """An error of kaggle_lib; `hint` says what to do next."""

    hint: str = DEFAULT_HINT

    def __init__(self, *args: Any, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGINT) ended the run. A KeyboardInterrupt, not an Exception, so
    that no `except Exception` on the way swallows it; the message names the signal."""

    hint = ("The run was stopped by the signal named above: on Kaggle the session ended (its time "
            "limit, or it was cancelled), locally Ctrl-C or `kill`. Re-run in the same run "
            "directory to resume from the last good checkpoint (`train.resume: auto`), and set "
            "train.max_wall_time below the session limit so that training stops by itself, "
            "with a checkpoint, before the session ends.")


# Errors of other libraries that reach a run: they cannot carry our hint, so it is kept here.
OOM_HINT = ("If the message says RESOURCE_EXHAUSTED, the device ran out of memory: reduce batch "
            "size or max_seq_len, use LoRA, or shard over more devices.")
FOREIGN_HINTS = {
    "PapermillExecutionError": "A notebook cell raised before the run record could note it; the "
    "cell and the error are above and in executed.ipynb.",
    # The runner adds how the kernel ended to the message when it can tell (`kernel_end`).
    "DeadKernelError": "The notebook kernel died without closing the run record. Killed by "
    "SIGKILL: the host's out-of-memory killer does that (then reduce data.max_seq_len or the "
    "batch size, or use LoRA), and so do `kill -9` and the end of a session. Another signal or an "
    "exit status: something ended the kernel or it crashed in native code; see executed.ipynb.",
    "XlaRuntimeError": OOM_HINT,
    "TimeoutError": "The run hit its time limit; resume from the last checkpoint with `resume: auto` "
    "(set train.max_wall_time below the session limit so training stops cleanly with a checkpoint).",
    "CellTimeoutError": "A notebook cell ran past its time limit; resume from the last checkpoint "
    "with `resume: auto` and set train.max_wall_time below the limit.",
    "KeyboardInterrupt": "The run was interrupted; re-run, or resume from the last checkpoint.",
}
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def hint_for(error: BaseException) -> str:
    """What to do next about `error` (out-of-memory is recognised by its message too)."""
    kind = type(error).__name__
    if disk_problem(error):  # before the OOM markers: Orbax says RESOURCE_EXHAUSTED for both
        return DiskError.hint
    if kind != "DeadKernelError" and any(m in str(error) for m in _OOM_MARKERS):
        return OOM_HINT
    if isinstance(error, KaggleLibError | Interrupted):
        return error.hint
    return FOREIGN_HINTS.get(kind, DEFAULT_HINT)


MESSAGE_VALUE_CHARS = 200  # values quoted in error messages are cut to this many characters


def cut(text: str, limit: int = MESSAGE_VALUE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was, so a message stays readable."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def shorten(value: Any) -> str:
    """repr(value), cut to MESSAGE_VALUE_CHARS characters."""
    return cut(repr(value))


def _allowed_keys(model: Any, loc: Sequence[Any]) -> list[str]:
    """Field names the pydantic `model` allows at `loc` (the parent of an unknown key), in the
    order the model defines them."""
    cls = model
    for part in loc:
        field = cls.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not isinstance(field.annotation, type) \
                or not hasattr(field.annotation, "model_fields"):
            return []
        cls = field.annotation
    return list(cls.model_fields) if cls is not None else []


def _key(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "<top level>"


def format_validation_error(errors: Any, header: str | None = None, *, model: Any = None,
                            explain: Callable[[dict[str, Any]], str | None] | None = None,
                            bullet: str = "  ", group_unknown: bool = False) -> str:
    """pydantic's errors (a ValidationError or its `.errors()`) as `header` then one line per
    error naming the key, its value and what is allowed: an unknown key lists the keys `model`
    allows there (`group_unknown`: all on one line); other errors are `key = value: message`.
    `explain(error)` may word a line itself: "" drops the error, None keeps the rule."""
    errors = [dict(e) for e in (errors.errors() if hasattr(errors, "errors") else errors)]
    lines: list[str] = []
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if group_unknown and unknown:
        lines.append(f"unknown key(s) {', '.join(sorted(_key(e['loc']) for e in unknown))}; "
                     f"allowed keys: {', '.join(_allowed_keys(model, unknown[0]['loc'][:-1]))}")
    for err in errors:
        line = explain(err) if explain else None
        if line is None:
            loc, value = tuple(err["loc"]), err.get("input")
            if err["type"] == "extra_forbidden":
                line = "" if group_unknown else (
                    f"{_key(loc)}: unknown key (value {shorten(value)}); allowed keys here: "
                    f"{', '.join(sorted(_allowed_keys(model, loc[:-1])))}")
            elif err["type"] == "missing":
                line = f"{_key(loc)}: required key is missing"
            else:
                message = err["msg"].removeprefix("Value error, ")
                line = f"{_key(loc)} = {shorten(value)}: {cut(message, 2 * MESSAGE_VALUE_CHARS)}"
        if line:
            lines.append(line)
    body = [bullet + line for line in lines]
    return "\n".join(body if header is None else [header, *body])


class DiskError(KaggleLibError, OSError):
    """A run's files cannot be written: the disk is full or the directory is read-only. The
    message names the path and the free space there."""

    hint = ("Free space on that disk (earlier runs' checkpoints/ and export/ are the big files), "
            "make the directory writable, or give a --run-dir on another disk; then re-run in the "
            "same directory: training resumes from the last good checkpoint.")

    def __str__(self) -> str:  # the message alone, without OSError's "[Errno n]"
        return str(self.strerror)


# errno -> what it means for a run's files; a message holding one of the texts means the same
# (Orbax/TensorStore report a full disk as `RESOURCE_EXHAUSTED ... [OS error 28: No space left on
# device]`, not as an OSError).
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
               errno.EPERM: "permission denied"}
_DISK_MARKERS = {os.strerror(code): code for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS)}
_QUOTED_PATH = re.compile(r"""["'](/[^"'\n]+)["']""")


def _disk_errno(error: BaseException) -> int | None:
    for exc in (error, error.__cause__, error.__context__):
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            return exc.errno
    text = str(error)
    return next((code for marker, code in _DISK_MARKERS.items() if marker in text), None)


def disk_problem(error: BaseException) -> bool:
    """Whether `error` says a file could not be written for lack of space or permission."""
    return isinstance(error, DiskError) or _disk_errno(error) is not None


def free_space(path: str | Path) -> str:
    """"<n> free of <total> on the disk holding <folder>", the nearest existing one of `path`."""
    where = Path(path)
    while not where.is_dir() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return f"free space unknown ({exc.strerror or exc})"
    return f"{_size(usage.free)} free of {_size(usage.total)} on the disk holding {where}"


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def as_disk_error(error: BaseException, path: str | Path) -> DiskError | None:
    """`error` as a DiskError naming the file (its own, else one quoted in its message, else
    `path`) and the free space there; None when it is not a disk problem."""
    if isinstance(error, DiskError):
        return error
    code = _disk_errno(error)
    if code is None:
        return None
    own = getattr(error, "filename", None)
    quoted = _QUOTED_PATH.search(str(error))
    target = own or (quoted.group(1) if quoted else None) or path
    verb = "cannot access" if code in (errno.EACCES, errno.EPERM) else "cannot write"
    return DiskError(code, f"{verb} {target}: {DISK_ERRNOS[code]} ({free_space(target)})")


MIN_FREE_BYTES = 16 * 2**20  # below this a run could not even write its record


def check_writable(directory: str | Path) -> None:
    """DiskError, before a run moves or writes anything, when `directory` cannot be created or
    written or its disk has less than MIN_FREE_BYTES free."""
    directory = Path(directory)
    probe = directory / f".kaggle_lib-write-test-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with probe.open("wb") as fh:
            fh.write(b"\0" * 4096)
            os.fsync(fh.fileno())
    except OSError as exc:
        raise as_disk_error(exc, directory) or exc from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    if shutil.disk_usage(directory).free < MIN_FREE_BYTES:
        raise DiskError(errno.ENOSPC, f"refusing to start in {directory}: the disk is full "
                        f"({free_space(directory)}; a run needs at least {_size(MIN_FREE_BYTES)})")
