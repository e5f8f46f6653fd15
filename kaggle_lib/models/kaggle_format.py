"""Gemma 3 Orbax checkpoints in the layout of Google's Flax models on Kaggle ("upstream" names).

Tunix reads them with `gemma3.params.create_model_from_checkpoint` (upstream names such as
`transformer/layer_0/mlp/gating_einsum` onto its NNX tree); writing is the inverse (names:
`models.convert.upstream_params`). Used by the Kaggle Model export (the competition's
multi-session track wants a Tunix-loadable, non-safetensors checkpoint) and Kaggle loading.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from tunix.models.gemma3 import params as gemma3_params
from tunix.models.gemma3.model import Gemma3, ModelConfig

from kaggle_lib.models.convert import upstream_params


def write_upstream_checkpoint(params: Mapping[tuple[Any, ...], np.ndarray], path: str | Path) -> Path:
    """Write a flat Tunix Gemma3 parameter tree as an upstream-layout Orbax checkpoint at `path`
    (replacing anything there); returns the absolute path."""
    path = Path(path).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    try:
        checkpointer.save(path, upstream_params(params))
        checkpointer.wait_until_finished()
    finally:
        checkpointer.close()
    return path


def load_upstream_checkpoint(path: str | Path, config: ModelConfig,
                             mesh: jax.sharding.Mesh | None = None, dtype: Any = None) -> Gemma3:
    """Tunix's own loader for Kaggle's Gemma 3 Flax checkpoints (float32 unless `dtype`)."""
    return gemma3_params.create_model_from_checkpoint(
        str(Path(path).resolve()), config, mesh, dtype=dtype or jnp.float32)
