"""Load Hugging Face Gemma 1/2/3 text checkpoints (safetensors) into Tunix 0.1.7 models.

Tunix's `params_safetensors.create_model_from_safe_tensors` loaders take a hand-written Tunix
`ModelConfig` (`tunix_config_from_hf` writes it) and have one gap: Gemma 1's HF pre-MLP norm
is named `post_attention_layernorm`, which Tunix's gemma loader maps to `post_attn_norm` (right
for Gemma 2), so loading fails with a pytree error about `layers[0].pre_ffw_norm.scale`;
`create_model_from_hf_dir` maps it to `pre_ffw_norm` (`compat.safetensors`).

`tunix_config_from_hf` refuses what Tunix cannot express instead of producing a silently
different model: rope theta other than 10,000 for Gemma 1/2 (hard-coded there), RMSNorm eps
other than 1e-6 (hard-coded), an exact-erf GELU, `query_pre_attn_scalar` neither head_dim nor
hidden/heads, layer patterns other than Tunix's (Gemma 2: sliding, global, ...; Gemma 3: 5
sliding then 1 global).

Reference side note: transformers 5 defaults to SDPA attention, which silently drops Gemma 2's
attention soft-capping; compare against `attn_implementation="eager"`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tunix.models.gemma import model as gm
from tunix.models.gemma import params_safetensors as gps
from tunix.models.gemma3 import model as g3
from tunix.models.gemma3 import params_safetensors as g3ps

from kaggle_lib.compat import safetensors as compat_safetensors
from kaggle_lib.errors import KaggleLibError

# HF model_type -> family name used here.
_FAMILIES = {"gemma": "gemma", "gemma2": "gemma2", "gemma3_text": "gemma3", "gemma3": "gemma3"}
_TANH_GELU = {"gelu_pytorch_tanh", "gelu_new", "gelu_tanh", "gelu_fast"}


class HFCompatError(KaggleLibError, ValueError):
    """An HF checkpoint/config that Tunix's Gemma models cannot represent exactly."""


def read_hf_config(path: str | os.PathLike[str] | Mapping[str, Any]) -> dict[str, Any]:
    """The HF config as a dict: from a mapping, a `config.json` or a directory holding one."""
    if isinstance(path, Mapping):
        cfg = dict(path)
        source = "<config dict>"
    else:
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        if not p.is_file():
            raise HFCompatError(f"{p}: HF config.json not found")
        try:
            cfg = json.loads(p.read_text())
        except ValueError as exc:
            raise HFCompatError(f"{p}: not valid JSON ({exc})") from exc
        source = str(p)
    # Multimodal Gemma 3 configs nest the language model under text_config.
    if cfg.get("model_type") == "gemma3" and isinstance(cfg.get("text_config"), Mapping):
        cfg = {**cfg["text_config"], "model_type": "gemma3_text"}
    cfg["_source"] = source
    return cfg


def hf_family(cfg: Mapping[str, Any]) -> str:
    """"gemma", "gemma2" or "gemma3" from the config's model_type."""
    mt = cfg.get("model_type")
    if mt not in _FAMILIES:
        raise HFCompatError(f"{cfg.get('_source', '<config>')}: model_type is {mt!r}; "
                            f"allowed: {sorted(_FAMILIES)}")
    return _FAMILIES[mt]


def _rope(cfg: Mapping[str, Any], layer_type: str | None, default_theta: float) -> tuple[float, float]:
    """(theta, linear scale factor) for one attention type, old and new config styles."""
    params = cfg.get("rope_parameters")
    if isinstance(params, Mapping) and layer_type in params:
        params = params[layer_type]
    theta = None
    factor = 1.0
    if isinstance(params, Mapping) and params:
        theta = params.get("rope_theta")
        kind = params.get("rope_type", "default")
        if kind == "linear":
            factor = float(params.get("factor", 1.0))
        elif kind != "default":
            raise HFCompatError(f"{cfg.get('_source')}: rope_type {kind!r} for "
                                f"{layer_type or 'all'} layers; allowed: 'default', 'linear' "
                                "(what Tunix implements)")
    if theta is None:
        legacy = "rope_local_base_freq" if layer_type == "sliding_attention" else "rope_theta"
        theta = cfg.get(legacy, default_theta)
        scaling = cfg.get("rope_scaling")
        if layer_type != "sliding_attention" and isinstance(scaling, Mapping):
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind == "linear":
                factor = float(scaling.get("factor", 1.0))
            elif kind != "default":
                raise HFCompatError(f"{cfg.get('_source')}: rope_scaling type {kind!r}; "
                                    "allowed: 'linear'")
    return float(theta), factor


def _require(cfg: Mapping[str, Any], ok: bool, field: str, allowed: str) -> None:
    if not ok:
        raise HFCompatError(f"{cfg.get('_source', '<config>')}: {field}={cfg.get(field)!r} cannot "
                            f"be expressed by Tunix's {hf_family(cfg)} model; allowed: {allowed}")


def _common_checks(cfg: Mapping[str, Any]) -> None:
    act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _TANH_GELU:
        raise HFCompatError(f"{cfg.get('_source')}: hidden activation {act!r}; allowed: "
                            f"{sorted(_TANH_GELU)} (Tunix uses the tanh-approximated GELU)")
    _require(cfg, math.isclose(float(cfg.get("rms_norm_eps", 1e-6)), 1e-6, rel_tol=1e-3),
             "rms_norm_eps", "1e-6 (hard-coded in Tunix's RMSNorm)")
    _require(cfg, not cfg.get("attention_bias", False), "attention_bias", "false")
    _require(cfg, int(cfg["head_dim"]) % 2 == 0, "head_dim", "an even number (RoPE)")


