"""One process of a multi-process test run: the notebook's stages, called as the notebook calls
them (start_run -> authenticate -> load_model -> [evaluate, sample, few-shot evaluate] -> train
-> [evaluate] -> export -> finish).

Usage: python tests/multihost_worker.py CONFIG RUN_DIR OVERRIDES_JSON STAGES
The multi-process setting comes from the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID), exactly as for `python -m kaggle_lib run` on every host.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import kaggle_lib as kl  # noqa: E402


def main() -> None:
    config, run_dir, overrides, stages = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    run = kl.start_run(config, overrides=overrides, run_dir=run_dir)
    kl.authenticate(run)
    kl.load_model(run)
    if "eval" in stages:
        kl.evaluate(run, "baseline")
        kl.sample(run, "baseline")
        kl.evaluate(run, "baseline_fewshot")
    kl.train(run)
    if "eval" in stages:
        kl.evaluate(run, "trained")
    kl.export_model(run)
    kl.finish(run)
    print("WORKER-RESULT " + json.dumps({"run_dir": str(run.run_dir)}))


if __name__ == "__main__":
    main()
