"""Plots of a run: the training loss curve (loss.png), shown inline when run in a notebook."""

from __future__ import annotations

from pathlib import Path

from kaggle_lib.evidence.record import RunRecord


def plot_loss(record: RunRecord, run_id: str) -> Path | None:
    """loss.png from the record's metrics.jsonl (matplotlib, no display needed)."""
    metrics = record.read_metrics()
    records = [r for r in metrics
               if r.get("stage") in ("sft", "grpo") and isinstance(r.get("loss"), int | float)]
    validation = sorted({r["step"]: r["val_loss"] for r in metrics
                         if r.get("stage") == "sft_validation"
                         and isinstance(r.get("val_loss"), int | float)}.items())
    if not records:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    for stage_name in ("sft", "grpo"):
        points = sorted({r["step"]: r["loss"] for r in records if r["stage"] == stage_name}.items())
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=stage_name)
    if validation:
        ax.plot([p[0] for p in validation], [p[1] for p in validation], marker="o",
                label="sft validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(f"run {run_id}")
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
