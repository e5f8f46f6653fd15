"""Tunix's KV-cache Sampler made exact, with a last-token prefill and stop strings.

Written against google-tunix 0.1.7 (flax 0.12.8, jax 0.10.2). Changes: `ExactSampler` overrides
the private `Sampler._sample` and `_sample_step` and replaces `_compiled_decode_fn` (several
processes); `refresh_weights` / `compilations` read and write the private `_transformer_state`,
`_flattened_transformer_state` and the jitted functions' `_cache_size`. Goes away when Tunix's
Sampler masks only prompt padding and builds the sliding window from cache slots (fixes 1, 2),
ends rows on a caller's stop condition, takes new weights through a public method, and its
Gemma models take `decode_only_last_token`; no upstream issue filed yet.

Tunix 0.1.7's Sampler is not exact in two cases, found by tests/integration/test_generation.py
(greedy, 32 new tokens, prompts of different lengths, against tests/generation_reference.py):
1. Gemma 1/2 sliding-window layers (`tunix.models.gemma`) build the window from each key's
   *cache slot* and the query's RoPE *position* (`_create_sliding_mask`). With left padding a
   prompt d tokens shorter than the longest sits d slots right of its positions: the window
   shifts by d, and once d >= window the query cannot see itself. Fix: positions = slot
   indices (RoPE depends only on position differences). Gemma 3 uses slots only: exact as is.
2. Each decode step masks every buffer entry equal to pad_id, generated tokens included: a model
   that emits token 0 stops seeing it. Fix: only prompt padding is masked.
With those, greedy decoding is token-identical to the reference for tiny Gemma 1, 2 and 3 models
(sliding window crossed) and for the real Gemma 3 270M.

Prefill: the Sampler asks for the last position's logits only from models that take
`decode_only_last_token`; Tunix 0.1.7's Gemma models do not, so the prefill computed
[batch, prompt, vocabulary] logits (2 GiB in float32 for 8 x 256 tokens, 262,144-token
vocabulary). `last_token_prefill` wraps the model to offer it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from tunix.generate import sampler as tunix_sampler
from tunix.generate import utils as tunix_utils
from tunix.models.gemma import model as gemma_model


def needs_slot_positions(model: Any) -> bool:
    """Gemma 1/2 models with sliding-window layers (see fix 1 in the module docstring)."""
    if not isinstance(model, gemma_model.Gemma):
        return False
    types = getattr(model.config, "attention_types", ()) or ()
    return gemma_model.AttentionType.LOCAL_SLIDING in tuple(types)


def project_last(model: Any, hidden: Any) -> Any:
    """Vocabulary logits from final hidden states, as Tunix's Gemma `__call__` ends them (tied
    embedding's `decode`, then Gemma 1/2's final soft-cap)."""
    logits = model.embedder.decode(hidden)
    softcap = getattr(model, "final_logits_softcap", None)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    return logits


def hidden_states(model: Any, *args: Any) -> tuple[Any, Any]:
    """(final hidden states [B, L, D], cache) of one forward pass of a Tunix Gemma model (the
    full logits it still computes are dropped by XLA as unused)."""
    _, cache = model(*args, output_hidden_states=True)
    (hidden,) = nnx.pop(model, nnx.Intermediate)["all_hidden_states"].get_value()
    return hidden, cache


class _LastTokenPrefill(nnx.Module):
    """A Tunix Gemma model offering the `decode_only_last_token` prefill (module docstring)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.config = model.config

    def __call__(self, last_tokens: Any, positions: Any, cache: Any, attention_mask: Any,
                 decode_only_last_token: bool = False) -> tuple[Any, Any]:
        if not decode_only_last_token:
            return self.model(last_tokens, positions, cache, attention_mask)
        hidden, cache = hidden_states(self.model, last_tokens, positions, cache, attention_mask)
        # Left padding: every row's last prompt token is at the last position.
        return project_last(self.model, hidden[:, -1:]), cache

    @property
    def num_embed(self) -> int:
        return self.model.num_embed


class _LastTokenPrefillWithCache(_LastTokenPrefill):
    # Models that build their own cache (Gemma 1/2 in 0.1.7; the Sampler checks hasattr).
    def init_cache(self, batch_size: int, cache_size: int, dtype: Any) -> Any:
        return self.model.init_cache(batch_size, cache_size, dtype)


def last_token_prefill(model: Any) -> nnx.Module:
    """`model` wrapped to offer the last-token prefill."""
    cls = _LastTokenPrefillWithCache if hasattr(model, "init_cache") else _LastTokenPrefill
    return cls(model)


