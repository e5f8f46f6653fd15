"""Where are we running, and on what: Kaggle or local, interactive or batch, which devices.

Platform flags must be in the environment before jax initialises its backends, so
`configure_platform` runs before the first `import jax` of a run; `describe_devices` asks jax.
How the process stops: SIGTERM and SIGINT while a run is open (`watch_stop_signals`) end it with
`Interrupted` and a closed record; training first gets to its next step boundary and saves.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kaggle_lib.compat.jax_backends import backends_initialised
from kaggle_lib.errors import Interrupted, KaggleLibError

# Tests (and the Kaggle-like local run) point this at a temporary directory that stands in
# for "/", so that /kaggle/working becomes $KAGGLE_LIB_KAGGLE_ROOT/kaggle/working.
_KAGGLE_ROOT_ENV = "KAGGLE_LIB_KAGGLE_ROOT"

PLATFORMS = ("cpu", "gpu", "tpu")


class DeviceError(KaggleLibError, RuntimeError):
    """The requested accelerator is not present."""

    hint = (
        "Set `device: auto` (or the platform that is present) or run where that accelerator "
        "exists. On Kaggle: Settings -> Accelerator -> TPU v5e-8."
    )


@dataclasses.dataclass(frozen=True)
class Environment:
    on_kaggle: bool
    run_type: str | None  # "Interactive" | "Batch" on Kaggle
    working_dir: Path  # where outputs go (/kaggle/working on Kaggle)
    input_dir: Path | None  # /kaggle/input on Kaggle

    @property
    def interactive(self) -> bool:
        if self.on_kaggle:
            return self.run_type != "Batch"
        return sys.stdin is not None and sys.stdin.isatty()


def kaggle_root() -> Path:
    return Path(os.environ.get(_KAGGLE_ROOT_ENV, "/"))


def detect_environment(cwd: Path | None = None) -> Environment:
    """Kaggle if its env vars or its /kaggle/working directory are present."""
    root = kaggle_root()
    working = root / "kaggle" / "working"
    on_kaggle = any(os.environ.get(k) for k in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE",
                                                "KAGGLE_DATA_PROXY_URL")) or working.is_dir()
    if on_kaggle:
        input_dir = root / "kaggle" / "input"
        return Environment(on_kaggle=True, run_type=os.environ.get("KAGGLE_KERNEL_RUN_TYPE"),
                           working_dir=working, input_dir=input_dir if input_dir.is_dir() else None)
    return Environment(on_kaggle=False, run_type=None, working_dir=cwd or Path.cwd(), input_dir=None)


def _tpu_present() -> bool:
    return bool(os.environ.get("TPU_ACCELERATOR_TYPE") or os.environ.get("TPU_NAME")
                or any(Path("/dev").glob("accel*")) or Path("/dev/vfio/0").exists())


def _gpu_present() -> bool:
    return Path("/dev/nvidia0").exists() or shutil.which("nvidia-smi") is not None


def guess_platform() -> str:
    """Best guess without importing jax (flags must be set before it starts)."""
    if _tpu_present():
        return "tpu"
    if _gpu_present():
        return "gpu"
    return "cpu"


# Why each flag: these are the settings the MaxText/Tunix TPU and GPU recipes use for training
# throughput. They are appended only for their own platform (GPU flags on a TPU abort XLA).
_TPU_LIBTPU_ARGS = ["--xla_tpu_enable_latency_hiding_scheduler=true"]
_GPU_XLA_FLAGS = ["--xla_gpu_enable_latency_hiding_scheduler=true"]
# Let jax take most of the GPU up front instead of growing (fragmentation on long runs).
_GPU_ENV = {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.90"}


def _append_flags(var: str, flags: list[str]) -> None:
    current = os.environ.get(var, "").split()
    for flag in flags:
        name = flag.split("=")[0]
        if not any(c.split("=")[0] == name for c in current):
            current.append(flag)
    os.environ[var] = " ".join(current)


def configure_platform(requested: str) -> dict[str, Any]:
    """Set per-platform environment before jax starts. Returns what was set, for the banner."""
    if requested not in ("auto", *PLATFORMS):
        raise ValueError(f"device must be one of auto, cpu, gpu, tpu; got {requested!r}")
    platform = guess_platform() if requested == "auto" else requested
    jax_started = "jax" in sys.modules and backends_initialised()
    # jax's persistent compilation cache: a second run (or a restarted kernel) loads the train
    # step, prefill and decode programs instead of compiling them again. A user's choice wins.
    from kaggle_lib.models.loader import cache_root

    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache_root() / "jax_compilation_cache"))
    text_progress_bars()
    if platform == "cpu":
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    elif platform == "tpu":
        _append_flags("LIBTPU_INIT_ARGS", _TPU_LIBTPU_ARGS)
    elif platform == "gpu":
        _append_flags("XLA_FLAGS", _GPU_XLA_FLAGS)
        for key, value in _GPU_ENV.items():
            os.environ.setdefault(key, value)
    return {"requested": requested, "expected_platform": platform,
            "jax_already_started": jax_started,
            **{k: os.environ.get(k, "") for k in ("XLA_FLAGS", "LIBTPU_INIT_ARGS",
                                                  "JAX_PLATFORMS")},
            "JAX_COMPILATION_CACHE_DIR": os.environ["JAX_COMPILATION_CACHE_DIR"]}


def text_progress_bars() -> None:
    """Let tqdm.auto (Tunix's progress bar, huggingface_hub's downloads) use its text bar
    without the "IProgress not found" warning of a kernel without ipywidgets. ipywidgets is left
    out on purpose: papermill saves a widget bar as a model that reads "HBox(children=...)"
    wherever the widget state is not saved (GitHub, Kaggle's viewer, a diff)."""
    with warnings.catch_warnings():
        # tqdm.auto imports autonotebook once; later imports reuse the module, silent.
        warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.autonotebook  # noqa: F401


def describe_devices(requested: str = "auto") -> dict[str, Any]:
    """Ask jax what it has; raise DeviceError if the requested platform is absent."""
    import jax

    devices = jax.devices()
    platform = devices[0].platform
    if requested != "auto" and platform != requested:
        present = sorted({f"{d.platform} ({d.device_kind})" for d in devices})
        raise DeviceError(f"device: {requested} was requested but jax sees no "
                          f"{requested.upper()}; present: {', '.join(present)} x{len(devices)}. "
                          f"Set `device: auto` or `device: {platform}` in the config, or run on "
                          "a machine with that accelerator.")
    try:
        memory = (devices[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # CPU devices have no memory stats
        memory = None
    return {"platform": platform, "device_kind": devices[0].device_kind,
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count(),
            "memory_per_device_bytes": memory, "process_count": jax.process_count(),
            "process_index": jax.process_index(), "jax_version": jax.__version__}


def banner(env: Environment, devices: dict[str, Any], flags: dict[str, Any]) -> str:
    memory = devices.get("memory_per_device_bytes")
    mem_text = f"{memory / 2**30:.1f} GiB" if memory else "not reported"
    where = f"Kaggle ({env.run_type or 'unknown run type'})" if env.on_kaggle else "local"
    lines = [
        "=" * 72,
        f"kaggle_lib runtime | {where} | {'interactive' if env.interactive else 'headless'}",
        f"  devices : {devices['device_count']} x {devices['device_kind']} ({devices['platform']}),"
        f" memory/device {mem_text}",
        f"  hosts   : process {devices['process_index']} of {devices['process_count']}",
        f"  jax     : {devices['jax_version']}   python {sys.version.split()[0]}",
        f"  working : {env.working_dir}",
    ]
    for key in ("XLA_FLAGS", "LIBTPU_INIT_ARGS", "JAX_PLATFORMS", "JAX_COMPILATION_CACHE_DIR"):
        if flags.get(key):
            lines.append(f"  {key}={flags[key]}")
    if flags.get("jax_already_started"):
        lines.append("  note    : jax was already initialised; platform flags could not apply")
    lines.append("=" * 72)
    return "\n".join(lines)


# ------------------------------------------------------------------ stop signals (docs/KAGGLE.md)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long a training loop may take to reach its next step boundary (where it stops and saves a
# checkpoint) before the stop interrupts the step in flight. The tightest sender known is
# jupyter_client's shutdown, which papermill and nbclient use: SIGINT, then SIGTERM 2.5 s later,
# SIGKILL 5 s after the first (shutdown_wait_time 5.0); `docker stop` allows 10 s. 2 s leaves
# about 3 s of the tightest for the checkpoint write and the closing of the record.
STEP_BOUNDARY_WAIT_S = 2.0


@dataclasses.dataclass
class _StopState:
    open: bool = False  # a run record is open (watch_stop_signals .. closing_record)
    closing: bool = False  # its closing files are being written: signals wait
    received: str | None = None  # the first stop signal received while it was open
    stages: int = 0  # stages running: a stop raises Interrupted in them
    training: bool = False  # a training loop polls stop_requested() instead
    on_idle: Callable[[Interrupted], None] | None = None  # closes the record between stages
    saved_sigterm: Any = signal.SIG_DFL


_stop = _StopState()


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _default_action(signum: int, frame: Any) -> None:
    """What the signal does without us: SIGINT raises KeyboardInterrupt; SIGTERM goes to the
    handler from before the run (by default the process ends: its parent sees the signal)."""
    if signum == signal.SIGINT:
        signal.default_int_handler(signum, frame)
    if signal.getsignal(signum) is _on_stop_signal:
        signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


def _on_stop_signal(signum: int, frame: Any) -> None:
    # A Python handler runs in the main thread between two bytecodes: it only sets state or
    # raises, except between stages (an idle kernel), where nothing of ours is mid-write.
    name = signal.Signals(signum).name
    if not _stop.open:
        _default_action(signum, frame)
        return
    if _stop.received or _stop.closing:
        return  # a repeat (jupyter_client follows SIGINT with SIGTERM) while the stop is recorded
    _stop.received = name
    if _stop.training:
        signal.signal(signal.SIGALRM, _on_step_boundary_deadline)
        signal.setitimer(signal.ITIMER_REAL, STEP_BOUNDARY_WAIT_S)
        return
    if _stop.stages:
        raise Interrupted(f"{name} received; the run stopped here (see the traceback)")
    if _stop.on_idle is not None:
        _stop.on_idle(Interrupted(f"{name} received between two stages of the notebook"))
    _default_action(signum, frame)


def _on_step_boundary_deadline(signum: int, frame: Any) -> None:
    if _stop.training:
        _stop.training = False
        raise Interrupted(f"{_stop.received} received; training did not reach a step boundary "
                          f"within {STEP_BOUNDARY_WAIT_S:g} s and was stopped mid-step (no "
                          "checkpoint of that step)")


def watch_stop_signals(on_idle: Callable[[Interrupted], None]) -> None:
    """A run record is open: from now until `closing_record`, SIGTERM and SIGINT end the run
    with `Interrupted` (stages raise it; `on_idle` closes the record between stages). Only the
    main thread can set handlers; elsewhere signals keep their default action."""
    if not _main_thread():
        return
    if not _stop.open:
        _stop.saved_sigterm = signal.signal(signal.SIGTERM, _on_stop_signal)
    _stop.open, _stop.closing, _stop.received, _stop.on_idle = True, False, None, on_idle


@contextlib.contextmanager
def stage_signals() -> Iterator[None]:
    """A stage runs: a stop signal raises Interrupted in it. SIGINT is taken here, per stage:
    ipykernel sets its own SIGINT handler around each cell."""
    if not (_stop.open and _main_thread()):
        yield
        return
    previous = signal.signal(signal.SIGINT, _on_stop_signal)
    _stop.stages += 1
    try:
        yield
    finally:
        _stop.stages -= 1
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def closing_record() -> Iterator[None]:
    """The record's closing files are written in here; signals wait until they are, then
    SIGTERM has its earlier handler back (the run is over)."""
    if not _stop.open:
        yield
        return
    _stop.closing = True
    try:
        yield
    finally:
        _stop.open, _stop.closing, _stop.on_idle = False, False, None
        if _main_thread():
            signal.signal(signal.SIGTERM, _stop.saved_sigterm)


@contextlib.contextmanager
def stop_at_step_boundary() -> Iterator[None]:
    """A training loop runs in here and polls `stop_requested()` at each step boundary: a stop
    signal does not raise but waits up to STEP_BOUNDARY_WAIT_S for the loop to get there (it
    calls `at_step_boundary`, stops and saves a checkpoint), then raises Interrupted mid-step."""
    if not (_stop.open and _main_thread()):
        yield
        return
    previous_alarm = signal.getsignal(signal.SIGALRM)
    _stop.training = True
    try:
        yield
    finally:
        _stop.training = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_alarm)


def stop_requested() -> str | None:
    """The name of the stop signal received while a run is open (None: carry on)."""
    return _stop.received if _stop.open else None


def at_step_boundary() -> None:
    """The training loop acts on the stop at a step boundary: the deadline no longer applies
    (the checkpoint write that follows is not cut)."""
    _stop.training = False
    if _main_thread():
        signal.setitimer(signal.ITIMER_REAL, 0)


def raise_if_stopped(what: str) -> None:
    """Raise Interrupted ("<signal> received; <what>") if a stop signal came during the run."""
    if name := stop_requested():
        raise Interrupted(f"{name} received; {what}")
