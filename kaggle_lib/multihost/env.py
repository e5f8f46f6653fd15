"""How this process joins a multi-process run, from the environment; the errors of multihost.

    JAX_COORDINATOR_ADDRESS=host:port  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i   (GPU/CPU hosts)
    KAGGLE_LIB_MULTIHOST=auto            (Cloud TPU pod slice: jax detects the rest itself)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from kaggle_lib.compat import jax_distributed
from kaggle_lib.errors import KaggleLibError

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_MULTIHOST = "KAGGLE_LIB_MULTIHOST"  # "auto": jax detects the cluster (TPU pod slice, SLURM)
ENV_HEARTBEAT = "KAGGLE_LIB_HEARTBEAT_TIMEOUT_S"
ENV_INIT_TIMEOUT = "KAGGLE_LIB_INIT_TIMEOUT_S"
DEFAULT_HEARTBEAT_S = 100  # jax's own default
DEFAULT_INIT_TIMEOUT_S = 300
PEER_FAILURE_EXIT_CODE = 75
Environ = dict[str, str] | os._Environ[str]


class DistributedConfigError(KaggleLibError, ValueError):
    """The multi-process environment variables are missing, malformed or inconsistent."""

    hint = "Fix the environment variable named above (docs/MULTIHOST.md)."


class DistributedStartError(KaggleLibError, RuntimeError):
    """The processes could not form one run (a process missing, ids colliding)."""

    hint = ("Start every process with the same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES and "
            "its own JAX_PROCESS_ID (0..N-1), within the initialization timeout "
            "(docs/MULTIHOST.md).")


class ProcessMismatchError(KaggleLibError, RuntimeError):
    """Processes that must agree (same SPMD program, same data) computed different results."""


class PeerProcessError(KaggleLibError, RuntimeError):
    """Another process of the run died or stopped answering; this one stops too."""

    hint = ("Another process of this multi-process run died or hung (named above; its log is "
            "under processes/<id>/). Fix its cause, then start every process again with the same "
            "command and run directory and `train.resume: auto`: training continues from the last "
            "checkpoint.")

    def __init__(self, message: str, dead_processes: Sequence[int] = ()):
        super().__init__(message)
        self.dead_processes = list(dead_processes)


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """How this process joins the run, from the environment."""

    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    auto: bool = False
    heartbeat_timeout_s: int = DEFAULT_HEARTBEAT_S
    init_timeout_s: int = DEFAULT_INIT_TIMEOUT_S


def _int_env(environ: Environ, name: str, minimum: int) -> int | None:
    raw = environ.get(name)
    if not (raw or "").strip():
        return None
    try:
        value = int(raw)
    except ValueError:
        raise DistributedConfigError(f"{name} = {raw!r} must be an integer >= {minimum}") from None
    if value < minimum:
        raise DistributedConfigError(f"{name} = {value} must be an integer >= {minimum}")
    return value


def spec_from_environment(environ: Environ | None = None) -> ProcessSpec | None:
    """The multi-process setting of this process, or None for a single-process run.
    Explicit: all three of JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES (>= 1) and
    JAX_PROCESS_ID (0 .. N-1). Automatic: KAGGLE_LIB_MULTIHOST=auto (jax's cluster detection)."""
    env = os.environ if environ is None else environ
    heartbeat = _int_env(env, ENV_HEARTBEAT, 1) or DEFAULT_HEARTBEAT_S
    init_timeout = _int_env(env, ENV_INIT_TIMEOUT, 1) or DEFAULT_INIT_TIMEOUT_S
    mode = env.get(ENV_MULTIHOST, "").strip().lower()
    if mode not in ("", "auto", "off"):
        raise DistributedConfigError(
            f"{ENV_MULTIHOST} = {env.get(ENV_MULTIHOST)!r}; allowed: 'auto' (let jax detect a "
            "TPU pod slice / cluster), 'off', or unset")
    names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
    given = [n for n in names if env.get(n, "").strip()]
    if mode == "off":
        return None
    if mode == "auto" and not given:
        return ProcessSpec(None, None, None, auto=True, heartbeat_timeout_s=heartbeat,
                           init_timeout_s=init_timeout)
    if not given:
        return None
    if len(given) < len(names):
        missing = [n for n in names if n not in given]
        raise DistributedConfigError(
            f"multi-process run: {', '.join(given)} set but {', '.join(missing)} missing; set all "
            f"three on every process ({ENV_COORDINATOR}=host:port of process 0, "
            f"{ENV_NUM_PROCESSES}=N, {ENV_PROCESS_ID}=0..N-1), or none for a single process")
    address = env[ENV_COORDINATOR].strip()
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DistributedConfigError(
            f"{ENV_COORDINATOR} = {address!r} must be host:port (e.g. 10.0.0.2:1234), the "
            "address of process 0 that every process can reach")
    count = _int_env(env, ENV_NUM_PROCESSES, 1)
    index = _int_env(env, ENV_PROCESS_ID, 0)
    assert count is not None and index is not None
    if index >= count:
        raise DistributedConfigError(
            f"{ENV_PROCESS_ID} = {index} is out of range for {ENV_NUM_PROCESSES} = {count}; "
            f"allowed: 0..{count - 1}, a different id on every process")
    if count == 1:
        return None
    return ProcessSpec(address, count, index, heartbeat_timeout_s=heartbeat,
                       init_timeout_s=init_timeout)


def claimed_process_id(environ: Environ | None = None) -> int | None:
    """JAX_PROCESS_ID as given (None when unset or unreadable): who records a failed start."""
    raw = (os.environ if environ is None else environ).get(ENV_PROCESS_ID, "").strip()
    return int(raw) if raw.isdigit() else None


def runner_process_id() -> int | None:
    """For `python -m kaggle_lib run`: this process's id in a multi-process run, else None, from
    the environment or jax's cluster detection (no jax backend starts)."""
    spec = spec_from_environment()
    if spec is None:
        return None
    if spec.process_id is not None:
        return spec.process_id
    process_id = jax_distributed.detect_process_id(spec.init_timeout_s)
    if process_id is None:
        raise DistributedConfigError(
            f"{ENV_MULTIHOST}=auto but jax detected no cluster (Cloud TPU pod slice, SLURM, "
            f"Open MPI, Kubernetes); set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and "
            f"{ENV_PROCESS_ID} instead")
    return process_id
