"""Runtime detection: Kaggle vs local, platform choice, flags, devices (8 simulated CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kaggle_lib import runtime


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_URL_BASE", "KAGGLE_DATA_PROXY_URL",
                "TPU_ACCELERATOR_TYPE", "TPU_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_LIB_KAGGLE_ROOT", str(tmp_path))
    return tmp_path


def test_local_environment(clean_env: Path) -> None:
    env = runtime.detect_environment(cwd=Path("/somewhere"))
    assert not env.on_kaggle
    assert env.working_dir == Path("/somewhere")
    assert env.input_dir is None


def test_kaggle_batch_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_env / "kaggle" / "working").mkdir(parents=True)
    (clean_env / "kaggle" / "input").mkdir(parents=True)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    env = runtime.detect_environment()
    assert env.on_kaggle and env.run_type == "Batch" and not env.interactive
    assert env.working_dir == clean_env / "kaggle" / "working"
    assert env.input_dir == clean_env / "kaggle" / "input"


def test_kaggle_detected_from_working_dir_alone(clean_env: Path) -> None:
    (clean_env / "kaggle" / "working").mkdir(parents=True)
    env = runtime.detect_environment()
    assert env.on_kaggle and env.run_type is None and env.interactive


def test_interactive_kaggle(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert runtime.detect_environment().interactive


def test_platform_guess_prefers_tpu_then_gpu(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "_gpu_present", lambda: False)
    assert runtime.guess_platform() == "cpu"
    monkeypatch.setattr(runtime, "_gpu_present", lambda: True)
    assert runtime.guess_platform() == "gpu"
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v5litepod-8")
    assert runtime.guess_platform() == "tpu"


def test_flags_are_per_platform(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    monkeypatch.delenv("LIBTPU_INIT_ARGS", raising=False)
    monkeypatch.delenv("XLA_PYTHON_CLIENT_MEM_FRACTION", raising=False)
    runtime.configure_platform("tpu")
    assert "latency_hiding" in os.environ["LIBTPU_INIT_ARGS"]
    assert "xla_gpu" not in os.environ["XLA_FLAGS"]
    assert "XLA_PYTHON_CLIENT_MEM_FRACTION" not in os.environ
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.delenv("LIBTPU_INIT_ARGS", raising=False)
    runtime.configure_platform("cpu")
    assert "xla_gpu" not in os.environ["XLA_FLAGS"] and not os.environ.get("LIBTPU_INIT_ARGS")
    runtime.configure_platform("gpu")
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" in os.environ["XLA_FLAGS"]
    runtime.configure_platform("gpu")  # idempotent: no duplicated flag
    assert os.environ["XLA_FLAGS"].count("xla_gpu_enable_latency_hiding_scheduler") == 1
    with pytest.raises(ValueError, match="auto, cpu, gpu, tpu"):
        runtime.configure_platform("npu")


def test_eight_simulated_devices() -> None:
    info = runtime.describe_devices("cpu")
    assert info["platform"] == "cpu"
    assert info["device_count"] == 8  # conftest sets --xla_force_host_platform_device_count=8
    assert info["process_count"] == 1 and info["process_index"] == 0


def test_absent_platform_is_a_clear_error() -> None:
    with pytest.raises(runtime.DeviceError, match=r"device: tpu was requested.*present: cpu \(cpu\) x8"):
        runtime.describe_devices("tpu")


def test_banner_has_everything() -> None:
    env = runtime.Environment(on_kaggle=True, run_type="Batch", working_dir=Path("/kaggle/working"),
                              input_dir=None)
    devices = {"platform": "tpu", "device_kind": "TPU v5 lite", "device_count": 8,
               "local_device_count": 8, "memory_per_device_bytes": 16 * 2**30,
               "process_count": 1, "process_index": 0, "jax_version": "0.6.2"}
    text = runtime.banner(env, devices, {"LIBTPU_INIT_ARGS": "--x=1"})
    assert "Kaggle (Batch)" in text and "8 x TPU v5 lite (tpu)" in text and "16.0 GiB" in text
    assert "LIBTPU_INIT_ARGS=--x=1" in text


def test_single_device_subprocess_without_flag() -> None:
    """Without the flag jax sees one CPU device: the count really comes from XLA_FLAGS."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run(
        [sys.executable, "-c", "from kaggle_lib import runtime; print(runtime.describe_devices()['device_count'])"],
        env=env, capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == "1"


def test_persistent_compilation_cache_under_the_cache_root_unless_chosen(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("KAGGLE_LIB_CACHE", str(tmp_path))
    flags = runtime.configure_platform("cpu")
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "jax_compilation_cache")
    assert flags["JAX_COMPILATION_CACHE_DIR"] == os.environ["JAX_COMPILATION_CACHE_DIR"]
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/elsewhere")
    runtime.configure_platform("cpu")
    assert os.environ["JAX_COMPILATION_CACHE_DIR"] == "/elsewhere"


# A notebook kernel as tqdm.autonotebook recognises one (ipykernel's shell), without ipywidgets.
_KERNEL_WITHOUT_WIDGETS = """
import sys, types, warnings
sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
import IPython
class ZMQInteractiveShell: pass
IPython.get_ipython = lambda: ZMQInteractiveShell()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if sys.argv[1] == "configured":
        from kaggle_lib import runtime
        runtime.text_progress_bars()
    from tqdm import auto, std
print(sum("IProgress" in str(w.message) for w in caught), issubclass(auto.tqdm, std.tqdm))
"""


@pytest.mark.parametrize(("mode", "expected"), [("plain", "1 True"), ("configured", "0 True")])
def test_progress_bars_are_text_without_the_ipywidgets_warning(mode: str, expected: str) -> None:
    """tqdm.auto (Tunix's progress bar) warns about IProgress in such a kernel unless the
    runtime set it up first; either way the bar it uses is tqdm's text bar."""
    out = subprocess.run(
        [sys.executable, "-c", _KERNEL_WITHOUT_WIDGETS, mode], capture_output=True, text=True,
        check=True, cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == expected, out.stderr[-2000:]
