"""Exports of a trained Gemma 3, LoRA merged, each loaded back and its logits compared with the
trained model's (`export_model`):

* HF safetensors (+ config, tokenizer), loadable by our loader, Tunix and transformers; merged by
  Tunix's `save_lora_merged_model_as_safetensors` from a float32 base (its loader reads
  safetensors with numpy, which has no bfloat16).
* an Orbax checkpoint in the upstream layout (`models.kaggle_format`), what a Kaggle Model holds.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.flax import save_file as save_bfloat16_safetensors
from safetensors.numpy import load_file
from safetensors.numpy import save_file as save_numpy_safetensors
from tunix.models.gemma3 import model as g3
from tunix.models.gemma3 import params as g3_params
from tunix.models.gemma3 import params_safetensors

from kaggle_lib import logs, multihost
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.models import kaggle_format
from kaggle_lib.models.convert import flat_params, hf_state_dict
from kaggle_lib.models.lora_merge import build_model, is_lora_param, lora_rank, merge_lora_params

log = logs.get_logger(__name__)

HF_DIR = "hf"
ORBAX_DIR = "orbax"
EXPORT_INFO = "export_info.json"
# float32 on CPU: merged-model logits match the LoRA model to ~1e-6 on tiny models (see
# tests/integration/test_export.py). Real models sum over more terms in a different order (W + A@B merged vs
# x@W + (x@A)@B): the real 270M's logits (scale ~30) differ by ~1.7e-4, so the tolerance is
# LOGITS_TOLERANCE or RELATIVE_TOLERANCE x the largest logit, whichever is larger.
LOGITS_TOLERANCE = 1e-4
RELATIVE_TOLERANCE = 2e-5


class ExportError(KaggleLibError, ValueError):
    """A model or argument the exporter cannot turn into a faithful export."""


def _gemma3_config(model: nnx.Module) -> g3.ModelConfig:
    if not isinstance(model, g3.Gemma3):
        raise ExportError(f"exports support Tunix Gemma3 models; got {type(model).__name__} "
                          "(allowed: tunix.models.gemma3.model.Gemma3, LoRA-wrapped or not)")
    return model.config


def hf_config(config: g3.ModelConfig, *, eos_ids: Sequence[int] = (1,), dtype: str = "float32") -> dict[str, Any]:
    """The config.json transformers writes for a Tunix Gemma3 config (inverse of
    `models.hf_compat.tunix_config_from_hf`), built as transformers' own `Gemma3TextConfig`."""
    from transformers import Gemma3TextConfig  # config classes only: no torch needed

    if config.vision_config is not None:
        raise ExportError("vision Gemma 3 configs are not exported; allowed: text-only configs")
    pattern = ["sliding_attention" if t == g3.AttentionType.LOCAL_SLIDING else "full_attention"
               for t in g3.GEMMA3_ATTENTION_PATTERN]
    qnorm = g3.QueryPreAttentionNormalisation
    scalar = (config.head_dim if config.query_pre_attn_norm == qnorm.BY_ONE_OVER_SQRT_HEAD_DIM
              else config.embed_dim // config.num_heads)

    def rope(theta: float, factor: float) -> dict[str, Any]:
        if factor == 1.0:
            return {"rope_type": "default", "rope_theta": float(theta)}
        return {"rope_type": "linear", "rope_theta": float(theta), "factor": float(factor)}

    eos = list(eos_ids)
    return Gemma3TextConfig(
        architectures=["Gemma3ForCausalLM"], vocab_size=config.num_embed,
        hidden_size=config.embed_dim, intermediate_size=config.hidden_dim,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
        hidden_activation="gelu_pytorch_tanh",
        # Gemma 3 270M/1B publish 32k positions; the rope-scaled larger models 128k.
        max_position_embeddings=32768 if config.global_scale_factor == 1.0 else 131072,
        rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=2,
        eos_token_id=eos[0] if len(eos) == 1 else eos, tie_word_embeddings=True,
        rope_parameters={
            "full_attention": rope(config.global_base_frequency, config.global_scale_factor),
            "sliding_attention": rope(config.local_base_frequency, config.local_scale_factor),
        },
        query_pre_attn_scalar=scalar, sliding_window=config.sliding_window_size,
        layer_types=[pattern[i % len(pattern)] for i in range(config.num_layers)],
        final_logit_softcapping=None, attn_logit_softcapping=None, dtype=dtype,
    ).to_diff_dict()


def _write_safetensors(tensors: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    if dtype == "float32":
        save_numpy_safetensors({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()},
                               str(path), metadata={"format": "pt"})
    elif dtype == "bfloat16":
        save_bfloat16_safetensors({k: jnp.asarray(v, jnp.bfloat16) for k, v in tensors.items()},
                                  str(path), metadata={"format": "pt"})
    else:
        raise ExportError(f"export dtype {dtype!r}; allowed: 'float32', 'bfloat16'")


def _write_side_files(directory: Path, config: g3.ModelConfig, tokenizer: Any, eos_ids: Sequence[int],
                      dtype: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    hf = hf_config(config, eos_ids=eos_ids, dtype=dtype)
    # As transformers' save_pretrained writes it.
    (directory / "config.json").write_text(json.dumps(hf, indent=2, sort_keys=True) + "\n")
    eos = list(eos_ids)
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 2, "pad_token_id": 0, "eos_token_id": eos[0] if len(eos) == 1 else eos},
        indent=2) + "\n")
    _write_tokenizer(directory, tokenizer)


