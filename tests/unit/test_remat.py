"""Remat policies (kaggle_lib.compat.remat): same loss and gradients, really rematerialised,
and the model is left as it was; the config rejects unknown policies."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kaggle_lib.compat.remat import REMAT_POLICIES, late_checkpoint, remat
from kaggle_lib.config import LoraSection, TrainSection
from kaggle_lib.models import registry
from kaggle_lib.training.loss import sft_loss
from kaggle_lib.training.sft import apply_lora
from tests import training_helpers as th

VOCAB = 256


def _batch() -> dict[str, Any]:
    return th.small_sft_inputs(VOCAB)


def _gemma3() -> nnx.Module:
    return th.random_gemma3(VOCAB)


def _loss_and_grads(model: nnx.Module, batch: dict[str, Any], wrt: Any) -> tuple[Any, Any, str]:
    def loss(m: nnx.Module) -> jax.Array:
        return sft_loss(m, **batch, chunk_size=16)[0]

    grad_fn = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, wrt))
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s: grad_fn(nnx.merge(graphdef, s)))(state))
    value, grads = nnx.jit(grad_fn)(model)
    return value, grads, jaxpr


@pytest.mark.parametrize("lora", [False, True])
def test_remat_keeps_loss_and_gradients(lora: bool) -> None:
    model = _gemma3()
    wrt: Any = nnx.Param
    if lora:
        model = apply_lora(model, rank=4, alpha=8.0, target_modules=LoraSection().target_modules, seed=0)
        wrt = nnx.LoRAParam
    batch = _batch()
    graphdef = nnx.graphdef(model)
    loss, grads, jaxpr = _loss_and_grads(model, batch, wrt)
    assert "remat" not in jaxpr and "checkpoint" not in jaxpr
    reference = jax.tree.leaves(grads)
    assert reference and any(float(jnp.abs(g).max()) > 0 for g in reference)
    for policy in REMAT_POLICIES[1:]:
        with remat(model, policy):
            value, new_grads, new_jaxpr = _loss_and_grads(model, batch, wrt)
        # The backward pass really recomputes: jax.checkpoint ("block") is in the traced
        # program; late_checkpoint ("decoder") leaves only plain ops there, but more matmuls
        # (the layers' forward once more).
        if policy == "decoder":
            assert new_jaxpr.count("dot_general") > jaxpr.count("dot_general"), policy
        else:
            assert "checkpoint" in new_jaxpr or "remat" in new_jaxpr, policy
        np.testing.assert_allclose(value, loss, rtol=1e-5, atol=1e-5)
        for got, want in zip(jax.tree.leaves(new_grads), reference, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert nnx.graphdef(model) == graphdef  # put back: generation's compilations still fit


def test_unknown_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="none, decoder, block"), remat(_gemma3(), "layer"):
        pass
    gemma2 = registry.tunix_model_class("gemma2")(registry.tiny_config("gemma2", VOCAB),
                                                  rngs=nnx.Rngs(params=1))
    with pytest.raises(ValueError, match="Gemma 3"), remat(gemma2, "decoder"):
        pass
    with remat(gemma2, "none"):  # nothing to change
        pass
    with pytest.raises(ValueError, match="remat"):
        TrainSection(remat="layers")
    assert TrainSection(remat="decoder").remat == "decoder"


def _residual_layer(w: jax.Array, x: jax.Array) -> jax.Array:
    # Several [N, W] intermediates per layer, as a transformer block has.
    h = jnp.tanh(x @ w)
    h = jnp.tanh(h @ w.T) * jax.nn.sigmoid(h)
    return x + jnp.sin(h @ w)


def _stack_loss(ws: list[jax.Array], x: jax.Array, checkpointed: bool) -> jax.Array:
    layer = late_checkpoint(_residual_layer) if checkpointed else _residual_layer
    for w in ws:
        x = layer(w, x)
    return jnp.sum(jnp.square(x))


def test_late_checkpoint_keeps_gradients_and_frees_activations() -> None:
    """Same loss and gradients as without remat; the compiled step holds fewer bytes, i.e. XLA
    did not move the recomputation into the forward pass (it does with jax.checkpoint on CPU,
    where optimization barriers are dropped before scheduling)."""
    depth, n, width = 8, 512, 256
    ws = [jax.random.normal(jax.random.key(i), (width, width)) / 16 for i in range(depth)]
    x = jax.random.normal(jax.random.key(99), (n, width))
    results, temps = [], []
    for checkpointed in (False, True):
        grad_fn = jax.jit(jax.value_and_grad(
            lambda ws, x, c=checkpointed: _stack_loss(ws, x, c), argnums=(0, 1)))
        temps.append(grad_fn.lower(ws, x).compile().memory_analysis().temp_size_in_bytes)
        results.append(grad_fn(ws, x))
    (loss, grads), (late_loss, late_grads) = results
    np.testing.assert_allclose(late_loss, loss, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(late_grads), jax.tree.leaves(grads), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Without remat every layer keeps ~5 [N, W] buffers; with it, one (its input).
    assert temps[1] < 0.5 * temps[0], temps


def test_late_checkpoint_differentiates_only_what_is_asked() -> None:
    ws = [jax.random.normal(jax.random.key(i), (16, 16)) / 4 for i in range(2)]
    x = jax.random.normal(jax.random.key(5), (4, 16))
    want = jax.grad(lambda x: _stack_loss(ws, x, False))(x)
    got = jax.grad(lambda x: _stack_loss(ws, x, True))(x)  # weights are constants here
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
