"""Rematerialisation (gradient checkpointing) of a Tunix Gemma 3 model's layers.

Written against google-tunix 0.1.7 and flax 0.12.8 (jax 0.10.2). Changes, for a `with` block:
the frozen `remat_config` every Gemma 3 module keeps (`block`), or the class of each
`DecoderLayer` instance, set past nnx's `__setattr__` (`decoder`). Goes away when Tunix takes
the remat policy as a call or constructor argument of its Gemma 3 model (for `block`), and when
XLA:CPU keeps `jax.checkpoint` recomputation in the backward pass (for `decoder`); no upstream
issue filed yet.

`block`: Tunix 0.1.7's Gemma 3 reads `ModelConfig.remat_config` at call time; `BLOCK` wraps the
attention and the MLP in `nnx.remat`. The config is frozen and each module keeps its own
reference (attention keeps the value itself), so `remat` swaps them on every module for the
duration of a `with` block and puts the originals back afterwards: the module structure
generation was compiled for is unchanged outside training.

`decoder`: each decoder layer keeps only its inputs for the backward pass and recomputes the
rest there, by `late_checkpoint` (not Tunix's `DECODER`, i.e. `nnx.remat` = `jax.checkpoint`).
Why: XLA's CPU scheduler is free to run a `jax.checkpoint` recomputation as soon as its inputs
exist (its optimization barriers are removed before scheduling), and it does so during the
forward pass, so every layer's activations are live at once and remat saves nothing (Gemma 3
270M, LoRA, 4 x 1024 tokens: 11.6 GiB of compiled temp with `block`, 12.2 without).
`late_checkpoint` makes the recomputation's inputs depend on the incoming cotangent, so it
cannot start before the backward pass reaches the layer. The layers' classes are swapped for the `with` block and put back afterwards.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
from flax import nnx
from tunix.models.gemma3 import model as gemma3

__all__ = ["REMAT_POLICIES", "late_checkpoint", "remat"]

# "none": keep every activation; "decoder": keep one [batch, length, width] input per layer;
# "block": keep the attention and MLP inputs of each layer.
REMAT_POLICIES = ("none", "decoder", "block")


def _walk(model: Any) -> Iterator[tuple[Any, str, Any]]:
    """(module, attribute, current value) for every module that reads the remat setting."""
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
    if policy not in REMAT_POLICIES:
        raise ValueError(f"remat policy must be one of {', '.join(REMAT_POLICIES)}; got {policy!r}")
    if policy == "none":
        yield
        return
    if not isinstance(getattr(model, "config", None), gemma3.ModelConfig):
        raise ValueError(f"remat policy {policy!r} needs a Tunix Gemma 3 model; got "
                         f"{type(model).__name__} (use remat: none)")
    if policy == "decoder":
        layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, gemma3.DecoderLayer)]
        classes = [type(layer) for layer in layers]
        try:
            for layer, cls in zip(layers, classes, strict=True):
                # object.__setattr__: nnx's own would record `__class__` in the graph
                # definition, which must stay as generation compiled it.
                object.__setattr__(layer, "__class__", _late_remat_class(cls))
            yield
        finally:
            for layer, cls in zip(layers, classes, strict=True):
                object.__setattr__(layer, "__class__", cls)
        return
    setting = gemma3.RematConfig.BLOCK
    originals = list(_walk(model))
    try:
        for module, name, value in originals:
            if name == "config":
                setattr(module, name, dataclasses.replace(value, remat_config=setting))
            else:  # attention's own copy
                setattr(module, name, setting)
        yield
    finally:
        for module, name, value in originals:
            setattr(module, name, value)


def late_checkpoint(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` (arrays in, pytree out) recomputed in the backward pass, not before it.

    Like `jax.checkpoint`, only the arguments are kept for the backward pass. Unlike it, the
    recomputation takes arguments that depend on the cotangent (`_after`), so XLA cannot hoist
    it into the forward pass (which would keep all activations alive).
    `fn` is traced once, where it is called (inside the model's call: qwix's LoRA interception,
    active only there, is part of the trace), and that trace is what the backward pass re-runs.
    Gradients flow only to arguments that are differentiated (symbolic zeros elsewhere).
    """

    def wrapped(*args: Any) -> Any:
        flat, tree = jax.tree.flatten(args)
        closed, out_shape = jax.make_jaxpr(
            lambda *leaves: fn(*jax.tree.unflatten(tree, leaves)), return_shape=True)(*flat)
        out_tree = jax.tree.structure(out_shape)

        def run(*leaves: Any) -> list[Any]:
            return jax.core.eval_jaxpr(closed.jaxpr, closed.consts, *leaves)

        @jax.custom_vjp
        def call(*leaves: Any) -> list[Any]:
            return run(*leaves)

        def call_fwd(*leaves: Any) -> tuple[list[Any], tuple[Any, ...]]:
            values = [leaf.value for leaf in leaves]
            perturbed = tuple(leaf.perturbed for leaf in leaves)
            return run(*values), (values, perturbed)

        def call_bwd(residuals: tuple[Any, ...], cts: list[Any]) -> tuple[Any, ...]:
            values, perturbed = residuals
            cts = [jax.numpy.zeros(ct.shape, ct.dtype)
                   if isinstance(ct, jax.custom_derivatives.SymbolicZero) else ct for ct in cts]
            values = _after(values, cts)
            diff = [i for i, p in enumerate(perturbed) if p]

            def partial(*diff_values: Any) -> list[Any]:
                leaves = list(values)
                for i, v in zip(diff, diff_values, strict=True):
                    leaves[i] = v
                return run(*leaves)

            _, vjp = jax.vjp(partial, *[values[i] for i in diff])
            grads = dict(zip(diff, vjp(cts), strict=True))
            return tuple(grads.get(i) for i in range(len(values)))

        call.defvjp(call_fwd, call_bwd, symbolic_zeros=True)
        return jax.tree.unflatten(out_tree, call(*flat))

    return wrapped


