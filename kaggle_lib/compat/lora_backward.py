"""LoRA's two low-rank matmuls with their gradients written as plain row-major products.

Written against qwix 0.1.8 and jax/jaxlib 0.10.2. Changes: swaps qwix's private
`qwix._src.providers.lora._compute_lora_delta` for the duration of a `with` block (it matters
while a train step is traced). Goes away when qwix offers a public hook for the LoRA delta, or
XLA:CPU no longer emits the loop below; no upstream issue filed yet.
Why: qwix computes `(x @ A) @ B` and leaves the backward pass to autodiff. On XLA:CPU (jaxlib
0.10) the gradient of B, `(x A)^T dy`, is a legacy dot whose transposed operand layout is fused
into the loop computing `dy` (GELU's derivative for the MLP's gate/up), which then writes
[hidden, tokens] one row per element. Gemma 3 270M, LoRA r16, 4 x 256 tokens: 36 such loops
took 1.5 s of a 6.8 s step. Here a Linear layer's delta (one contracted axis, the last of x; no
batch axes) is a `jax.custom_vjp` with the textbook products dU = dy B^T, dB = U^T dy,
dA = x^T dU, dx = dU A^T (U = x A): the step took 5.1 s, losses identical to 5 decimals over
6 steps (`benchmarks/sft_speed.py`). Einsum layers (Gemma 3's attention) keep qwix's code.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax import lax


def _nt(a: jax.Array, b: jax.Array) -> jax.Array:
    """a @ b^T without materialising b^T (contract the last axis of both)."""
    return lax.dot_general(a, b, (((a.ndim - 1,), (b.ndim - 1,)), ((), ())))


@jax.custom_vjp
def lora_delta_2d(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
    """(x @ a) @ b for x [N, K], a [K, r], b [r, M]."""
    return (x @ a) @ b


def _lora_delta_2d_fwd(x: jax.Array, a: jax.Array, b: jax.Array) -> tuple[jax.Array, Any]:
    u = x @ a
    return u @ b, (x, a, b, u)


def _lora_delta_2d_bwd(residuals: tuple[jax.Array, ...],
                       dy: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    x, a, b, u = residuals
    du = _nt(dy, b)
    return _nt(du, a), x.T @ du, u.T @ dy


lora_delta_2d.defvjp(_lora_delta_2d_fwd, _lora_delta_2d_bwd)


@contextlib.contextmanager
def lora_matmul_gradients() -> Iterator[None]:
    """Inside the block, qwix's Linear-layer LoRA deltas use `lora_delta_2d`."""
    from qwix._src.providers import lora as qwix_lora

    original = qwix_lora._compute_lora_delta

    def compute_lora_delta(lhs: jax.Array, lora_a: jax.Array, lora_b: jax.Array,
                           lhs_ca: Sequence[int], lhs_ba: Sequence[int],
                           contract_shape: Sequence[int], batch_shape: Sequence[int],
                           remain_shape: Sequence[int], rank: int,
                           precision: Any = None) -> jax.Array:
        if (tuple(batch_shape) == () and tuple(lhs_ca) == (lhs.ndim - 1,)
                and len(contract_shape) == 1 and precision is None):
            (k,) = contract_shape
            out = lora_delta_2d(lhs.reshape(-1, k), lora_a.reshape(k, rank),
                                lora_b.reshape(rank, math.prod(remain_shape)))
            return out.reshape(*lhs.shape[:-1], *remain_shape)
        return original(lhs, lora_a, lora_b, lhs_ca, lhs_ba, contract_shape, batch_shape,
                        remain_shape, rank, precision=precision)

    qwix_lora._compute_lora_delta = compute_lora_delta
    try:
        yield
    finally:
        qwix_lora._compute_lora_delta = original
