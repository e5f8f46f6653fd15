"""Full-recompute greedy decoding: the slow, obviously correct reference that
`kaggle_lib.generation.Generator` must match token for token (test-only code)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from kaggle_lib.compat.sampler import hidden_states, project_last
from kaggle_lib.generation import PROMPT_ALIGN, _round_up


def _last_logits(model: Any, tokens: Any, lengths: Any, with_full: bool) -> Any:
    """Logits after the last real token of each right-padded row (full forward, no cache).

    Only the last position is projected onto the vocabulary (for the 270M that projection
    is most of the work): the model's own final hidden states (`output_hidden_states`)
    go through its embedder's `decode` and, for Gemma 1/2, its final soft-cap, as in
    Tunix's `__call__`. `with_full` also returns the model's own full logits at those
    positions, so callers can check that this shortcut is the model's forward.
    """
    import jax.numpy as jnp
    from tunix.sft import utils as sft_utils

    mask = jnp.arange(tokens.shape[1])[None, :] < lengths[:, None]
    args = (tokens, sft_utils.build_positions_from_mask(mask), None,
            sft_utils.make_causal_attn_mask(mask))
    hidden, _ = hidden_states(model, *args)
    index = (lengths - 1)[:, None, None]
    last = project_last(model, jnp.take_along_axis(hidden, index, axis=1)[:, 0])
    if with_full:
        logits, _ = model(*args)
        return last, jnp.take_along_axis(logits, index, axis=1)[:, 0]
    return last


_LAST_LOGITS_JIT: Any = None


def greedy_reference_batch(model: Any, tokenizer: Any, prompts: Sequence[str],
                           max_new_tokens: int, eos_ids: Sequence[int]) -> list[list[int]]:
    """Full-recompute argmax decoding: slow, obviously correct, no KV cache.

    Every step runs the whole sequence through the model again. Rows are right-padded to one
    length so one compilation serves all steps; with a causal mask, padding after the last
    real token cannot change it, and positions count real tokens from 0 as in training.
    Each row stops at its first eos (not included), like the sampler. The first step checks
    the last-position shortcut of `_last_logits` against the model's full logits.
    """
    import jax.numpy as jnp
    from flax import nnx

    global _LAST_LOGITS_JIT
    if _LAST_LOGITS_JIT is None:  # one jit object, so repeated calls reuse its compilations
        _LAST_LOGITS_JIT = nnx.jit(_last_logits, static_argnames="with_full")
    step = _LAST_LOGITS_JIT
    rows = [[int(tokenizer.bos_id()), *tokenizer.encode(p)] for p in prompts]
    width = _round_up(max(len(r) for r in rows) + max_new_tokens, PROMPT_ALIGN)
    tokens = np.zeros((len(rows), width), np.int32)  # pad id 0 (masked anyway)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    lengths = np.array([len(r) for r in rows], np.int32)
    eos = {int(e) for e in eos_ids}
    generated: list[list[int]] = [[] for _ in rows]
    done = np.zeros(len(rows), bool)
    for index in range(max_new_tokens):
        if index == 0:
            last, full = step(model, jnp.asarray(tokens), jnp.asarray(lengths), with_full=True)
            scale = float(jnp.max(jnp.abs(full)))
            if not np.allclose(np.asarray(last), np.asarray(full), atol=1e-5 * max(1.0, scale)):
                raise AssertionError("last-position logits differ from the model's own logits")
        else:
            last = step(model, jnp.asarray(tokens), jnp.asarray(lengths), with_full=False)
        next_ids = np.asarray(jnp.argmax(last, axis=-1))
        for i, token in enumerate(next_ids.tolist()):
            if done[i]:
                continue
            if token in eos:
                done[i] = True
                continue
            generated[i].append(token)
            tokens[i, lengths[i]] = token
            lengths[i] += 1
        if done.all():
            break
    return generated


def greedy_reference(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int,
                     eos_ids: Sequence[int]) -> list[int]:
    """`greedy_reference_batch` for one prompt."""
    return greedy_reference_batch(model, tokenizer, [prompt], max_new_tokens, eos_ids)[0]
