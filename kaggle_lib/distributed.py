"""Several processes, one run: glue over JAX's multi-process runtime (`jax.distributed`).

Every process runs the same notebook/command with the same config; only the environment says
how many processes there are and which one this is, so the config (and its hash in the run id)
is identical everywhere:

    JAX_COORDINATOR_ADDRESS=host:port  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i   (GPU/CPU hosts)
    KAGGLE_LIB_MULTIHOST=auto            (Cloud TPU pod slice: jax detects the rest itself)

What this module adds to JAX (and nothing more):
- the environment read and validated, with errors that name the variable;
- `jax.distributed.initialize` with our heartbeat/initialization timeouts, plus a check that
  every process id registered exactly once (a collision or a missing process is an error that
  says so, not a hang);
- a watchdog that names a dead process in the run record. When the coordination service
  finds a dead process (no heartbeat for `heartbeat_timeout_seconds`) jax 0.10.2 aborts every
  survivor from its client thread (LOG(QFATAL): no Python runs, no record is written), and
  its `missed_heartbeat_callback` hook cannot be used instead: jaxlib 0.10.2 cannot convert the
  absl::Status it passes (the process dies with `std::bad_cast`, see docs/MULTIHOST.md). So each
  process posts a counter to jax's key-value store every second and watches the others'; a peer
  that reported a failed stage, or whose counter stood still for a quarter of the heartbeat
  timeout, is named in the record (process 0) or the process log, then this process exits with
  PEER_FAILURE_EXIT_CODE. jax's own heartbeat check stays as the backstop;
- the run directory agreed through jax's key-value store (process 0's choice wins);
- the rows of a global batch that belong to this process, and the global array assembled from
  process-local pieces (`jax.make_array_from_process_local_data`);
- small JSON gathers over the key-value store (device lists, agreement checks of predictions);
- generation split across processes: each process feeds its rows of every batch into one global
  sampling state, and the generated ids are gathered once (`process_allgather`).

Single-process runs never import jax here and behave exactly as before.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from kaggle_lib.errors import KaggleLibError
from kaggle_lib.hashing import sha256_hex

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_MULTIHOST = "KAGGLE_LIB_MULTIHOST"  # "auto": jax detects the cluster (TPU pod slice, SLURM)
ENV_HEARTBEAT = "KAGGLE_LIB_HEARTBEAT_TIMEOUT_S"
ENV_INIT_TIMEOUT = "KAGGLE_LIB_INIT_TIMEOUT_S"
DEFAULT_HEARTBEAT_S = 100  # jax's own default
DEFAULT_INIT_TIMEOUT_S = 300
PEER_FAILURE_EXIT_CODE = 75
# A peer whose watchdog counter stands still for heartbeat_timeout / STALE_FRACTION is dead.
STALE_FRACTION = 4
_KEY_PREFIX = "kaggle_lib"


class DistributedConfigError(KaggleLibError, ValueError):
    """The multi-process environment variables are missing, malformed or inconsistent."""

    hint = "Fix the environment variable named above (docs/MULTIHOST.md)."


class DistributedStartError(KaggleLibError, RuntimeError):
    """The processes could not form one run (a process missing, ids colliding)."""

    hint = (
        "Start every process with the same JAX_COORDINATOR_ADDRESS and JAX_NUM_PROCESSES and its "
        "own JAX_PROCESS_ID (0..N-1), within the initialization timeout (docs/MULTIHOST.md)."
    )


class ProcessMismatchError(KaggleLibError, RuntimeError):
    """Processes that must agree (same SPMD program, same data) computed different results."""


class PeerProcessError(KaggleLibError, RuntimeError):
    """Another process of the run died or stopped answering; this one stops too."""

    hint = (
        "Another process of this multi-process run died or hung (named above; its log is under "
        "processes/<id>/). Fix its cause, then start every process again with the same command "
        "and run directory and `train.resume: auto`: training continues from the last checkpoint."
    )

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


def _int_env(environ: dict[str, str] | os._Environ[str], name: str, minimum: int) -> int | None:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise DistributedConfigError(f"{name} = {raw!r} must be an integer >= {minimum}") from None
    if value < minimum:
        raise DistributedConfigError(f"{name} = {value} must be an integer >= {minimum}")
    return value


def spec_from_environment(environ: dict[str, str] | os._Environ[str] | None = None
                          ) -> ProcessSpec | None:
    """The multi-process setting of this process, or None for a single-process run.

    Explicit: all three of JAX_COORDINATOR_ADDRESS (host:port), JAX_NUM_PROCESSES (>= 1) and
    JAX_PROCESS_ID (0 .. N-1). Automatic: KAGGLE_LIB_MULTIHOST=auto (jax's cluster detection).
    """
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


# --- failure reporting -------------------------------------------------------------------------

_failure_handlers: list[Callable[[PeerProcessError], None]] = []
_failure_lock = threading.Lock()


def on_peer_failure(handler: Callable[[PeerProcessError], None]) -> None:
    """Call `handler` (e.g. "record the failure") before the process exits for a dead peer.
    Only in a multi-process run (one run per process: the latest handler replaces others)."""
    if _state.started:
        _failure_handlers[:] = [handler]


def _fail_for_peer(error: PeerProcessError) -> None:
    """Record `error` (handlers registered with `on_peer_failure`), then exit this process:
    the main thread may be blocked in a collective with the dead process and cannot raise."""
    with _failure_lock:
        print(f"\n[kaggle_lib] {error}", file=sys.stderr, flush=True)
        for handler in list(_failure_handlers):
            try:
                handler(error)
            except Exception as exc:  # noqa: BLE001 - never mask the exit
                print(f"[kaggle_lib] could not record the failure: {exc}", file=sys.stderr,
                      flush=True)
        sys.stdout.flush()
        os._exit(PEER_FAILURE_EXIT_CODE)


class _Watchdog(threading.Thread):
    """Posts this process's heartbeat counter and status to jax's key-value store every
    `tick_s`, and fails the run when a peer reports a failure or its counter stops moving for
    `stale_s` seconds (a quarter of jax's heartbeat timeout: jax aborted the survivor of a
    killed peer 6 s after the kill with a 10 s timeout, and the record must be written first)."""

    def __init__(self, stale_s: float, tick_s: float = 1.0):
        super().__init__(name="kaggle_lib-watchdog", daemon=True)
        self.stale_s = stale_s
        self.tick_s = tick_s
        self.stop = threading.Event()

    def run(self) -> None:
        client = _client()
        me, count = process_index(), process_count()
        now = time.monotonic()
        seen: dict[int, tuple[str | None, float]] = {p: (None, now) for p in range(count) if p != me}
        beat = 0
        while not self.stop.is_set():
            beat += 1
            try:
                client.key_value_set(f"{_KEY_PREFIX}/alive/{me}", str(beat), allow_overwrite=True)
            except Exception as exc:  # noqa: BLE001 - the coordinator is gone
                if self.stop.is_set():
                    return
                _fail_for_peer(PeerProcessError(
                    f"process {me} lost contact with the coordinator (process 0): it died or the "
                    f"network failed ({type(exc).__name__}: {str(exc)[:300]}). Look at process "
                    "0's log for the cause.", [0]))
            for peer, (last, since) in list(seen.items()):
                status = _try_get(client, f"{_KEY_PREFIX}/status/{peer}")
                if status == "done":
                    del seen[peer]
                    continue
                if status:
                    _fail_for_peer(PeerProcessError(
                        f"process {peer} failed ({status}); process {me} stops too. Its log: "
                        f"processes/{peer}/ (or the run record for process 0).", [peer]))
                value = _try_get(client, f"{_KEY_PREFIX}/alive/{peer}")
                now = time.monotonic()
                if value != last:
                    seen[peer] = (value, now)
                elif now - since > self.stale_s and not self.stop.is_set():
                    _fail_for_peer(PeerProcessError(
                        f"process {peer} stopped sending heartbeats for {now - since:.0f} s "
                        f"(it died or hung); process {me} stops too. Look at the log of process "
                        f"{peer} for the cause.", [peer]))
            self.stop.wait(self.tick_s)


def _try_get(client: Any, key: str) -> str | None:
    try:
        return str(client.key_value_try_get(key))
    except Exception:  # noqa: BLE001 - NOT_FOUND: not posted yet
        return None


def await_peer_verdict(error: BaseException) -> None:
    """Before a jax runtime error is recorded as this process's failure: it is often a
    collective whose peer died (gloo reports the broken connection first). Give the watchdog
    the time it needs to name that peer; if it does, it records that and exits the process."""
    watchdog = _state.watchdog
    if not _state.started or watchdog is None or not watchdog.is_alive():
        return
    if not type(error).__module__.startswith(("jax", "jaxlib")):
        return
    deadline = time.monotonic() + watchdog.stale_s + 3 * watchdog.tick_s
    while time.monotonic() < deadline and watchdog.is_alive():
        time.sleep(0.2)


def mark_failed(stage: str, error: BaseException) -> None:
    """Tell the other processes this one failed (their watchdogs stop them with this text)."""
    if _state.started:
        try:
            _client().key_value_set(f"{_KEY_PREFIX}/status/{process_index()}",
                                    f"stage {stage}: {type(error).__name__}: {str(error)[:300]}",
                                    allow_overwrite=True)
        except Exception:  # noqa: BLE001 - the coordinator may be the one that is gone
            pass


def mark_done() -> None:
    """This process finished its stages: peers stop watching it (it may exit first)."""
    if _state.started:
        if _state.watchdog is not None:
            _state.watchdog.stop.set()
        _client().key_value_set(f"{_KEY_PREFIX}/status/{process_index()}", "done",
                                allow_overwrite=True)


# --- start -------------------------------------------------------------------------------------

@dataclasses.dataclass
class _State:
    spec: ProcessSpec | None = None
    process_id: int | None = None
    started: bool = False
    watchdog: _Watchdog | None = None


_state = _State()


def _client() -> Any:
    from jax._src import distributed as jax_distributed

    client = jax_distributed.global_state.client
    if client is None:
        raise RuntimeError("jax.distributed is not initialized")
    return client


def _start_error(spec: ProcessSpec, detail: str) -> DistributedStartError:
    where = spec.coordinator_address or "auto-detected coordinator"
    return DistributedStartError(
        f"process {spec.process_id} could not join the run at {where} within "
        f"{spec.init_timeout_s} s ({ENV_INIT_TIMEOUT}): every one of the "
        f"{spec.num_processes or 'N'} processes must start with the same {ENV_COORDINATOR} and "
        f"{ENV_NUM_PROCESSES} and its own {ENV_PROCESS_ID}; a process is missing, or two share "
        f"an id. {detail}")


def _start_timed_out(spec: ProcessSpec, on_failure: Callable[[BaseException], None] | None
                     ) -> None:
    # jax aborts the process (LOG(QFATAL)) when its own, later, deadline passes: record first.
    error = _start_error(spec, "Timed out waiting for the other processes.")
    print(f"\n[kaggle_lib] {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    if on_failure is not None:
        try:
            on_failure(error)
        except Exception as exc:  # noqa: BLE001 - never mask the exit
            print(f"[kaggle_lib] could not record the failure: {exc}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(PEER_FAILURE_EXIT_CODE)


def initialize(spec: ProcessSpec | None = None,
               on_start_failure: Callable[[BaseException], None] | None = None) -> bool:
    """Join the multi-process run described by the environment (no-op for one process).

    Returns True when this is a multi-process run. Raises DistributedConfigError for bad
    variables and DistributedStartError when the processes cannot form the run; when the others
    do not arrive in time, `on_start_failure` gets the error and the process exits (jax would
    abort it without a record a few seconds later).
    """
    spec = spec if spec is not None else spec_from_environment()
    if spec is None:
        return False
    if _state.started:
        return True
    import jax
    from jax._src import distributed as jax_distributed

    timer = threading.Timer(spec.init_timeout_s, _start_timed_out, (spec, on_start_failure))
    timer.daemon = True
    timer.start()
    try:
        jax.distributed.initialize(
            coordinator_address=spec.coordinator_address, num_processes=spec.num_processes,
            process_id=spec.process_id, initialization_timeout=spec.init_timeout_s + 10,
            heartbeat_timeout_seconds=spec.heartbeat_timeout_s,
        )
    except Exception as exc:
        timer.cancel()
        raise _start_error(spec, f"jax: {type(exc).__name__}: {str(exc)[:600]}") from exc
    timer.cancel()
    _state.spec = spec
    # From the runtime, not jax.process_index(): that would start the backends, and platform
    # flags set after this point must still apply.
    _state.process_id = int(jax_distributed.global_state.process_id)
    _state.started = True
    _register_process(spec)
    _state.watchdog = _Watchdog(stale_s=spec.heartbeat_timeout_s / STALE_FRACTION)
    _state.watchdog.start()
    if _state.process_id == 0:
        threading.Thread(target=_preload_failure_record, name="kaggle_lib-preload",
                         daemon=True).start()
    return True


def _preload_failure_record() -> None:
    """Import matplotlib (the loss plot of a failed run's record) now, in the background: when a
    peer dies, jax aborts the survivors a few seconds after the watchdog notices (6 s after a
    kill in one test run), and importing matplotlib on a loaded machine can take longer."""
    try:
        import matplotlib.figure  # noqa: F401
    except Exception:  # noqa: BLE001 - only a head start; the record imports it again
        pass


def _register_process(spec: ProcessSpec) -> None:
    """Each id once: key_value_set refuses an existing key, so a duplicate id is an error here."""
    client = _client()
    index = _state.process_id
    me = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
    try:
        client.key_value_set(f"{_KEY_PREFIX}/process/{index}", me)
    except Exception as exc:
        raise DistributedStartError(
            f"{ENV_PROCESS_ID} = {index} is used by two processes ({exc}); give every process "
            f"its own id 0..{(spec.num_processes or 0) - 1}") from exc
    barrier("registered", spec.init_timeout_s)


def shutdown() -> None:
    """Leave the run (jax.distributed.shutdown); safe to call when not started."""
    if _state.started:
        import jax

        if _state.watchdog is not None:
            _state.watchdog.stop.set()
        jax.distributed.shutdown()
        _state.started = False


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
    timeout = timeout_s or (_state.spec.init_timeout_s if _state.spec else DEFAULT_INIT_TIMEOUT_S)
    _client().wait_at_barrier(f"{_KEY_PREFIX}/barrier/{name}", timeout * 1000)


def agree(name: str, value: str, timeout_s: int | None = None) -> str:
    """Process 0's `value` on every process (jax's key-value store)."""
    if not _state.started:
        return value
    key = f"{_KEY_PREFIX}/agree/{name}"
    client = _client()
    if is_writer():
        client.key_value_set(key, value)
        return value
    timeout = timeout_s or (_state.spec.init_timeout_s if _state.spec else DEFAULT_INIT_TIMEOUT_S)
    return str(client.blocking_key_value_get(key, timeout * 1000))


def all_gather_json(name: str, value: Any, timeout_s: int | None = None) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order (one entry when alone)."""
    if not _state.started:
        return [value]
    client = _client()
    client.key_value_set(f"{_KEY_PREFIX}/gather/{name}/{process_index()}",
                         json.dumps(value, default=str))
    timeout = timeout_s or (_state.spec.init_timeout_s if _state.spec else DEFAULT_INIT_TIMEOUT_S)
    return [json.loads(client.blocking_key_value_get(f"{_KEY_PREFIX}/gather/{name}/{i}",
                                                     timeout * 1000))
            for i in range(process_count())]


def check_agreement(name: str, value: Any) -> None:
    """Raise if `value` (JSON-serialisable) differs between processes; only its sha256 travels."""
    if not _state.started:
        return
    digest = sha256_hex(json.dumps(value, sort_keys=True, default=str))
    digests = all_gather_json(f"agree_{name}", digest)
    if len(set(digests)) > 1:
        differing = [i for i, d in enumerate(digests) if d != digests[0]]
        raise ProcessMismatchError(
            f"{name}: processes {differing} computed different results from process 0; every "
            "process must run the same config, code and package versions")


def describe_processes() -> list[dict[str, Any]]:
    """Every process of the run and its devices, for the manifest (gathered on all processes)."""
    import jax

    mine = {
        "process_index": process_index(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "devices": [{"id": d.id, "kind": d.device_kind, "platform": d.platform}
                    for d in jax.local_devices()],
    }
    return all_gather_json("processes", mine)


# --- data --------------------------------------------------------------------------------------

def _batch_sharding(mesh: Any, axis: str = "fsdp") -> Any:
    import jax

    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def local_rows(batch_size: int, mesh: Any, axis: str = "fsdp") -> slice:
    """The rows of a global batch (split over `axis`) that this process's devices hold.

    Read from the sharding itself (`addressable_devices_indices_map`), so any device order
    works as long as a process's rows are contiguous, which jax's process-ordered device list
    gives for an (fsdp, tp) mesh.
    """
    spans = {(idx[0].start or 0, idx[0].stop if idx[0].stop is not None else batch_size)
             for idx in _batch_sharding(mesh, axis).addressable_devices_indices_map(
                 (batch_size,)).values()}
    start, stop = min(s for s, _ in spans), max(e for _, e in spans)
    covered = sum(e - s for s, e in spans)
    if covered != stop - start:
        raise ValueError(
            f"the batch rows of process {process_index()} are not contiguous in mesh "
            f"{dict(mesh.shape)}; use a mesh whose '{axis}' axis follows process order")
    return slice(start, stop)


def global_batch(local: dict[str, Any], mesh: Any, batch_size: int,
                 axis: str = "fsdp") -> dict[str, Any]:
    """One global array per field, assembled from this process's rows
    (`jax.make_array_from_process_local_data`)."""
    import jax

    sharding = _batch_sharding(mesh, axis)
    return {k: jax.make_array_from_process_local_data(sharding, v, (batch_size, *v.shape[1:]))
            for k, v in local.items()}


class GlobalBatches:
    """Iterates `batches` (an SFTBatches holding only this process's rows) as global arrays,
    re-iterable from step 0 like the batches themselves (Tunix skips trained steps on resume)."""

    def __init__(self, batches: Any, mesh: Any, batch_size: int):
        self.batches = batches
        self.mesh = mesh
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for local in self.batches:
            yield global_batch(local, self.mesh, self.batch_size)


# --- generation: each process feeds its rows of every batch, predictions gathered once -----------

def generation_batch_size(batch_size: int, mesh: Any, axis: str = "fsdp") -> int:
    """The global generation batch: `batch_size` rounded up to a multiple of the batch axis,
    so every device (and process) holds whole rows. The extra rows repeat a prompt and are
    dropped; a multiple keeps sampled (temperature > 0) draws equal to a one-process run's."""
    size = int(mesh.shape[axis])
    return -(-batch_size // size) * size


def rows_by_process(batch_size: int, mesh: Any, axis: str = "fsdp") -> list[slice]:
    """The rows of a global batch (split over `axis`) that each process holds, in process order;
    the entry of this process is `local_rows`."""
    spans: dict[int, list[int]] = {}
    for device, index in _batch_sharding(mesh, axis).devices_indices_map((batch_size,)).items():
        start = index[0].start or 0
        stop = index[0].stop if index[0].stop is not None else batch_size
        spans.setdefault(device.process_index, []).extend((start, stop))
    return [slice(min(spans[p]), max(spans[p])) for p in sorted(spans)]


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
    sharding = _batch_sharding(mesh, axis)

    def rows(value: Any) -> Any:
        if value is None:
            return None
        host = np.asarray(value)
        return jax.make_array_from_process_local_data(sharding, host, (batch, *host.shape[1:]))

    return dataclasses.replace(
        state, token_buffer=rows(state.token_buffer), positions=rows(state.positions),
        done=rows(state.done), cache=jax.tree.map(rows, state.cache),
        logits_buffer=rows(state.logits_buffer), logprobs_buffer=rows(state.logprobs_buffer))


def _identity(value: Any) -> Any:
    return value


_reshard_fns: dict[Any, Any] = {}


def host_rows(array: Any, mesh: Any, axis: str = "fsdp") -> Any:
    """This process's rows of a global array split (or not) over its first axis, as numpy:
    one compiled reshard to the batch sharding, then the addressable shards in row order."""
    import jax
    import numpy as np

    sharding = _batch_sharding(mesh, axis)
    if sharding not in _reshard_fns:  # one jit object per sharding: compiled once per shape
        _reshard_fns[sharding] = jax.jit(_identity, out_shardings=sharding)
    resharded = _reshard_fns[sharding](array)
    blocks: dict[int, Any] = {}
    for shard in resharded.addressable_shards:
        blocks.setdefault(shard.index[0].start or 0, np.asarray(shard.data))
    return np.concatenate([blocks[start] for start in sorted(blocks)])


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


def process_log_dir(run_dir: Path) -> Path:
    """Where a process other than 0 writes its own log: <run_dir>/processes/<id>/."""
    return Path(run_dir) / "processes" / str(process_index())


def claimed_process_id(environ: dict[str, str] | os._Environ[str] | None = None) -> int | None:
    """JAX_PROCESS_ID as given (None when unset or unreadable): who records a failed start."""
    raw = (os.environ if environ is None else environ).get(ENV_PROCESS_ID, "").strip()
    return int(raw) if raw.isdigit() else None


def make_record(run_dir: Path) -> Any:
    """The run record on process 0; a `ProcessLog` under processes/<id>/ on the others."""
    from kaggle_lib import evidence

    if is_writer():
        return evidence.RunRecord(run_dir)
    return _process_log_class()(run_dir)


def _process_log_class() -> type:
    from kaggle_lib import evidence

    class ProcessLog(evidence.RunRecord):
        """What a process other than 0 keeps: its own log, <run_dir>/processes/<id>/log.jsonl.

        Same interface as RunRecord so the stages run unchanged; nothing is written to the run
        directory itself (process 0 owns the record)."""

        def __init__(self, run_dir: str | Path):  # noqa: D107 - no mkdir of the shared run dir
            self.run_dir = Path(run_dir)
            self.log_dir = process_log_dir(self.run_dir)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._manifest: dict[str, Any] = {}

        def _log(self, kind: str, payload: Any) -> None:
            from kaggle_lib.auth import redact

            line = json.dumps({"time": evidence.utc_now(), kind: payload}, default=str)
            with (self.log_dir / "log.jsonl").open("a") as fh:
                fh.write(redact(line) + "\n")

        def read_manifest(self) -> dict[str, Any]:
            return dict(self._manifest)

        def start(self, run_id: str, run_name: str, config_path: str) -> None:
            # Process 0 moves earlier attempts aside; here only this process's log starts.
            self.update_manifest(**self._identity(run_id, run_name, config_path))

        def archive_previous_attempt(self) -> dict[str, Any]:
            raise RuntimeError("only process 0 archives a run directory's earlier attempts")

        def update_manifest(self, **fields: Any) -> dict[str, Any]:
            self._manifest = self._merged(fields)
            self._log("manifest", fields)
            return dict(self._manifest)

        def write_text(self, name: str, text: str) -> Path:
            self._log("skipped_write", name)  # process 0 writes the run's files
            return self.log_dir / name

        def write_json(self, name: str, payload: Any) -> Path:
            self._log("skipped_write", name)
            return self.log_dir / name

        def log_metrics(self, record: dict[str, Any]) -> None:
            self._log("metrics", record)

        def read_metrics(self) -> list[dict[str, Any]]:
            return []

        def fail(self, stage: str, error: BaseException, *, checkpoint: str | None = None,
                 details: str = "") -> None:
            import traceback

            from kaggle_lib.auth import redact

            self._manifest["status"] = "failed"
            self._log("failure", {"stage": stage, "error_type": type(error).__name__,
                                  "message": str(error)[:2000]})
            tb = "".join(traceback.format_exception(type(error), error, error.__traceback__))
            (self.log_dir / "failure.txt").write_text(redact(
                f"process {process_index()} failed in stage {stage}: {type(error).__name__}: "
                f"{error}\n\n{tb}"))

        def succeed(self, **fields: Any) -> None:
            self._manifest["status"] = "succeeded"
            self._log("status", "succeeded")

    return ProcessLog


def runner_process_id() -> int | None:
    """For `python -m kaggle_lib run`: this process's id in a multi-process run, else None.

    The runner starts no jax backend: explicit ids come from the environment, automatic ones from
    jax's own cluster detection.
    """
    spec = spec_from_environment()
    if spec is None:
        return None
    if spec.process_id is not None:
        return spec.process_id
    from jax._src import clusters

    _, _, process_id, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, None, spec.init_timeout_s)
    if process_id is None:
        raise DistributedConfigError(
            f"{ENV_MULTIHOST}=auto but jax detected no cluster (Cloud TPU pod slice, SLURM, "
            f"Open MPI, Kubernetes); set {ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and "
            f"{ENV_PROCESS_ID} instead")
    return int(process_id)


# The runner of a process other than 0 starts before jax and cannot ask process 0 for the run
# directory; its kernel learns it (`share_run_dir`) and writes it to the file this variable names.
ENV_RUN_DIR_FILE = "KAGGLE_LIB_RUN_DIR_FILE"


def share_run_dir(directory: Path) -> Path:
    """Process 0's run directory on every process (jax's key-value store). A kernel started by
    `python -m kaggle_lib run` also tells its runner, through the file in KAGGLE_LIB_RUN_DIR_FILE,
    where to put its executed notebook."""
    chosen = Path(agree("run_dir", str(directory)))
    report = os.environ.get(ENV_RUN_DIR_FILE, "").strip()
    if report:
        Path(report).write_text(str(chosen))
    return chosen


def follower_scratch_notebook(process_id: int) -> Path:
    """Where the runner of a process other than 0 writes its executed notebook while the kernel
    runs (a fresh local directory); the kernel reports the run directory next to it."""
    scratch = Path(tempfile.mkdtemp(prefix=f"kaggle_lib-process{process_id}-"))
    os.environ[ENV_RUN_DIR_FILE] = str(scratch / "run_dir.txt")
    return scratch / "executed.ipynb"


def place_follower_notebook(notebook: Path, process_id: int) -> Path:
    """Move a follower's executed notebook to <run dir>/processes/<id>/executed.ipynb, the run
    directory being the one its kernel learned from process 0; where it is when the kernel
    never learned it (it failed before joining the run)."""
    try:
        run_dir = Path(notebook.parent.joinpath("run_dir.txt").read_text().strip())
    except OSError:
        return notebook
    if not notebook.exists() or not str(run_dir):
        return notebook
    target = follower_notebook_path(run_dir, process_id)
    shutil.move(str(notebook), str(target))
    shutil.rmtree(notebook.parent, ignore_errors=True)
    return target


def follower_notebook_path(run_dir: Path, process_id: int) -> Path:
    """Where the runner of a process other than 0 writes its executed notebook."""
    path = Path(run_dir) / "processes" / str(process_id) / "executed.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
