"""Generation: Tunix's KV-cache Sampler over our loaded models.

`Generator` batches prompts through `tunix.generate.sampler.Sampler` (left padding, one KV
cache, prefill then a `while_loop` decode). Tunix 0.1.7's Sampler is not exact in two cases,
both found by `tests/integration/test_generation.py` (greedy, 32 new tokens, prompts of different lengths,
compared token by token with the full-recompute reference in
`tests/generation_reference.py`); `_ExactSampler` fixes them:

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

Stop strings (`stop_strings`, e.g. "</answer>"): a row is done once its generated text contains
one, and the decode loop ends when every row is done (Tunix ends it on eos only). The check is a
string matcher over tokens (`StopMatcher`), so "</answer>" is found however the model splits it
into tokens ("</" "answer" ">", ".</" "answer" "><" ...). Being done does not change a row's
tokens, so the output up to and including the stop is exactly what an unstopped run writes.

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

from kaggle_lib import multihost

__all__ = ["Generation", "Generator", "StopMatcher", "check_special_ids"]

# Prompts are left-padded to a multiple of this rather than to a power of two (Tunix's default),
# which can nearly double the prefill; one Generator still compiles once.
PROMPT_ALIGN = 16


@dataclasses.dataclass
class Generation:
    """One prompt's continuation (eos not included)."""

    prompt: str
    text: str
    token_ids: list[int]
    truncated: bool  # stopped at max_new_tokens without an eos or a stop string

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


class StopMatcher:
    """Finds where generated text first contains a stop string, token by token.

    A Knuth-Morris-Pratt automaton over tokens: the state is how many leading characters of
    the stop string the text so far ends with; `next_state[state, token]` and
    `completes[state, token]` (the stop string occurs within the stop's first `state`
    characters followed by the token's text) come from each token's text decoded alone.
    Tokens are grouped into classes with equal columns, so the tables handed to jit are one
    int32 per vocabulary entry plus a few small columns.
    """

    def __init__(self, stop: str, token_texts: Sequence[str]) -> None:
        if not stop:
            raise ValueError("a stop string must not be empty")
        self.stop = stop
        length = len(stop)
        prefixes = tuple(stop[:j] for j in range(1, length + 1))
        proper_suffixes = tuple(stop[i:] for i in range(1, length))
        columns: dict[tuple[tuple[int, ...], tuple[bool, ...]], int] = {}
        # Class 0: text that neither completes the stop nor ends with a prefix of it.
        columns[(tuple([0] * (length + 1)), tuple([False] * (length + 1)))] = 0
        classes = np.zeros(len(token_texts), np.int32)
        for token, text in enumerate(token_texts):
            if not text:  # control tokens: the text, and so the state, is unchanged
                key = (tuple(range(length + 1)), tuple([False] * (length + 1)))
            elif text in stop or (proper_suffixes and text.startswith(proper_suffixes)):
                # The state before the token matters: it may finish a partial match.
                joined = [stop[:k] + text for k in range(length + 1)]
                key = (tuple(self._longest_prefix_suffix(j) for j in joined),
                       tuple(stop in j for j in joined))
            elif stop in text or text.endswith(prefixes):
                key = (tuple([self._longest_prefix_suffix(text)] * (length + 1)),
                       tuple([stop in text] * (length + 1)))
            else:
                continue
            classes[token] = columns.setdefault(key, len(columns))
        self.token_class = classes
        self.next_state = np.array([k[0] for k in columns], np.int32).T  # [state, class]
        self.completes = np.array([k[1] for k in columns], bool).T

    def _longest_prefix_suffix(self, text: str) -> int:
        for j in range(min(len(self.stop), len(text)), 0, -1):
            if text.endswith(self.stop[:j]):
                return j
        return 0

    @property
    def max_tokens(self) -> int:
        """Tokens a match can span: every token the stop touches holds at least one of its
        characters (empty-text tokens leave the state as it is)."""
        return len(self.stop)

    def first_stop(self, token_ids: Sequence[int]) -> int | None:
        """Index of the token that completes the first occurrence, or None."""
        state = 0
        for index, token in enumerate(token_ids):
            cls = self.token_class[token] if 0 <= token < len(self.token_class) else 0
            if self.completes[state, cls]:
                return index
            state = int(self.next_state[state, cls])
        return None


