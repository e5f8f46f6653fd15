"""JSON lines: the package's one jsonl reader (and the appender of its own logs). Data files are
read strictly (errors name file and line, in the caller's error type); our own logs tolerantly
(a line cut short by a killed kernel is skipped and reported, so a record can still be closed).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from kaggle_lib import logs

log = logs.get_logger(__name__)


def read_lines(path: str | Path, *, error: Callable[[str], Exception] = ValueError,
               skip_bad: Literal["none", "last", "any"] = "none",
               decode: Literal["strict", "replace"] = "strict") -> Iterator[tuple[int, Any]]:
    """(line number, value) of every non-blank line of `path`.
    A line that is not JSON raises `error("<path>:<line>: not valid JSON (...)")` unless
    `skip_bad` skips it with a warning ("last": a last line without its newline, a write cut
    short; "any": any line). Non-UTF-8: `error` naming line and byte, or U+FFFD ("replace")."""
    path = Path(path)
    with path.open("rb") as fh:
        raws = list(fh) if skip_bad == "last" else fh  # split at b"\n" only, as written
        for lineno, raw in enumerate(raws, start=1):
            try:
                line = raw.decode("utf-8", errors=decode)
            except UnicodeDecodeError as e:
                raise error(f"{path}:{lineno}: not UTF-8 text (byte {e.start} of the line is "
                            f"{raw[e.start:e.start + 1]!r}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                where = f"{path}:{lineno}"
                if skip_bad == "any":
                    log.warning(f"warning: {where}: skipped a line that is not JSON ({e.msg}; "
                                "a write cut short?)")
                elif skip_bad == "last" and lineno == len(raws) and not line.endswith("\n"):
                    log.warning(f"warning: {where}: skipped a last line cut short ({e.msg})")
                else:
                    raise error(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None


def read(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of one of our own jsonl files (none when it is missing; bad lines skipped
    and reported)."""
    if not Path(path).is_file():
        return []
    return [value for _, value in read_lines(path, skip_bad="any", decode="replace")
            if isinstance(value, dict)]


def append(path: str | Path, record: Any, *, default: Callable[[Any], Any] = str,
           text_filter: Callable[[str], str] | None = None) -> None:
    """Add `record` as one line; `text_filter` (e.g. the secret redaction) sees the line first.
    A last line cut short by a killed writer is ended first, so it cannot swallow this one."""
    line = json.dumps(record, default=default)
    line = (text_filter(line) if text_filter else line) + "\n"
    with Path(path).open("a+b") as fh:  # appends go to the end whatever the read position
        if fh.tell():
            fh.seek(-1, 2)
            line = ("" if fh.read(1) == b"\n" else "\n") + line
        fh.write(line.encode())
