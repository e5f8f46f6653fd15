"""Gemma 3 in the layout of Google's Flax checkpoints on Kaggle Models ("upstream" names).

Tunix loads those with `tunix.models.gemma3.params.create_model_from_checkpoint`, which maps
upstream names (`transformer/layer_0/mlp/gating_einsum`, ...) onto its NNX module tree. This
module is the inverse: it writes a Tunix Gemma 3 model as such a checkpoint. Used for the Kaggle
Model export (the competition's multi-session track wants a Tunix-loadable, non-safetensors
checkpoint) and to build offline kagglehub fixtures for the Kaggle loading path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def to_upstream_params(model: Any) -> dict[str, dict[str, np.ndarray]]:
    """{'transformer/<module path>': {param name: array}} for a text-only Tunix Gemma3."""
    import flax
    from flax import nnx

    flat = flax.traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    out: dict[str, dict[str, np.ndarray]] = {}

    def put(module: str, name: str, value: Any) -> None:
        out.setdefault(f"transformer/{module}", {})[name] = np.asarray(value)

    gates: dict[int, dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        if key[0] == "embedder":
            put("embedder", key[-1], value)
        elif key[0] == "final_norm":
            put("final_norm", key[-1], value)
        elif key[0] == "layers":
            index, rest = int(key[1]), [str(k) for k in key[2:]]
            if rest[:2] == ["mlp", "gate_proj"]:
                gates.setdefault(index, {})["gate"] = np.asarray(value).T
            elif rest[:2] == ["mlp", "up_proj"]:
                gates.setdefault(index, {})["up"] = np.asarray(value).T
            elif rest[:2] == ["mlp", "down_proj"]:
                put(f"layer_{index}/mlp/linear", "w", value)
            else:
                put(f"layer_{index}/" + "/".join(rest[:-1]), rest[-1], value)
        else:
            raise ValueError(f"unexpected parameter {key} (vision weights are not exported)")
    for index, pair in gates.items():
        # Upstream stores gate and up projections stacked as (2, hidden, embed).
        put(f"layer_{index}/mlp/gating_einsum", "w", np.stack([pair["gate"], pair["up"]]))
    return out


def save_upstream_checkpoint(model: Any, path: str | Path) -> Path:
    """Write an Orbax checkpoint that Tunix's Gemma 3 Kaggle loader restores."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, to_upstream_params(model), force=True)
    checkpointer.wait_until_finished()
    return path


def load_upstream_checkpoint(path: str | Path, config: Any, mesh: Any = None,
                             dtype: Any = None) -> Any:
    """Tunix's own loader for Kaggle's Gemma 3 Flax checkpoints."""
    import jax.numpy as jnp
    from tunix.models.gemma3 import params as gemma3_params

    return gemma3_params.create_model_from_checkpoint(
        str(Path(path).absolute()), config, mesh, dtype=dtype or jnp.float32
    )