def _write_tokenizer(directory: Path, tokenizer: Any) -> None:
    """tokenizer.model: the serialized SentencePiece model of our Tokenizer or a processor."""
    if tokenizer is not None:
        processor = getattr(tokenizer, "processor", tokenizer)
        (directory / "tokenizer.model").write_bytes(processor.serialized_model_proto())


def save_hf_safetensors(model: nnx.Module, out_dir: str | Path, *, tokenizer: Any = None,
                        alpha: float | None = None, eos_ids: Sequence[int] = (1,),
                        dtype: str = "float32") -> Path:
    """Write the (LoRA-merged: `alpha` required) model as an HF Gemma 3 directory; returns it."""
    config = _gemma3_config(model)
    out_dir = Path(out_dir)
    rank = lora_rank(model)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if rank is None:
        _write_side_files(out_dir, config, tokenizer, eos_ids, dtype)
        _write_safetensors(hf_state_dict(flat_params(model)), out_dir / "model.safetensors", dtype)
        return out_dir
    if alpha is None:
        raise ExportError("the model has LoRA params: pass alpha (train.sft.lora.alpha) to merge them")
    base_params = {k: v for k, v in flat_params(model).items() if not is_lora_param(k)}
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=".base-") as tmp:
        base = Path(tmp)
        # Tunix's merge copies every non-safetensors file of the base directory.
        _write_side_files(base, config, tokenizer, eos_ids, dtype)
        _write_safetensors(hf_state_dict(base_params), base / "model.safetensors", "float32")
        g3_params.save_lora_merged_model_as_safetensors(str(base), str(out_dir), model, rank, alpha)
    if dtype != "float32":
        merged = load_file(str(out_dir / "model.safetensors"))
        _write_safetensors(merged, out_dir / "model.safetensors", dtype)
    return out_dir


def save_orbax(model: nnx.Module, out_dir: str | Path, *, tokenizer: Any = None,
               alpha: float | None = None) -> Path:
    """Write the (LoRA-merged) model as an upstream-layout Orbax checkpoint (+ tokenizer.model)."""
    _gemma3_config(model)
    if lora_rank(model) is not None and alpha is None:
        raise ExportError("the model has LoRA params: pass alpha (train.sft.lora.alpha) to merge them")
    out_dir = kaggle_format.write_upstream_checkpoint(merge_lora_params(model, alpha or 0.0), out_dir)
    _write_tokenizer(out_dir, tokenizer)
    return out_dir


@nnx.jit  # compiled once per model structure; eager is ~10x slower
def _forward(model: nnx.Module, tokens: jax.Array) -> jax.Array:
    batch, length = tokens.shape
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((length, length), bool)), (batch, length, length))
    positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
    logits, _ = model(tokens, positions, None, mask)
    return logits


def forward_logits(model: nnx.Module, tokens: np.ndarray) -> np.ndarray:
    """Full-sequence logits [B, L, V] (float32) of a Tunix Gemma3 under a causal mask."""
    logits = _forward(model, jnp.asarray(tokens, dtype=jnp.int32))
    return np.asarray(logits, dtype=np.float32)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@dataclasses.dataclass
class ExportResult:
    hf_dir: Path
    orbax_dir: Path
    hf_max_logit_diff: float
    orbax_max_logit_diff: float
    tolerance: float

    def to_manifest(self, run_dir: Path, step: int | None) -> dict[str, Any]:
        root = Path(run_dir).resolve()
        return {name: {"path": str(path.resolve().relative_to(root)), "format": fmt,
                       "step": step, "max_logit_diff": diff, "tolerance": self.tolerance}
                for name, path, fmt, diff in (
                    (HF_DIR, self.hf_dir, "hf-safetensors", self.hf_max_logit_diff),
                    (ORBAX_DIR, self.orbax_dir, "orbax-gemma3-upstream",
                     self.orbax_max_logit_diff))}


