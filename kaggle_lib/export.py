"""Exports of a trained Gemma 3: the LoRA adapters merged into the base weights, written as

* **HF safetensors** (`model.safetensors`, `config.json`, `generation_config.json`,
  `tokenizer.model`): loads in our loader (`load_model(name, source="local", path=dir)`),
  in Tunix's `create_model_from_safe_tensors` and in transformers' `Gemma3ForCausalLM`.
  The merge itself is Tunix's `gemma3.params.save_lora_merged_model_as_safetensors`, fed with a
  float32 base written from memory (its loader reads safetensors with numpy, which has no
  bfloat16), so the export is float32 unless `dtype="bfloat16"` is asked for.
* **Orbax checkpoint in the upstream Gemma 3 layout** (`transformer/layer_N/...`, the layout of
  Kaggle's `google/gemma-3/flax` models): Tunix's `gemma3.params.create_model_from_checkpoint`
  restores it, so it is what a Kaggle Model for the multi-session track holds (no safetensors).

Merging follows qwix's LoRA exactly: for a weight used as `einsum(lhs, W)` qwix adds
`einsum(lhs, A, B) * alpha / rank`, where A carries W's dimensions shared with lhs plus the rank
and B the rank plus W's other dimensions, so W' = W + alpha / rank * einsum(A, B -> W's layout);
for `nnx.Linear` (dot_general) A is (in, r), B is (r, out) and W' = W + alpha / rank * A @ B.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HF_DIR = "hf"
ORBAX_DIR = "orbax"
EXPORT_INFO = "export_info.json"
# float32 on CPU: merged-model logits match the LoRA model to ~1e-6 on tiny models (see
# tests/test_export.py). Real models sum over more terms in a different order (W + A@B merged vs
# x@W + (x@A)@B): the real 270M's logits (scale ~30) differ by ~1.7e-4, so the tolerance is
# LOGITS_TOLERANCE or RELATIVE_TOLERANCE x the largest logit, whichever is larger.
LOGITS_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 2e-5

_NORMS_HF = {
    "pre_attention_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "pre_ffw_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


class ExportError(ValueError):
    """A model or argument the exporter cannot turn into a faithful export."""


# ---------------------------------------------------------------------------- LoRA merge


def _flat_params(model: Any) -> dict[tuple[Any, ...], np.ndarray]:
    """Every nnx.Param (LoRA params included) as host numpy arrays, keyed by path tuple."""
    import jax
    from flax import nnx

    out = {}
    for path, value in nnx.iter_graph(model):
        if isinstance(value, nnx.Param):
            out[tuple(path)] = np.asarray(jax.device_get(value.get_value()))
    return out


def lora_rank(model: Any) -> int | None:
    """The LoRA rank of a qwix-wrapped model (None when it has no LoRA params)."""
    from flax import nnx

    for path, value in nnx.iter_graph(model):
        if isinstance(value, nnx.LoRAParam) and str(path[-1]).endswith("_lora_a"):
            return int(value.get_value().shape[-1])
    return None


def _einsum_factors(einsum_str: str, weight_ndim: int) -> tuple[str, str, str]:
    """(A's subscripts, B's subscripts, W's subscripts) for a qwix LoRA on `einsum(lhs, W)`."""
    inputs, _ = einsum_str.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    if "." in einsum_str or len(rhs) != weight_ndim:
        raise ExportError(f"einsum {einsum_str!r}: only explicit subscripts are supported")
    rank = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") - set(lhs + rhs))
    r = "r" if "r" not in lhs + rhs else rank[0]
    shared = "".join(c for c in rhs if c in lhs)
    free = "".join(c for c in rhs if c not in lhs)
    return shared + r, r + free, rhs


def merge_lora_params(model: Any, alpha: float, dtype: Any = None) -> dict[tuple[Any, ...], np.ndarray]:
    """Base params with every LoRA pair folded in (float32 math), cast to `dtype` (default:
    each base weight's own dtype)."""
    from flax import nnx

    params = _flat_params(model)
    rank = lora_rank(model)
    if rank is None:
        return {k: v.astype(dtype or v.dtype) for k, v in params.items()}
    modules = {tuple(p): m for p, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)}
    merged = {k: v for k, v in params.items() if not isinstance(k[-1], str)
              or not k[-1].endswith(("_lora_a", "_lora_b"))}
    scale = float(alpha) / rank
    for key in [k for k in params if isinstance(k[-1], str) and k[-1].endswith("_lora_a")]:
        weight_name = key[-1][: -len("_lora_a")]
        owner, w_key = key[:-1], (*key[:-1], weight_name)
        a = params[key].astype(np.float32)
        b = params[(*owner, f"{weight_name}_lora_b")].astype(np.float32)
        w = params[w_key]
        module = modules.get(owner)
        if hasattr(module, "einsum_str"):
            a_sub, b_sub, w_sub = _einsum_factors(module.einsum_str, w.ndim)
            delta = np.einsum(f"{a_sub},{b_sub}->{w_sub}", a, b)
        elif w.ndim == 2 and a.shape == (w.shape[0], rank) and b.shape == (rank, w.shape[1]):
            delta = a @ b  # nnx.Linear: x @ kernel
        else:
            raise ExportError(
                f"LoRA on {'.'.join(map(str, owner))} ({type(module).__name__}, weight "
                f"{w.shape}, A {a.shape}, B {b.shape}): only Einsum and nnx.Linear are supported"
            )
        merged[w_key] = (w.astype(np.float32) + scale * delta).astype(dtype or w.dtype)
    return {k: v.astype(dtype or v.dtype) for k, v in merged.items()}


