"""failure_analysis.md: where a run broke, the last good checkpoint, and what to do next."""

from __future__ import annotations

import json
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kaggle_lib.errors import hint_for


def failure_analysis(*, run_id: str, stage: str, error: BaseException, checkpoint: str | None,
                     recent_metrics: Sequence[Mapping[str, Any]] = (),
                     set_aside: Sequence[Mapping[str, Any]] = (), details: str = "") -> str:
    """The text of failure_analysis.md (not yet redacted)."""
    kind = type(error).__name__
    message = str(error) or kind
    tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    lines = [
        f"# Run failed in stage `{stage}`", "", f"- run: `{run_id}`", f"- stage: `{stage}`",
        f"- error: `{kind}`",
        f"- last good checkpoint: {f'`{checkpoint}`' if checkpoint else 'none'}", "",
        "## What happened", "", "```", message, "```", "", "## What to do", "", hint_for(error),
    ]
    if checkpoint:
        lines += ["", f"Training resumes from `{checkpoint}` when the same run directory is used "
                  "again with `train.resume: auto`, or from another run directory with "
                  f"`train.resume_from: {Path(checkpoint).parent}`."]
    if recent_metrics:
        lines += ["", "## Last metrics before the failure", "", "```"]
        lines += [json.dumps(r) for r in recent_metrics] + ["```"]
    if set_aside:
        lines += ["", "## Checkpoints set aside (they did not restore)", ""]
        lines += [f"- `{e.get('stage')}` step {e.get('step')}, now `{e.get('path')}`: "
                  f"{e.get('reason')}" for e in set_aside]
    if details:
        lines += ["", "## Details", "", details]
    lines += ["", "## Traceback", "", "```", tb.rstrip(), "```", "",
              "The executed notebook (`executed.ipynb`) shows every cell's output up to the error.",
              ""]
    return "\n".join(lines)
