"""Next-token cross-entropy that never materialises [tokens, vocab] logits for the whole batch.

Gemma 3's vocabulary has 262,144 entries: for 4 x 1024 tokens the full float32 logits are 4 GiB,
and Tunix's default loss also builds a one-hot of the same size. Here the final hidden states are
split into chunks of `chunk_size` tokens; each chunk's logits are computed, reduced to
(logsumexp - target logit), and rematerialised in the backward pass (`jax.checkpoint`), so the
peak holds one chunk's logits at a time.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def final_hidden_states(model: nnx.Module, tokens: jax.Array, positions: jax.Array,
                        attention_mask: jax.Array) -> jax.Array:
    """Run the model and return the final-norm hidden states [B, T, D].

    Tunix's Gemma models sow these when `output_hidden_states=True`; the logits the model also
    returns are unused here, and XLA removes their computation from the jitted step.
    """
    model(tokens, positions, None, attention_mask, output_hidden_states=True)
    intermediates = nnx.pop(model, nnx.Intermediate)
    (hidden,) = jax.tree.leaves(intermediates)[-1:]
    return hidden


def chunked_cross_entropy(
    hidden: jax.Array,
    embedding: jax.Array,
    targets: jax.Array,
    mask: jax.Array,
    *,
    chunk_size: int = 512,
    softcap: float | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Sum of token losses and token count. hidden [N, D], embedding [V, D], targets/mask [N].

    N is padded up to a multiple of the chunk size (padding carries mask 0); a chunk is never
    longer than N, so short batches do not pay for a full chunk of logits.
    """
    n_tokens, dim = hidden.shape
    chunk_size = max(1, min(chunk_size, n_tokens))
    pad = (-n_tokens) % chunk_size
    hidden = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, chunk_size, dim)
    targets = jnp.pad(targets, (0, pad)).reshape(-1, chunk_size)
    mask = jnp.pad(mask.astype(jnp.float32), (0, pad)).reshape(-1, chunk_size)

    @jax.checkpoint
    def chunk_loss(h: jax.Array, t: jax.Array, m: jax.Array, table: jax.Array) -> jax.Array:
        # Contract over D directly (no transposed copy of the [V, D] table) and accumulate in
        # float32 even for bfloat16 weights.
        logits = jnp.einsum("nd,vd->nv", h, table, preferred_element_type=jnp.float32)
        if softcap is not None:
            logits = jnp.tanh(logits / softcap) * softcap
        lse = jax.nn.logsumexp(logits, axis=-1)
        target_logit = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
        return jnp.sum((lse - target_logit) * m)

    def body(total: jax.Array, chunk: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, None]:
        h, t, m = chunk
        return total + chunk_loss(h, t, m, embedding), None

    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), (hidden, targets, mask))
    return total, jnp.sum(mask)


def _embedding_and_softcap(model: nnx.Module) -> tuple[jax.Array, float | None]:
    table = model.embedder.input_embedding.value
    # Gemma 2 caps its final logits (tanh * 30); Gemma 1 and 3 do not.
    return table, getattr(model, "final_logits_softcap", None)


def sft_loss(
    model: nnx.Module,
    input_tokens: jax.Array,
    input_mask: jax.Array,
    positions: jax.Array,
    attention_mask: jax.Array,
    *,
    chunk_size: int = 512,
) -> tuple[jax.Array, dict[str, Any]]:
    """Mean next-token loss over response tokens (input_mask marks them), chunked over vocab."""
    hidden = final_hidden_states(model, input_tokens, positions, attention_mask)
    hidden = hidden[:, :-1, :]
    targets = input_tokens[:, 1:]
    target_mask = input_mask[:, 1:]
    table, softcap = _embedding_and_softcap(model)
    total, count = chunked_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), table, targets.reshape(-1),
        target_mask.reshape(-1), chunk_size=chunk_size, softcap=softcap,
    )
    loss = total / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "tokens": count}


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