def _model_class_and_config(model: Any) -> tuple[type, Any]:
    from tunix.models.gemma3.model import Gemma3

    if not isinstance(model, Gemma3):
        raise ExportError(
            f"exports support Tunix Gemma3 models; got {type(model).__name__} "
            "(allowed: tunix.models.gemma3.model.Gemma3, LoRA-wrapped or not)"
        )
    return Gemma3, model.config


def _unflatten(flat: dict[tuple[Any, ...], np.ndarray]) -> dict[Any, Any]:
    tree: dict[Any, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def build_model(config: Any, flat: dict[tuple[Any, ...], np.ndarray], mesh: Any = None) -> Any:
    """A plain Tunix Gemma3 holding exactly `flat` (no random init: built from shapes)."""
    import jax.numpy as jnp
    from flax import nnx
    from tunix.models.gemma3.model import Gemma3

    abstract = nnx.eval_shape(lambda: Gemma3(config, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    expected = {tuple(p) for p, v in nnx.iter_graph(abstract) if isinstance(v, nnx.Variable)}
    if expected != set(flat):
        missing, extra = sorted(map(str, expected - set(flat))), sorted(map(str, set(flat) - expected))
        raise ExportError(f"parameter tree mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    nnx.replace_by_pure_dict(state, _unflatten({k: jnp.asarray(v) for k, v in flat.items()}))
    model = nnx.merge(graphdef, state)
    if mesh is not None:
        from kaggle_lib.models.loader import shard_model

        model = shard_model(model, mesh)
    return model


def merge_lora(model: Any, alpha: float, mesh: Any = None) -> Any:
    """A new plain Gemma3 whose weights are the LoRA model's base + alpha/rank * A @ B."""
    _, config = _model_class_and_config(model)
    return build_model(config, merge_lora_params(model, alpha), mesh)


# ---------------------------------------------------------------------------- HF layout


def hf_config(config: Any, *, eos_ids: Sequence[int] = (1,), dtype: str = "float32") -> dict[str, Any]:
    """transformers `Gemma3TextConfig` for a Tunix Gemma3 config (inverse of
    `models.hf_compat.tunix_config_from_hf`). Rope is written in both config generations."""
    from tunix.models.gemma3 import model as g3

    if config.vision_config is not None:
        raise ExportError("vision Gemma 3 configs are not exported; allowed: text-only configs")
    pattern = ["sliding_attention" if t == g3.AttentionType.LOCAL_SLIDING else "full_attention"
               for t in g3.GEMMA3_ATTENTION_PATTERN]
    qnorm = g3.QueryPreAttentionNormalisation
    scalar = (config.head_dim if config.query_pre_attn_norm == qnorm.BY_ONE_OVER_SQRT_HEAD_DIM
              else config.embed_dim // config.num_heads)

    def rope(theta: float, factor: float) -> dict[str, Any]:
        if factor == 1.0:
            return {"rope_type": "default", "rope_theta": float(theta)}
        return {"rope_type": "linear", "rope_theta": float(theta), "factor": float(factor)}

    eos = list(eos_ids)
    return {
        "architectures": ["Gemma3ForCausalLM"],
        "model_type": "gemma3_text",
        "vocab_size": config.num_embed,
        "hidden_size": config.embed_dim,
        "intermediate_size": config.hidden_dim,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        # Gemma 3 270M/1B publish 32k positions; the rope-scaled larger models 128k.
        "max_position_embeddings": 32768 if config.global_scale_factor == 1.0 else 131072,
        "rms_norm_eps": 1e-6,
        "pad_token_id": 0,
        "bos_token_id": 2,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "tie_word_embeddings": True,
        "rope_parameters": {
            "full_attention": rope(config.global_base_frequency, config.global_scale_factor),
            "sliding_attention": rope(config.local_base_frequency, config.local_scale_factor),
        },
        "rope_theta": float(config.global_base_frequency),
        "rope_local_base_freq": float(config.local_base_frequency),
        "rope_scaling": (None if config.global_scale_factor == 1.0
                         else {"rope_type": "linear", "factor": float(config.global_scale_factor)}),
        "attention_bias": False,
        "attention_dropout": 0.0,
        "query_pre_attn_scalar": scalar,
        "sliding_window": config.sliding_window_size,
        "layer_types": [pattern[i % len(pattern)] for i in range(config.num_layers)],
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "use_bidirectional_attention": False,
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": dtype,
        "torch_dtype": dtype,
    }


def _heads_to_rows(w: np.ndarray) -> np.ndarray:
    """Tunix (heads, embed, head_dim) -> HF (heads * head_dim, embed)."""
    n, d, h = w.shape
    return np.ascontiguousarray(w.transpose(0, 2, 1).reshape(n * h, d))


def hf_state_dict(flat: dict[tuple[Any, ...], np.ndarray]) -> dict[str, np.ndarray]:
    """HF Gemma 3 text names and layouts for a plain Tunix Gemma3 parameter tree (inverse of
    Tunix's `gemma3/params_safetensors` mapping). Unknown names raise: nothing is dropped."""
    out: dict[str, np.ndarray] = {}
    for path, x in flat.items():
        if path == ("embedder", "input_embedding"):
            out["model.embed_tokens.weight"] = x
        elif path == ("final_norm", "scale"):
            out["model.norm.weight"] = x
        elif path[0] == "layers" and len(path) >= 4:
            pre = f"model.layers.{path[1]}"
            rest = tuple(map(str, path[2:]))
            if rest == ("attn", "q_einsum", "w"):
                out[f"{pre}.self_attn.q_proj.weight"] = _heads_to_rows(x)
            elif rest == ("attn", "kv_einsum", "w"):
                out[f"{pre}.self_attn.k_proj.weight"] = _heads_to_rows(x[0])
                out[f"{pre}.self_attn.v_proj.weight"] = _heads_to_rows(x[1])
            elif rest == ("attn", "qkv_einsum", "w"):
                for i, name in enumerate("qkv"):
                    out[f"{pre}.self_attn.{name}_proj.weight"] = _heads_to_rows(x[i])
            elif rest == ("attn", "attn_vec_einsum", "w"):
                n, h, d = x.shape
                out[f"{pre}.self_attn.o_proj.weight"] = np.ascontiguousarray(x.reshape(n * h, d).T)
            elif rest in (("attn", "_query_norm", "scale"), ("attn", "_key_norm", "scale")):
                out[f"{pre}.self_attn.{rest[1][1]}_norm.weight"] = x
            elif rest[0] == "mlp" and rest[2:] == ("kernel",):
                out[f"{pre}.mlp.{rest[1]}.weight"] = np.ascontiguousarray(x.T)
            elif rest[0] in _NORMS_HF and rest[1:] == ("scale",):
                out[f"{pre}.{_NORMS_HF[rest[0]]}.weight"] = x
            else:
                raise ExportError(f"no HF name for Tunix parameter {'.'.join(map(str, path))}")
        else:
            raise ExportError(f"no HF name for Tunix parameter {'.'.join(map(str, path))}")
    return out


def _write_safetensors(tensors: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    if dtype == "float32":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
                  str(path), metadata={"format": "pt"})
    elif dtype == "bfloat16":
        import jax.numpy as jnp
        from safetensors.flax import save_file as save_flax

        save_flax({k: jnp.asarray(v, dtype=jnp.bfloat16) for k, v in tensors.items()}, str(path),
                  metadata={"format": "pt"})
    else:
        raise ExportError(f"export dtype {dtype!r}; allowed: 'float32', 'bfloat16'")


def _write_side_files(directory: Path, config: Any, tokenizer: Any, eos_ids: Sequence[int],
                      dtype: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(
        json.dumps(hf_config(config, eos_ids=eos_ids, dtype=dtype), indent=2) + "\n")
    eos = list(eos_ids)
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 2, "pad_token_id": 0, "eos_token_id": eos[0] if len(eos) == 1 else eos},
        indent=2) + "\n")
    if tokenizer is not None:
        (directory / "tokenizer.model").write_bytes(_tokenizer_bytes(tokenizer))


def _tokenizer_bytes(tokenizer: Any) -> bytes:
    """A serialized SentencePiece model from our Tokenizer, a processor, bytes or a path."""
    if isinstance(tokenizer, bytes):
        return tokenizer
    if isinstance(tokenizer, str | Path):
        return Path(tokenizer).read_bytes()
    processor = getattr(tokenizer, "processor", tokenizer)
    return processor.serialized_model_proto()


def save_hf_safetensors(model: Any, out_dir: str | Path, *, tokenizer: Any = None,
                        alpha: float | None = None, eos_ids: Sequence[int] = (1,),
                        dtype: str = "float32") -> Path:
    """Write the (LoRA-merged) model as an HF Gemma 3 directory; returns it.

    With LoRA params, `alpha` (train.sft.lora.alpha) is required and the merge is done by
    Tunix's `save_lora_merged_model_as_safetensors` on a float32 base written from memory.
    """
    _, config = _model_class_and_config(model)
    out_dir = Path(out_dir)
    rank = lora_rank(model)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if rank is None:
        _write_side_files(out_dir, config, tokenizer, eos_ids, dtype)
        _write_safetensors(hf_state_dict(_flat_params(model)), out_dir / "model.safetensors", dtype)
        return out_dir
    if alpha is None:
        raise ExportError("the model has LoRA params: pass alpha (train.sft.lora.alpha) to merge them")
    from tunix.models.gemma3 import params as g3_params

    base_params = {k: v for k, v in _flat_params(model).items()
                   if not str(k[-1]).endswith(("_lora_a", "_lora_b"))}
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".base-") as tmp:
        base = Path(tmp)
        # Tunix's merge copies every non-safetensors file of the base directory.
        _write_side_files(base, config, tokenizer, eos_ids, dtype)
        _write_safetensors(hf_state_dict(base_params), base / "model.safetensors", "float32")
        g3_params.save_lora_merged_model_as_safetensors(str(base), str(out_dir), model, rank, alpha)
    if dtype != "float32":
        from safetensors.numpy import load_file

        merged = load_file(str(out_dir / "model.safetensors"))
        _write_safetensors(merged, out_dir / "model.safetensors", dtype)
    return out_dir


# ---------------------------------------------------------------------------- Orbax (Kaggle)


def upstream_params(flat: dict[tuple[Any, ...], np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The upstream Gemma 3 checkpoint tree (`{'transformer/layer_0/attn/q_einsum': {'w': ..}}`)
    that Tunix's `gemma3.params.map_from_upstream_checkpoint` maps back onto Gemma3."""
    tree: dict[str, dict[str, np.ndarray]] = {}
    gating: dict[int, dict[str, np.ndarray]] = {}
    for path, x in flat.items():
        if path[0] == "embedder" and len(path) == 2:
            tree.setdefault("transformer/embedder", {})[str(path[1])] = x
        elif path == ("final_norm", "scale"):
            tree["transformer/final_norm"] = {"scale": x}
        elif path[0] == "layers":
            layer, rest = int(path[1]), tuple(map(str, path[2:]))
            prefix = f"transformer/layer_{layer}"
            if rest in (("mlp", "gate_proj", "kernel"), ("mlp", "up_proj", "kernel")):
                gating.setdefault(layer, {})[rest[1]] = x
            elif rest == ("mlp", "down_proj", "kernel"):
                tree[f"{prefix}/mlp/linear"] = {"w": x}
            else:
                tree["/".join((prefix, *rest[:-1]))] = {rest[-1]: x}
        else:
            raise ExportError(f"no upstream name for Tunix parameter {'.'.join(map(str, path))}")
    for layer, parts in gating.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            raise ExportError(f"layer {layer}: gate_proj and up_proj must both be present")
        # upstream (2, hidden, embed); Tunix kernels are (embed, hidden)
        tree[f"transformer/layer_{layer}/mlp/gating_einsum"] = {
            "w": np.stack([parts["gate_proj"].T, parts["up_proj"].T])}
    return tree


def save_orbax(model: Any, out_dir: str | Path, *, tokenizer: Any = None,
               alpha: float | None = None) -> Path:
    """Write the (LoRA-merged) model as an upstream-layout Orbax checkpoint in `out_dir`
    (plus tokenizer.model), loadable by `tunix.models.gemma3.params.create_model_from_checkpoint`."""
    import orbax.checkpoint as ocp

    _, config = _model_class_and_config(model)
    if lora_rank(model) is not None and alpha is None:
        raise ExportError("the model has LoRA params: pass alpha (train.sft.lora.alpha) to merge them")
    flat = merge_lora_params(model, alpha or 0.0)
    out_dir = Path(out_dir).resolve()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out_dir, upstream_params(flat))
    checkpointer.wait_until_finished()
    checkpointer.close()
    if tokenizer is not None:
        (out_dir / "tokenizer.model").write_bytes(_tokenizer_bytes(tokenizer))
    del config
    return out_dir


def load_orbax(directory: str | Path, config: Any, *, dtype: Any = None, mesh: Any = None) -> Any:
    """Restore an exported (or Kaggle's own) upstream Gemma 3 checkpoint with Tunix's loader."""
    import jax.numpy as jnp
    from tunix.models.gemma3 import params as g3_params

    return g3_params.create_model_from_checkpoint(
        str(Path(directory).resolve()), config, mesh, dtype=dtype or jnp.float32)


# ---------------------------------------------------------------------------- checks


def _forward(model: Any, tokens: Any) -> Any:
    import jax.numpy as jnp

    batch, length = tokens.shape
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)), (batch, length, length))
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    logits, _ = model(tokens, positions, None, mask)
    return logits


