"""The secret scan of a run record: known secret values (HF token, Kaggle key/token from the
environment and the usual credential files) and token-shaped strings.

Text files are redacted in place; a binary file with a hit is removed from the record (see
`scan_for_secrets`). Either way the closing code fails the run with `SecretLeakError`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from kaggle_lib import auth
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.evidence.record import ATTEMPTS, write_atomically

TEXT_SUFFIXES = {".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".ipynb", ".csv", ".log",
                 ".html", ".py", ".cfg", ".toml", ".ini"}
# Directories of weights: listed with sha256 in checkpoints.json, not scanned byte by byte.
WEIGHT_DIRS = ("checkpoints", "export")
# Binary files up to this size are searched for secret bytes (tensorboard events, images).
BINARY_SCAN_LIMIT = 64 * 2**20


class SecretLeakError(KaggleLibError, RuntimeError):
    """A secret value or token-shaped string reached a file of the run record."""

    hint = (
        "A secret value reached an output. The offending text was redacted; find what printed it "
        "and remove that print before sharing the run."
    )


def secret_values(extra: Iterable[str] = ()) -> set[str]:
    """Every secret value this process knows of (environment, the usual credential files:
    Kaggle key/token, cached HF token), registered for redaction on the way."""
    values = set(extra) | {os.environ[v] for v in auth.SECRET_ENV_VARS if os.environ.get(v)}
    kaggle_dir = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((kaggle_dir / "kaggle.json").read_text())
        if isinstance(data, dict) and data.get("key"):
            values.add(str(data["key"]))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    candidates = [kaggle_dir / "access_token", kaggle_dir / "access_token.txt",
                  Path(os.environ.get("HF_TOKEN_PATH", hf_home / "token"))]
    for path in candidates:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            values.add(text)
    for value in values:
        auth.register_secret(value)
    return set(auth.registered_secrets())


def leaves(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(path, text) of every key and scalar in a nested value, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{where}.{key}", key
            yield from leaves(value, f"{where}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from leaves(value, f"{where}[{i}]")
    elif node is not None:
        yield where, node


def secret_holders(named: Iterable[tuple[str, Any]]) -> list[str]:
    """The names (never the values) of the (name, value) pairs whose text holds a known secret
    value (`secret_values`, 8 characters or more) or a token-shaped string."""
    known = [v for v in secret_values() if len(v) >= 8]
    return [name for name, value in named
            if any(v in str(value) for v in known)
            or any(p.search(str(value)) for p in auth.TOKEN_PATTERNS)]


def scan_for_secrets(paths: Iterable[Path], extra_values: set[str] | None = None) -> list[str]:
    """Clean secret values / token-shaped strings out of `paths`; return the files that had any.

    Text files are redacted in place (`[REDACTED]`). A binary file up to BINARY_SCAN_LIMIT with
    a hit is deleted: masking bytes in place would break its framing (TensorBoard's event
    records carry checksums), and a named gap is better than a file its reader rejects.
    """
    values = secret_values(extra_values or ())
    hits = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            cleaned = auth.redact(text)
            if cleaned != text:
                write_atomically(path, cleaned, errors="surrogateescape")
                hits.append(str(path))
        elif path.stat().st_size <= BINARY_SCAN_LIMIT:
            data = path.read_bytes()
            if any(value.encode() in data for value in values) or any(
                    re.search(p.pattern.encode(), data) for p in auth.TOKEN_PATTERNS):
                path.unlink()
                hits.append(str(path))
    return hits


def removed_files(hits: Iterable[str]) -> list[str]:
    """The hits of `scan_for_secrets` that were deleted (binary files), not redacted."""
    return [h for h in hits if not Path(h).exists()]


def run_files(run_dir: Path) -> list[Path]:
    """Files of the record that people read (weights directories excluded, also those of
    earlier attempts under attempts/<n>/)."""
    run_dir = Path(run_dir)

    def is_weights(parts: tuple[str, ...]) -> bool:
        if parts[:1] == (ATTEMPTS,):
            parts = parts[2:]
        return bool(set(parts[:1]) & set(WEIGHT_DIRS))

    return sorted(p for p in run_dir.rglob("*")
                  if p.is_file() and not is_weights(p.relative_to(run_dir).parts))


def scan_files(run_dir: Path, notebook: Path | None = None) -> list[Path]:
    """What the closing secret scan reads: the record, the executed notebook, and the small
    text files of exports (config.json, tokenizer files, manifests)."""
    run_dir = Path(run_dir)
    files = run_files(run_dir)
    export = run_dir / "export"
    if export.is_dir():
        files += [p for p in export.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES]
    if notebook is not None and Path(notebook) not in files:
        files.append(Path(notebook))
    return files

