"""A global batch split over processes: the rows each process holds, the global arrays assembled
from process-local pieces (`jax.make_array_from_process_local_data`) for training, and
generation split the same way: each process feeds its rows of every batch into one global
sampling state, and the generated ids are gathered once (`process_allgather`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

from kaggle_lib.multihost.collectives import process_count, process_index


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
        import jax

        sharding = batch_sharding(self.mesh)
        for local in self.batches:
            yield {k: jax.make_array_from_process_local_data(
                sharding, v, (self.batch_size, *v.shape[1:])) for k, v in local.items()}


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


# --- generation: each process feeds its rows of every batch, predictions gathered once -----------

def generation_batch_size(batch_size: int, mesh: Any, axis: str = "fsdp") -> int:
    """The global generation batch: `batch_size` rounded up to a multiple of the batch axis,
    so every device (and process) holds whole rows. The extra rows repeat a prompt and are
    dropped; a multiple keeps sampled (temperature > 0) draws equal to a one-process run's."""
    size = int(mesh.shape[axis])
    return -(-batch_size // size) * size


def global_sampling_state(state: Any, mesh: Any, axis: str = "fsdp") -> Any:
    """A Tunix sampling state built from this process's prompts (its rows of the batch) as one
    global state: every per-row buffer (tokens, positions, done, KV cache, logits) becomes a
    global array split over `axis` (`jax.make_array_from_process_local_data`), as training's
    batches are. The prefill and decode steps are then one SPMD program over the global batch."""
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
    """Wrap a Tunix sampler's compiled decode so that the buffers it returns are this process's
    rows on the host (Tunix then reads them with `jax.device_get`, which a global array would
    refuse: it is not fully addressable)."""

    def call(params: Any, state: Any) -> Any:
        out = decode(params, state)
        return dataclasses.replace(
            out, token_buffer=host_rows(out.token_buffer, mesh, axis),
            logits_buffer=None if out.logits_buffer is None else host_rows(out.logits_buffer, mesh,
                                                                          axis),
            logprobs_buffer=None if out.logprobs_buffer is None else host_rows(
                out.logprobs_buffer, mesh, axis))

    call._cache_size = decode._cache_size  # type: ignore[attr-defined]  # Generator.compilations
    return call


def gather_generated(local: list[list[list[int]]], batch_size: int, width: int, mesh: Any,
                     axis: str = "fsdp") -> list[list[list[int]]]:
    """Every process's generated token ids, once, after all batches: `local[b]` holds the ids of
    this process's rows of batch b (at most `width` each). Returns, on every process, the ids of
    every row of every batch in batch order (one `process_allgather` of a padded int32 array)."""
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
    out: list[list[list[int]]] = []
    for b in range(len(local)):
        rows: list[list[int] | None] = [None] * batch_size
        for process, span in enumerate(spans):
            for offset, row in enumerate(range(span.start, span.stop)):
                ids = gathered[process, b, offset]
                rows[row] = [int(t) for t in ids[ids >= 0]]
        out.append([r if r is not None else [] for r in rows])
    return out
