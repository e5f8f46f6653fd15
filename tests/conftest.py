"""Test session setup.

8 simulated CPU devices (as on a TPU v5e-8) for every in-process test, and one persistent
compilation cache: both must be set before jax initialises, so they are set here, at import time
of the first conftest.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# jax's persistent compilation cache (what `make run` uses) for the whole session: this process
# and every run or worker it starts inherit it, so a program that several tests compile alike
# (the tiny model's train step, prefill, decode on the same mesh) is compiled once. The key is
# the whole program, compiler flags and device count: a hit is the same executable, so no test
# computes anything differently. A fresh directory per session: nothing stale, nothing left.
_JAX_CACHE = tempfile.mkdtemp(prefix="kaggle_lib_tests_jax_cache_")
atexit.register(shutil.rmtree, _JAX_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _JAX_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # jax's default: 1 s
# Never let a test reach a real hub.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@pytest.fixture(scope="session")
def tiny_loaded() -> Any:
    """configs/cpu_tiny.yaml's model (random tiny Gemma 3, tiny tokenizer) as the pipeline loads
    it. Shared: a test that changes the model (LoRA, training) loads its own."""
    from kaggle_lib.models import loader

    return loader.load_model("gemma3-tiny", source="random")


@pytest.fixture
def clean_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Registered secrets are process-global: restore them after the test; no real credential
    file or secret environment variable is read."""
    from kaggle_lib import auth

    saved = set(auth._secret_values)  # noqa: SLF001
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    for var in auth.SECRET_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    yield
    auth._secret_values.clear()  # noqa: SLF001
    auth._secret_values.update(saved)  # noqa: SLF001


@pytest.fixture(scope="session")
def run_secrets() -> dict[str, str]:
    """Fake secrets in the environment of the shared run below: auth finds the HF token (used for
    nothing), and neither value may appear anywhere in the run's record or output."""
    return {"HF_TOKEN": "hf_" + "FakeTokenForEvidenceTests0123456789",
            "KAGGLE_KEY": "5eb1c0ffee5eb1c0ffee5eb1c0ffee00"}  # legacy-key shape: 32 hex


@pytest.fixture(scope="session")
def tiny_notebook_run(tmp_path_factory: pytest.TempPathFactory, run_secrets: dict[str, str]
                      ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One whole cpu_tiny run through papermill (`python -m kaggle_lib run`, one CPU device as
    `make run` has), shared by every test that only reads its record (test_notebook_run,
    test_evidence_run, test_eval_cli on a copy): a run costs about a minute on 2 cores.

    configs/cpu_tiny.yaml plus a validation loss on held-out reasoning-gym problems every 2
    steps, with `run_secrets` in the environment. Tests that write into a run copy it first.
    Returns (run directory `<tmp>/runs/tiny-run`, the runner's completed process).
    """
    import yaml

    root = tmp_path_factory.mktemp("tiny_notebook_run")
    run_dir = root / "runs" / "tiny-run"
    tree = yaml.safe_load((REPO_ROOT / "configs" / "cpu_tiny.yaml").read_text())
    tree["data"].update(validation="rg:wide_sft@1", validation_limit=16)
    tree["train"]["sft"]["validate_every"] = 2
    config = root / "cpu_tiny_validation.yaml"
    config.write_text(yaml.safe_dump(tree))
    env = {**os.environ, **run_secrets}
    env.pop("XLA_FLAGS", None)  # one CPU device, as `make run` has
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "kaggle_lib", "run", "--config", str(config), "--run-dir", str(run_dir)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    return run_dir, result
