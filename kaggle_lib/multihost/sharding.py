"""A global batch split over processes: each process's rows, global arrays assembled from
process-local pieces for training, and generation split the same way (each process feeds its rows
into one global sampling state; the generated ids are gathered once)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from kaggle_lib.multihost.collectives import process_count, process_index


def batch_sharding(mesh: Any, axis: str = "fsdp") -> Any:
    import jax

    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def _spans(indices: Any, batch_size: int) -> list[tuple[int, int]]:
    return [(idx[0].start or 0, idx[0].stop if idx[0].stop is not None else batch_size)
            for idx in indices]


def local_rows(batch_size: int, mesh: Any, axis: str = "fsdp") -> slice:
    """The rows of a global batch (split over `axis`) that this process's devices hold, read
    from the sharding: any device order works if a process's rows are contiguous (jax's
    process-ordered device list gives that for an (fsdp, tp) mesh)."""
    spans = set(_spans(batch_sharding(mesh, axis).addressable_devices_indices_map(
        (batch_size,)).values(), batch_size))
    start, stop = min(s for s, _ in spans), max(e for _, e in spans)
    if sum(e - s for s, e in spans) != stop - start:
        raise ValueError(
            f"the batch rows of process {process_index()} are not contiguous in mesh "
            f"{dict(mesh.shape)}; use a mesh whose '{axis}' axis follows process order")
    return slice(start, stop)


def rows_by_process(batch_size: int, mesh: Any, axis: str = "fsdp") -> list[slice]:
    """Each process's `local_rows`, in process order."""
    by_process: dict[int, list[int]] = {}
    index_map = batch_sharding(mesh, axis).devices_indices_map((batch_size,))
    for device, span in zip(index_map, _spans(index_map.values(), batch_size), strict=True):
        by_process.setdefault(device.process_index, []).extend(span)
    return [slice(min(by_process[p]), max(by_process[p])) for p in sorted(by_process)]


class GlobalBatches:
    """Iterates `batches` (an SFTBatches of this process's rows) as global arrays, re-iterable from
    step 0 like the batches (Tunix skips trained steps on resume). Tunix 0.1.7's
    `sharding_utils.shard_input` picks the sharding from the LOCAL shape and replicates a field
    whose local row count is not a multiple of the mesh's fsdp size: with 2 processes x 4 devices
    and batch 8 (tests/integration/test_multihost.py) each process's 4 rows would be "replicated", a
    different loss per process. It skips arrays already sharded."""

    def __init__(self, batches: Any, mesh: Any, batch_size: int):
        self.batches = batches
        self.mesh = mesh
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        import jax

        sharding = batch_sharding(self.mesh)
        for local in self.batches:
            yield {k: jax.make_array_from_process_local_data(
                sharding, v, (self.batch_size, *v.shape[1:])) for k, v in local.items()}


_reshard_fns: dict[Any, Any] = {}


def host_rows(array: Any, mesh: Any, axis: str = "fsdp") -> Any:
    """This process's rows of a global array split (or not) over its first axis, as numpy:
    one compiled reshard to the batch sharding, then the addressable shards in row order."""
    import jax
    import numpy as np

    sharding = batch_sharding(mesh, axis)
    if sharding not in _reshard_fns:  # one jit object per sharding: compiled once per shape
        _reshard_fns[sharding] = jax.jit(lambda value: value, out_shardings=sharding)
    resharded = _reshard_fns[sharding](array)
    blocks: dict[int, Any] = {}
    for shard in resharded.addressable_shards:
        blocks.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
    return np.concatenate([blocks[start] for start in sorted(blocks)])


# --- generation: each process feeds its rows of every batch, predictions gathered once -----------

def generation_batch_size(batch_size: int, mesh: Any, axis: str = "fsdp") -> int:
    """The global generation batch: `batch_size` rounded up to a multiple of the batch axis,
    so every device (and process) holds whole rows. The extra rows repeat a prompt and are
    dropped; a multiple keeps sampled (temperature > 0) draws equal to a one-process run's."""
    size = int(mesh.shape[axis])
    return -(-batch_size // size) * size


def global_sampling_state(state: Any, mesh: Any, axis: str = "fsdp") -> Any:
    """A Tunix sampling state of this process's rows as one global state: every per-row buffer
    (tokens, positions, done, KV cache, logits) a global array split over `axis`, so prefill and
    decode are one SPMD program over the global batch."""
    import jax
    import numpy as np

    local = int(state.token_buffer.shape[0])
    batch = local * process_count()
    mine = local_rows(batch, mesh, axis)
    if mine.stop - mine.start != local:
        raise ValueError(
            f"process {process_index()} holds rows {mine.start}..{mine.stop - 1} of a {batch}-row "
            f"generation batch but was given {local}; every process needs the same number of "
            f"devices on the mesh's '{axis}' axis")
    sharding = batch_sharding(mesh, axis)

    def rows(value: Any) -> Any:
        if value is None:
            return None
        host = np.asarray(value)
        return jax.make_array_from_process_local_data(sharding, host, (batch, *host.shape[1:]))

    return dataclasses.replace(
        state, token_buffer=rows(state.token_buffer), positions=rows(state.positions),
        done=rows(state.done), cache=jax.tree.map(rows, state.cache),
        logits_buffer=rows(state.logits_buffer), logprobs_buffer=rows(state.logprobs_buffer))


def localize_sampling_output(decode: Callable[..., Any], mesh: Any, axis: str = "fsdp"
                             ) -> Callable[..., Any]:
    """Wrap a Tunix sampler's compiled decode to return this process's rows on the host (Tunix
    reads them with `jax.device_get`, which refuses a not fully addressable global array)."""

    def call(params: Any, state: Any) -> Any:
        out = decode(params, state)
        fields = ("token_buffer", "logits_buffer", "logprobs_buffer")
        return dataclasses.replace(out, **{
            f: None if getattr(out, f) is None else host_rows(getattr(out, f), mesh, axis)
            for f in fields})

    call._cache_size = decode._cache_size  # type: ignore[attr-defined]  # Generator.compilations
    return call


def gather_generated(local: list[list[list[int]]], batch_size: int, width: int, mesh: Any,
                     axis: str = "fsdp") -> list[list[list[int]]]:
    """Every row's generated ids of every batch, on every process, from `local[b]`: this
    process's rows of batch b (at most `width` ids each); one `process_allgather`."""
    import numpy as np
    from jax.experimental import multihost_utils

    if not local:
        return []
    packed = np.full((len(local), len(local[0]), width), -1, np.int32)
    for b, batch in enumerate(local):
        for r, ids in enumerate(batch):
            packed[b, r, :len(ids)] = ids
    gathered = np.asarray(multihost_utils.process_allgather(packed))  # [process, batch, row, width]
    spans = rows_by_process(batch_size, mesh, axis)
    out: list[list[list[int]]] = [[[] for _ in range(batch_size)] for _ in local]
    for b, rows in enumerate(out):
        for process, span in enumerate(spans):
            for offset, row in enumerate(range(span.start, span.stop)):
                ids = gathered[process, b, offset]
                rows[row] = [int(t) for t in ids[ids >= 0]]
    return out
