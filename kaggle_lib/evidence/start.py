"""Starting a run record: the run directory (given, or new under the config's evidence.root), the
same one on every process, and the attempt started in it. `close` is its other end."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_lib import multihost, runtime
from kaggle_lib.evidence.identity import hash_text, make_run_id
from kaggle_lib.evidence.record import RunRecord, make_record

if TYPE_CHECKING:
    from kaggle_lib.config import RunConfig


def new_run_dir(config_path: str | Path, config: RunConfig | None, working_dir: Path) -> Path:
    """<evidence.root>/<utc time>-<config hash>, absolute, under `working_dir` (/kaggle/working
    on Kaggle) unless the root is absolute. A config that did not load (None) is hashed as its
    file's bytes and goes under evidence/runs. `python -m kaggle_lib run` names runs so too."""
    if config is None:
        path = Path(config_path)
        digest = hash_text(path.read_bytes() if path.is_file() else str(config_path))
        root = Path("evidence/runs")
    else:
        digest, root = config.hash, Path(config.evidence.root)
    root = root if root.is_absolute() else working_dir / root
    return (root / make_run_id(digest)).absolute()


def open_record(config_path: str, config: RunConfig | None, working_dir: Path, *,
                run_name: str = "", run_dir: str = "") -> Any:
    """The run's record, started in `run_dir` (absolute: Orbax refuses relative checkpoint paths)
    or a new directory, process 0's on every process; an earlier attempt's files go to
    attempts/<n>/ (`RunRecord.start`), unless `config` changes what its checkpoints depend on."""
    directory = (Path(run_dir).expanduser().absolute() if run_dir
                 else new_run_dir(config_path, config, working_dir))
    directory = join_processes(directory, config)
    record = make_record(directory)
    record.start(directory.name, run_name or "", config_path, config)
    return record


def join_processes(directory: Path, config: RunConfig | None) -> Path:
    """Multi-process runs: start jax.distributed (platform flags first) and take process 0's
    run directory. A failed start is recorded by process 0 before it raises."""
    try:
        spec = multihost.spec_from_environment()
        if spec is None:
            return directory
        # A config that did not load: the config+runtime stage reports it.
        runtime.configure_platform(config.device if config else "auto")
        multihost.initialize(spec, on_start_failure=functools.partial(_record_start_failure,
                                                                        directory))
    except (multihost.DistributedConfigError, multihost.DistributedStartError) as exc:
        _record_start_failure(directory, exc)
        raise
    return multihost.share_run_dir(directory)


def _record_start_failure(directory: Path, error: BaseException) -> None:
    if multihost.claimed_process_id() in (0, None):  # the would-be process 0 records it
        RunRecord(directory).fail("distributed", error)
