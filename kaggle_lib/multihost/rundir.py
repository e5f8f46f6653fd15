"""One run directory for all processes: process 0's choice, shared through jax's key-value
store; the other processes' logs and executed notebooks go under <run_dir>/processes/<id>/."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from kaggle_lib.multihost.collectives import agree

# The runner of a process other than 0 starts before jax and cannot ask process 0 for the run
# directory; its kernel learns it (`share_run_dir`) and writes it to the file this variable names.
ENV_RUN_DIR_FILE = "KAGGLE_LIB_RUN_DIR_FILE"


def process_dir(run_dir: Path, process_id: int) -> Path:
    """Where a process other than 0 keeps its log and notebook: <run_dir>/processes/<id>/."""
    return Path(run_dir) / "processes" / str(process_id)


def share_run_dir(directory: Path) -> Path:
    """Process 0's run directory on every process; also written to the file named by
    KAGGLE_LIB_RUN_DIR_FILE (a `python -m kaggle_lib run` runner's notebook goes there)."""
    chosen = Path(agree("run_dir", str(directory)))
    report = os.environ.get(ENV_RUN_DIR_FILE, "").strip()
    if report:
        Path(report).write_text(str(chosen))
    return chosen


def follower_scratch_notebook(process_id: int) -> Path:
    """A follower runner's executed notebook, in a fresh local directory while the kernel runs
    (the kernel reports the run directory next to it)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"kaggle_lib-process{process_id}-"))
    os.environ[ENV_RUN_DIR_FILE] = str(scratch / "run_dir.txt")
    return scratch / "executed.ipynb"


def place_follower_notebook(notebook: Path, process_id: int) -> Path:
    """Move a follower's executed notebook to <run dir>/processes/<id>/executed.ipynb (the run
    dir its kernel learned); left where it is if the kernel never learned one."""
    try:
        run_dir = Path(notebook.parent.joinpath("run_dir.txt").read_text().strip())
    except OSError:
        return notebook
    if not notebook.exists() or not str(run_dir):
        return notebook
    target = follower_notebook_path(run_dir, process_id)
    shutil.move(str(notebook), str(target))
    shutil.rmtree(notebook.parent, ignore_errors=True)
    return target


def follower_notebook_path(run_dir: Path, process_id: int) -> Path:
    """Where the runner of a process other than 0 writes its executed notebook."""
    path = process_dir(run_dir, process_id) / "executed.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
