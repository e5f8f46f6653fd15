"""The one sha256 helper: hex digest of text, bytes or a file's contents."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_hex(content: str | bytes | Path) -> str:
    """sha256 hex digest of text (UTF-8), bytes, or a Path's file (in blocks: multi-GB weights
    need no memory)."""
    if isinstance(content, Path):
        with content.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    return hashlib.sha256(content.encode() if isinstance(content, str) else content).hexdigest()
