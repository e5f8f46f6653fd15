"""The one sha256 helper agrees with hashlib and with `sha256sum` for text, bytes and files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kaggle_lib.hashing import sha256_hex


def test_text_bytes_and_file_give_the_same_digest(tmp_path: Path) -> None:
    data = "Zoë paid 5€\n".encode() * 100_000  # > one read block
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_hex(data) == expected
    assert sha256_hex(data.decode()) == expected
    assert sha256_hex(path) == expected
    # A path given as str is text, not a file name.
    assert sha256_hex(str(path)) != expected
    assert sha256_hex(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
