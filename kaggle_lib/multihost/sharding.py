"""A global batch split over processes: the rows this process holds, and the global arrays
assembled from process-local pieces (`jax.make_array_from_process_local_data`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kaggle_lib.multihost.collectives import process_index


def batch_sharding(mesh: Any, axis: str = "fsdp") -> Any:
    import jax

    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def local_rows(batch_size: int, mesh: Any, axis: str = "fsdp") -> slice:
    """The rows of a global batch (split over `axis`) that this process's devices hold.

    Read from the sharding itself (`addressable_devices_indices_map`), so any device order
    works as long as a process's rows are contiguous, which jax's process-ordered device list
    gives for an (fsdp, tp) mesh.
    """
    spans = {(idx[0].start or 0, idx[0].stop if idx[0].stop is not None else batch_size)
             for idx in batch_sharding(mesh, axis).addressable_devices_indices_map(
                 (batch_size,)).values()}
    start, stop = min(s for s, _ in spans), max(e for _, e in spans)
    covered = sum(e - s for s, e in spans)
    if covered != stop - start:
        raise ValueError(
            f"the batch rows of process {process_index()} are not contiguous in mesh "
            f"{dict(mesh.shape)}; use a mesh whose '{axis}' axis follows process order")
    return slice(start, stop)


def rows_by_process(batch_size: int, mesh: Any, axis: str = "fsdp") -> list[slice]:
    """The rows of a global batch (split over `axis`) that each process holds, in process order;
    the entry of this process is `local_rows`."""
    spans: dict[int, list[int]] = {}
    for device, index in batch_sharding(mesh, axis).devices_indices_map((batch_size,)).items():
        start = index[0].start or 0
        stop = index[0].stop if index[0].stop is not None else batch_size
        spans.setdefault(device.process_index, []).extend((start, stop))
    return [slice(min(spans[p]), max(spans[p])) for p in sorted(spans)]


def global_batch(local: dict[str, Any], mesh: Any, batch_size: int,
                 axis: str = "fsdp") -> dict[str, Any]:
    """One global array per field, assembled from this process's rows
    (`jax.make_array_from_process_local_data`)."""
    import jax

    sharding = batch_sharding(mesh, axis)
    return {k: jax.make_array_from_process_local_data(sharding, v, (batch_size, *v.shape[1:]))
            for k, v in local.items()}


class GlobalBatches:
    """Iterates `batches` (an SFTBatches holding only this process's rows) as global arrays,
    re-iterable from step 0 like the batches themselves (Tunix skips trained steps on resume).

    Tunix's own `sharding_utils.shard_input` (PeftTrainer, tunix 0.1.7) cannot do this: it
    builds the array from the process-local rows without a global shape and picks the sharding
    from the LOCAL shape, replicating any field whose local row count is not a multiple of the
    whole mesh's fsdp size. With 2 processes x 4 devices and batch 8 (tests/integration/
    test_multihost.py) each process holds 4 rows and 4 % 8 != 0: the batch would be "replicated"
    with different rows on each process, i.e. a different loss per process. Global arrays made
    here pass through shard_input unchanged (it skips arrays already sharded on the mesh).
    """

    def __init__(self, batches: Any, mesh: Any, batch_size: int):
        self.batches = batches
        self.mesh = mesh
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for local in self.batches:
            yield global_batch(local, self.mesh, self.batch_size)


_reshard_fns: dict[Any, Any] = {}


def _identity(value: Any) -> Any:
    return value


def host_rows(array: Any, mesh: Any, axis: str = "fsdp") -> Any:
    """This process's rows of a global array split (or not) over its first axis, as numpy:
    one compiled reshard to the batch sharding, then the addressable shards in row order."""
    import jax
    import numpy as np

    sharding = batch_sharding(mesh, axis)
    if sharding not in _reshard_fns:  # one jit object per sharding: compiled once per shape
        _reshard_fns[sharding] = jax.jit(_identity, out_shardings=sharding)
    resharded = _reshard_fns[sharding](array)
    blocks: dict[int, Any] = {}
    for shard in resharded.addressable_shards:
        blocks.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
    return np.concatenate([blocks[start] for start in sorted(blocks)])
