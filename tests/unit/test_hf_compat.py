"""Tiny transformers Gemma 1/2/3 checkpoints loaded into Tunix vs committed reference logits.

The references (tests/fixtures/reference/<family>_tiny/reference.npz) were written by
scripts/make_reference_logits.py with transformers (float32, eager attention).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kaggle_lib.models.hf_compat import (
    HFCompatError,
    create_model_from_hf_dir,
    hf_family,
    tunix_config_from_hf,
)
from kaggle_lib.models.tokenizer import GEMMA_SPECIAL_IDS, load_tokenizer

REF = Path(__file__).resolve().parents[1] / "fixtures" / "reference"
# float32 on CPU: measured max abs diff ~3e-6 at logit scales of ~3.
TOLERANCE = 1e-4
FAMILIES = ["gemma", "gemma2", "gemma3"]


PAD_TO = 32  # one compiled shape for every prompt


@nnx.jit
def _logits(model, tokens: jax.Array) -> jax.Array:
    length = tokens.shape[1]
    mask = jnp.tril(jnp.ones((length, length), bool))[None]
    logits, _ = model(tokens, jnp.arange(length)[None], None, mask)
    return logits


def forward(model, ids: np.ndarray) -> np.ndarray:
    """Full-sequence logits [L, V] of a Tunix Gemma/Gemma3 model for one prompt.

    Right padding to a fixed length changes nothing for the real positions (causal mask)
    and lets every prompt share one compilation.
    """
    assert len(ids) <= PAD_TO
    tokens = np.zeros((1, PAD_TO), np.int32)
    tokens[0, : len(ids)] = ids
    logits = _logits(model, jnp.asarray(tokens))
    return np.asarray(logits[0, : len(ids)], dtype=np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_checkpoint_logits_match_transformers(family: str) -> None:
    directory = REF / f"{family}_tiny"
    ref = np.load(directory / "reference.npz")
    model = create_model_from_hf_dir(directory, dtype=jnp.float32)
    n_prompts = len([k for k in ref.files if k.startswith("ids_")])
    assert n_prompts == 3
    worst = 0.0
    for i in range(n_prompts):
        expected = ref[f"logits_{i}"]
        got = forward(model, ref[f"ids_{i}"])
        assert got.shape == expected.shape
        worst = max(worst, float(np.abs(got - expected).max()))
        # Same next-token choice at every position, not just close numbers.
        np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    print(f"{family}: max abs logit diff vs transformers = {worst:.2e}")
    assert worst <= TOLERANCE


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_fixture_shapes_exercise_the_tricky_parts(family: str) -> None:
    directory = REF / f"{family}_tiny"
    cfg = json.loads((directory / "config.json").read_text())
    ref = np.load(directory / "reference.npz")
    tok = load_tokenizer(directory, expected=GEMMA_SPECIAL_IDS)
    assert cfg["vocab_size"] == tok.vocab_size
    assert hf_family(cfg) == family
    longest = max(len(ref[k]) for k in ref.files if k.startswith("ids_"))
    if family != "gemma":
        # Prompts cross the sliding window several times over.
        assert longest >= 2 * cfg["sliding_window"]
    if family == "gemma2":
        assert cfg["attn_logit_softcapping"] and cfg["final_logit_softcapping"]
        # The final cap binds: raw logits would exceed it, capped ones approach it.
        assert np.abs(ref["logits_2"]).max() > 0.5 * cfg["final_logit_softcapping"]
    assert (directory / "model.safetensors").stat().st_size < 1_000_000


def test_tunix_gemma_loader_alone_cannot_read_gemma1() -> None:
    """Documents why hf_compat exists: Tunix maps HF Gemma 1's pre-MLP norm to post_attn_norm."""
    from tunix.models.gemma import params_safetensors as gps

    directory = REF / "gemma_tiny"
    _, config = tunix_config_from_hf(directory)
    with pytest.raises(ValueError, match="pre_ffw_norm"):
        gps.create_model_from_safe_tensors(str(directory), config, dtype=jnp.float32)


def test_config_translation_matches_tunix_presets() -> None:
    from tunix.models.gemma import model as gm
    from tunix.models.gemma3 import model as g3

    gemma2_2b = {
        "model_type": "gemma2",
        "vocab_size": 256000,
        "hidden_size": 2304,
        "intermediate_size": 9216,
        "num_hidden_layers": 26,
        "num_attention_heads": 8,
        "num_key_value_heads": 4,
        "head_dim": 256,
        "hidden_act": "gelu_pytorch_tanh",
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": 256,
        "sliding_window": 4096,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": 50.0,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-06,
    }
    family, cfg = tunix_config_from_hf(gemma2_2b)
    preset = gm.ModelConfig.gemma2_2b()
    assert family == "gemma2"
    for field in ("num_layers", "embed_dim", "hidden_dim", "num_heads", "head_dim",
                  "num_kv_heads", "final_logit_softcap", "attn_logits_soft_cap",
                  "sliding_window_size", "use_post_attn_norm", "use_post_ffw_norm"):
        assert getattr(cfg, field) == getattr(preset, field), field
    assert tuple(cfg.attention_types) == tuple(preset.attention_types)

    converted = json.loads((REF / "gemma3_tiny" / "config.json").read_text())
    _, cfg3 = tunix_config_from_hf(converted, param_dtype=jnp.float32)
    assert (cfg3.local_base_frequency, cfg3.global_base_frequency) == (10_000, 1_000_000)
    assert cfg3.query_pre_attn_norm == g3.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM
    assert cfg3.param_dtype == jnp.float32


@pytest.mark.parametrize(
    ("family", "change", "field"),
    [
        ("gemma2", {"query_pre_attn_scalar": 144}, "query_pre_attn_scalar"),
        ("gemma2", {"rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}},
         "rope_theta"),
        ("gemma2", {"layer_types": ["full_attention"] * 4}, "layer_types"),
        ("gemma3", {"layer_types": ["sliding_attention"] * 6}, "layer_types"),
        ("gemma3", {"rms_norm_eps": 1e-5}, "rms_norm_eps"),
        ("gemma", {"hidden_act": "gelu", "hidden_activation": None}, "hidden activation"),
        ("gemma", {"model_type": "llama"}, "model_type"),
    ],
)
def test_inexpressible_configs_are_refused(family: str, change: dict, field: str) -> None:
    cfg = json.loads((REF / f"{family}_tiny" / "config.json").read_text())
    cfg.update(change)
    with pytest.raises(HFCompatError, match=field):
        tunix_config_from_hf(cfg)


def test_reference_is_sensitive_to_soft_capping() -> None:
    """Dropping Gemma 2's soft-caps (what SDPA attention does in transformers) shows up."""
    import dataclasses

    directory = REF / "gemma2_tiny"
    ref = np.load(directory / "reference.npz")
    _, config = tunix_config_from_hf(directory)
    uncapped = dataclasses.replace(config, final_logit_softcap=None, attn_logits_soft_cap=None)
    model = create_model_from_hf_dir(directory, config=uncapped, dtype=jnp.float32)
    diff = np.abs(forward(model, ref["ids_2"]) - ref["logits_2"]).max()
    assert diff > 100 * TOLERANCE
