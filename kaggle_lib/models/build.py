"""The one model builder: base weights (`models.loader`), the run's LoRA adapters, a checkpoint,
for the notebook, `python -m kaggle_lib eval` and the training stages. LoRA goes on only through
`add_lora`, so a restored checkpoint meets exactly the tree training saved. jax is imported
inside the functions, as in `models.loader`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_lib import logs, multihost
from kaggle_lib.config import ConfigError
from kaggle_lib.models import loader, preflight, registry

if TYPE_CHECKING:
    from kaggle_lib.config import LoraSection, ModelSection, RunConfig
    from kaggle_lib.evidence import RunRecord

log = logs.get_logger(__name__)


def hf_source(model: ModelSection) -> tuple[str, bool]:
    """(the source the weights load from, whether it needs an HF token: a gated hub model)."""
    spec = registry.get_spec(model.name)
    source = spec.default_source if model.source == "auto" else model.source
    return source, source == "hf" and (spec.gated if model.gated is None else model.gated)


def lora_settings(config: RunConfig) -> LoraSection | None:
    """The adapters both stages train: train.sft.lora in LoRA mode, None for full weights."""
    return config.train.sft.lora if config.train.sft.mode == "lora" else None


def add_lora(model: Any, lora: LoraSection | None, *, seed: int, mesh: Any = None,
             source: str = "the run's config") -> Any:
    """`model` with seeded LoRA adapters (`training.sft.apply_lora`, over `mesh` when given: the
    same on every process and rebuild), or `model` itself for full weights (`lora` None) or when
    it has them already (Tunix's `is_lora_enabled`, as its PeftTrainer asks). A rank above the
    smallest dimension of an adapted weight is a ConfigError naming `source` (the config file)."""
    from tunix.sft.utils import is_lora_enabled

    from kaggle_lib.training.sft import apply_lora

    if lora is None or is_lora_enabled(model):
        return model
    wrapped = apply_lora(model, rank=lora.rank, alpha=lora.alpha,
                         target_modules=lora.target_modules, seed=seed, mesh=mesh)
    limit, where = lora_rank_limit(wrapped, lora.rank)
    if lora.rank > limit:
        raise ConfigError(
            f"invalid config {source}:\n  train.sft.lora.rank = {lora.rank}: more than {limit}, "
            f"the smallest input or output size of a weight it adapts ({where}); an update of "
            f"that weight has rank <= {limit} whatever the adapter's, so the extra rank only adds "
            f"parameters. Allowed for this model and train.sft.lora.target_modules: 1..{limit}")
    return wrapped


def lora_rank_limit(model: Any, rank: int) -> tuple[int, str]:
    """(the largest rank a LoRA update of every adapted weight can have, the path of the weight
    that sets it): qwix's adapter of weight w is w_lora_a [*batch, *inputs, rank] and w_lora_b
    [*batch, rank, *outputs], so w holds batch x inputs x outputs values."""
    from flax import nnx

    limit, where = None, ""
    for path, node in nnx.iter_graph(model):
        if not isinstance(node, nnx.Module):
            continue
        for attr in [a for a in vars(node) if a.endswith("_lora_a")]:
            name = attr.removesuffix("_lora_a")
            with_inputs = math.prod(getattr(node, attr).shape) // rank
            with_outputs = math.prod(getattr(node, name + "_lora_b").shape) // rank
            batch = max(1, with_inputs * with_outputs // math.prod(getattr(node, name).shape))
            size = min(with_inputs, with_outputs) // batch
            if limit is None or size < limit:
                limit, where = size, ".".join(map(str, (*path, name)))
    return (rank if limit is None else limit), where


def restore(model: Any, root: Path, step: int) -> str:
    """Checkpoint `step` under `root` restored into `model` in place by Tunix's CheckpointManager
    (LoRA params only when the model has LoRA) -> "lora" or "full"; else CheckpointError."""
    from tunix.sft.checkpoint_manager import CheckpointManager
    from tunix.sft.utils import is_lora_enabled

    from kaggle_lib.training.checkpoints import CheckpointError

    lora = is_lora_enabled(model)
    manager = CheckpointManager(str(root))
    try:
        restored, _ = manager.maybe_restore(model, step=step, restore_only_lora_params=lora)
    except Exception as exc:  # noqa: BLE001 - a corrupt step is an input problem here
        raise CheckpointError(f"checkpoint step {step} under {root} could not be restored: "
                              f"{type(exc).__name__}: {str(exc)[:300]}") from None
    finally:
        manager.close()
    if restored != step:
        raise CheckpointError(f"checkpoint step {step} under {root} could not be restored")
    return "lora" if lora else "full"


def build_model(config: RunConfig, *, platform: str, mesh: Any, token: str | None = None,
                revision: str | None = None, lora: bool = False,
                checkpoint: tuple[Path, int] | None = None) -> loader.LoadedModel:
    """The run's model on `mesh`: base weights (`revision` pins the HF commit when the config
    pins none), with `lora` the run's adapters (`lora_settings`), with `checkpoint` (root, step)
    that step restored (`info` then names it).

    Several processes: LoRA is wrapped while the weights are still process-local, then they are
    sharded. qwix finds the layers to wrap by running the model op by op; op-by-op computations
    on arrays spread over processes can deadlock on CPU (gloo) collectives (docs/MULTIHOST.md)."""
    late = multihost.is_multiprocess()
    spec = config.model
    loaded = loader.load_model(
        spec.name, source=spec.source, path=spec.path, revision=spec.revision or revision,
        repo=spec.repo, dtype=spec.dtype, platform=platform, mesh=None if late else mesh,
        token=token, seed=config.seed)
    if lora:
        loaded.model = add_lora(loaded.model, lora_settings(config), seed=config.seed,
                                mesh=None if late else mesh)
    if late:
        loaded.model = loader.shard_model(loaded.model, mesh)
    if checkpoint is not None:
        root, step = checkpoint
        loaded.info.update(checkpoint=str(root / str(step)), checkpoint_step=step,
                           restored=restore(loaded.model, root, step))
    return loaded


def load_for_run(config: RunConfig, devices: dict[str, Any], record: RunRecord, *,
                 token: str | None = None) -> tuple[loader.LoadedModel, Any]:
    """The notebook's model and mesh: the (fsdp, tp) mesh, the memory check and the base weights
    (several processes training SFT: with the run's LoRA, see `build_model`), both recorded."""
    from kaggle_lib import mesh as mesh_lib  # imports jax

    mesh = mesh_lib.make_mesh(config.mesh.fsdp, config.mesh.tp)
    if "sft" in config.train.stages:
        mesh_lib.check_batch(config.train.sft.batch_size, mesh)
    budget = preflight.check(config, devices, mesh_shape=dict(mesh.shape))
    log.info(budget.text)
    record.update_manifest(preflight=budget.to_dict())
    started = time.monotonic()
    loaded = build_model(config, platform=devices["platform"], mesh=mesh, token=token,
                         lora=multihost.is_multiprocess() and "sft" in config.train.stages)
    info = {**loaded.info, "load_seconds": round(time.monotonic() - started, 2),
            "mesh": dict(mesh.shape)}
    record.update_manifest(model=info)
    log.info(f"model: {config.model.name} from {info['source']} | {info['param_count']:,} params "
             f"({info['param_bytes'] / 2**20:.0f} MiB, {info['dtype']}) | mesh "
             f"{dict(mesh.shape)} | loaded in {info['load_seconds']} s")
    return loaded, mesh
