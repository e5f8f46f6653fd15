"""SentencePiece tokenizer whose special ids are checked when it is loaded.

Tunix's `Sampler` takes BOS/EOS from `bos_id()` / `eos_id()` and tests BOS by truthiness:
a model that reports -1 (piece names unset in its trainer_spec) makes it prepend token -1
and never stop. `load_tokenizer` refuses such a model up front with a message saying how
to fix it, instead of letting generation run away.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import sentencepiece as spm

from kaggle_lib.errors import KaggleLibError

__all__ = [
    "GEMMA_SPECIAL_IDS",
    "TINY_USER_SYMBOLS",
    "Tokenizer",
    "TokenizerError",
    "build_tiny_tokenizer",
    "check_special_ids",
    "load_tokenizer",
]

# Gemma's special ids (all generations): pad 0, eos 1, bos 2, unk 3.
GEMMA_SPECIAL_IDS: dict[str, int] = {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
# Gemma's piece names for those ids; used in error messages and the tiny tokenizer.
GEMMA_SPECIAL_PIECES: dict[str, str] = {
    "pad": "<pad>",
    "eos": "<eos>",
    "bos": "<bos>",
    "unk": "<unk>",
}
# Tags of the output format and the chat turn markers, kept as single pieces.
TINY_USER_SYMBOLS: tuple[str, ...] = (
    "<reasoning>",
    "</reasoning>",
    "<answer>",
    "</answer>",
    "<start_of_turn>",
    "<end_of_turn>",
)
_REQUIRED = ("bos", "eos", "pad")


class TokenizerError(KaggleLibError, ValueError):
    """A tokenizer file is missing, unreadable or has unusable special ids."""

    hint = "The tokenizer's special ids are missing; rebuild it with bos/eos/pad pieces set."


class Tokenizer:
    """Thin wrapper over a `sentencepiece.SentencePieceProcessor`.

    `processor` is the raw processor, which Tunix's `TokenizerAdapter` and `Sampler` accept.
    """

    def __init__(self, processor: spm.SentencePieceProcessor, source: str = "<memory>") -> None:
        self._sp = processor
        self.source = source

    @property
    def processor(self) -> spm.SentencePieceProcessor:
        """The underlying SentencePieceProcessor."""
        return self._sp

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the vocabulary."""
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
        return {
            "bos": self.bos_id(),
            "eos": self.eos_id(),
            "pad": self.pad_id(),
            "unk": self.unk_id(),
        }

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size}, {self.special_ids()})"


def check_special_ids(
    tokenizer: Tokenizer, expected: Mapping[str, int] | None = None
) -> None:
    """Raise `TokenizerError` when bos/eos/pad are unset (< 0), out of range or not `expected`."""
    ids = tokenizer.special_ids()
    size = tokenizer.vocab_size
    for name in _REQUIRED:
        value = ids[name]
        if value < 0:
            raise TokenizerError(
                f"{tokenizer.source}: tokenizer has no {name} id (sentencepiece reports {value}). "
                f"SentencePiece derives it from trainer_spec.{name}_piece, which must name a piece "
                f"of the vocabulary (Gemma: {name}_piece={GEMMA_SPECIAL_PIECES[name]!r}) and "
                f"trainer_spec.{name}_id must not be -1. Fix: rebuild the model with "
                f"{name}_piece/{name}_id set (Gemma ids: {GEMMA_SPECIAL_IDS}); without it Tunix's "
                "Sampler prepends/stops on token -1 and generation never ends."
            )
        if value >= size:
            raise TokenizerError(
                f"{tokenizer.source}: tokenizer {name} id {value} is outside the vocabulary "
                f"(size {size}); allowed: 0..{size - 1}."
            )
    if expected:
        unknown = sorted(set(expected) - set(ids))
        if unknown:
            raise TokenizerError(
                f"{tokenizer.source}: expected special ids name unknown keys {unknown}; "
                f"allowed keys: {sorted(ids)}."
            )
        wrong = {k: (ids[k], int(v)) for k, v in expected.items() if ids[k] != int(v)}
        if wrong:
            details = ", ".join(f"{k} is {got} but {want} was expected" for k, (got, want) in wrong.items())
            raise TokenizerError(
                f"{tokenizer.source}: tokenizer special ids do not match the model: {details}. "
                "Use the tokenizer.model that belongs to this checkpoint."
            )


