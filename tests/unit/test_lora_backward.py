"""kaggle_lib.compat.lora_backward: the LoRA delta's hand-written backward equals autodiff's,
through qwix's real Linear-layer path in a tiny Gemma 3, and qwix is left as it was."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from qwix._src.providers import lora as qwix_lora

from kaggle_lib.compat import lora_backward
from kaggle_lib.compat.lora_backward import lora_delta_2d, lora_matmul_gradients
from kaggle_lib.training.loss import sft_loss
from kaggle_lib.training.sft import apply_lora
from tests import training_helpers as th

VOCAB = 256


def test_lora_delta_2d_matches_autodiff() -> None:
    rng = np.random.default_rng(0)
    x, a, b, dy = (jnp.asarray(rng.normal(size=s), jnp.float32)
                   for s in ((12, 8), (8, 3), (3, 5), (12, 5)))
    y, vjp = jax.vjp(lora_delta_2d, x, a, b)
    y_ref, vjp_ref = jax.vjp(lambda x, a, b: (x @ a) @ b, x, a, b)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    for got, want in zip(vjp(dy), vjp_ref(dy), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _model() -> nnx.Module:
    model = th.random_gemma3(VOCAB)
    # MLP-only LoRA: the Linear (dot_general) path; its B starts at zero in qwix, so give the
    # adapters values too or dA would be zero and prove nothing.
    model = apply_lora(model, rank=4, alpha=8.0, target_modules=".*gate_proj|.*up_proj|.*down_proj")
    for index, (_, variable) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.LoRAParam))):
        variable.set_value(jax.random.normal(jax.random.key(100 + index),
                                             variable.get_value().shape) * 0.1)
    return model


def _batch() -> dict[str, Any]:
    return th.small_sft_inputs(VOCAB)


def _loss_and_grads(model: nnx.Module, batch: dict[str, Any]) -> tuple[Any, Any, str]:
    def loss(m: nnx.Module) -> jax.Array:
        return sft_loss(m, **batch, chunk_size=16)[0]

    grad_fn = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))
    graphdef, state = nnx.split(model)
    jaxpr = str(jax.make_jaxpr(lambda s: grad_fn(nnx.merge(graphdef, s)))(state))
    value, grads = nnx.jit(grad_fn)(model)
    return value, grads, jaxpr


def test_lora_gradients_unchanged_through_qwix(monkeypatch: Any) -> None:
    model, batch = _model(), _batch()
    calls: list[tuple[int, ...]] = []

    def counted(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
        calls.append(x.shape)
        return lora_delta_2d(x, a, b)

    monkeypatch.setattr(lora_backward, "lora_delta_2d", counted)
    original = qwix_lora._compute_lora_delta
    loss_ref, grads_ref, jaxpr_ref = _loss_and_grads(model, batch)
    with lora_matmul_gradients():
        assert qwix_lora._compute_lora_delta is not original
        loss, grads, jaxpr = _loss_and_grads(model, batch)
    assert qwix_lora._compute_lora_delta is original

    # The hand-written backward really ran: every MLP projection of both layers, twice
    # (make_jaxpr and jit each trace once), on the flattened [batch * length, width] input.
    assert len(calls) == 2 * 2 * 3 and all(shape[0] == 2 * 24 for shape in calls)
    assert jaxpr != jaxpr_ref
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    flat, flat_ref = nnx.to_flat_state(grads), nnx.to_flat_state(grads_ref)
    assert [k for k, _ in flat] == [k for k, _ in flat_ref] and len(flat) == 2 * 3 * 2  # layers x projections x (A, B)
    for (key, got), (_, want) in zip(flat, flat_ref, strict=True):
        got, want = np.asarray(got.get_value()), np.asarray(want.get_value())
        assert np.abs(want).max() > 0, key
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=str(key))
