"""The one base of kaggle_lib's errors: each carries what the user should do next.

Every error class of the package subclasses `KaggleLibError` and keeps its builtin base too
(`class MeshError(KaggleLibError, ValueError)`), so `except ValueError` still catches it.
`hint` is read into failure_analysis.md; a class sets it once, one raise may override it.
"""

from __future__ import annotations

from typing import Any

DEFAULT_HINT = "Read the traceback below; the stage and the error say where it broke."


class KaggleLibError(Exception):
    """An error of kaggle_lib; `hint` says what to do next."""

    hint: str = DEFAULT_HINT

    def __init__(self, *args: Any, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint


# Errors of other libraries that reach a run: they cannot carry our hint, so it is kept here.
OOM_HINT = ("If the message says RESOURCE_EXHAUSTED, the device ran out of memory: reduce batch "
            "size or max_seq_len, use LoRA, or shard over more devices.")
FOREIGN_HINTS = {
    "PapermillExecutionError": "A notebook cell raised before the run record could note it; the "
    "cell and the error are above and in executed.ipynb.",
    "DeadKernelError": "The notebook kernel died, usually out of host memory: reduce "
    "data.max_seq_len or the batch size, or use LoRA.",
    "XlaRuntimeError": OOM_HINT,
    "TimeoutError": "The run hit its time limit; resume from the last checkpoint with `resume: auto` "
    "(set train.max_wall_time below the session limit so training stops cleanly with a checkpoint).",
    "CellTimeoutError": "A notebook cell ran past its time limit; resume from the last checkpoint "
    "with `resume: auto` and set train.max_wall_time below the limit.",
    "KeyboardInterrupt": "The run was interrupted; re-run, or resume from the last checkpoint.",
}
_OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Out of memory", "out of memory", "OOM")


def hint_for(error: BaseException) -> str:
    """What to do next about `error` (out-of-memory is recognised by its message too)."""
    kind = type(error).__name__
    if kind != "DeadKernelError" and any(m in str(error) for m in _OOM_MARKERS):
        return OOM_HINT
    if isinstance(error, KaggleLibError):
        return error.hint
    return FOREIGN_HINTS.get(kind, DEFAULT_HINT)
