"""Plots of a run: the training loss curve (loss.png), shown inline when run in a notebook."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kaggle_lib.evidence.record import RunRecord


def curve(metrics: Iterable[dict[str, Any]], stage: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of one numeric metric of one stage, by step (the last record of a step)."""
    by_step = {r["step"]: r[key] for r in metrics
               if r.get("stage") == stage and isinstance(r.get(key), int | float)}
    return sorted(by_step.items())


def plot_loss(record: RunRecord, run_id: str) -> Path | None:
    """loss.png from the record's metrics.jsonl (matplotlib, no display needed)."""
    metrics = record.read_metrics()
    curves = {name: curve(metrics, name, "loss") for name in ("sft", "grpo")}
    validation = curve(metrics, "sft_validation", "val_loss")
    if not any(curves.values()):
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for stage_name, points in curves.items():
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=stage_name)
    if validation:
        ax.plot([p[0] for p in validation], [p[1] for p in validation], marker="o",
                label="sft validation")
    ax.set(xlabel="step", ylabel="loss", title=f"run {run_id}")
    ax.grid(alpha=0.3)
    ax.legend()
    path = record.run_dir / "loss.png"
    fig.savefig(path, bbox_inches="tight")
    try:  # show it inline when running in a notebook
        from IPython import get_ipython
        from IPython.display import Image, display

        if get_ipython() is not None:
            display(Image(filename=str(path)))
    except Exception:  # noqa: BLE001 - outside IPython there is nothing to show
        pass
    return path