class ExactSampler(tunix_sampler.Sampler):
    """Tunix's Sampler with fixes 1 and 2; a row is also done once it has completed one of
    `stop_matchers` (`generation.StopMatcher`). Several processes: `wrap_decode` wraps the
    compiled decode loop, `place_state` each initial sampling state (multihost.sharding)."""

    def __init__(self, transformer: Any, tokenizer: Any, cache_config: Any, *,
                 slot_positions: bool, stop_matchers: Sequence[Any] = (),
                 wrap_decode: Callable[[Any], Any] | None = None,
                 place_state: Callable[[Any], Any] | None = None) -> None:
        super().__init__(transformer, tokenizer, cache_config)
        self.slot_positions = slot_positions
        self.stop_matchers = tuple(stop_matchers)
        self.place_state = place_state
        if wrap_decode is not None:
            self._compiled_decode_fn = wrap_decode(self._compiled_decode_fn)

    def _sample(self, logits: Any, eos: Any, cache: Any, sampler_state: Any) -> Any:
        # Tunix's step, then a row that has just completed a stop string is done too.
        state = super()._sample(logits=logits, eos=eos, cache=cache,
                                sampler_state=sampler_state)
        if not self.stop_matchers:
            return state
        stopped = jnp.zeros_like(state.done)
        last = state.decoding_step  # where the token just sampled was written
        width = state.token_buffer.shape[1]
        for matcher in self.stop_matchers:
            span = matcher.max_tokens
            index = last - span + 1 + jnp.arange(span)
            classes = jnp.asarray(matcher.token_class)[
                state.token_buffer[:, jnp.clip(index, 0, width - 1)]]  # [batch, span]
            next_state = jnp.asarray(matcher.next_state)
            generated = index >= state.num_input_tokens  # the prompt never matches
            match_state = jnp.zeros(classes.shape[0], jnp.int32)
            for i in range(span - 1):
                match_state = jnp.where(generated[i], next_state[match_state, classes[:, i]], 0)
            stopped = stopped | jnp.asarray(matcher.completes)[match_state, classes[:, -1]]
        return dataclasses.replace(state, done=state.done | stopped)

    def init_sample_state(self, *args: Any, **kwargs: Any) -> Any:
        state = super().init_sample_state(*args, **kwargs)
        if self.slot_positions:
            batch, length = state.positions.shape
            slots = jnp.broadcast_to(jnp.arange(length, dtype=state.positions.dtype),
                                     (batch, length))
            state = state.replace(positions=slots)
        if self.place_state is not None:
            state = self.place_state(state)
        return state

    def _sample_step(self, params: Any, sampler_state: Any) -> Any:
        # Tunix 0.1.7's `Sampler._sample_step` except for `input_mask` (fix 2).
        batch_size = sampler_state.token_buffer.shape[0]
        decoding_step = sampler_state.decoding_step
        last_token = sampler_state.token_buffer[:, decoding_step].reshape((batch_size, 1))
        step_positions = jnp.expand_dims(sampler_state.positions[:, decoding_step], -1)
        in_prompt = (jnp.arange(sampler_state.token_buffer.shape[1])
                     < sampler_state.num_input_tokens)
        input_mask = (sampler_state.token_buffer == self.tokenizer.pad_id()) & in_prompt
        attention_mask = tunix_utils.compute_attention_masks(
            decoding_step, self.cache_config.cache_size, input_mask)
        transformer = nnx.merge(self._transformer_graphdef, params)
        logits, cache = transformer(last_token, positions=step_positions,
                                    cache=sampler_state.cache, attention_mask=attention_mask)
        state = self._sample(logits=logits, cache=cache, eos=self.eos_ids,
                             sampler_state=sampler_state)
        if state.logits_buffer is not None:
            state = dataclasses.replace(state, logits_buffer=state.logits_buffer.at[
                :, decoding_step + 1].set(jnp.squeeze(logits, 1)))
        return state


def refresh_weights(sampler: Any, module: Any) -> None:
    """Point `sampler` at `module`'s current variables (training may have put new Variable
    objects into it since the Sampler was built); same shapes and dtypes, so jit's cache hits."""
    variables = nnx.variables(module)
    sampler._transformer_state = variables
    sampler._flattened_transformer_state = jax.tree.leaves(
        variables, is_leaf=lambda x: isinstance(x, nnx.Variable))


def compilations(sampler: Any) -> dict[str, int]:
    """How many times `sampler`'s prefill and decode loop have been compiled so far."""
    return {"prefill": sampler._compiled_prefill_fn._cache_size(),
            "decode": sampler._compiled_decode_fn._cache_size()}
