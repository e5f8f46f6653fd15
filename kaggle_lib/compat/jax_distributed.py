"""jax's multi-process runtime, read where jax has no public API (written against jax 0.10.2):
- `coordination_client()` (`jax._src.distributed.global_state.client`): kaggle_lib.multihost's
  key-value store and barriers (run directory, agreement checks, registration, watchdog) must
  work before any backend starts and while a peer is dead; `jax.experimental.multihost_utils`'
  device collectives cannot.
- `initialized_process_id()` (`global_state.process_id`): `jax.process_index()` would start the
  backends, and platform flags set after `jax.distributed.initialize` must still apply.
- `detect_process_id(timeout_s)` (`jax._src.clusters.ClusterEnv`): the id jax's cluster
  detection (TPU pod slice, SLURM, Open MPI, Kubernetes) gives, without joining the run: the
  `python -m kaggle_lib run` runner needs it before any kernel, and before jax, starts.
Goes away with a public accessor for the coordination service's key-value store and barrier
(jax 0.10.2 has only `jax.distributed.initialize / is_initialized / shutdown`) and a public
"which process am I" that does not start the backends.
"""

from __future__ import annotations

from typing import Any


def coordination_client() -> Any:
    """The coordination-service client of an initialised `jax.distributed` run."""
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized")
    return client


def initialized_process_id() -> int:
    """This process's id in the run `jax.distributed.initialize` joined (no backend starts)."""
    from jax._src import distributed

    return int(distributed.global_state.process_id)


def detect_process_id(timeout_s: int) -> int | None:
    """This process's id from jax's cluster detection; None when no cluster is detected."""
    from jax._src import clusters

    _, _, process_id, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, timeout_s)
    return None if process_id is None else int(process_id)