def _after(values: list[Any], cts: list[Any]) -> list[Any]:
    """`values`, made to depend on the cotangents: each float value plus 0 * one cotangent entry.

    XLA's CPU pipeline drops optimization barriers before scheduling, so only a data dependency
    keeps the recomputation in the backward pass. XLA never folds a float `0 * c` (it would be
    NaN for an infinite c), and `v + 0.0 == v` exactly, so values and gradients are unchanged
    (a non-finite cotangent makes the gradients non-finite either way).
    """
    import jax.numpy as jnp

    scalars = [jnp.ravel(ct)[0] for ct in cts
               if ct.size and jnp.issubdtype(ct.dtype, jnp.floating)]
    if not scalars:
        return values
    zero = scalars[0] * 0
    return [v + zero.astype(v.dtype) if jnp.issubdtype(v.dtype, jnp.floating) else v
            for v in values]


_LATE_CLASSES: dict[type, type] = {}


def _late_remat_class(cls: type) -> type:
    """Subclass of a Tunix Gemma 3 DecoderLayer class (qwix may have subclassed it) whose call
    is `late_checkpoint`-ed when there is no KV cache (training)."""
    if cls not in _LATE_CLASSES:
        def __call__(self: Any, x: Any, segment_pos: Any, cache: Any, attn_mask: Any) -> Any:
            if cache is not None:  # decoding: nothing to differentiate
                return cls.__call__(self, x, segment_pos, cache, attn_mask)
            graphdef, state = nnx.split(self)

            def layer(state: Any, x: Any, segment_pos: Any, attn_mask: Any) -> Any:
                module = nnx.merge(graphdef, state)
                return cls.__call__(module, x, segment_pos, None, attn_mask)[1]

            return None, late_checkpoint(layer)(state, x, segment_pos, attn_mask)

        _LATE_CLASSES[cls] = type(cls.__name__, (cls,), {"__call__": __call__})
    return _LATE_CLASSES[cls]
