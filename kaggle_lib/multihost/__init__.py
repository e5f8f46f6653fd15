"""Several processes, one run: glue over `jax.distributed`. Every process runs the same notebook or
command and config; the environment says how many there are and which one this is
(docs/MULTIHOST.md). Imports only errors, hashing and compat from kaggle_lib; single-process
runs never import jax here."""

from kaggle_lib.multihost.collectives import (
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
    process_index,
)
from kaggle_lib.multihost.env import (
    PEER_FAILURE_EXIT_CODE,
    DistributedConfigError,
    DistributedStartError,
    PeerProcessError,
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
from kaggle_lib.multihost.sharding import (
    GlobalBatches,
    gather_generated,
    generation_batch_size,
    global_sampling_state,
    local_rows,
    localize_sampling_output,
)

__all__ = [
    "ENV_RUN_DIR_FILE", "PEER_FAILURE_EXIT_CODE", "DistributedConfigError",
    "DistributedStartError", "GlobalBatches", "PeerProcessError", "ProcessSpec",
    "await_peer_verdict", "barrier", "check_agreement", "claimed_process_id",
    "describe_processes", "follower_notebook_path", "follower_scratch_notebook",
    "gather_generated", "generation_batch_size", "global_sampling_state", "initialize",
    "is_multiprocess", "is_writer", "local_rows", "localize_sampling_output", "mark_done",
    "mark_failed", "on_peer_failure", "place_follower_notebook", "process_dir", "process_index",
    "runner_process_id", "share_run_dir", "spec_from_environment",
]
