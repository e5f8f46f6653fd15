#!/usr/bin/env python
"""Build the tiny Gemma-style SentencePiece model that the tiny test configs load.

Writes kaggle_lib/models/files/tiny/tokenizer.model (shipped, a few kB): a BPE model trained
on generated reasoning problems, with Gemma's special ids. Deterministic: `--check` exits 1
when the shipped file differs from a fresh build (tests/unit/test_tokenizer.py runs it).

    .venv/bin/python scripts/make_tiny_tokenizer.py [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaggle_lib.data import template  # noqa: E402
from kaggle_lib.models import registry  # noqa: E402
from kaggle_lib.models.loader import TINY_TOKENIZER_DIR  # noqa: E402
from kaggle_lib.models.tokenizer import (  # noqa: E402
    GEMMA_SPECIAL_IDS,
    GEMMA_SPECIAL_PIECES,
    TokenizerError,
    load_tokenizer,
)
from scripts.synthetic_data import generate_items  # noqa: E402

# The corpus of the shipped model: generated problems in the base-model (non-instruct) layout.
CORPUS_ITEMS = 400
CORPUS_SEED = 1234

# Tags of the output format and the chat turn markers, kept as single pieces.
TINY_USER_SYMBOLS: tuple[str, ...] = (
    "<reasoning>",
    "</reasoning>",
    "<answer>",
    "</answer>",
    "<start_of_turn>",
    "<end_of_turn>",
)


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


def tiny_corpus() -> list[str]:
    """Prompt + target texts of the generated problems the shipped model is trained on."""
    items = generate_items(CORPUS_ITEMS, seed=CORPUS_SEED)
    return [template.format_prompt(i["prompt"], instruct=False)
            + template.format_target(i["reasoning"], i["answer"], instruct=False) for i in items]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=TINY_TOKENIZER_DIR, help="output folder")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if <out>/tokenizer.model differs")
    args = parser.parse_args(argv)
    shipped = args.out / "tokenizer.model"
    if not args.check:
        path = build_tiny_tokenizer(args.out, tiny_corpus(), vocab_size=registry.TINY_VOCAB)
        print(f"{path}: {path.stat().st_size} bytes")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = build_tiny_tokenizer(tmp, tiny_corpus(), vocab_size=registry.TINY_VOCAB)
        if not shipped.is_file() or shipped.read_bytes() != fresh.read_bytes():
            print(f"out of date: {shipped}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
