"""Every weight-name mapping between the layouts kaggle_lib reads and writes, in one place:
GGUF -> HF (llama.cpp's Gemma 3 names; `gguf_270m`); HF -> Tunix is Tunix's own
`params_safetensors` tables (Gemma 1's fix: `compat.safetensors`); Tunix -> HF (`hf_state_dict`,
the inverse of Tunix's Gemma 3 safetensors table); Tunix -> Kaggle "upstream" Orbax
(`upstream_params`, the inverse of Tunix's `gemma3.params.map_from_upstream_checkpoint`).

The Tunix side is a flat dict {parameter path tuple: numpy array} (`flat_params`). Unknown
names raise `ConversionError`: nothing is silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from kaggle_lib.errors import KaggleLibError

FlatParams = dict[tuple[Any, ...], np.ndarray]


class ConversionError(KaggleLibError, RuntimeError):
    """A weight that has no counterpart in the target layout, or a conversion that failed."""


def flat_params(model: Any) -> FlatParams:
    """Every nnx.Param of a Tunix model (LoRA params included) as host numpy arrays, keyed by
    their path in the module tree."""
    # jax only where a model is at hand: the GGUF and HF name maps are used without it.
    import jax
    from flax import nnx

    return {tuple(path): np.asarray(jax.device_get(value.get_value()))
            for path, value in nnx.iter_graph(model) if isinstance(value, nnx.Param)}


# llama.cpp tensor suffix -> HF suffix inside `model.layers.N.`.
GGUF_TO_HF: dict[str, str] = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
    "post_attention_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
GGUF_TOP_LEVEL = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}
_GGUF_BLOCK_RE = re.compile(r"blk\.(\d+)\.([a-z_]+)\.weight")


def gguf_tensor_to_hf_name(name: str) -> str:
    """HF Gemma 3 text name of a llama.cpp tensor name (raises `ConversionError` if unknown)."""
    if name.endswith(".weight") and name[: -len(".weight")] in GGUF_TOP_LEVEL:
        return GGUF_TOP_LEVEL[name[: -len(".weight")]] + ".weight"
    m = _GGUF_BLOCK_RE.fullmatch(name)
    if m and m.group(2) in GGUF_TO_HF:
        return f"model.layers.{m.group(1)}.{GGUF_TO_HF[m.group(2)]}.weight"
    raise ConversionError(f"GGUF tensor {name!r} has no Gemma 3 text counterpart; known: "
                          f"{sorted(GGUF_TOP_LEVEL)} and "
                          f"blk.N.{{{', '.join(sorted(GGUF_TO_HF))}}}.weight")


def gguf_tensor_to_hf(name: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """(HF name, HF value) of a dequantized GGUF tensor already in (out, in) layout."""
    hf_name = gguf_tensor_to_hf_name(name)
    if hf_name.endswith("norm.weight"):
        # llama.cpp stores Gemma's RMSNorm weights as (w + 1); HF/Tunix add the 1 at runtime.
        value = value - np.float32(1.0)
    return hf_name, value


_NORMS_HF = {"pre_attention_norm": "input_layernorm",
             "post_attention_norm": "post_attention_layernorm",
             "pre_ffw_norm": "pre_feedforward_layernorm",
             "post_ffw_norm": "post_feedforward_layernorm"}


def _heads_to_rows(w: np.ndarray) -> np.ndarray:
    """Tunix (heads, embed, head_dim) -> HF (heads * head_dim, embed)."""
    n, d, h = w.shape
    return np.ascontiguousarray(w.transpose(0, 2, 1).reshape(n * h, d))


def hf_state_dict(flat: Mapping[tuple[Any, ...], np.ndarray]) -> dict[str, np.ndarray]:
    """HF Gemma 3 text names and layouts for a plain Tunix Gemma3 parameter tree (inverse of
    Tunix's `gemma3/params_safetensors` mapping)."""
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
                raise ConversionError(f"no HF name for Tunix parameter {'.'.join(map(str, path))}")
        else:
            raise ConversionError(f"no HF name for Tunix parameter {'.'.join(map(str, path))}")
    return out


def upstream_params(flat: Mapping[tuple[Any, ...], np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The upstream Gemma 3 checkpoint tree (`{'transformer/layer_0/attn/q_einsum': {'w': ..}}`,
    the layout of Kaggle's `google/gemma-3/flax` models) of a text-only Tunix Gemma3 tree."""
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
            raise ConversionError(f"no upstream name for Tunix parameter "
                                  f"{'.'.join(map(str, path))} (vision weights are not exported)")
    for layer, parts in gating.items():
        if set(parts) != {"gate_proj", "up_proj"}:
            raise ConversionError(f"layer {layer}: gate_proj and up_proj must both be present")
        # upstream (2, hidden, embed); Tunix kernels are (embed, hidden)
        tree[f"transformer/layer_{layer}/mlp/gating_einsum"] = {
            "w": np.stack([parts["gate_proj"].T, parts["up_proj"].T])}
    return tree
