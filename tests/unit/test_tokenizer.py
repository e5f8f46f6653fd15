"""Tokenizer: Gemma special ids checked on load, tiny deterministic tokenizer."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as sp_pb2

from kaggle_lib.models.loader import TINY_TOKENIZER_DIR
from kaggle_lib.models.tokenizer import GEMMA_SPECIAL_IDS, TokenizerError, load_tokenizer
from scripts import make_tiny_tokenizer
from scripts.make_tiny_tokenizer import TINY_USER_SYMBOLS, build_tiny_tokenizer

CORPUS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have?",
    "<reasoning>3 + 5 = 8</reasoning><answer>8</answer>",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tok"), CORPUS, vocab_size=384)


def _rewrite(src: Path, dst: Path, **trainer_fields: object) -> Path:
    """Copy a SentencePiece model with some trainer_spec fields changed."""
    proto = sp_pb2.ModelProto()
    proto.ParseFromString(src.read_bytes())
    for key, value in trainer_fields.items():
        setattr(proto.trainer_spec, key, value)
    dst.write_bytes(proto.SerializeToString())
    return dst


def test_tiny_tokenizer_has_gemma_ids_and_single_piece_tags(tiny_path: Path) -> None:
    tok = load_tokenizer(tiny_path, expected=GEMMA_SPECIAL_IDS)
    assert tok.special_ids() == {"pad": 0, "eos": 1, "bos": 2, "unk": 3}
    assert tok.vocab_size == 384
    for tag in TINY_USER_SYMBOLS:
        ids = tok.encode(tag)
        assert len(ids) == 1 and tok.id_to_piece(ids[0]) == tag
    text = "<reasoning>12 * 7 = 84</reasoning><answer>84</answer>"
    ids = tok.encode(text, add_bos=True)
    assert ids[0] == 2 and 2 not in ids[1:]
    assert tok.decode(ids) == text
    # Digits are split one per piece, as in Gemma.
    assert [tok.id_to_piece(i) for i in tok.encode("84")] == ["8", "4"]


def test_tiny_tokenizer_byte_fallback_round_trips_unseen_text(tiny_path: Path) -> None:
    tok = load_tokenizer(tiny_path)
    text = "Zoë paid 5€ — ✓"
    ids = tok.encode(text)
    assert tok.unk_id() not in ids
    assert tok.decode(ids) == text


def test_tiny_tokenizer_is_deterministic_and_fast(tmp_path: Path, tiny_path: Path) -> None:
    start = time.perf_counter()
    again = build_tiny_tokenizer(tmp_path, CORPUS, vocab_size=384)
    assert time.perf_counter() - start < 2.0
    assert again.read_bytes() == tiny_path.read_bytes()


def test_processor_is_usable_by_tunix(tiny_path: Path) -> None:
    from tunix.generate.tokenizer_adapter import TokenizerAdapter

    tok = load_tokenizer(tiny_path)
    assert isinstance(tok.processor, spm.SentencePieceProcessor)
    adapter = TokenizerAdapter(tok.processor)
    assert (adapter.bos_id(), adapter.eos_id(), adapter.pad_id()) == (2, 1, 0)
    assert adapter.encode("Tom has 3 apples") == tok.encode("Tom has 3 apples")


def test_unset_piece_names_are_refused_with_the_fix(tmp_path: Path, tiny_path: Path) -> None:
    # sentencepiece's defaults "<s>"/"</s>" are not in a Gemma-style vocabulary: it then
    # reports bos_id() == -1, which Tunix's Sampler would feed in as a token.
    bad = _rewrite(tiny_path, tmp_path / "tokenizer.model", bos_piece="<s>", eos_piece="</s>")
    raw = spm.SentencePieceProcessor(model_file=str(bad))
    assert raw.bos_id() == -1  # the failure mode the check exists for
    with pytest.raises(TokenizerError) as err:
        load_tokenizer(bad)
    msg = str(err.value)
    assert str(bad) in msg and "bos" in msg and "bos_piece" in msg and "'<bos>'" in msg


def test_disabled_pad_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nopad.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_prefix=str(tmp_path / "nopad"),
        model_type="bpe",
        vocab_size=384,
        byte_fallback=True,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )  # sentencepiece's default: pad_id = -1
    with pytest.raises(TokenizerError, match=r"nopad\.model.*no pad id"):
        load_tokenizer(path)


def test_expected_ids_must_match(tmp_path: Path, tiny_path: Path) -> None:
    with pytest.raises(TokenizerError, match=r"eos is 1 but 106 was expected"):
        load_tokenizer(tiny_path, expected={"bos": 2, "eos": 106})
    with pytest.raises(TokenizerError, match=r"unknown keys \['eot'\]"):
        load_tokenizer(tiny_path, expected={"eot": 106})


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "absent.model")
    junk = tmp_path / "tokenizer.model"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(TokenizerError, match="not a loadable SentencePiece model"):
        load_tokenizer(tmp_path)  # a directory resolves to its tokenizer.model


def test_tiny_tokenizer_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="corpus is empty"):
        build_tiny_tokenizer(tmp_path, ["  "])
    with pytest.raises(TokenizerError, match="vocab_size=100 is too small"):
        build_tiny_tokenizer(tmp_path, CORPUS, vocab_size=100)


def test_shipped_tiny_tokenizer_matches_its_script(tmp_path: Path) -> None:
    assert make_tiny_tokenizer.main(["--check", "--out", str(TINY_TOKENIZER_DIR)]) == 0
    tok = load_tokenizer(TINY_TOKENIZER_DIR, expected=GEMMA_SPECIAL_IDS)
    assert tok.vocab_size == 512
    # --check really compares: another model in the folder is reported.
    (tmp_path / "tokenizer.model").write_bytes(build_tiny_tokenizer(tmp_path / "other", ["a b c"],
                                                                    vocab_size=300).read_bytes())
    assert make_tiny_tokenizer.main(["--check", "--out", str(tmp_path)]) == 1