def tunix_config_from_hf(cfg_or_path: str | os.PathLike[str] | Mapping[str, Any],
                         param_dtype: Any = None) -> tuple[str, Any]:
    """(family, Tunix `ModelConfig`) equivalent to an HF Gemma 1/2/3 text config.

    `param_dtype` applies to Gemma 3 only (its ModelConfig has the field; Gemma 1/2 keep the
    checkpoint's dtype unless a `dtype` is given when loading).
    """
    cfg = read_hf_config(cfg_or_path)
    family = hf_family(cfg)
    _common_checks(cfg)
    n_layers = int(cfg["num_hidden_layers"])
    heads = int(cfg["num_attention_heads"])
    hd = int(cfg["head_dim"])
    hidden = int(cfg["hidden_size"])
    common = dict(num_layers=n_layers, num_embed=int(cfg["vocab_size"]), embed_dim=hidden,
                  hidden_dim=int(cfg["intermediate_size"]), num_heads=heads, head_dim=hd,
                  num_kv_heads=int(cfg.get("num_key_value_heads", heads)))
    layer_types = cfg.get("layer_types")

    if family in ("gemma", "gemma2"):
        theta, factor = _rope(cfg, None, 10_000.0)
        _require({**cfg, "rope_theta": theta}, theta == 10_000.0 and factor == 1.0, "rope_theta",
                 "10000 without scaling (hard-coded in Tunix's Gemma 1/2)")
        if family == "gemma":
            return family, gm.ModelConfig(
                **common, final_logit_softcap=None, use_post_attn_norm=False,
                use_post_ffw_norm=False, attention_types=(gm.AttentionType.GLOBAL,) * n_layers)
        qpas = cfg.get("query_pre_attn_scalar", hd)
        _require(cfg, int(qpas) == hd, "query_pre_attn_scalar", f"{hd} (= head_dim)")
        expected = ["sliding_attention" if (i + 1) % 2 else "full_attention"
                    for i in range(n_layers)]
        if layer_types is not None:
            _require(cfg, list(layer_types) == expected, "layer_types",
                     "alternating sliding_attention, full_attention starting with sliding")
        local, full = gm.AttentionType.LOCAL_SLIDING, gm.AttentionType.GLOBAL
        return family, gm.ModelConfig(
            **common, final_logit_softcap=cfg.get("final_logit_softcapping"),
            attn_logits_soft_cap=cfg.get("attn_logit_softcapping"),
            sliding_window_size=int(cfg["sliding_window"]), use_post_attn_norm=True,
            use_post_ffw_norm=True,
            attention_types=(local, full) * (n_layers // 2) + ((local,) if n_layers % 2 else ()))

    for field in ("final_logit_softcapping", "attn_logit_softcapping"):
        _require(cfg, cfg.get(field) is None, field, "null (Gemma 3 has no soft-capping)")
    _require(cfg, not cfg.get("use_bidirectional_attention"), "use_bidirectional_attention",
             "false")
    qpas = int(cfg.get("query_pre_attn_scalar", hd))
    if qpas == hd:
        qnorm = g3.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_HEAD_DIM
    elif qpas == hidden // heads:
        qnorm = g3.QueryPreAttentionNormalisation.BY_ONE_OVER_SQRT_EMBED_DIM_DIV_NUM_HEADS
    else:
        _require(cfg, False, "query_pre_attn_scalar", f"{hd} (head_dim) or {hidden // heads}")
    pattern = ["sliding_attention" if t == g3.AttentionType.LOCAL_SLIDING else "full_attention"
               for t in g3.GEMMA3_ATTENTION_PATTERN]
    expected = [pattern[i % len(pattern)] for i in range(n_layers)]
    if layer_types is not None:
        _require(cfg, list(layer_types) == expected, "layer_types",
                 "5 sliding_attention then 1 full_attention, repeated (Tunix's fixed pattern)")
    local_theta, local_factor = _rope(cfg, "sliding_attention", 10_000.0)
    global_theta, global_factor = _rope(cfg, "full_attention", 1_000_000.0)
    kwargs: dict[str, Any] = dict(
        **common, sliding_window_size=int(cfg["sliding_window"]),
        local_base_frequency=int(local_theta), global_base_frequency=int(global_theta),
        local_scale_factor=local_factor, global_scale_factor=global_factor,
        query_pre_attn_norm=qnorm)
    if param_dtype is not None:
        kwargs["param_dtype"] = param_dtype
    return family, g3.ModelConfig(**kwargs)


def create_model_from_hf_dir(path: str | os.PathLike[str], config: Any = None, dtype: Any = None,
                             mesh: Any = None) -> Any:
    """A Tunix Gemma/Gemma3 model with the weights of an HF safetensors directory.

    `config` defaults to `tunix_config_from_hf(path)` (with `param_dtype=dtype` for Gemma 3).
    """
    d = Path(path)
    cfg = read_hf_config(d)
    family = hf_family(cfg)
    if config is None:
        _, config = tunix_config_from_hf(cfg, param_dtype=dtype)
    if family == "gemma3":
        return g3ps.create_model_from_safe_tensors(str(d), config, mesh=mesh, dtype=dtype)
    if family == "gemma2":
        return gps.create_model_from_safe_tensors(str(d), config, mesh=mesh, dtype=dtype)
    return compat_safetensors.create_gemma1_model(str(d), config, mesh=mesh, dtype=dtype)