def export_model(model: nnx.Module, out_dir: str | Path, *, tokenizer: Any, alpha: float | None,
                 eos_ids: Sequence[int] = (1,),
                 check_tokens: np.ndarray | None = None) -> ExportResult:
    """Both exports under `out_dir`, loaded back in float32 and compared with the model (float32)
    or a float32 merged copy (bfloat16: tolerance 1% of the largest logit, for the weights'
    rounding; a wrong layout is off by far more); ExportError beyond the tolerance."""
    config = _gemma3_config(model)
    out_dir = Path(out_dir)
    hf_dir = save_hf_safetensors(model, out_dir / HF_DIR, tokenizer=tokenizer, alpha=alpha,
                                 eos_ids=eos_ids)
    orbax_dir = save_orbax(model, out_dir / ORBAX_DIR, tokenizer=tokenizer, alpha=alpha)
    if check_tokens is None:
        check_tokens = np.array([[2] + list(range(3, 3 + 15))], dtype=np.int32) % config.num_embed
    param_dtype = jnp.dtype(getattr(config, "param_dtype", jnp.float32))
    f32 = dataclasses.replace(config, param_dtype=jnp.float32)
    # TPUs run float32 matmuls in bfloat16 passes by default: the check wants the real numbers.
    with jax.default_matmul_precision("highest"):
        if param_dtype == jnp.float32:
            reference = forward_logits(model, check_tokens)
            tol = max(LOGITS_TOLERANCE, RELATIVE_TOLERANCE * float(np.abs(reference).max()))
        else:
            ref_model = build_model(f32, merge_lora_params(model, alpha or 0.0, dtype=np.float32))
            reference = forward_logits(ref_model, check_tokens)
            del ref_model
            tol = 0.01 * max(1.0, float(np.abs(reference).max()))
        hf_model = params_safetensors.create_model_from_safe_tensors(str(hf_dir), f32,
                                                                     dtype=jnp.float32)
        hf_diff = max_abs_diff(forward_logits(hf_model, check_tokens), reference)
        del hf_model
        orbax_model = kaggle_format.load_upstream_checkpoint(orbax_dir, f32, dtype=jnp.float32)
        orbax_diff = max_abs_diff(forward_logits(orbax_model, check_tokens), reference)
        del orbax_model
    info = {"family": "gemma3", "lora_rank": lora_rank(model), "lora_alpha": alpha,
            "param_dtype": str(jnp.dtype(param_dtype)), "check_tokens": check_tokens.tolist(),
            "hf_max_logit_diff": hf_diff, "orbax_max_logit_diff": orbax_diff, "tolerance": tol}
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    if not (hf_diff <= tol and orbax_diff <= tol):
        raise ExportError(f"exported weights do not reproduce the trained model: max |logit diff| "
                          f"HF {hf_diff:.3g}, Orbax {orbax_diff:.3g}, tolerance {tol:g} (details "
                          f"in {out_dir / EXPORT_INFO})")
    return ExportResult(hf_dir, orbax_dir, hf_diff, orbax_diff, tol)


def export_run(loaded: Any, sft: Any, record: Any, step: int | None) -> None:
    """A run's trained model exported into <run_dir>/export/ and recorded in the manifest;
    skipped for non-Gemma-3 families (Tunix has no merge helper) and multi-process runs."""
    if multihost.is_multiprocess():  # the weights are spread over processes (docs/MULTIHOST.md)
        log.info("export: skipped in a multi-process run; restore its last checkpoint in a "
                 "1-process run (train.resume_from: <run>/checkpoints/sft) to export")
        return
    if loaded is None or loaded.spec.family != "gemma3":
        family = loaded.spec.family if loaded is not None else "no model"
        log.info(f"export: skipped ({family}; exports are implemented for gemma3 models)")
        return
    alpha = sft.lora.alpha if sft.mode == "lora" else None
    result = export_model(loaded.model, record.run_dir / "export", tokenizer=loaded.tokenizer,
                          alpha=alpha, eos_ids=loaded.eos_ids)
    record.update_manifest(exports=result.to_manifest(record.run_dir, step))
    log.info(f"export: {result.hf_dir} (HF safetensors, max |logit diff| "
             f"{result.hf_max_logit_diff:.2e}) and {result.orbax_dir} (Orbax for Kaggle Models, "
             f"{result.orbax_max_logit_diff:.2e})")
