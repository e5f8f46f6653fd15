"""Generation split across processes: each process feeds its rows of every batch into one
global sampling state, and the generated ids are gathered once (`process_allgather`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kaggle_lib.multihost.collectives import process_count, process_index
from kaggle_lib.multihost.sharding import batch_sharding, host_rows, local_rows, rows_by_process


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
