"""SentencePiece tokenizer whose special ids are checked when it is loaded.

Tunix's `Sampler` takes BOS/EOS from `bos_id()` / `eos_id()` and tests BOS by truthiness: a
model that reports -1 (piece names unset in its trainer_spec) makes it prepend token -1 and
never stop. `load_tokenizer` refuses such a model up front, saying how to fix it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm

from kaggle_lib.errors import KaggleLibError

# Gemma's special ids (all generations): pad 0, eos 1, bos 2, unk 3.
GEMMA_SPECIAL_IDS: dict[str, int] = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
# Gemma's piece names for those ids; used in error messages and by scripts/make_tiny_tokenizer.py.
GEMMA_SPECIAL_PIECES: dict[str, str] = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>",
                                         "unk": "<unk>"}
_REQUIRED = ("bos", "eos", "pad")


class TokenizerError(KaggleLibError, ValueError):
    """A tokenizer file is missing, unreadable or has unusable special ids."""

    hint = "The tokenizer's special ids are missing; rebuild it with bos/eos/pad pieces set."


class Tokenizer:
    """Thin wrapper over a `sentencepiece.SentencePieceProcessor` (`processor`, which Tunix's
    `TokenizerAdapter` and `Sampler` accept)."""

    def __init__(self, processor: spm.SentencePieceProcessor, source: str = "<memory>") -> None:
        self._sp = processor
        self.source = source

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        return self._sp

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str, add_bos: bool = False) -> list[int]:
        """Token ids of `text`, with the BOS id first when `add_bos`."""
        ids = list(self._sp.encode(text))
        return [self.bos_id(), *ids] if add_bos else ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids` (control pieces such as <bos>/<eos>/<pad> decode to nothing)."""
        return str(self._sp.decode([int(i) for i in ids]))

    def bos_id(self) -> int:
        return int(self._sp.bos_id())

    def eos_id(self) -> int:
        return int(self._sp.eos_id())

    def pad_id(self) -> int:
        return int(self._sp.pad_id())

    def unk_id(self) -> int:
        return int(self._sp.unk_id())

    def piece_to_id(self, piece: str) -> int:
        """Id of `piece` (the unk id when the piece is not in the vocabulary)."""
        return int(self._sp.piece_to_id(piece))

    def id_to_piece(self, token_id: int) -> str:
        return str(self._sp.id_to_piece(int(token_id)))

    def special_ids(self) -> dict[str, int]:
        """{"bos", "eos", "pad", "unk"} -> id as the model reports them."""
        return {"bos": self.bos_id(), "eos": self.eos_id(), "pad": self.pad_id(),
                "unk": self.unk_id()}

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, {self.special_ids()})"


def check_special_ids(
    tokenizer: Any, expected: Mapping[str, int] | None = None, *,
    eos_ids: Sequence[int] | None = None,
) -> None:
    """Raise `TokenizerError` (a ValueError) for special ids Tunix's Sampler would silently
    misuse: bos/eos/pad unset (< 0) or outside the vocabulary, or not `expected`. With
    `eos_ids` (generation's stop ids) also the Sampler's own rules: a truthy bos, pad != bos,
    and eos ids that are non-empty, >= 0 and not pad. `tokenizer` needs bos_id/eos_id/pad_id."""
    where = getattr(tokenizer, "source", type(tokenizer).__name__)
    ids: dict[str, int] = {}
    for name in _REQUIRED:
        getter = getattr(tokenizer, f"{name}_id", None)
        if getter is None:
            raise TokenizerError(f"tokenizer {type(tokenizer).__name__} has no {name}_id() method")
        value = getter()
        if value is None or int(value) < 0:
            raise TokenizerError(
                f"{where}: tokenizer has no {name} id (it reports {name}_id={value}: Tunix's "
                "Sampler would feed it as a token and never stop). SentencePiece derives it from "
                f"trainer_spec.{name}_piece, which must name a piece of the vocabulary (Gemma: "
                f"{name}_piece={GEMMA_SPECIAL_PIECES[name]!r}) and trainer_spec.{name}_id must "
                f"not be -1. Fix: rebuild the model with {name}_piece/{name}_id set (Gemma ids: "
                f"{GEMMA_SPECIAL_IDS}), and load it with load_tokenizer, which checks them."
            )
        ids[name] = value = int(value)
        size = getattr(tokenizer, "vocab_size", None)
        if size is not None and value >= size:
            raise TokenizerError(f"{where}: tokenizer {name} id {value} is outside the vocabulary "
                                 f"(size {size}); allowed: 0..{size - 1}.")
    if expected:
        reported = {**ids, "unk": tokenizer.unk_id()}
        unknown = sorted(set(expected) - set(reported))
        if unknown:
            raise TokenizerError(f"{where}: expected special ids name unknown keys {unknown}; "
                                 f"allowed keys: {sorted(reported)}.")
        wrong = {k: (reported[k], int(v)) for k, v in expected.items() if reported[k] != int(v)}
        if wrong:
            details = ", ".join(f"{k} is {got} but {want} was expected"
                                for k, (got, want) in wrong.items())
            raise TokenizerError(f"{where}: tokenizer special ids do not match the model: "
                                 f"{details}. Use the tokenizer.model that belongs to this "
                                 "checkpoint.")
    if eos_ids is None:
        return
    if ids["bos"] == 0:
        raise TokenizerError("tokenizer reports bos_id=0: Tunix's Sampler only prepends a truthy "
                             "bos id, so prompts would start without one (Gemma's bos is 2)")
    if ids["pad"] == ids["bos"]:
        raise TokenizerError(f"tokenizer reports pad_id == bos_id == {ids['pad']}: the sampler "
                             "masks pad tokens, so the bos would be masked out of every prompt")
    eos = [int(e) for e in eos_ids]
    if not eos or any(e < 0 for e in eos):
        raise TokenizerError(f"eos_ids must be a non-empty list of ids >= 0, got {list(eos_ids)}")
    if ids["pad"] in eos:
        # Tunix fills the output buffer with pad: a pad eos would end every row at once.
        raise TokenizerError(f"eos_ids {eos} contain the pad id {ids['pad']}")


def load_tokenizer(path: str | os.PathLike[str],
                   expected: Mapping[str, int] | None = None) -> Tokenizer:
    """Load a SentencePiece `tokenizer.model` (or a directory holding one) and check its ids
    (`expected`: any of bos/eos/pad/unk -> the id the model needs, e.g. `GEMMA_SPECIAL_IDS`)."""
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.model"
    if not p.is_file():
        raise TokenizerError(f"{p}: tokenizer file not found; expected a SentencePiece "
                             "'tokenizer.model' file or a directory that contains one.")
    sp = spm.SentencePieceProcessor()
    try:
        # Load from bytes: sentencepiece's file loader gives unhelpful errors on odd paths.
        sp.load_from_serialized_proto(p.read_bytes())
    except (RuntimeError, OSError) as exc:
        raise TokenizerError(f"{p}: not a loadable SentencePiece model ({exc}); expected a "
                             "serialized ModelProto.") from exc
    tok = Tokenizer(sp, source=str(p))
    check_special_ids(tok, expected)
    return tok
