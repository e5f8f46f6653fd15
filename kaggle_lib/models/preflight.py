"""Will this run fit? Memory arithmetic per device, before any weights are loaded.

Per device = (weights + gradients + optimizer state) / shards + activations + loss chunk.
Weights, gradients and optimizer state are sharded over every device of the mesh (FSDP x TP);
activations are split over the fsdp axis (the batch). Estimates are deliberately simple and
printed in full so a reader can check them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from kaggle_lib.config import RunConfig
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.models import registry
from kaggle_lib.models.loader import expected_param_count, resolve_dtype

GIB = 2**30


class PreflightError(KaggleLibError, RuntimeError):
    """The requested training mode cannot fit in device memory."""

    hint = (
        "Choose a training mode that fits (see the arithmetic above), add devices, or set `force: "
        "true` to try anyway."
    )


@dataclasses.dataclass
class PreflightReport:
    model: str
    params: int
    param_bytes_each: int
    mode: str
    devices: int
    mesh: dict[str, int]
    memory_per_device: int | None
    memory_source: str
    breakdown: dict[str, float]  # bytes per device
    fits: bool
    forced: bool
    suggestions: list[str]
    text: str = ""

    @property
    def total(self) -> float:
        return sum(self.breakdown.values())

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("text")
        out["total_bytes_per_device"] = self.total
        return out


def _host_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):  # pragma: no cover - non-POSIX
        return None


def estimate(*, params: int, lora_params: int, param_bytes: int, mode: str, optimizer: str,
             batch_size: int, seq_len: int, num_layers: int, embed_dim: int, hidden_dim: int,
             vocab: int, loss_chunk: int, shards: int, fsdp: int) -> dict[str, float]:
    """Bytes per device for each component."""
    weights = params * param_bytes / shards
    if mode == "full":
        trainable = params
        grads = trainable * param_bytes / shards
    else:
        trainable = lora_params
        grads = trainable * 4 / shards
    # AdamW keeps two float32 moments; Adafactor keeps factored row/column statistics (~1%).
    opt_per_param = 8 if optimizer == "adamw" else 0.1
    opt_state = trainable * opt_per_param / shards
    tokens_per_device = batch_size * seq_len / fsdp
    # Saved activations without remat: ~ (4*D + 2*F) values per token per layer (residual, norms,
    # q/k/v/o, MLP gate/up), in the compute dtype.
    activations = tokens_per_device * num_layers * (4 * embed_dim + 2 * hidden_dim) * param_bytes
    # One chunk of float32 logits, plus its gradient, at a time (kaggle_lib.training.loss).
    loss = 2 * min(loss_chunk, tokens_per_device) * vocab * 4
    return {"weights": weights, "gradients": grads, "optimizer_state": opt_state,
            "activations": activations, "loss_chunk_logits": loss}


def _fmt(b: float) -> str:
    return f"{b / GIB:7.2f} GiB"


def check(config: RunConfig, devices: dict[str, Any], *, mesh_shape: dict[str, int] | None = None,
          raise_on_fail: bool = True) -> PreflightReport:
    """Estimate per-device memory for the configured run; refuse (unless force) when it cannot fit."""
    spec = registry.get_spec(config.model.name)
    jdtype = resolve_dtype(config.model.dtype, devices.get("platform", "cpu"))
    param_bytes = 2 if "bfloat16" in str(jdtype) else 4
    tunix_cfg = registry.tunix_config(spec, dtype=jdtype)
    params = expected_param_count(spec, tunix_cfg)
    count = int(devices.get("device_count", 1))
    mesh_shape = mesh_shape or {"fsdp": count, "tp": 1}
    sft = config.train.sft
    lora_rank = sft.lora.rank
    # LoRA adds rank * (in + out) per adapted matrix; ~7 matrices per layer.
    dims = tunix_cfg.embed_dim + max(tunix_cfg.hidden_dim, tunix_cfg.num_heads * tunix_cfg.head_dim)
    lora_params = tunix_cfg.num_layers * 7 * lora_rank * dims
    mode = sft.mode if "sft" in config.train.stages else "lora"
    args: dict[str, Any] = dict(
        params=params, lora_params=lora_params, param_bytes=param_bytes, mode=mode,
        optimizer=sft.optimizer, batch_size=sft.batch_size, seq_len=config.data.max_seq_len,
        num_layers=tunix_cfg.num_layers, embed_dim=tunix_cfg.embed_dim,
        hidden_dim=tunix_cfg.hidden_dim, vocab=tunix_cfg.num_embed, loss_chunk=sft.loss_chunk_size,
        shards=count, fsdp=mesh_shape.get("fsdp", count))
    breakdown = estimate(**args)
    memory = devices.get("memory_per_device_bytes")
    source = "device"
    if not memory:
        memory = _host_memory()
        # CPU devices share host RAM.
        memory = memory // max(count, 1) if memory else None
        source = "host RAM / devices"
    total = sum(breakdown.values())
    # Keep 10% headroom for XLA's own buffers and fragmentation.
    fits = memory is None or total <= 0.9 * memory
    suggestions: list[str] = []
    if not fits:
        if mode == "full":
            lora = estimate(**{**args, "mode": "lora"})
            suggestions.append(f"LoRA (train.sft.mode: lora) needs {_fmt(sum(lora.values()))} per device")
            if sft.optimizer == "adamw":
                ada = estimate(**{**args, "optimizer": "adafactor"})
                suggestions.append(f"full + Adafactor needs {_fmt(sum(ada.values()))} per device")
        for n in (8, 16):
            if n > count:
                more = estimate(**{**args, "shards": n, "fsdp": n})
                suggestions.append(f"{n} devices (fsdp={n}) need {_fmt(sum(more.values()))} per device")
        suggestions.append("smaller train.sft.batch_size or data.max_seq_len reduce activations")
    lines = [
        f"preflight: {config.model.name} | {params:,} params x {param_bytes} B | mode {mode} "
        f"({sft.optimizer}) | {count} device(s), mesh {mesh_shape}",
        *[f"  {name:<18}{_fmt(value)} / device" for name, value in breakdown.items()],
        f"  {'total':<18}{_fmt(total)} / device  vs  "
        + (f"{_fmt(memory)} available ({source})" if memory else "unknown available memory"),
    ]
    forced = bool(getattr(config, "force", False))
    if fits:
        lines.append("  -> fits")
    else:
        lines.append("  -> DOES NOT FIT. What would fit:")
        lines += [f"     - {s}" for s in suggestions]
        if forced:
            lines.append("  !!! force: true -- continuing anyway; expect an out-of-memory error !!!")
    report = PreflightReport(
        model=config.model.name, params=params, param_bytes_each=param_bytes, mode=mode,
        devices=count, mesh=dict(mesh_shape), memory_per_device=memory, memory_source=source,
        breakdown=breakdown, fits=fits, forced=forced and not fits, suggestions=suggestions,
        text="\n".join(lines))
    if not fits and not forced and raise_on_fail:
        raise PreflightError(report.text)
    return report
