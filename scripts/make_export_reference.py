"""Regenerate the transformers references for tests/integration/test_export.py (needs torch: `make bench`).

    .venv/bin/python scripts/make_export_reference.py

For two deterministic LoRA models (the registry's tiny Gemma 3, and a 6-layer one with a
global-attention layer), each with fixed random adapters, this exports merged HF safetensors
with `kaggle_lib.export.save_hf_safetensors`, loads them in transformers' `Gemma3ForCausalLM`
(float32, eager attention) and stores under tests/fixtures/reference/export/<name>/:

- `config.json`: exactly what transformers was given; `tensors.json`: a fingerprint of every
  tensor it was given (shape, sum, sum of absolute values, values at fixed positions), small
  enough to commit, exact enough that a changed layout or merge shows up;
- `reference.npz`: transformers' logits for the fixed prompt `TOKENS`;
- `info.json`: versions of transformers/torch and how the model was built.

tests/integration/test_export.py then checks, without torch, that today's export still writes that config
and tensors matching the fingerprint, and that our model's logits equal transformers' stored
ones.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OUT_DIR = REPO / "tests" / "fixtures" / "reference" / "export"
# 20 tokens: longer than the tiny sliding window (8), so the window is exercised.
TOKENS = np.array([[2, 17, 40, 33, 101, 7, 250, 64, 12, 99, 300, 45, 8, 9, 77, 120, 5, 61, 200,
                    31]], dtype=np.int32)
ALPHA = 4.0
RANK = 2
# name -> tiny_config changes
MODELS: dict[str, dict[str, Any]] = {"tiny": {}, "six_layer": {"num_layers": 6}}
SAMPLES = 8


def fingerprint(tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    """Per tensor: shape, sums and SAMPLES values at positions fixed by the tensor's name."""
    import zlib

    out: dict[str, Any] = {}
    for name in sorted(tensors):
        flat = np.asarray(tensors[name], np.float64).ravel()
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        positions = sorted({int(i) for i in rng.integers(0, flat.size, SAMPLES)})
        out[name] = {"shape": list(np.shape(tensors[name])), "sum": float(flat.sum()),
                     "abs_sum": float(np.abs(flat).sum()),
                     "samples": [[i, float(flat[i])] for i in positions]}
    return out


def lora_model(name: str, seed: int = 0) -> Any:
    """The deterministic LoRA model `name` (random base from seed 0, random adapters)."""
    import jax.numpy as jnp
    from flax import nnx

    from kaggle_lib.config import LoraSection
    from kaggle_lib.training.sft import apply_lora
    from tests import training_helpers as th

    model = apply_lora(th.build_model(th.tiny_config(**MODELS[name])), rank=RANK, alpha=ALPHA,
                       target_modules=LoraSection().target_modules)
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.LoRAParam):  # B starts at zero: give every adapter a value
            var.set_value(jnp.asarray(rng.normal(0, 0.05, var.get_value().shape), jnp.float32))
    return model


def main() -> int:
    import torch
    import transformers
    from safetensors.numpy import load_file
    from transformers import Gemma3ForCausalLM

    from kaggle_lib import export
    from tests import training_helpers as th

    for name in MODELS:
        model = lora_model(name)
        with tempfile.TemporaryDirectory() as tmp:
            hf_dir = export.save_hf_safetensors(model, Path(tmp) / "hf",
                                                tokenizer=th.tiny_tokenizer(), alpha=ALPHA)
            hf = Gemma3ForCausalLM.from_pretrained(hf_dir, attn_implementation="eager",
                                                   dtype=torch.float32)
            with torch.no_grad():
                logits = hf(torch.tensor(TOKENS, dtype=torch.long)).logits.numpy()
            out = OUT_DIR / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            shutil.copy(hf_dir / "config.json", out / "config.json")
            tensors = fingerprint(load_file(str(hf_dir / "model.safetensors")))
            (out / "tensors.json").write_text(json.dumps(tensors, indent=1) + "\n")
        np.savez_compressed(out / "reference.npz", logits=logits.astype(np.float32),
                            tokens=TOKENS)
        ours = np.asarray(export.forward_logits(model, TOKENS))
        info = {"model": name, "tiny_config_changes": MODELS[name], "lora_rank": RANK,
                "lora_alpha": ALPHA, "adapter_seed": 0, "transformers": transformers.__version__,
                "torch": torch.__version__, "python": platform.python_version(),
                "attn_implementation": "eager", "dtype": "float32",
                "max_abs_diff_vs_ours_at_generation": float(np.max(np.abs(logits - ours)))}
        (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"{name}: {out} (max |transformers - ours| = "
              f"{info['max_abs_diff_vs_ours_at_generation']:.2e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
