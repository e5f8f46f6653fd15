"""The one in-memory LoRA merge: a qwix-LoRA Tunix Gemma 3's adapters folded into its weights.

Tunix's `gemma3.params.save_lora_merged_model_as_safetensors` (the HF export's) goes disk to
disk; the Orbax export and the export's bfloat16 logit check need the merged weights in memory
(tests/integration/test_export.py checks that both merges give the same tensors).

As qwix's LoRA: for `einsum(lhs, W)` qwix adds `einsum(lhs, A, B) * alpha / rank` (A: W's dims
shared with lhs plus the rank; B: the rank plus W's other dims), so W' = W + alpha / rank *
einsum(A, B -> W's layout); for `nnx.Linear` (A: (in, r), B: (r, out)) W' = W + alpha / rank
* A @ B.
"""

from __future__ import annotations

import string
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.traverse_util import unflatten_dict
from tunix.models.gemma3.model import Gemma3, ModelConfig

from kaggle_lib.errors import KaggleLibError
from kaggle_lib.models.convert import FlatParams, flat_params
from kaggle_lib.models.loader import shard_model

LORA_SUFFIXES = ("_lora_a", "_lora_b")


class LoraMergeError(KaggleLibError, ValueError):
    """A LoRA layout or parameter tree the merge cannot fold faithfully."""


def is_lora_param(path: tuple[Any, ...]) -> bool:
    return isinstance(path[-1], str) and path[-1].endswith(LORA_SUFFIXES)


def lora_rank(model: nnx.Module) -> int | None:
    """The LoRA rank of a qwix-wrapped model (None when it has no LoRA params)."""
    for path, value in nnx.iter_graph(model):
        if isinstance(value, nnx.LoRAParam) and str(path[-1]).endswith("_lora_a"):
            return int(value.get_value().shape[-1])
    return None


def _einsum_factors(einsum_str: str, weight_ndim: int) -> tuple[str, str, str]:
    """(A's subscripts, B's subscripts, W's subscripts) for a qwix LoRA on `einsum(lhs, W)`."""
    inputs, _ = einsum_str.replace(" ", "").split("->")
    lhs, rhs = inputs.split(",")
    if "." in einsum_str or len(rhs) != weight_ndim:
        raise LoraMergeError(f"einsum {einsum_str!r}: only explicit subscripts are supported")
    rank = sorted(set(string.ascii_letters) - set(lhs + rhs))
    r = "r" if "r" not in lhs + rhs else rank[0]
    shared = "".join(c for c in rhs if c in lhs)
    free = "".join(c for c in rhs if c not in lhs)
    return shared + r, r + free, rhs


def merge_lora_params(model: nnx.Module, alpha: float, dtype: Any = None) -> FlatParams:
    """Base params with every LoRA pair folded in (float32 math), cast to `dtype` (default:
    each base weight's own dtype)."""
    params = flat_params(model)
    rank = lora_rank(model)
    if rank is None:
        return {k: v.astype(dtype or v.dtype) for k, v in params.items()}
    modules = {tuple(p): m for p, m in nnx.iter_graph(model) if isinstance(m, nnx.Module)}
    merged = {k: v for k, v in params.items() if not is_lora_param(k)}
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
            raise LoraMergeError(f"LoRA on {'.'.join(map(str, owner))} ({type(module).__name__}, "
                                 f"weight {w.shape}, A {a.shape}, B {b.shape}): only Einsum and "
                                 "nnx.Linear are supported")
        merged[w_key] = (w.astype(np.float32) + scale * delta).astype(dtype or w.dtype)
    return {k: v.astype(dtype or v.dtype) for k, v in merged.items()}


def build_model(config: ModelConfig, flat: FlatParams,
                mesh: jax.sharding.Mesh | None = None) -> Gemma3:
    """A plain Tunix Gemma3 holding exactly `flat` (no random init: built from shapes)."""
    abstract = nnx.eval_shape(lambda: Gemma3(config, rngs=nnx.Rngs(params=0)))
    graphdef, state = nnx.split(abstract)
    expected = {tuple(p) for p, v in nnx.iter_graph(abstract) if isinstance(v, nnx.Variable)}
    if expected != set(flat):
        missing, extra = sorted(map(str, expected - set(flat))), sorted(map(str, set(flat) - expected))
        raise LoraMergeError(f"parameter tree mismatch: missing {missing[:5]}, unexpected {extra[:5]}")
    nnx.replace_by_pure_dict(state, unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}))
    model = nnx.merge(graphdef, state)
    return shard_model(model, mesh) if mesh is not None else model