_jitted_forward: Any = None


def forward_logits(model: Any, tokens: np.ndarray) -> np.ndarray:
    """Full-sequence logits [B, L, V] (float32) of a Tunix Gemma3 under a causal mask."""
    global _jitted_forward
    import jax.numpy as jnp
    from flax import nnx

    if _jitted_forward is None:  # compiled once per model structure; eager is ~10x slower
        _jitted_forward = nnx.jit(_forward)
    logits = _jitted_forward(model, jnp.asarray(tokens, dtype=jnp.int32))
    return np.asarray(logits, dtype=np.float32)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@dataclasses.dataclass
class ExportResult:
    hf_dir: Path
    orbax_dir: Path
    hf_max_logit_diff: float
    orbax_max_logit_diff: float
    tolerance: float

    def to_manifest(self, run_dir: Path, step: int | None) -> dict[str, Any]:
        def rel(p: Path) -> str:
            return str(p.resolve().relative_to(Path(run_dir).resolve()))

        return {
            HF_DIR: {"path": rel(self.hf_dir), "format": "hf-safetensors", "step": step,
                     "max_logit_diff": self.hf_max_logit_diff, "tolerance": self.tolerance},
            ORBAX_DIR: {"path": rel(self.orbax_dir), "format": "orbax-gemma3-upstream",
                        "step": step, "max_logit_diff": self.orbax_max_logit_diff,
                        "tolerance": self.tolerance},
        }


