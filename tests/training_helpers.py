"""Shared pieces of the training tests, and a subprocess entry point for the resume test.

Tiny random Gemma models built once and copied onto any mesh (so every run starts from the
same weights), the tiny SentencePiece tokenizer, and seeded SFTBatches over the shipped data.

Run as a script (``python tests/training_helpers.py --ckpt DIR --steps N --every K
--metrics FILE``) it trains the tiny Gemma 3 with `run_sft` and appends every step's metrics
to FILE as JSON lines: the resume test kills it with SIGKILL and starts it again.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


@functools.lru_cache(maxsize=1)
def tiny_tokenizer() -> Any:
    from kaggle_lib.models import loader
    from kaggle_lib.models.tokenizer import load_tokenizer

    return load_tokenizer(loader.TINY_TOKENIZER_DIR / "tokenizer.model",
                          expected={"pad": 0, "eos": 1, "bos": 2})


def tiny_config(family: str = "gemma3", **changes: Any) -> Any:
    import dataclasses

    import jax.numpy as jnp

    from kaggle_lib.models import registry

    config = registry.tiny_config(family, tiny_tokenizer().vocab_size)
    if hasattr(config, "param_dtype"):
        changes.setdefault("param_dtype", jnp.float32)
    return dataclasses.replace(config, **changes) if changes else config


def build_model(config: Any, family: str = "gemma3", seed: int = 0) -> Any:
    """A random model on the default device (copy it onto a mesh with `on_mesh`)."""
    from flax import nnx

    from kaggle_lib.models import registry

    return registry.tunix_model_class(family)(config, rngs=nnx.Rngs(params=seed))


def random_gemma3(vocab: int = 256) -> Any:
    """A tiny float32 Gemma 3 with every weight random (Tunix's init leaves the MLPs at zero,
    so their gradients would not count): for tests comparing losses and gradients."""
    import jax
    from flax import nnx

    config = tiny_config_for_vocab(vocab)
    model = build_model(config, seed=1)
    for index, (_, variable) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.Param))):
        key = jax.random.key(index)
        variable.set_value(jax.random.normal(key, variable.get_value().shape) * 0.2)
    return model


def tiny_config_for_vocab(vocab: int) -> Any:
    import dataclasses

    import jax.numpy as jnp

    from kaggle_lib.models import registry

    return dataclasses.replace(registry.tiny_config("gemma3", vocab), param_dtype=jnp.float32)


def small_sft_inputs(vocab: int = 256) -> dict[str, Any]:
    """Model inputs of 2 rows x 24 random tokens, the second padded from 18, loss from 7."""
    import jax.numpy as jnp
    import numpy as np

    from kaggle_lib.training.sft import model_inputs

    rng = np.random.default_rng(0)
    tokens = rng.integers(4, vocab, size=(2, 24)).astype(np.int32)
    tokens[:, 0] = 2
    tokens[1, 18:] = 0
    segment = (tokens != 0).astype(np.int32)
    loss_mask = segment.copy()
    loss_mask[:, :7] = 0
    return model_inputs({"input_tokens": jnp.asarray(tokens), "input_mask": jnp.asarray(loss_mask),
                         "segment_mask": jnp.asarray(segment)})


def on_mesh(base: Any, mesh: Any) -> Any:
    """An independent copy of `base` placed per its sharding annotations on `mesh`."""
    from flax import nnx

    from kaggle_lib.models.loader import shard_model

    return shard_model(nnx.clone(base), mesh)


def single_device_mesh() -> Any:
    import jax

    from kaggle_lib.mesh import make_mesh

    return make_mesh(1, 1, devices=[jax.devices()[0]])


def tiny_batches(batch_size: int = 8, max_len: int = 128, n_items: int = 64, seed: int = 0,
                 spec: str = "builtin:train", num_epochs: int | None = None,
                 packing: bool = False) -> Any:
    from kaggle_lib.data.batching import SFTBatches, tokenize_items
    from kaggle_lib.data.sources import load_items

    items = load_items(spec, limit=n_items)
    data = tokenize_items(tiny_tokenizer(), items, max_len, instruct=False)
    return SFTBatches(data, batch_size, seed=seed, length_buckets=(max_len,),
                      pad_id=0, num_epochs=num_epochs, packing=packing)


def train_tiny(
    mesh: Any, base: Any, *, steps: int, checkpoint_dir: Path | None = None,
    checkpoint_every: int = 1000, on_step: Any = None, lora: bool = True,
    learning_rate: float = 3e-3, chunk: int = 128, validate_every: int = 50,
    batches: Any = None, **kwargs: Any,
) -> Any:
    """LoRA SFT of a copy of `base` on `mesh` through the real `run_sft`."""
    from kaggle_lib.config import LoraSection, SftSection
    from kaggle_lib.training.common import CheckpointSettings
    from kaggle_lib.training.sft import apply_lora, run_sft

    model = on_mesh(base, mesh)
    if lora:
        model = apply_lora(model, rank=4, alpha=8.0, target_modules=LoraSection().target_modules,
                           seed=0, mesh=mesh)
    sft = SftSection(max_steps=steps, learning_rate=learning_rate, warmup_steps=1,
                     loss_chunk_size=chunk, validate_every=validate_every)
    return model, run_sft(
        model, tiny_batches() if batches is None else batches, sft, mesh=mesh,
        checkpointing=CheckpointSettings(checkpoint_dir, every=checkpoint_every),
        on_step=on_step or (lambda record: None), **kwargs,
    )


def checkpoint_committed(root: Path, step: int) -> bool:
    """Orbax saves into `<step>.orbax-checkpoint-tmp-*`, writes `commit_success.txt` there and
    then renames the directory to `<step>`: the marker under the final name means complete."""
    return (root / str(step) / "commit_success.txt").is_file()


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--pause-at", type=int, default=0,
                        help="once checkpoint PAUSE_AT is committed, block until killed")
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from kaggle_lib.mesh import make_mesh

    mesh = make_mesh()
    base = build_model(tiny_config())

    def on_step(record: dict[str, Any]) -> None:
        with open(args.metrics, "a") as fh:
            fh.write(json.dumps({**record, "pid": os.getpid()}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        if args.pause_at and record["step"] >= args.pause_at:
            # Tunix reports step s while step s+1 runs, after save(s) was issued. Wait for that
            # save to commit, say so, and block: the SIGKILL lands at a known point, with step
            # s+1 done in memory but not saved (as when a session dies mid-run).
            while not checkpoint_committed(Path(args.ckpt), args.pause_at):
                time.sleep(0.02)
            Path(args.ckpt, "paused").write_text(str(os.getpid()))
            time.sleep(3600)

    _, result = train_tiny(mesh, base, steps=args.steps, checkpoint_dir=Path(args.ckpt),
                           checkpoint_every=args.every, on_step=on_step)
    print(json.dumps({"done": result.steps_done, "start": result.start_step}), flush=True)


if __name__ == "__main__":
    _main()
