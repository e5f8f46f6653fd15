"""Test session setup.

8 simulated CPU devices (as on a TPU v5e-8) for every in-process test: the flag must be set
before jax initialises, so it is set here, at import time of the first conftest.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
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
