"""Gemma 1 Hugging Face safetensors through Tunix's Gemma 1/2 loader, with its key table fixed.

Written against google-tunix 0.1.7. Changes: reads three private helpers of
`tunix.models.gemma.params_safetensors` (`_get_key_and_transform_mapping`,
`_peek_vocab_size_from_safetensors`, `_make_preprocess_fn`) to repeat the steps of its public
`create_model_from_safe_tensors` with one key changed. Goes away when that function takes a
key mapping (or maps Gemma 1's norm itself); no upstream issue filed yet.

Why: HF names Gemma 1's pre-MLP norm `post_attention_layernorm`. Tunix's gemma loader maps that
name to `post_attn_norm` (right for Gemma 2, where it *is* a post-attention norm), so a Gemma 1
checkpoint fails with a pytree error about `layers[0].pre_ffw_norm.scale`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tunix.models import safetensors_loader
from tunix.models.gemma import model as gm
from tunix.models.gemma import params_safetensors as gps

from kaggle_lib.models.convert import ConversionError

_GEMMA1_PRE_MLP_NORM = r"model\.layers\.([0-9]+)\.post_attention_layernorm\.weight"


def gemma1_hf_key_mapping(config: Any) -> dict[str, Any]:
    """Tunix's Gemma 1/2 safetensors key table with Gemma 1's pre-MLP norm (module docstring)."""
    mapping = dict(gps._get_key_and_transform_mapping(config))
    if _GEMMA1_PRE_MLP_NORM not in mapping:  # Tunix changed its table: fail loudly
        raise ConversionError("Tunix gemma key mapping lacks post_attention_layernorm; update "
                              "kaggle_lib.compat.safetensors.gemma1_hf_key_mapping")
    mapping[_GEMMA1_PRE_MLP_NORM] = (r"layers.\1.pre_ffw_norm.scale", None)
    return mapping


def create_gemma1_model(path: str, config: Any, *, mesh: Any = None, dtype: Any = None) -> Any:
    """A Tunix Gemma model with the weights of a Gemma 1 HF safetensors directory: the steps of
    `gps.create_model_from_safe_tensors`, with the Gemma 1 norm name fixed."""
    v_ckpt = gps._peek_vocab_size_from_safetensors(path)
    if v_ckpt != config.num_embed:
        config = dataclasses.replace(config, num_embed=v_ckpt)
    return safetensors_loader.load_and_create_model(
        file_dir=path,
        model_class=gm.Gemma,
        config=config,
        key_mapping=gemma1_hf_key_mapping,
        mesh=mesh,
        preprocess_fn=gps._make_preprocess_fn(config),
        dtype=dtype,
    )
