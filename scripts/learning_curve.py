#!/usr/bin/env python
"""A run's learning curve: every kept SFT checkpoint scored on the run's own evaluation items.

    PYTHONPATH=. .venv/bin/python scripts/learning_curve.py --run-dir RUN [--steps 40 80]
        [--baselines OTHER_RUN] [--out DIR]

Each step goes through `python -m kaggle_lib eval --step N` (`eval_cli.evaluate_run`: the model
rebuilt as the run built it, greedy, the run's eval settings) into `<run>/eval/step-N/`; a step
already scored there is read back, not decoded again. The items are the ones the run's config
picks (`data.eval`, `data.eval_limit`: the same stratified pick the notebook evaluates).
`--baselines` names a run whose record holds the untrained model's zero- and few-shot scores on
the same items (a curve run can skip them: they do not depend on training).
Writes `learning_curve.{json,md,png}` (default: `<run>/learning_curve/`): per step, the training
seconds and tokens up to it (from the run's metrics.jsonl), accuracy with its Wilson 95%
interval, exact format, truncation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kaggle_lib import eval_cli
from kaggle_lib.data.datasets import write_jsonl
from kaggle_lib.data.sources import pick_eval_items
from kaggle_lib.training import checkpoints


def training_progress(run_dir: Path) -> dict[int, dict[str, float]]:
    """step -> {seconds, tokens} of SFT up to and including it (the run's metrics.jsonl)."""
    progress: dict[int, dict[str, float]] = {}
    tokens = 0.0
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("stage") == "sft" and "step" in row and "loss" in row:
            tokens += row.get("tokens", 0)
            progress[int(row["step"])] = {"seconds": row.get("elapsed_s"), "tokens": tokens}
    return progress


def baseline_points(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The untrained model's scores that `run_dir`'s record holds (zero- and few-shot)."""
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    return {stage: point(summary[stage]) for stage in ("baseline", "baseline_fewshot")
            if summary.get(stage)}


def point(card: dict[str, Any]) -> dict[str, Any]:
    overall = card["overall"]
    return {"n": overall["n"], "accuracy": overall["accuracy"],
            "ci95": card["ci95"]["overall"], "format_exact": overall["format_exact"],
            "truncation_rate": overall["truncation_rate"], "mean_tokens": overall["mean_tokens"]}


def score_steps(run_dir: Path, steps: list[int], items_file: Path) -> dict[int, dict[str, Any]]:
    scored = {}
    for step in steps:
        summary_file = run_dir / "eval" / f"step-{step}" / eval_cli.SUMMARY
        if summary_file.is_file():
            summary = json.loads(summary_file.read_text())
        else:
            summary = eval_cli.evaluate_run(run_dir, items_file, out_name=f"step-{step}", step=step)
        scored[step] = point(summary["trained"])
        print(f"step {step}: accuracy {scored[step]['accuracy']:.1%}, "
              f"format {scored[step]['format_exact']:.1%}", flush=True)
    return scored


def render(curve: dict[str, Any]) -> str:
    lines = [f"# Learning curve of {curve['run']}", "",
             f"{curve['items']} evaluation items ({curve['eval']}), greedy, "
             f"{curve['max_new_tokens']} new tokens. Accuracy's 95% interval: Wilson.", "",
             "| step | train s | train tokens | accuracy | 95% CI | exact format | truncated |",
             "|---:|---:|---:|---:|---|---:|---:|"]
    rows = [(name, None, None, p) for name, p in curve["baselines"].items()]
    rows += [(str(p["step"]), p.get("train_seconds"), p.get("train_tokens"), p)
             for p in curve["points"]]
    for name, seconds, tokens, p in rows:
        low, high = p["ci95"]
        lines.append(f"| {name} | {'' if seconds is None else f'{seconds:.0f}'} | "
                     f"{'' if tokens is None else f'{tokens:,.0f}'} | {p['accuracy']:.1%} | "
                     f"{low:.1%}-{high:.1%} | {p['format_exact']:.1%} | "
                     f"{p['truncation_rate']:.1%} |")
    return "\n".join(lines) + "\n"


def plot(curve: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in curve["points"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    accuracy = [100 * p["accuracy"] for p in curve["points"]]
    low = [100 * p["ci95"][0] for p in curve["points"]]
    high = [100 * p["ci95"][1] for p in curve["points"]]
    ax.plot(steps, accuracy, "o-", label="accuracy")
    ax.fill_between(steps, low, high, alpha=0.2, label="accuracy, Wilson 95%")
    ax.plot(steps, [100 * p["format_exact"] for p in curve["points"]], "s--", label="exact format")
    for name, p in curve["baselines"].items():
        ax.axhline(100 * p["accuracy"], linestyle=":", color="gray")
        ax.annotate(f"{name} {p['accuracy']:.1%}", (steps[0], 100 * p["accuracy"]), fontsize=7)
    ax.set(xlabel="SFT step", ylabel="% of items", title=f"{curve['run']}", ylim=(0, 100))
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--steps", type=int, nargs="*", help="default: every complete step")
    parser.add_argument("--baselines", type=Path, help="a run whose record holds the baselines")
    parser.add_argument("--out", type=Path, help="default: <run>/learning_curve")
    args = parser.parse_args(argv)
    run_dir = args.run_dir.absolute()
    config = eval_cli.read_run_config(run_dir)
    steps = args.steps or checkpoints.complete_steps(run_dir / "checkpoints" / "sft")
    if not steps:
        print(f"{run_dir}: no complete SFT checkpoint to score", file=sys.stderr)
        return 2
    out = (args.out or run_dir / "learning_curve").absolute()
    out.mkdir(parents=True, exist_ok=True)
    items, _ = pick_eval_items(config.data.eval, config.data.eval_limit)
    items_file = out / "items.jsonl"
    write_jsonl(items_file, items)
    scored = score_steps(run_dir, sorted(steps), items_file)
    progress = training_progress(run_dir)
    curve = {"run": run_dir.name, "eval": config.data.eval, "items": len(items),
             "max_new_tokens": config.eval.max_new_tokens,
             "baselines": baseline_points(args.baselines.absolute()) if args.baselines else {},
             "points": [{"step": step, "train_seconds": progress.get(step, {}).get("seconds"),
                         "train_tokens": progress.get(step, {}).get("tokens"), **p}
                        for step, p in scored.items()]}
    (out / "learning_curve.json").write_text(json.dumps(curve, indent=1) + "\n")
    (out / "learning_curve.md").write_text(render(curve))
    plot(curve, out / "learning_curve.png")
    print(render(curve))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
