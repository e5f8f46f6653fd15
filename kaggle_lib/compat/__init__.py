"""Every override, monkeypatch or private read of the libraries kaggle_lib stands on, one module
per concern; each names the version it was written against, what it changes, why, and what
would let it go. Nothing outside this package reads another library's private names.

At import, the installed versions are checked against `tested_versions.json` (from
requirements.lock, which the Kaggle bundle lacks: `make tested-versions`): a mismatch logs one
warning naming each library, both versions and the overrides at risk; KAGGLE_LIB_STRICT_VERSIONS=1
or `strict_versions: true` raises `VersionMismatchError` instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kaggle_lib.errors import KaggleLibError
from kaggle_lib.logs import get_logger

log = get_logger(__name__)

STRICT_ENV = "KAGGLE_LIB_STRICT_VERSIONS"
TESTED_VERSIONS = Path(__file__).with_name("tested_versions.json")
LOCK = Path(__file__).resolve().parents[2] / "requirements.lock"  # in the repository only

# Each library compat touches -> what a different version of it may break.
AT_RISK: dict[str, tuple[str, ...]] = {
    "google-tunix": ("compat.sampler (Sampler._sample, _sample_step, _compiled_*_fn, "
                     "_transformer_state)", "compat.trainer (PeftTrainer._train_step, "
                     "_post_process_train_step, _may_update_pbar)", "compat.remat (Gemma 3 "
                     "remat_config, DecoderLayer class swap)", "compat.safetensors (private "
                     "params_safetensors helpers)"),
    "qwix": ("compat.lora_backward (qwix._src.providers.lora._compute_lora_delta)",),
    "jax": ("compat.jax_backends (jax._src.xla_bridge._backends)", "compat.jax_distributed "
            "(jax._src distributed client)", "compat.sampler (jit's _cache_size)",
            "compat.remat (late_checkpoint's jaxpr replay)"),
    "jaxlib": ("compat.jax_backends", "compat.jax_distributed",
               "compat.lora_backward (the XLA:CPU layout it works around)"),
    "flax": ("compat.remat (class swap past nnx __setattr__)", "compat.sampler (nnx.merge of "
             "the Sampler's graphdef)"),
    "orbax-checkpoint": ("compat.trainer (the non-finite guard's view of Tunix's async saves)",),
    "optax": ("compat.trainer (the progress bar's learning rate)",),
    "kaggle": ("compat.kaggle_client (KaggleApi.build_kaggle_client)",),
    "kagglesdk": ("compat.kaggle_client (KaggleHttpClient._session)",),
}


class VersionMismatchError(KaggleLibError, RuntimeError):
    """An installed library differs from the version kaggle_lib.compat was tested against."""

    hint = ("Install the tested versions (requirements.lock; on Kaggle the install cell pins "
            "them), or run without KAGGLE_LIB_STRICT_VERSIONS=1 / strict_versions: true to "
            "continue with a warning.")


@dataclasses.dataclass(frozen=True)
class Mismatch:
    library: str
    installed: str
    tested: str
    at_risk: tuple[str, ...]

    def __str__(self) -> str:
        return (f"{self.library} {self.installed} installed, tested {self.tested}; at risk: "
                f"{'; '.join(self.at_risk)}")


def tested_versions_from_lock(lock_text: str) -> dict[str, Any]:
    """The table: {library: {"version": locked version, "at_risk": [...]}} from a pip freeze."""
    pins: dict[str, str] = {}
    for line in lock_text.splitlines():
        name, sep, version = line.split("#", 1)[0].strip().partition("==")
        if sep:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    missing = sorted(set(AT_RISK) - set(pins))
    if missing:
        raise ValueError(f"the lock pins none of {missing}: kaggle_lib.compat needs them tested")
    return {lib: {"version": pins[lib], "at_risk": list(risk)} for lib, risk in
            sorted(AT_RISK.items())}


def write_tested_versions(lock: Path = LOCK, out: Path = TESTED_VERSIONS) -> Path:
    """Regenerate the committed table from the lock (`make tested-versions`; `make lock` too)."""
    out.write_text(json.dumps(tested_versions_from_lock(lock.read_text()), indent=2) + "\n")
    return out


def tested_versions() -> dict[str, Any]:
    return json.loads(TESTED_VERSIONS.read_text())


_warned: set[str] = set()


def check_versions(strict: bool | None = None,
                   installed: Mapping[str, str] | None = None) -> list[Mismatch]:
    """The installed libraries (default: importlib.metadata's view) whose version differs from
    the tested one, after one warning; `strict` or STRICT_ENV=1 raises instead."""
    table = tested_versions()
    if installed is None:
        installed = {}
        for lib in table:
            with contextlib.suppress(importlib.metadata.PackageNotFoundError):
                installed[lib] = importlib.metadata.version(lib)
    found = [Mismatch(lib, installed[lib], entry["version"], tuple(entry["at_risk"]))
             for lib, entry in table.items()
             if lib in installed and installed[lib] != entry["version"]]
    if not found:
        return []
    message = ("installed library versions differ from those kaggle_lib.compat was tested with "
               "(kaggle_lib/compat/tested_versions.json, from requirements.lock); its overrides "
               "of their internals may break:\n" + "\n".join(f"  {m}" for m in found))
    if strict or os.environ.get(STRICT_ENV) == "1":
        raise VersionMismatchError(message)
    if message not in _warned:  # once per process, however often it is asked
        _warned.add(message)
        log.warning(message)
    return found


check_versions()
