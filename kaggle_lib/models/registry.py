"""One registry of the models the pipeline knows: Tunix class and config, sources, special ids.

Gemma 1 and Gemma 2 run on Tunix's `models.gemma` (class `Gemma`), Gemma 3 on
`models.gemma3` (class `Gemma3`). Tiny entries are random-weight configs for tests and CI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, Literal

Family = Literal["gemma", "gemma2", "gemma3"]

# Gemma 3 IT ends a turn with <end_of_turn> (106) instead of <eos> (1) (tunix issue 842);
# Gemma 1/2 vocabularies put <end_of_turn> at 107.
GEMMA3_END_OF_TURN = 106
GEMMA12_END_OF_TURN = 107


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    family: Family
    instruct: bool
    # Published size, for people; the loader checks the loaded tree against the exact count
    # of Tunix's architecture for this config (`loader.expected_param_count`).
    published_params: str
    hf_repo: str | None = None
    # None = the repo's default branch; the resolved commit hash is recorded in the manifest.
    hf_revision: str | None = None
    kaggle_handle: str | None = None  # owner/model/framework/variation/VERSION
    pypi: bool = False
    gated: bool = True
    tiny: bool = False
    eos_ids: tuple[int, ...] = (1,)
    # Tunix ModelConfig factory name on the family's ModelConfig class, or a callable.
    tunix_config: str | Callable[[], Any] = ""

    @property
    def default_source(self) -> str:
        if self.tiny:
            return "random"
        if self.pypi:
            return "pypi"
        return "hf" if self.hf_repo else "kaggle"

    @property
    def sources(self) -> list[str]:
        available = (("random", self.tiny), ("hf", self.hf_repo), ("kaggle", self.kaggle_handle),
                     ("pypi", self.pypi))
        return ["local", *(name for name, present in available if present)]


# Tunix (and so jax) is imported inside the functions below: the pipeline imports this module
# before its config stage sets jax's platform flags.


def tunix_model_class(family: Family) -> type:
    module = tunix_config_module(family)
    return module.Gemma3 if family == "gemma3" else module.Gemma


def tunix_config_module(family: Family) -> Any:
    if family == "gemma3":
        from tunix.models.gemma3 import model
    else:
        from tunix.models.gemma import model
    return model


TINY_VOCAB = 512


def tiny_config(family: Family, vocab_size: int = TINY_VOCAB) -> Any:
    """Small random configs that keep each family's structure (GQA, sliding window, softcap)."""
    module = tunix_config_module(family)
    common = dict(num_layers=2, num_embed=vocab_size, embed_dim=64, hidden_dim=128, num_heads=4,
                  head_dim=16)
    if family == "gemma3":
        import jax.numpy as jnp

        return module.ModelConfig(**common, num_kv_heads=2, sliding_window_size=8,
                                  local_base_frequency=10_000, global_base_frequency=1_000_000,
                                  param_dtype=jnp.float32)
    attention = module.AttentionType
    if family == "gemma2":
        return module.ModelConfig(
            **common, num_kv_heads=2, final_logit_softcap=30.0,
            attention_types=(attention.LOCAL_SLIDING, attention.GLOBAL),
            use_post_attn_norm=True, use_post_ffw_norm=True, attn_logits_soft_cap=50.0,
            sliding_window_size=8)
    return module.ModelConfig(
        **common, num_kv_heads=1, final_logit_softcap=None, attention_types=(attention.GLOBAL,) * 2,
        use_post_attn_norm=False, use_post_ffw_norm=False)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("gemma-2b", "gemma", instruct=False, published_params="2.5B",
                  hf_repo="google/gemma-2b", kaggle_handle="google/gemma/flax/2b/2",
                  tunix_config="gemma_2b"),
        ModelSpec("gemma2-2b", "gemma2", instruct=False, published_params="2.6B",
                  hf_repo="google/gemma-2-2b", kaggle_handle="google/gemma-2/flax/gemma2-2b/1",
                  tunix_config="gemma2_2b"),
        ModelSpec("gemma2-2b-it", "gemma2", instruct=True, published_params="2.6B",
                  hf_repo="google/gemma-2-2b-it", kaggle_handle="google/gemma-2/flax/gemma2-2b-it/1",
                  eos_ids=(1, GEMMA12_END_OF_TURN), tunix_config="gemma2_2b_it"),
        ModelSpec("gemma3-1b-pt", "gemma3", instruct=False, published_params="1.0B",
                  hf_repo="google/gemma-3-1b-pt", kaggle_handle="google/gemma-3/flax/gemma3-1b/1",
                  tunix_config="gemma3_1b_pt"),
        ModelSpec("gemma3-1b-it", "gemma3", instruct=True, published_params="1.0B",
                  hf_repo="google/gemma-3-1b-it", kaggle_handle="google/gemma-3/flax/gemma3-1b-it/1",
                  eos_ids=(1, GEMMA3_END_OF_TURN), tunix_config="gemma3_1b_it"),
        ModelSpec("gemma3-270m", "gemma3", instruct=False, published_params="268M",
                  hf_repo="google/gemma-3-270m", pypi=True, tunix_config="gemma3_270m"),
        ModelSpec("gemma-tiny", "gemma", instruct=False, published_params="tiny", gated=False, tiny=True),
        ModelSpec("gemma2-tiny", "gemma2", instruct=False, published_params="tiny", gated=False, tiny=True),
        ModelSpec("gemma3-tiny", "gemma3", instruct=False, published_params="tiny", gated=False, tiny=True),
    ]
}


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(REGISTRY)}") from None


def tunix_config(spec: ModelSpec, *, vocab_size: int | None = None, dtype: Any = None) -> Any:
    """The Tunix ModelConfig for a spec (tiny specs need the tokenizer's vocab size)."""
    if spec.tiny:
        config = tiny_config(spec.family, vocab_size or TINY_VOCAB)
    else:
        factory = spec.tunix_config
        module = tunix_config_module(spec.family)
        config = factory() if callable(factory) else getattr(module.ModelConfig, factory)()
    if dtype is not None and hasattr(config, "param_dtype"):
        config = dataclasses.replace(config, param_dtype=dtype)
    return config
