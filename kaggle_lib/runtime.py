"""Where are we running, and on what: Kaggle or local, interactive or batch, which devices.

Platform flags must be in the environment before jax initialises its backends, so
`configure_platform` runs before the first `import jax` of a run; `describe_devices` asks jax.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

from kaggle_lib.compat.jax_backends import backends_initialised
from kaggle_lib.errors import KaggleLibError

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
