"""The device mesh: every device used, as (fsdp, tp) axes named the way Tunix's models shard."""

from __future__ import annotations

from typing import Any

import jax

from kaggle_lib.errors import KaggleLibError

AXES = ("fsdp", "tp")


class MeshError(KaggleLibError, ValueError):
    """The mesh does not fit the devices or the batch."""


def mesh_shape(device_count: int, fsdp: int = 0, tp: int = 1) -> tuple[int, int]:
    """(fsdp, tp) using all devices. fsdp=0 means device_count // tp."""
    if device_count % tp:
        raise MeshError(f"mesh.tp = {tp} does not divide the {device_count} devices")
    fsdp = fsdp or device_count // tp
    if fsdp * tp != device_count:
        raise MeshError(
            f"mesh fsdp x tp = {fsdp} x {tp} = {fsdp * tp} but there are {device_count} devices; "
            f"every device must be used (e.g. fsdp={device_count // tp}, tp={tp})")
    return fsdp, tp


def make_mesh(fsdp: int = 0, tp: int = 1, devices: list[Any] | None = None) -> jax.sharding.Mesh:
    """`jax.make_mesh` over every device (or `devices`), after `mesh_shape`'s checks."""
    devices = devices if devices is not None else jax.devices()
    shape = mesh_shape(len(devices), fsdp, tp)
    # Auto axes, as a hand-built Mesh has: jax.make_mesh defaults to Explicit sharding, which
    # Tunix's models are not written for.
    return jax.make_mesh(shape, AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(AXES),
                         devices=devices)


def check_batch(batch_size: int, mesh: jax.sharding.Mesh,
                what: str = "train.sft.batch_size") -> None:
    """The batch is split over fsdp: it must divide evenly."""
    fsdp = mesh.shape["fsdp"]
    if batch_size % fsdp:
        raise MeshError(
            f"{what} = {batch_size} must be a multiple of the mesh's fsdp size {fsdp} "
            f"(the batch is split across devices); use {fsdp * max(1, round(batch_size / fsdp))}")
