"""Reference implementations the tests compare the library against (never shipped in kaggle_lib)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def naive_sft_loss(model: nnx.Module, input_tokens: jax.Array, input_mask: jax.Array,
                   positions: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """The full-logits loss (as Tunix's default, without the one-hot), for equality tests."""
    logits, _ = model(input_tokens, positions, None, attention_mask)
    logits = logits[:, :-1, :].astype(jnp.float32)
    targets = input_tokens[:, 1:]
    mask = input_mask[:, 1:].astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)