def _token_texts(tokenizer: Any, vocab_size: int) -> list[str]:
    """Each token id decoded alone (ids the tokenizer does not have read as empty text)."""
    processor = getattr(tokenizer, "processor", None)
    pieces = int(getattr(tokenizer, "vocab_size", vocab_size))
    ids = [[i] for i in range(min(pieces, vocab_size))]
    if processor is not None and hasattr(processor, "decode"):
        texts = [str(t) for t in processor.decode(ids)]  # one C++ call for the whole table
    else:
        texts = [tokenizer.decode(i) for i in ids]
    return texts + [""] * (vocab_size - len(texts))


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
                     slot_positions: bool, mesh: Any = None,
                     stop_matchers: Sequence[StopMatcher] = ()) -> None:
            super().__init__(transformer, tokenizer, cache_config)
            self.slot_positions = slot_positions
            self.stop_matchers = tuple(stop_matchers)
            self.mesh = mesh  # several processes: fed this process's rows (docs/MULTIHOST.md)
            if mesh is not None:
                self._compiled_decode_fn = multihost.localize_sampling_output(
                    self._compiled_decode_fn, mesh)

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
            if self.mesh is not None:
                state = multihost.global_sampling_state(state, self.mesh)
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

    A generation ends at an eos id (not included) or at the end of its first stop string
    (included), or after `max_new_tokens`.

    Build one per evaluation: every `generate` call with the same batch size, length budget
    and decoding settings reuses one compilation of the prefill and one of the decode loop.
    """

    def __init__(self, model: Any, tokenizer: Any, eos_ids: Sequence[int], *,
                 max_prompt_len: int = 256, max_new_tokens: int = 128, mesh: Any = None,
                 stop_strings: Sequence[str] = ()):
        from flax import nnx
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
        if isinstance(stop_strings, str):
            raise TypeError("stop_strings expects a sequence of strings, not one string")
        self.stop_strings = tuple(stop_strings)
        texts = _token_texts(tokenizer, int(model.num_embed)) if self.stop_strings else []
        self.stop_matchers = [StopMatcher(stop, texts) for stop in self.stop_strings]
        self._wrapped = wrapped
        self._graphdef = nnx.graphdef(model)
        # Several processes (`mesh` given): each feeds its rows of every batch; one gather.
        self.mesh = mesh if mesh is not None and multihost.is_multiprocess() else None
        self.sampler = _exact_sampler_class()(wrapped, processor, cache,
                                              slot_positions=self.slot_positions, mesh=self.mesh,
                                              stop_matchers=self.stop_matchers)

    def prompt_length(self, prompt: str) -> int:
        """Tokens the sampler feeds for `prompt` (bos included)."""
        return len(self.tokenizer.encode(prompt)) + 1

    def serves(self, model: Any, max_new_tokens: int) -> bool:
        """Whether this generator can generate for `model` (the same module, with the same
        structure, whatever its weights now are) without being rebuilt: reusing it reuses
        its compilations (baseline evaluation, samples and trained evaluation share them)."""
        from flax import nnx

        return (model is self.model and max_new_tokens <= self.max_new_tokens
                and nnx.graphdef(model) == self._graphdef)

    def _refresh_weights(self) -> None:
        # The Sampler took the model's variables when built; training may since have put new
        # Variable objects into the model. Same shapes and dtypes: jit's cache still hits.
        import jax
        from flax import nnx

        variables = nnx.variables(self._wrapped)
        self.sampler._transformer_state = variables  # noqa: SLF001
        self.sampler._flattened_transformer_state = jax.tree.leaves(  # noqa: SLF001
            variables, is_leaf=lambda x: isinstance(x, nnx.Variable))

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
        self._refresh_weights()
        sampling = temperature > 0
        base_key = jax.random.PRNGKey(seed)
        rows, fed = slice(None), batch_size
        if self.mesh is not None:
            fed = multihost.generation_batch_size(batch_size, self.mesh)
            rows = multihost.local_rows(fed, self.mesh)
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
            generated = multihost.gather_generated(generated, fed, max_new, self.mesh)
        out: list[Generation] = []
        for b, start in enumerate(range(0, len(prompts), batch_size)):
            chunk = list(prompts[start:start + batch_size])
            for prompt, ids in zip(chunk, generated[b][: len(chunk)], strict=True):
                # The loop runs on while other rows are not done: cut after the first stop.
                stops = [i for m in self.stop_matchers if (i := m.first_stop(ids)) is not None]
                if stops:
                    ids = ids[: min(stops) + 1]
                out.append(Generation(
                    prompt=prompt,
                    text=self.tokenizer.decode(ids),
                    token_ids=ids,
                    truncated=not stops and len(ids) >= max_new,
                ))
        return out
