"""Generation: Tunix's KV-cache Sampler over our loaded models, plus the reference it must match.

Tunix's Sampler is exact when the tokenizer reports the right special ids; our `Tokenizer`
checks them when it is loaded, and `Generator` refuses a tokenizer with a negative bos/eos/pad.
`greedy_reference` is the slow full-recompute argmax loop that tests hold the Sampler to.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class Generation:
    prompt: str
    text: str
    token_ids: list[int]
    truncated: bool  # stopped at max_new_tokens without an eos

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


class Generator:
    """Batched generation with a KV cache; greedy when temperature == 0."""

    def __init__(self, model: Any, tokenizer: Any, eos_ids: Sequence[int], *,
                 max_prompt_len: int = 256, max_new_tokens: int = 128):
        from tunix.generate.sampler import CacheConfig, Sampler

        for name in ("bos", "eos", "pad"):
            value = getattr(tokenizer, f"{name}_id")()
            if value is None or value < 0:
                raise ValueError(
                    f"tokenizer reports {name}_id={value}; the sampler would feed it as a token "
                    "and never stop. Load the tokenizer with kaggle_lib.models.tokenizer.load_tokenizer"
                )
        self.tokenizer = tokenizer
        self.eos_ids = [int(e) for e in eos_ids]
        self.max_prompt_len = _next_power_of_2(max_prompt_len)
        self.max_new_tokens = max_new_tokens
        config = model.config
        cache = CacheConfig(
            cache_size=self.max_prompt_len + max_new_tokens,
            num_layers=config.num_layers,
            num_kv_heads=config.num_kv_heads,
            head_dim=config.head_dim,
        )
        processor = getattr(tokenizer, "processor", tokenizer)
        self.sampler = Sampler(model, processor, cache)

    def prompt_length(self, prompt: str) -> int:
        return len(self.tokenizer.encode(prompt)) + 1  # + bos

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
        max_new = max_new_tokens or self.max_new_tokens
        if max_new > self.max_new_tokens:
            raise ValueError(f"max_new_tokens {max_new} exceeds the cache built for {self.max_new_tokens}")
        for prompt in prompts:
            length = self.prompt_length(prompt)
            if length > self.max_prompt_len:
                raise ValueError(
                    f"prompt of {length} tokens exceeds max_prompt_len {self.max_prompt_len}: "
                    f"{prompt[:80]!r}..."
                )
        sampling = temperature > 0
        out: list[Generation] = []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start:start + batch_size])
            # Pad the last batch to a full one so every call reuses the same compiled shapes.
            padded = chunk + [chunk[-1]] * (batch_size - len(chunk))
            result = self.sampler(
                padded,
                max_generation_steps=max_new,
                max_prompt_length=self.max_prompt_len,
                eos_tokens=self.eos_ids,
                temperature=temperature if sampling else 0.0,
                top_p=(top_p if top_p is not None else 1.0) if sampling else None,
                top_k=top_k if sampling else None,
                seed=seed + start if sampling else None,
            )
            for prompt, tokens in zip(chunk, result.tokens[: len(chunk)], strict=True):
                ids = [int(t) for t in np.asarray(tokens)]
                out.append(Generation(
                    prompt=prompt,
                    text=self.tokenizer.decode(ids),
                    token_ids=ids,
                    truncated=len(ids) >= max_new,
                ))
        return out


def greedy_reference(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int,
                     eos_ids: Sequence[int]) -> list[int]:
    """Full-recompute argmax decoding, one token at a time: slow, obviously correct."""
    import jax.numpy as jnp
    from tunix.sft import utils as sft_utils

    ids = [tokenizer.bos_id(), *tokenizer.encode(prompt)]
    generated: list[int] = []
    for _ in range(max_new_tokens):
        tokens = jnp.asarray([ids], dtype=jnp.int32)
        mask = jnp.ones_like(tokens, dtype=jnp.bool_)
        logits, _ = model(tokens, sft_utils.build_positions_from_mask(mask), None,
                          sft_utils.make_causal_attn_mask(mask))
        next_id = int(jnp.argmax(logits[0, -1]))
        if next_id in eos_ids:
            break
        generated.append(next_id)
        ids.append(next_id)
    return generated
