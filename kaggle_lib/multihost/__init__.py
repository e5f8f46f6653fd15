"""Several processes, one run: glue over JAX's multi-process runtime (`jax.distributed`).

Every process runs the same notebook/command with the same config; only the environment says
how many processes there are and which one this is, so the config (and its hash in the run id)
is identical everywhere (docs/MULTIHOST.md).

env          the environment read and validated (errors name the variable); the errors
collectives  `jax.distributed` start-up; barrier, agree, JSON gathers, agreement checks, the
             stage status peers read (mark_failed / mark_done)
watchdog     names a dead or failed peer in the record, then stops this process
rundir       process 0's run directory on every process; the followers' logs and notebooks
sharding     the rows of a global batch a process holds; global arrays from local rows
sampling     generation split across processes, the generated ids gathered once

Imports from kaggle_lib only errors, hashing and compat: nothing here knows the run record.
"""

from kaggle_lib.multihost.collectives import (
    agree,
    all_gather_json,
    await_peer_verdict,
    barrier,
    check_agreement,
    describe_processes,
    initialize,
    is_multiprocess,
    is_writer,
    mark_done,
    mark_failed,
    on_peer_failure,
    process_count,
    process_index,
    shutdown,
)
from kaggle_lib.multihost.env import (
    ENV_PROCESS_ID,
    PEER_FAILURE_EXIT_CODE,
    DistributedConfigError,
    DistributedStartError,
    PeerProcessError,
    ProcessMismatchError,
    ProcessSpec,
    claimed_process_id,
    runner_process_id,
    spec_from_environment,
)
from kaggle_lib.multihost.rundir import (
    ENV_RUN_DIR_FILE,
    follower_notebook_path,
    follower_scratch_notebook,
    place_follower_notebook,
    process_dir,
    share_run_dir,
)
from kaggle_lib.multihost.sampling import (
    gather_generated,
    generation_batch_size,
    global_sampling_state,
    localize_sampling_output,
)
from kaggle_lib.multihost.sharding import GlobalBatches, global_batch, host_rows, local_rows

__all__ = [
    "ENV_PROCESS_ID", "ENV_RUN_DIR_FILE", "PEER_FAILURE_EXIT_CODE", "DistributedConfigError",
    "DistributedStartError", "GlobalBatches", "PeerProcessError", "ProcessMismatchError",
    "ProcessSpec", "agree", "all_gather_json", "await_peer_verdict", "barrier",
    "check_agreement", "claimed_process_id", "describe_processes", "follower_notebook_path",
    "follower_scratch_notebook", "gather_generated", "generation_batch_size", "global_batch",
    "global_sampling_state", "host_rows", "initialize", "is_multiprocess", "is_writer",
    "local_rows", "localize_sampling_output", "mark_done", "mark_failed", "on_peer_failure",
    "place_follower_notebook", "process_count", "process_dir", "process_index",
    "runner_process_id", "share_run_dir", "shutdown", "spec_from_environment",
]
