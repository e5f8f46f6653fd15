"""Starting a run record: the run directory (given, or new under the config's evidence.root), the
same one on every process, and the attempt started in it. `close` is its other end."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_lib import multihost, runtime
from kaggle_lib.errors import KaggleLibError, check_writable
from kaggle_lib.evidence import scan
from kaggle_lib.evidence.identity import hash_text, make_run_id
from kaggle_lib.evidence.lock import lock_run_dir, release_run_dir
from kaggle_lib.evidence.record import RunRecord, make_record

if TYPE_CHECKING:
    from kaggle_lib.config import RunConfig


class SecretInPathError(KaggleLibError, ValueError):
    """A path or the run name holds a secret value; the message names which, never the value."""

    hint = ("A secret value (HF token, Kaggle key) or a token-shaped string is part of a path or "
            "the run name; it would land in file names, the manifest and the notebook. Choose "
            "names without it: secrets are read from the environment or Kaggle Secrets only.")


def refuse_secrets_in_paths(config_path: str | Path, run_dir: str | Path | None, run_name: str,
                            config: RunConfig | None) -> None:
    """SecretInPathError, before anything is written, when the config path, the run directory,
    the run name or a value of the config (data paths, evidence.root, ...) holds a secret."""
    from kaggle_lib.config import ConfigError, read_yaml

    named = [("the config path", config_path), ("the run directory", run_dir or ""),
             ("the run name", run_name)]
    try:  # a config that did not load is checked as written: its error would quote the value
        tree = config.to_dict() if config is not None else read_yaml(config_path)
    except ConfigError:
        tree = {}
    named += [(f"config key {key.lstrip('.')!r}", value) for key, value in scan.leaves(tree, "")]
    holders = scan.secret_holders(named)
    if holders:
        raise SecretInPathError(f"refusing to start: {', '.join(holders)} "
                                f"{'holds' if len(holders) == 1 else 'hold'} a secret value or a "
                                "token-shaped string (not shown); nothing was written")


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
    or a new directory, process 0's on every process; process 0 holds the directory's lock
    (unless its runner does) before an earlier attempt's files go to attempts/<n>/
    (`RunRecord.start`), unless `config` changes what its checkpoints depend on."""
    refuse_secrets_in_paths(config_path, run_dir, run_name, config)
    directory = (Path(run_dir).expanduser().absolute() if run_dir
                 else new_run_dir(config_path, config, working_dir))
    directory = join_processes(directory, config)
    if multihost.is_writer():  # a full or read-only disk is named before an attempt moves
        check_writable(directory)
        lock_run_dir(directory)  # released when the record closes (close.finalize, close_failed)
    record = make_record(directory)
    try:
        record.start(directory.name, run_name or "", config_path, config)
    except BaseException:  # e.g. a refused config change: nothing moved, the dir is free again
        release_run_dir(directory)
        raise
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
