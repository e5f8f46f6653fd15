"""Generation: Tunix's KV-cache Sampler over our loaded models.

`Generator` batches prompts (left padding, one KV cache, prefill then a `while_loop` decode)
through `compat.sampler.ExactSampler`: Tunix 0.1.7's Sampler made token-identical to a
full-recompute reference, with a last-token prefill. Tokenizers reporting a -1 bos/eos id
(SentencePiece with unset piece names) are refused: the Sampler would feed token -1 and never stop.

Stop strings (e.g. "</answer>"): a row is done once its generated text contains one, found by a
string matcher over tokens (`StopMatcher`) however the model splits it ("</" "answer" ">", ...);
the loop ends when every row is done; a row's tokens up to the stop are an unstopped run's.

Sampling (temperature > 0) is reproducible: batch i uses `fold_in(PRNGKey(seed), i)` (Tunix folds
in the step). A prompt's draws depend on the seed, its position and `batch_size` (noise is drawn
per [batch, vocab]), not on other prompts: the last batch is padded with copies of its last prompt
(one compilation; rows never mix).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from kaggle_lib import multihost
from kaggle_lib.models.tokenizer import check_special_ids

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


class StopMatcher:
    """Finds where generated text first contains a stop string, token by token.
    A Knuth-Morris-Pratt automaton over tokens: the state is how many leading characters of the
    stop the text so far ends with; `next_state[state, class]` and `completes[state, class]`
    come from each token's text decoded alone. Tokens with equal columns share a class, so jit
    gets one int32 per vocabulary entry plus a few small columns."""

    def __init__(self, stop: str, token_texts: Sequence[str]) -> None:
        if not stop:
            raise ValueError("a stop string must not be empty")
        self.stop = stop
        length = len(stop)
        prefixes = tuple(stop[:j] for j in range(1, length + 1))
        proper_suffixes = tuple(stop[i:] for i in range(1, length))
        # Class 0: text that neither completes the stop nor ends with a prefix of it.
        columns: dict[tuple[tuple[int, ...], tuple[bool, ...]], int] = {
            (tuple([0] * (length + 1)), tuple([False] * (length + 1))): 0}
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


class Generator:
    """Batched generation with a KV cache; greedy when temperature == 0. A generation ends at an
    eos id (excluded), its first stop string (included) or `max_new_tokens`. Calls with the same
    batch size, budget and settings share one compilation of the prefill and of the decode loop."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: Sequence[int], *,
                 max_prompt_len: int = 256, max_new_tokens: int = 128, mesh: Any = None,
                 stop_strings: Sequence[str] = ()):
        from flax import nnx
        from tunix.generate.sampler import CacheConfig

        from kaggle_lib.compat import sampler as compat_sampler

        check_special_ids(tokenizer, eos_ids=eos_ids)
        if max_prompt_len < 1 or max_new_tokens < 1:
            raise ValueError(f"max_prompt_len ({max_prompt_len}) and max_new_tokens "
                             f"({max_new_tokens}) must be >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.eos_ids = [int(e) for e in eos_ids]
        self.max_prompt_len = _round_up(max_prompt_len, PROMPT_ALIGN)
        self.max_new_tokens = max_new_tokens
        config = model.config
        cache = CacheConfig(cache_size=self.max_prompt_len + max_new_tokens,
                            num_layers=config.num_layers, num_kv_heads=config.num_kv_heads,
                            head_dim=config.head_dim)
        processor = getattr(tokenizer, "processor", tokenizer)
        self.slot_positions = compat_sampler.needs_slot_positions(model)
        self._wrapped = compat_sampler.last_token_prefill(model)
        if isinstance(stop_strings, str):
            raise TypeError("stop_strings expects a sequence of strings, not one string")
        self.stop_strings = tuple(stop_strings)
        texts = _token_texts(tokenizer, int(model.num_embed)) if self.stop_strings else []
        self.stop_matchers = [StopMatcher(stop, texts) for stop in self.stop_strings]
        self._graphdef = nnx.graphdef(model)
        # Several processes (`mesh` given): each feeds its rows of every batch; one gather.
        self.mesh = mesh if mesh is not None and multihost.is_multiprocess() else None
        sharded = self.mesh is not None  # docs/MULTIHOST.md
        self.sampler = compat_sampler.ExactSampler(
            self._wrapped, processor, cache, slot_positions=self.slot_positions,
            stop_matchers=self.stop_matchers,
            wrap_decode=functools.partial(multihost.localize_sampling_output,
                                          mesh=self.mesh) if sharded else None,
            place_state=functools.partial(multihost.global_sampling_state,
                                          mesh=self.mesh) if sharded else None)

    def serves(self, model: Any, max_new_tokens: int) -> bool:
        """Whether this generator (and its compilations) can serve `model`: the same module and
        structure, whatever its weights now are."""
        from flax import nnx

        return (model is self.model and max_new_tokens <= self.max_new_tokens
                and nnx.graphdef(model) == self._graphdef)

    def compilations(self) -> dict[str, int]:
        """How many times the prefill and the decode loop have been compiled so far."""
        from kaggle_lib.compat import sampler as compat_sampler

        return compat_sampler.compilations(self.sampler)

    def generate(self, prompts: Sequence[str], *, max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
                 seed: int = 0, batch_size: int = 8) -> list[Generation]:
        """Continue each prompt (a raw string; the sampler prepends bos)."""
        import jax

        from kaggle_lib.compat import sampler as compat_sampler

        max_new = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        for bad, message in (
                (not 1 <= max_new <= self.max_new_tokens,
                 f"max_new_tokens must be in 1..{self.max_new_tokens} (the cache this Generator "
                 f"was built for), got {max_new}"),
                (batch_size < 1, f"batch_size must be >= 1, got {batch_size}"),
                (temperature < 0, f"temperature must be >= 0, got {temperature}"),
                (top_p is not None and not 0 < top_p <= 1, f"top_p must be in (0, 1], got {top_p}"),
                (top_k is not None and top_k < 1, f"top_k must be >= 1 or None, got {top_k}")):
            if bad:
                raise ValueError(message)
        if isinstance(prompts, str):
            raise TypeError("generate expects a sequence of prompts, not one string")
        for prompt in prompts:
            length = len(self.tokenizer.encode(prompt)) + 1  # the sampler prepends bos
            if length > self.max_prompt_len:
                raise ValueError(f"prompt of {length} tokens exceeds max_prompt_len "
                                 f"{self.max_prompt_len}: {prompt[:80]!r}...")
        compat_sampler.refresh_weights(self.sampler, self._wrapped)  # training may have moved them
        sampling = temperature > 0
        base_key = jax.random.PRNGKey(seed)
        rows, fed = slice(None), batch_size
        if self.mesh is not None:
            fed = multihost.generation_batch_size(batch_size, self.mesh)
            rows = multihost.local_rows(fed, self.mesh)
        chunks = [list(prompts[s:s + batch_size]) for s in range(0, len(prompts), batch_size)]
        generated: list[list[list[int]]] = []
        for b, chunk in enumerate(chunks):
            # Pad the last batch to a full one so every call reuses the same compiled shapes;
            # the copies finish with the prompt they copy, so the decode loop runs no longer.
            padded = chunk + [chunk[-1]] * (fed - len(chunk))
            result = self.sampler(
                padded[rows], max_generation_steps=max_new, max_prompt_length=self.max_prompt_len,
                eos_tokens=self.eos_ids, temperature=temperature if sampling else 0.0,
                # Tunix samples only when top_p is given; None means greedy.
                top_p=(top_p if top_p is not None else 1.0) if sampling else None,
                top_k=top_k if sampling else None,
                # A key per batch: distinct batches never share random draws, and distinct
                # seeds never collide (`seed + start` did: seed 0's 2nd batch == seed 8's 1st).
                seed=jax.random.fold_in(base_key, b) if sampling else None)
            generated.append([[int(t) for t in np.asarray(tokens)] for tokens in result.tokens])
        if self.mesh is not None:
            generated = multihost.gather_generated(generated, fed, max_new, self.mesh)
        out: list[Generation] = []
        for chunk, batch_ids in zip(chunks, generated, strict=True):
            for prompt, ids in zip(chunk, batch_ids[: len(chunk)], strict=True):
                # The loop runs on while other rows are not done: cut after the first stop.
                stops = [i for m in self.stop_matchers if (i := m.first_stop(ids)) is not None]
                if stops:
                    ids = ids[: min(stops) + 1]
                out.append(Generation(prompt=prompt, text=self.tokenizer.decode(ids), token_ids=ids,
                                      truncated=not stops and len(ids) >= max_new))
        return out