def export_model(model: Any, out_dir: str | Path, *, tokenizer: Any, alpha: float | None,
                 eos_ids: Sequence[int] = (1,), check_tokens: np.ndarray | None = None,
                 tolerance: float | None = None) -> ExportResult:
    """Both exports under `out_dir` (hf/, orbax/), each loaded back in float32 with Tunix's own
    loaders and compared on `check_tokens` with a reference, raising ExportError beyond the
    tolerance. Reference and default tolerance: for float32 models the in-memory (LoRA) model
    itself and LOGITS_TOLERANCE; for bfloat16 models a float32 copy of the merged weights and
    1% of the largest logit (bfloat16 rounding of the saved weights; a wrong layout is off by
    far more)."""
    import jax
    import jax.numpy as jnp
    from tunix.models.gemma3 import params_safetensors

    _, config = _model_class_and_config(model)
    out_dir = Path(out_dir)
    hf_dir = save_hf_safetensors(model, out_dir / HF_DIR, tokenizer=tokenizer, alpha=alpha,
                                 eos_ids=eos_ids)
    orbax_dir = save_orbax(model, out_dir / ORBAX_DIR, tokenizer=tokenizer, alpha=alpha)
    if check_tokens is None:
        check_tokens = np.array([[2] + list(range(3, 3 + 15))], dtype=np.int32) % config.num_embed
    param_dtype = jnp.dtype(getattr(config, "param_dtype", jnp.float32))
    f32 = dataclasses.replace(config, param_dtype=jnp.float32)
    # TPUs run float32 matmuls in bfloat16 passes by default: the check wants the real numbers.
    with jax.default_matmul_precision("highest"):
        if param_dtype == jnp.float32:
            reference = forward_logits(model, check_tokens)
            tol = (max(LOGITS_TOLERANCE, RELATIVE_TOLERANCE * float(np.abs(reference).max()))
                   if tolerance is None else tolerance)
        else:
            ref_model = build_model(f32, merge_lora_params(model, alpha or 0.0, dtype=np.float32))
            reference = forward_logits(ref_model, check_tokens)
            del ref_model
            tol = (0.01 * max(1.0, float(np.abs(reference).max()))
                   if tolerance is None else tolerance)
        hf_model = params_safetensors.create_model_from_safe_tensors(str(hf_dir), f32,
                                                                     dtype=jnp.float32)
        hf_diff = max_abs_diff(forward_logits(hf_model, check_tokens), reference)
        del hf_model
        orbax_model = load_orbax(orbax_dir, f32, dtype=jnp.float32)
        orbax_diff = max_abs_diff(forward_logits(orbax_model, check_tokens), reference)
        del orbax_model
    info = {"family": "gemma3", "lora_rank": lora_rank(model), "lora_alpha": alpha,
            "param_dtype": str(jnp.dtype(param_dtype)), "check_tokens": check_tokens.tolist(),
            "hf_max_logit_diff": hf_diff, "orbax_max_logit_diff": orbax_diff, "tolerance": tol}
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    if not (hf_diff <= tol and orbax_diff <= tol):
        raise ExportError(
            f"exported weights do not reproduce the trained model: max |logit diff| HF {hf_diff:.3g}, "
            f"Orbax {orbax_diff:.3g}, tolerance {tol:g} (details in {out_dir / EXPORT_INFO})"
        )
    return ExportResult(hf_dir, orbax_dir, hf_diff, orbax_diff, tol)
