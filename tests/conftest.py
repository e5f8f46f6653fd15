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
