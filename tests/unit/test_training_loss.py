"""The chunked cross-entropy equals the full-logits loss, in value and gradient, for every family.

Gemma 1 (no softcap), Gemma 2 (final logit softcap 30) and Gemma 3, tiny random float32
models; chunk sizes that divide the number of target tokens and that do not.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tunix.sft.peft_trainer import _default_loss_fn

from kaggle_lib.models import registry
from kaggle_lib.training.loss import chunked_cross_entropy, sft_loss
from kaggle_lib.training.sft import model_inputs
from tests.reference_impls import naive_sft_loss

BATCH, LENGTH = 2, 24  # 2 x 23 = 46 target positions
VOCAB = 256


def _batch(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, VOCAB, size=(BATCH, LENGTH)).astype(np.int32)
    tokens[:, 0] = 2  # bos
    tokens[1, 18:] = 0  # the second row is padded
    segment = (tokens != 0).astype(np.int32)
    loss_mask = segment.copy()
    loss_mask[:, :7] = 0  # prompt tokens carry no loss
    return model_inputs({"input_tokens": jnp.asarray(tokens), "input_mask": jnp.asarray(loss_mask),
                         "segment_mask": jnp.asarray(segment)})


def _model(family: str) -> nnx.Module:
    import dataclasses

    config = registry.tiny_config(family, VOCAB)
    if hasattr(config, "param_dtype"):
        config = dataclasses.replace(config, param_dtype=jnp.float32)
    return registry.tunix_model_class(family)(config, rngs=nnx.Rngs(params=1))


@nnx.jit(static_argnums=(2,))
def _value_and_grad(model: nnx.Module, batch: dict[str, Any], chunk: int) -> tuple[Any, Any]:
    def loss(m: nnx.Module) -> jax.Array:
        if chunk == 0:
            return naive_sft_loss(m, **batch)
        return sft_loss(m, **batch, chunk_size=chunk)[0]

    return nnx.value_and_grad(loss)(model)


@pytest.mark.parametrize("family", ["gemma", "gemma2", "gemma3"])
def test_chunked_loss_and_gradients_equal_the_naive_ones(family: str) -> None:
    model = _model(family)
    if family == "gemma2":
        assert model.final_logits_softcap == 30.0  # the softcap path is exercised
    batch = _batch()
    n_targets = int(batch["input_mask"][:, 1:].sum())
    naive, naive_grads = _value_and_grad(model, batch, 0)
    # Tunix's own default loss (one-hot over the vocabulary) agrees with the naive one.
    tunix_value = nnx.jit(_default_loss_fn)(model, **batch)
    assert float(tunix_value) == pytest.approx(float(naive), rel=1e-5)
    total = BATCH * (LENGTH - 1)
    # 23 divides the 46 positions; 16 does not (padded to 48); with 8, the chunks after the
    # loss-carrying positions (moved to the front) hold none and are skipped.
    for chunk in (23, 16, 8):
        value, grads = _value_and_grad(model, batch, chunk)
        print(f"{family} chunk {chunk:>3} ({'divides' if total % chunk == 0 else 'pads'} "
              f"{total}; {n_targets} loss tokens): loss {float(value):.7f} naive "
              f"{float(naive):.7f} diff {abs(float(value) - float(naive)):.1e}")
        assert float(value) == pytest.approx(float(naive), rel=1e-5, abs=1e-6)
        flat, flat_naive = jax.tree.leaves(grads), jax.tree.leaves(naive_grads)
        assert len(flat) == len(flat_naive) > 0
        worst = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(flat, flat_naive, strict=True))
        scale = max(float(jnp.max(jnp.abs(b))) for b in flat_naive)
        print(f"    max |grad diff| {worst:.1e} (largest gradient {scale:.1e})")
        assert scale > 0 and worst <= 1e-5


def test_chunked_cross_entropy_matches_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    hidden = jnp.asarray(rng.normal(size=(10, 8)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(50, 8)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 50, size=10), jnp.int32)
    mask = jnp.asarray([1, 1, 0, 1, 1, 1, 0, 0, 1, 1], jnp.int32)
    for softcap in (None, 5.0):
        logits = hidden @ table.T
        if softcap:
            logits = jnp.tanh(logits / softcap) * softcap
        nll = -jax.nn.log_softmax(logits)[jnp.arange(10), targets]
        expected = float(jnp.sum(nll * mask))
        for chunk in (3, 5, 16):  # pads 10 to 12; divides; one chunk larger than all tokens
            total, count = chunked_cross_entropy(hidden, table, targets, mask, chunk_size=chunk,
                                                 softcap=softcap)
            assert float(count) == 7
            assert float(total) == pytest.approx(expected, rel=1e-6)


def test_loss_positions_first_and_empty_chunks_skipped_change_nothing() -> None:
    """Loss positions scattered among many masked ones (a long prompt, padding): the sum equals
    the direct one for every chunk size, gradients too; an all-masked batch gives 0, not NaN."""
    rng = np.random.default_rng(5)
    n, dim, vocab = 40, 8, 50
    hidden = jnp.asarray(rng.normal(size=(n, dim)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(vocab, dim)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, vocab, size=n), jnp.int32)
    mask = jnp.zeros(n, jnp.int32).at[jnp.asarray([3, 17, 18, 29, 39])].set(1)

    def direct(h: jax.Array, m: jax.Array) -> jax.Array:
        nll = -jax.nn.log_softmax(h @ table.T)[jnp.arange(n), targets]
        return jnp.sum(nll * m)

    expected, expected_grad = jax.value_and_grad(direct)(hidden, mask)
    for chunk in (2, 3, 7, 64):
        def chunked(h: jax.Array, m: jax.Array, chunk: int = chunk) -> jax.Array:
            return chunked_cross_entropy(h, table, targets, m, chunk_size=chunk)[0]

        value, grad = jax.jit(jax.value_and_grad(chunked))(hidden, mask)
        assert float(value) == pytest.approx(float(expected), rel=1e-6)
        np.testing.assert_allclose(grad, expected_grad, atol=1e-6)
        # Masked positions get exactly no gradient.
        assert float(jnp.abs(grad[mask == 0]).max()) == 0.0
    zero = jnp.zeros(n, jnp.int32)
    total, count = chunked_cross_entropy(hidden, table, targets, zero, chunk_size=4)
    assert float(total) == 0.0 and float(count) == 0.0
