"""Generation: Tunix's KV-cache Sampler over our loaded models, plus the reference it must match.

`Generator` batches prompts through `tunix.generate.sampler.Sampler` (left padding, one KV
cache, prefill then a `while_loop` decode). Tunix 0.1.7's Sampler is not exact in two cases,
both found by `tests/test_generation.py` (greedy, 32 new tokens, prompts of different lengths,
compared token by token with `greedy_reference_batch`); `_ExactSampler` fixes them:

1. Gemma 1/2 sliding-window layers (`tunix.models.gemma`, i.e. Gemma 2) build the window from
   the *cache slot* of each key and the RoPE *position* of the query
   (`_create_sliding_mask`). With left padding a prompt that is d tokens shorter than the
   longest sits d slots to the right of its positions: the window shifts by d, and once
   d >= window the query cannot even see itself (random output from the first token).
   Fix: give every row the slot index as its position. RoPE depends only on position
   differences, so the attention is the same function; slot and position then agree.
   Gemma 3 (`tunix.models.gemma3`) builds its window from slots only and is exact as is.
2. Each decode step masks every buffer entry equal to pad_id, generated tokens included: a model
   that emits token 0 (`<pad>`) stops seeing it (and the token itself) from then on.
   Fix: only prompt padding is masked.

With those, greedy decoding is token-identical to the full-recompute reference for tiny
Gemma 1, 2 and 3 models (sliding window crossed) and for the real Gemma 3 270M.

Prefill: Tunix's Sampler asks a model for the prompt's last-position logits only when the
model takes `decode_only_last_token`; Tunix 0.1.7's Gemma models do not, so the prefill
computed [batch, prompt, vocabulary] logits (2 GiB in float32 for 8 x 256 tokens with Gemma's
262,144-token vocabulary). `_LastTokenPrefill` wraps the model to offer it.

Special ids: the Sampler prepends `bos_id()` only when it is truthy and stops on `eos_id()`
by default; a tokenizer reporting -1 (SentencePiece with unset piece names) makes it feed
token -1 and never stop, so `Generator` refuses such tokenizers up front.

Sampling (temperature > 0) is reproducible: batch i of a call uses the key
`fold_in(PRNGKey(seed), i)`, and Tunix folds the decoding step into it. The draws of a prompt
depend on the seed, its position in the prompt list and `batch_size` (the noise is drawn for
the whole [batch, vocab] array), and not on the other prompts: the last batch is padded with
copies of its last prompt so every call has the same shapes (one compilation) and rows never
mix.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from kaggle_lib import distributed

__all__ = ["Generation", "Generator", "check_special_ids", "greedy_reference",
           "greedy_reference_batch"]

# Prompts are left-padded to a multiple of this rather than to a power of two (Tunix's default),
# which can nearly double the prefill; one Generator still compiles once.
PROMPT_ALIGN = 16


@dataclasses.dataclass
class Generation:
    """One prompt's continuation (eos not included)."""

    prompt: str
    text: str
    token_ids: list[int]
    truncated: bool  # stopped at max_new_tokens without an eos

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def _round_up(n: int, multiple: int) -> int:
    return max(multiple, -(-n // multiple) * multiple)


def check_special_ids(tokenizer: Any, eos_ids: Sequence[int]) -> None:
    """Raise ValueError for special ids that Tunix's Sampler would silently misuse."""
    ids: dict[str, Any] = {}
    for name in ("bos", "eos", "pad"):
        getter = getattr(tokenizer, f"{name}_id", None)
        if getter is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no {name}_id() method")
        value = getter()
        if value is None or int(value) < 0:
            raise ValueError(
                f"tokenizer reports {name}_id={value}: Tunix's Sampler would feed it as a token "
                "and never stop (SentencePiece reports -1 when the trainer_spec piece names are "
                "unset). Load the tokenizer with kaggle_lib.models.tokenizer.load_tokenizer, "
                "which checks Gemma's ids (pad 0, eos 1, bos 2)."
            )
        ids[name] = int(value)
    if ids["bos"] == 0:
        raise ValueError("tokenizer reports bos_id=0: Tunix's Sampler only prepends a truthy bos "
                         "id, so prompts would start without one (Gemma's bos is 2)")
    if ids["pad"] == ids["bos"]:
        raise ValueError(f"tokenizer reports pad_id == bos_id == {ids['pad']}: the sampler masks "
                         "pad tokens, so the bos would be masked out of every prompt")
    eos = [int(e) for e in eos_ids]
    if not eos or any(e < 0 for e in eos):
        raise ValueError(f"eos_ids must be a non-empty list of ids >= 0, got {list(eos_ids)}")
    if ids["pad"] in eos:
        # Tunix fills the output buffer with pad: a pad eos would end every row at once.
        raise ValueError(f"eos_ids {eos} contain the pad id {ids['pad']}")


def _needs_slot_positions(model: Any) -> bool:
    """Gemma 1/2 models with sliding-window layers (see fix 1 in the module docstring)."""
    from tunix.models.gemma import model as gemma_model

    if not isinstance(model, gemma_model.Gemma):
        return False
    types = getattr(model.config, "attention_types", ()) or ()
    return gemma_model.AttentionType.LOCAL_SLIDING in tuple(types)


def _project_last(model: Any, hidden: Any) -> Any:
    """Vocabulary logits from final hidden states, as the end of Tunix's Gemma `__call__`:
    the tied embedding's `decode`, then Gemma 1/2's final soft-cap (Gemma 3 has none)."""
    import jax.numpy as jnp

    logits = model.embedder.decode(hidden)
    softcap = getattr(model, "final_logits_softcap", None)
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    return logits


def _hidden_states(model: Any, *args: Any) -> tuple[Any, Any]:
    """(final hidden states [B, L, D], cache) of one forward pass of a Tunix Gemma model.

    The model sows them when asked (`output_hidden_states`) and still computes the full
    logits, which XLA then drops as unused: vocabulary-sized work only where it is needed.
    """
    from flax import nnx

    _, cache = model(*args, output_hidden_states=True)
    (hidden,) = nnx.pop(model, nnx.Intermediate)["all_hidden_states"].get_value()
    return hidden, cache


def _last_token_prefill_classes() -> tuple[type, type]:
    from flax import nnx

    class _LastTokenPrefill(nnx.Module):
        """A Tunix Gemma model with the `decode_only_last_token` prefill that Tunix's Sampler
        uses when a model offers it (Gemma in 0.1.7 does not): the prompt's logits are
        computed for its last position only, not [batch, prompt, vocabulary] of them
        (8 x 256 x 262,144 float32 logits are 2 GiB; for the 270M most of the prefill)."""

        def __init__(self, model: Any) -> None:
            self.model = model
            self.config = model.config

        def __call__(self, last_tokens: Any, positions: Any, cache: Any, attention_mask: Any,
                     decode_only_last_token: bool = False) -> tuple[Any, Any]:
            if not decode_only_last_token:
                return self.model(last_tokens, positions, cache, attention_mask)
            hidden, cache = _hidden_states(self.model, last_tokens, positions, cache,
                                           attention_mask)
            # Left padding: every row's last prompt token is at the last position.
            return _project_last(self.model, hidden[:, -1:]), cache

        @property
        def num_embed(self) -> int:
            return self.model.num_embed

    class _LastTokenPrefillWithCache(_LastTokenPrefill):
        # Only for models that build their own cache (Gemma 1/2 in 0.1.7): the Sampler
        # checks hasattr(model, "init_cache") and otherwise builds it from its CacheConfig.
        def init_cache(self, batch_size: int, cache_size: int, dtype: Any) -> Any:
            return self.model.init_cache(batch_size, cache_size, dtype)

    return _LastTokenPrefill, _LastTokenPrefillWithCache


def _exact_sampler_class() -> type:
    """Tunix's Sampler with the two fixes of the module docstring (built lazily: tunix is heavy)."""
    import jax.numpy as jnp
    from flax import nnx
    from tunix.generate import sampler as tunix_sampler
    from tunix.generate import utils as tunix_utils

    class _ExactSampler(tunix_sampler.Sampler):
        def __init__(self, transformer: Any, tokenizer: Any, cache_config: Any, *,
                     slot_positions: bool, mesh: Any = None) -> None:
            super().__init__(transformer, tokenizer, cache_config)
            self.slot_positions = slot_positions
            self.mesh = mesh  # several processes: fed this process's rows (docs/MULTIHOST.md)
            if mesh is not None:
                self._compiled_decode_fn = distributed.localize_sampling_output(
                    self._compiled_decode_fn, mesh)

        def init_sample_state(self, *args: Any, **kwargs: Any) -> Any:
            state = super().init_sample_state(*args, **kwargs)
            if self.slot_positions:
                batch, length = state.positions.shape
                slots = jnp.broadcast_to(jnp.arange(length, dtype=state.positions.dtype),
                                         (batch, length))
                state = state.replace(positions=slots)
            if self.mesh is not None:
                state = distributed.global_sampling_state(state, self.mesh)
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
                decoding_step, self.cache_config.cache_size, input_mask
            )
            transformer = nnx.merge(self._transformer_graphdef, params)
            logits, cache = transformer(
                last_token, positions=step_positions, cache=sampler_state.cache,
                attention_mask=attention_mask,
            )
            state = self._sample(logits=logits, cache=cache, eos=self.eos_ids,
                                 sampler_state=sampler_state)
            if state.logits_buffer is not None:
                state = dataclasses.replace(
                    state,
                    logits_buffer=state.logits_buffer.at[:, decoding_step + 1].set(
                        jnp.squeeze(logits, 1)),
                )
            return state

    return _ExactSampler


class Generator:
    """Batched generation with a KV cache; greedy when temperature == 0.

    Build one per evaluation: every `generate` call with the same batch size, length budget
    and decoding settings reuses one compilation of the prefill and one of the decode loop.
    """

    def __init__(self, model: Any, tokenizer: Any, eos_ids: Sequence[int], *,
                 max_prompt_len: int = 256, max_new_tokens: int = 128, mesh: Any = None):
        from tunix.generate.sampler import CacheConfig

        check_special_ids(tokenizer, eos_ids)
        if max_prompt_len < 1 or max_new_tokens < 1:
            raise ValueError(f"max_prompt_len ({max_prompt_len}) and max_new_tokens "
                             f"({max_new_tokens}) must be >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = [int(e) for e in eos_ids]
        self.max_prompt_len = _round_up(max_prompt_len, PROMPT_ALIGN)
        self.max_new_tokens = max_new_tokens
        config = model.config
        cache = CacheConfig(
            cache_size=self.max_prompt_len + max_new_tokens,
            num_layers=config.num_layers,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
        )
        processor = getattr(tokenizer, "processor", tokenizer)
        self.slot_positions = _needs_slot_positions(model)
        plain, with_cache = _last_token_prefill_classes()
        wrapped = (with_cache if hasattr(model, "init_cache") else plain)(model)
        # Several processes (`mesh` given): each feeds its rows of every batch; one gather.
        self.mesh = mesh if mesh is not None and distributed.is_multiprocess() else None
        self.sampler = _exact_sampler_class()(wrapped, processor, cache,
                                              slot_positions=self.slot_positions, mesh=self.mesh)

    def prompt_length(self, prompt: str) -> int:
        """Tokens the sampler feeds for `prompt` (bos included)."""
        return len(self.tokenizer.encode(prompt)) + 1

    def compilations(self) -> dict[str, int]:
        """How many times the prefill and the decode loop have been compiled so far."""
        return {"prefill": self.sampler._compiled_prefill_fn._cache_size(),  # noqa: SLF001
                "decode": self.sampler._compiled_decode_fn._cache_size()}  # noqa: SLF001

    def generate(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float | None = None,
        top_k: int | None = None,
        seed: int = 0,
        batch_size: int = 8,
    ) -> list[Generation]:
        """Continue each prompt (a raw string; the sampler prepends bos)."""
        import jax

        max_new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if not 1 <= max_new <= self.max_new_tokens:
            raise ValueError(f"max_new_tokens must be in 1..{self.max_new_tokens} (the cache "
                             f"this Generator was built for), got {max_new}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if isinstance(prompts, str):
            raise TypeError("generate expects a sequence of prompts, not one string")
        for prompt in prompts:
            length = self.prompt_length(prompt)
            if length > self.max_prompt_len:
                raise ValueError(
                    f"prompt of {length} tokens exceeds max_prompt_len {self.max_prompt_len}: "
                    f"{prompt[:80]!r}..."
                )
        sampling = temperature > 0
        base_key = jax.random.PRNGKey(seed)
        rows, fed = slice(None), batch_size
        if self.mesh is not None:
            fed = distributed.generation_batch_size(batch_size, self.mesh)
            rows = distributed.local_rows(fed, self.mesh)
        generated: list[list[list[int]]] = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            # Pad the last batch to a full one so every call reuses the same compiled shapes;
            # the copies finish with the prompt they copy, so the decode loop runs no longer.
            padded = chunk + [chunk[-1]] * (fed - len(chunk))
            result = self.sampler(
                padded[rows],
                max_generation_steps=max_new,
                max_prompt_length=self.max_prompt_len,
                eos_tokens=self.eos_ids,
                temperature=temperature if sampling else 0.0,
                # Tunix samples only when top_p is given; None means greedy.
                top_p=(top_p if top_p is not None else 1.0) if sampling else None,
                top_k=top_k if sampling else None,
                # A key per batch: distinct batches never share random draws, and distinct
                # seeds never collide (`seed + start` did: seed 0's 2nd batch == seed 8's 1st).
                seed=jax.random.fold_in(base_key, start // batch_size) if sampling else None,
            )
            generated.append([[int(t) for t in np.asarray(tokens)] for tokens in result.tokens])
        if self.mesh is not None:
            generated = distributed.gather_generated(generated, fed, max_new, self.mesh)
        out: list[Generation] = []
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = list(prompts[start:start + batch_size])
            for prompt, ids in zip(chunk, generated[b][: len(chunk)], strict=True):
                out.append(Generation(
                    prompt=prompt,
                    text=self.tokenizer.decode(ids),
                    token_ids=ids,
                    truncated=len(ids) >= max_new,
                ))
        return out


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
    hidden, _ = _hidden_states(model, *args)
    index = (lengths - 1)[:, None, None]
    last = _project_last(model, jnp.take_along_axis(hidden, index, axis=1)[:, 0])
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
