"""Joining the run (`jax.distributed.initialize` with our timeouts, a check that every process
id registered exactly once, the watchdog) and small collectives over jax's key-value store:
barrier, process 0's value everywhere (`agree`), JSON gathers, the status peers' watchdogs read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from kaggle_lib.compat import jax_distributed
from kaggle_lib.hashing import sha256_hex
from kaggle_lib.multihost import env, watchdog
from kaggle_lib.multihost.env import DistributedStartError, PeerProcessError, ProcessSpec
from kaggle_lib.multihost.watchdog import KEY_PREFIX, STALE_FRACTION, Watchdog


@dataclasses.dataclass
class _State:
    spec: ProcessSpec | None = None
    process_id: int | None = None
    started: bool = False
    watchdog: Watchdog | None = None


_state = _State()


def _timeout_ms(timeout_s: int | None) -> int:
    spec_timeout = _state.spec.init_timeout_s if _state.spec else env.DEFAULT_INIT_TIMEOUT_S
    return (timeout_s or spec_timeout) * 1000


def _start_error(spec: ProcessSpec, detail: str) -> DistributedStartError:
    where = spec.coordinator_address or "auto-detected coordinator"
    return DistributedStartError(
        f"process {spec.process_id} could not join the run at {where} within "
        f"{spec.init_timeout_s} s ({env.ENV_INIT_TIMEOUT}): every one of the "
        f"{spec.num_processes or 'N'} processes must start with the same {env.ENV_COORDINATOR} "
        f"and {env.ENV_NUM_PROCESSES} and its own {env.ENV_PROCESS_ID}; a process is missing, "
        f"or two share an id. {detail}")


def initialize(spec: ProcessSpec | None = None,
               on_start_failure: Callable[[BaseException], None] | None = None) -> bool:
    """Join the environment's multi-process run, if any (True). If the others do not arrive in
    time, `on_start_failure` records it and we exit (jax would abort, unrecorded, soon after)."""
    spec = spec if spec is not None else env.spec_from_environment()
    if spec is None:
        return False
    if _state.started:
        return True
    import jax

    # jax aborts the process (LOG(QFATAL)) when its own, later, deadline passes: record first.
    timer = threading.Timer(spec.init_timeout_s, lambda: watchdog.exit_after_recording(
        _start_error(spec, "Timed out waiting for the other processes."),
        [on_start_failure] if on_start_failure is not None else []))
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
            process_id=spec.process_id, initialization_timeout=spec.init_timeout_s + 10,
            heartbeat_timeout_seconds=spec.heartbeat_timeout_s)
    except Exception as exc:
        timer.cancel()
        raise _start_error(spec, f"jax: {type(exc).__name__}: {str(exc)[:600]}") from exc
    timer.cancel()
    _state.spec = spec
    # From the runtime, not jax.process_index(): that would start the backends, and platform
    # flags set after this point must still apply.
    _state.process_id = jax_distributed.initialized_process_id()
    _state.started = True
    # Each id once: key_value_set refuses an existing key, so a duplicate id is an error here.
    try:
        jax_distributed.coordination_client().key_value_set(
            f"{KEY_PREFIX}/process/{_state.process_id}",
            json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    except Exception as exc:
        raise DistributedStartError(
            f"{env.ENV_PROCESS_ID} = {_state.process_id} is used by two processes ({exc}); give "
            f"every process its own id 0..{(spec.num_processes or 0) - 1}") from exc
    barrier("registered", spec.init_timeout_s)
    _state.watchdog = Watchdog(jax_distributed.coordination_client(), process_index(),
                               stale_s=spec.heartbeat_timeout_s / STALE_FRACTION)
    _state.watchdog.start()
    if _state.process_id == 0:
        threading.Thread(target=_preload_failure_record, name="kaggle_lib-preload",
                         daemon=True).start()
    return True


def _preload_failure_record() -> None:
    """Import matplotlib (a failed run's loss plot) ahead: jax aborts survivors of a dead peer
    soon after the watchdog notices (6 s in one test run); the import can take longer."""
    with contextlib.suppress(Exception):  # only a head start; the record imports it again
        import matplotlib.figure  # noqa: F401


def is_multiprocess() -> bool:
    return _state.started


def process_index() -> int:
    return _state.process_id or 0 if _state.started else 0


def process_count() -> int:
    if not _state.started:
        return 1
    import jax

    return jax.process_count()


def is_writer() -> bool:
    """Only process 0 writes the run record, logs and plots."""
    return process_index() == 0


def barrier(name: str, timeout_s: int | None = None) -> None:
    """All processes reach `name` (jax's coordination-service barrier); no-op for one process."""
    if not _state.started:
        return
    jax_distributed.coordination_client().wait_at_barrier(f"{KEY_PREFIX}/barrier/{name}",
                                                          _timeout_ms(timeout_s))


def agree(name: str, value: str, timeout_s: int | None = None) -> str:
    """Process 0's `value` on every process (jax's key-value store)."""
    if not _state.started:
        return value
    key = f"{KEY_PREFIX}/agree/{name}"
    client = jax_distributed.coordination_client()
    if is_writer():
        client.key_value_set(key, value)
        return value
    return str(client.blocking_key_value_get(key, _timeout_ms(timeout_s)))


def all_gather_json(name: str, value: Any, timeout_s: int | None = None) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order (one entry when alone)."""
    if not _state.started:
        return [value]
    client = jax_distributed.coordination_client()
    client.key_value_set(f"{KEY_PREFIX}/gather/{name}/{process_index()}",
                         json.dumps(value, default=str))
    return [json.loads(client.blocking_key_value_get(f"{KEY_PREFIX}/gather/{name}/{i}",
                                                     _timeout_ms(timeout_s)))
            for i in range(process_count())]


def check_agreement(name: str, value: Any) -> None:
    """Raise if `value` (JSON-serialisable) differs between processes; only its sha256 travels."""
    if not _state.started:
        return
    digest = sha256_hex(json.dumps(value, sort_keys=True, default=str))
    digests = all_gather_json(f"agree_{name}", digest)
    if len(set(digests)) > 1:
        differing = [i for i, d in enumerate(digests) if d != digests[0]]
        raise env.ProcessMismatchError(
            f"{name}: processes {differing} computed different results from process 0; every "
            "process must run the same config, code and package versions")


def describe_processes() -> list[dict[str, Any]]:
    """Every process of the run and its devices, for the manifest (gathered on all processes)."""
    import jax

    return all_gather_json("processes", {
        "process_index": process_index(), "host": socket.gethostname(), "pid": os.getpid(),
        "devices": [{"id": d.id, "kind": d.device_kind, "platform": d.platform}
                    for d in jax.local_devices()]})


# --- failures: what the watchdogs of the other processes read --------------------------------

def on_peer_failure(handler: Callable[[PeerProcessError], None]) -> None:
    """Call `handler` before exiting for a dead peer (multi-process only; replaces others)."""
    if _state.started:
        watchdog.failure_handlers[:] = [handler]


def await_peer_verdict(error: BaseException) -> None:
    """Before recording a jax runtime error (often a collective whose peer died: gloo reports
    the broken connection first), give the watchdog time to name that peer and exit."""
    dog = _state.watchdog
    if not _state.started or dog is None or not dog.is_alive():
        return
    if not type(error).__module__.startswith(("jax", "jaxlib")):
        return
    deadline = time.monotonic() + dog.stale_s + 3 * dog.tick_s
    while time.monotonic() < deadline and dog.is_alive():
        time.sleep(0.2)


def mark_failed(stage: str, error: BaseException) -> None:
    """Tell the other processes this one failed (their watchdogs stop them with this text)."""
    if _state.started:
        with contextlib.suppress(Exception):  # the coordinator may be the one that is gone
            jax_distributed.coordination_client().key_value_set(
                f"{KEY_PREFIX}/status/{process_index()}",
                f"stage {stage}: {type(error).__name__}: {str(error)[:300]}", allow_overwrite=True)


def mark_done() -> None:
    """This process finished its stages: peers stop watching it (it may exit first)."""
    if _state.started:
        if _state.watchdog is not None:
            _state.watchdog.stop.set()
        jax_distributed.coordination_client().key_value_set(
            f"{KEY_PREFIX}/status/{process_index()}", "done", allow_overwrite=True)
