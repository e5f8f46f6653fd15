"""A byte-level stand-in tokenizer for tests that need no SentencePiece model."""

from __future__ import annotations

from collections.abc import Sequence


class ByteTokenizer:
    """UTF-8 bytes shifted past the special ids.

    Ids follow Gemma's specials (pad 0, eos 1, bos 2, unk 3); byte ``b`` is id ``b + 4``.
    Byte-level lengths are about 3-4x those of Gemma's SentencePiece tokenizer on English.
    """

    OFFSET = 4

    def encode(self, text: str) -> list[int]:
        return [b + self.OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - self.OFFSET for i in ids if i >= self.OFFSET).decode("utf-8", "replace")

    def bos_id(self) -> int:
        return 2

    def eos_id(self) -> int:
        return 1

    def pad_id(self) -> int:
        return 0