def load_tokenizer(
    path: str | os.PathLike[str], expected: Mapping[str, int] | None = None
) -> Tokenizer:
    """Load a SentencePiece `tokenizer.model` (or a directory holding one) and check its ids.

    `expected` maps any of "bos"/"eos"/"pad"/"unk" to the id the model needs,
    e.g. `GEMMA_SPECIAL_IDS`.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "tokenizer.model"
    if not p.is_file():
        raise TokenizerError(
            f"{p}: tokenizer file not found; expected a SentencePiece 'tokenizer.model' file "
            "or a directory that contains one."
        )
    sp = spm.SentencePieceProcessor()
    try:
        # Load from bytes: sentencepiece's file loader gives unhelpful errors on odd paths.
        sp.load_from_serialized_proto(p.read_bytes())
    except (RuntimeError, OSError) as exc:
        raise TokenizerError(
            f"{p}: not a loadable SentencePiece model ({exc}); expected a serialized ModelProto."
        ) from exc
    tok = Tokenizer(sp, source=str(p))
    check_special_ids(tok, expected)
    return tok


def build_tiny_tokenizer(
    out_dir: str | os.PathLike[str],
    corpus: Sequence[str],
    vocab_size: int = 512,
    user_symbols: Sequence[str] = TINY_USER_SYMBOLS,
) -> Path:
    """Train a small Gemma-style SentencePiece BPE model; returns `<out_dir>/tokenizer.model`.

    Ids follow Gemma (pad 0, eos 1, bos 2, unk 3), bytes fall back to <0x..> pieces, digits
    are split (each digit is a piece), and text is not normalised. Single-threaded, so the result is deterministic.
    """
    if not corpus or not any(line.strip() for line in corpus):
        raise TokenizerError("build_tiny_tokenizer: corpus is empty; give at least one non-blank line.")
    # 4 specials + 256 byte pieces + user symbols must fit, with room for merges.
    minimum = 4 + 256 + len(user_symbols) + 8
    if vocab_size < minimum:
        raise TokenizerError(
            f"build_tiny_tokenizer: vocab_size={vocab_size} is too small; allowed: >= {minimum} "
            "(4 special + 256 byte pieces + user symbols + a few merges)."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    try:
        _train(corpus, buf, vocab_size, user_symbols)
    except RuntimeError as exc:
        # e.g. "Vocabulary size is smaller than required_chars": every distinct character
        # of the corpus needs its own piece on top of the specials and the 256 bytes.
        raise TokenizerError(
            f"build_tiny_tokenizer: sentencepiece could not train with vocab_size={vocab_size}: "
            f"{exc}. Allowed: a vocab_size of at least 4 + 256 + {len(user_symbols)} + the number "
            "of distinct characters in the corpus."
        ) from exc
    path = out / "tokenizer.model"
    tmp = path.with_suffix(".model.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    load_tokenizer(path, expected=GEMMA_SPECIAL_IDS)
    return path


def _train(
    corpus: Sequence[str], buf: io.BytesIO, vocab_size: int, user_symbols: Sequence[str]
) -> None:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in corpus if line.strip()]),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        # A small corpus may not support vocab_size merges; fill what it can.
        hard_vocab_limit=False,
        byte_fallback=True,
        character_coverage=1.0,
        split_digits=True,
        # Every digit gets its own piece even if the corpus lacks it (arithmetic answers).
        required_chars="0123456789",
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece=GEMMA_SPECIAL_PIECES["pad"],
        eos_piece=GEMMA_SPECIAL_PIECES["eos"],
        bos_piece=GEMMA_SPECIAL_PIECES["bos"],
        unk_piece=GEMMA_SPECIAL_PIECES["unk"],
        user_defined_symbols=list(user_symbols),
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
