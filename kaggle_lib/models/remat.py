"""Rematerialisation (gradient checkpointing) of a Tunix Gemma 3 model's layers.

Tunix 0.1.7's Gemma 3 reads `ModelConfig.remat_config` at call time: `DECODER` wraps each
decoder layer in `nnx.remat` (the backward pass keeps only each layer's input and recomputes
the rest), `BLOCK` wraps the attention and the MLP separately. The config is frozen and each
module keeps its own reference (attention keeps the value itself), so `remat` swaps them on
every module for the duration of a `with` block and puts the originals back afterwards: the
module structure generation was compiled for is unchanged outside training.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

__all__ = ["REMAT_POLICIES", "check_policy", "remat"]

# "none": keep every activation; "decoder": keep one [batch, length, width] input per layer;
# "block": keep the attention and MLP inputs of each layer.
REMAT_POLICIES = ("none", "decoder", "block")


def check_policy(policy: str) -> str:
    """`policy` if it is one of REMAT_POLICIES, else ValueError naming them."""
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy must be one of {', '.join(REMAT_POLICIES)}; got {policy!r}")
    return policy


def _walk(model: Any) -> Iterator[tuple[Any, str, Any]]:
    """(module, attribute, current value) for every module that reads the remat setting."""
    from flax import nnx
    from tunix.models.gemma3 import model as gemma3

    config_type = gemma3.ModelConfig
    for _, module in nnx.iter_graph(model):
        if not isinstance(module, nnx.Module):
            continue
        if isinstance(getattr(module, "config", None), config_type):
            yield module, "config", module.config
        if isinstance(module, gemma3.Attention):
            yield module, "remat_config", module.remat_config


@contextlib.contextmanager
def remat(model: Any, policy: str) -> Iterator[None]:
    """Train `model` (a Tunix Gemma 3, LoRA or not) with `policy` inside the block."""
    check_policy(policy)
    if policy == "none":
        yield
        return
    from tunix.models.gemma3 import model as gemma3

    if not isinstance(getattr(model, "config", None), gemma3.ModelConfig):
        raise ValueError(f"remat policy {policy!r} needs a Tunix Gemma 3 model; got "
                         f"{type(model).__name__} (use remat: none)")
    setting = gemma3.RematConfig.DECODER if policy == "decoder" else gemma3.RematConfig.BLOCK
    originals = list(_walk(model))
    try:
        for module, name, value in originals:
            if name == "config":
                setattr(module, name, dataclasses.replace(value, remat_config=setting))
            elif policy == "block":  # attention's own copy; "decoder" must not nest a remat
                setattr(module, name, setting)
        yield
    finally:
        for module, name, value in originals:
            setattr(module, name, value)
