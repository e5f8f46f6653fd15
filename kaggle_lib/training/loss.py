"""Next-token cross-entropy that never materialises [tokens, vocab] logits for the whole batch.

Gemma 3's vocabulary has 262,144 entries: for 4 x 1024 tokens the full float32 logits are 4 GiB,
and Tunix's default loss also builds a one-hot of the same size. Here each chunk of `chunk_size`
tokens' logits is reduced to (logsumexp - target logit) and, under differentiation, its gradient
in the same pass: the peak holds one chunk's logits. Chunks without loss positions are skipped.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def final_hidden_states(model: nnx.Module, tokens: jax.Array, positions: jax.Array,
                        attention_mask: jax.Array) -> jax.Array:
    """The final-norm hidden states [B, T, D] (Tunix's Gemma sows them when asked; XLA drops the
    unused logits from the jitted step)."""
    model(tokens, positions, None, attention_mask, output_hidden_states=True)
    intermediates = nnx.pop(model, nnx.Intermediate)
    (hidden,) = jax.tree.leaves(intermediates)[-1:]
    return hidden


def chunked_cross_entropy(hidden: jax.Array, embedding: jax.Array, targets: jax.Array,
                          mask: jax.Array, *, chunk_size: int = 512,
                          softcap: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Sum of token losses and token count. hidden [N, D], embedding [V, D], targets/mask [N].
    A stable permutation puts loss positions first and a loop runs over just the chunks holding
    any (prompt and padding, about half of an SFT batch, cost no [chunk, V] matmul). Under
    differentiation each chunk's gradient comes with its loss from the same logits (one
    projection forward and one back, not forward + rematerialised forward + back); the table's
    only when it is differentiated (full fine-tuning). N is padded to a multiple of the chunk
    size (mask 0); a chunk is never longer than N."""
    n_tokens, dim = hidden.shape
    mask = (mask > 0).astype(jnp.float32)
    order = jnp.argsort(mask == 0, stable=True)
    hidden, targets, mask = hidden[order], targets[order], mask[order]
    chunk_size = max(1, min(chunk_size, n_tokens))
    pad = (-n_tokens) % chunk_size
    hidden = jnp.pad(hidden, ((0, pad), (0, 0))).reshape(-1, chunk_size, dim)
    targets = jnp.pad(targets, (0, pad)).reshape(-1, chunk_size)
    mask = jnp.pad(mask, (0, pad)).reshape(-1, chunk_size)
    return _masked_loss_sum(hidden, embedding, targets, mask, softcap), jnp.sum(mask)


def _chunk(h: jax.Array, t: jax.Array, m: jax.Array, table: jax.Array, softcap: float | None,
           grads: bool) -> tuple[jax.Array, jax.Array | None]:
    """One chunk's summed loss and, if `grads`, d(loss)/d(logits before the softcap)."""
    # Contract over D directly (no transposed copy of the [V, D] table) and accumulate in
    # float32 even for bfloat16 weights.
    logits = jnp.einsum("nd,vd->nv", h, table, preferred_element_type=jnp.float32)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    lse = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, t[:, None], axis=-1)[:, 0]
    loss = jnp.sum((lse - target_logit) * m)
    if not grads:
        return loss, None
    probs = jnp.exp(logits - lse[:, None])
    dlogits = probs.at[jnp.arange(t.shape[0]), t].add(-1.0) * m[:, None]
    if softcap is not None:
        dlogits = dlogits * (1.0 - jnp.square(logits / softcap))
    return loss, dlogits


def _loss_sum(hidden: jax.Array, table: jax.Array, targets: jax.Array, mask: jax.Array,
              softcap: float | None, grad_hidden: bool, grad_table: bool) -> tuple[Any, ...]:
    grads = grad_hidden or grad_table

    def body(i: jax.Array, carry: tuple[Any, ...]) -> tuple[Any, ...]:
        total, d_hidden, d_table = carry
        h, t, m = (jax.lax.dynamic_index_in_dim(x, i, keepdims=False)
                   for x in (hidden, targets, mask))
        loss, dlogits = _chunk(h, t, m, table, softcap, grads)
        if grad_hidden:
            dh = jnp.einsum("nv,vd->nd", dlogits, table, preferred_element_type=jnp.float32)
            d_hidden = jax.lax.dynamic_update_index_in_dim(d_hidden, dh.astype(d_hidden.dtype),
                                                           i, 0)
        if grad_table:
            d_table = d_table + jnp.einsum("nv,nd->vd", dlogits, h,
                                           preferred_element_type=jnp.float32)
        return total + loss, d_hidden, d_table

    init = (jnp.zeros((), jnp.float32),
            jnp.zeros_like(hidden) if grad_hidden else None,
            jnp.zeros(table.shape, jnp.float32) if grad_table else None)
    # A run-time trip count: loss positions come first, so chunks 0 .. k-1 hold all of them and
    # the others are never computed.
    needed = (jnp.sum(mask > 0).astype(jnp.int32) + mask.shape[1] - 1) // mask.shape[1]
    return jax.lax.fori_loop(0, needed, body, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _masked_loss_sum(hidden: jax.Array, table: jax.Array, targets: jax.Array, mask: jax.Array,
                     softcap: float | None) -> jax.Array:
    return _loss_sum(hidden, table, targets, mask, softcap, False, False)[0]


def _masked_loss_sum_fwd(hidden: Any, table: Any, targets: Any, mask: Any,
                         softcap: float | None) -> tuple[jax.Array, tuple[Any, ...]]:
    # symbolic_zeros: each argument arrives as (value, perturbed); perturbed says whether it is
    # being differentiated (LoRA: the embedding table is not).
    total, d_hidden, d_table = _loss_sum(hidden.value, table.value, targets.value, mask.value,
                                         softcap, hidden.perturbed, table.perturbed)
    return total, (d_hidden, None if d_table is None else d_table.astype(table.value.dtype),
                   targets.value, mask.value)


def _masked_loss_sum_bwd(softcap: float | None, residuals: tuple[Any, ...],
                         g: Any) -> tuple[Any, ...]:
    d_hidden, d_table, targets, mask = residuals
    zero_targets = np.zeros(targets.shape, jax.dtypes.float0)
    if isinstance(g, jax.custom_derivatives.SymbolicZero):
        g = jnp.zeros((), jnp.float32)
    return (None if d_hidden is None else d_hidden * g.astype(d_hidden.dtype),
            None if d_table is None else d_table * g.astype(d_table.dtype),
            zero_targets, jnp.zeros_like(mask))


_masked_loss_sum.defvjp(_masked_loss_sum_fwd, _masked_loss_sum_bwd, symbolic_zeros=True)


def sft_loss(model: nnx.Module, input_tokens: jax.Array, input_mask: jax.Array,
             positions: jax.Array, attention_mask: jax.Array, *,
             chunk_size: int = 512) -> tuple[jax.Array, dict[str, Any]]:
    """Mean next-token loss over response tokens (input_mask marks them), chunked over vocab."""
    hidden = final_hidden_states(model, input_tokens, positions, attention_mask)[:, :-1, :]
    total, count = chunked_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]), model.embedder.input_embedding.value,
        input_tokens[:, 1:].reshape(-1), input_mask[:, 1:].reshape(-1), chunk_size=chunk_size,
        # Gemma 2 caps its final logits (tanh * 30); Gemma 1 and 3 do not.
        softcap=getattr(model, "final_logits_softcap", None))
    loss = total / jnp.maximum(count, 1.0)
    return loss, {"loss": loss, "tokens": count}
