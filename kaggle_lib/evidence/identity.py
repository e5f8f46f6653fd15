"""Who ran, what code, on what: the identity a run records (git commit, package versions, host
and load, Kaggle's notebook and image identity, env_info.txt) and the run id."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import platform as host_platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kaggle_lib import runtime
from kaggle_lib.hashing import sha256_hex

# Versions recorded in every manifest: what decides numerics and behaviour.
TRACKED_PACKAGES = (
    "google-tunix", "jax", "jaxlib", "libtpu", "flax", "optax", "qwix", "orbax-checkpoint",
    "numpy", "sentencepiece", "safetensors", "gguf", "transformers", "torch", "papermill",
    "huggingface-hub", "kagglehub", "kaggle", "kaggle-lib",
)


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages, rounded; None where the OS does not have them."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def host_info() -> dict[str, Any]:
    """The manifest's `host` when a run starts."""
    return {"system": host_platform.system(), "machine": host_platform.machine(),
            "node": host_platform.node(), "cpu_count": os.cpu_count(),
            "load_average_start": load_average()}


def make_run_id(config_hash: str, when: dt.datetime | None = None) -> str:
    """UTC time + short config hash: sortable, and says which config ran."""
    when = when or dt.datetime.now(dt.UTC)
    return f"{when:%Y%m%dT%H%M%SZ}-{config_hash[:8]}"


def hash_text(text: str | bytes) -> str:
    """sha256 of a config's text or bytes (the run id's config hash)."""
    return sha256_hex(text)


def git_info(repo: Path | None = None, paths: Sequence[str] = ()) -> dict[str, Any]:
    """The commit the code came from and whether it had uncommitted changes. Without `paths`
    (the manifest's `git`): tracked files of the checkout holding kaggle_lib; outside one, the
    sha a Kaggle bundle baked in. With `paths` (the bundle's folders): changes there, untracked
    files too (they are bundled), in `dirty_files`; outside a checkout, GITHUB_SHA or "unknown"."""
    package_dir = Path(__file__).resolve().parent.parent
    repo = repo or package_dir.parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True,
                                 text=True, timeout=30, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    sha = git("rev-parse", "HEAD")
    if sha and paths:
        status = git("status", "--porcelain", "--", *paths) or ""
        dirty_files = [line[3:] for line in status.splitlines() if line.strip()]
        return {"sha": sha, "dirty": bool(dirty_files), "dirty_files": dirty_files[:50]}
    status = git("status", "--porcelain", "--untracked-files=no") if sha else None
    if status is not None:
        return {"sha": sha, "dirty": bool(status), "source": "git"}
    if paths:
        return {"sha": os.environ.get("GITHUB_SHA", "unknown"), "dirty": None, "dirty_files": []}
    baked = package_dir / "_build_info.json"
    if baked.is_file():
        info = json.loads(baked.read_text())
        return {"sha": info.get("git_sha"), "dirty": info.get("git_dirty"), "source": "bundle"}
    return {"sha": None, "dirty": None, "source": "unknown"}


def package_versions() -> dict[str, str | None]:
    """Versions of TRACKED_PACKAGES (None: not installed)."""
    versions: dict[str, str | None] = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def kaggle_identity(on_kaggle: bool = False) -> dict[str, Any]:
    """Kaggle's notebook identity when it is in the environment (URL, version, run type), and
    on Kaggle the image's identity: Kaggle's images write /etc/git_commit (docker-python
    commit) and /etc/build_date at build time."""
    keys = {"KAGGLE_KERNEL_RUN_TYPE": "run_type", "KAGGLE_KERNEL_INTEGRATIONS": "integrations",
            "KAGGLE_URL_BASE": "url_base"}
    out = {v: os.environ[k] for k, v in keys.items() if os.environ.get(k)}
    slug = os.environ.get("KAGGLE_LIB_KERNEL_SLUG")  # baked in by the Kaggle bundle
    if slug:
        out["notebook_url"] = f"https://www.kaggle.com/code/{slug}"
    if os.environ.get("KAGGLE_LIB_KERNEL_VERSION"):
        out["notebook_version"] = os.environ["KAGGLE_LIB_KERNEL_VERSION"]
    if on_kaggle:
        image = {}
        # docker-python's Dockerfiles: `RUN echo "$GIT_COMMIT" > /etc/git_commit && echo
        # "$BUILD_DATE" > /etc/build_date`; the TPU one also sets ENV GIT_COMMIT / BUILD_DATE.
        for name, env_name in (("git_commit", "GIT_COMMIT"), ("build_date", "BUILD_DATE")):
            try:
                value = (runtime.kaggle_root() / "etc" / name).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                value = os.environ.get(env_name, "").strip()
            if value and value != "unknown":
                image[name] = value[:200]
        if image:
            out["kaggle_image"] = image
    return out


# Environment variables worth recording in env_info.txt (values pass the redaction filter).
_ENV_INFO_VARS = ("JAX_PLATFORMS", "XLA_FLAGS", "LIBTPU_INIT_ARGS", "TPU_NAME",
                  "TPU_ACCELERATOR_TYPE", "TPU_WORKER_ID", "CUDA_VISIBLE_DEVICES",
                  "KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_CONTAINER_NAME", "PYTHONHASHSEED")


def env_info() -> str:
    """Python, host, every installed package, jax devices, accelerator details
    (nvidia-smi / tpu-info / TPU device attributes when present)."""
    try:
        memory = f"{os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.1f} GiB"
    except (ValueError, OSError, AttributeError):
        memory = "unknown"
    lines = [f"python: {sys.version}", f"executable: {sys.executable}",
             f"platform: {host_platform.platform()}", f"cpu count: {os.cpu_count()}",
             f"host memory: {memory}", "", "environment:"]
    lines += [f"  {k}={os.environ[k]}" for k in _ENV_INFO_VARS if k in os.environ]
    lines += ["", "tracked packages:"]
    lines += [f"  {k}=={v}" for k, v in package_versions().items() if v]
    try:
        import jax

        lines += ["", f"jax {jax.__version__}: {jax.device_count()} devices, "
                  f"{jax.process_count()} process(es), default backend {jax.default_backend()}"]
        for d in jax.devices():
            extra = [f"{attr}={getattr(d, attr)}" for attr in ("coords", "core_on_chip",
                                                                "slice_index") if hasattr(d, attr)]
            try:
                stats = d.memory_stats() or {}
                if stats.get("bytes_limit"):
                    extra.append(f"memory={stats['bytes_limit'] / 2**30:.1f} GiB")
            except Exception:  # noqa: BLE001 - CPU devices have no memory stats
                pass
            lines.append(f"  {d.id}: {d.platform} {d.device_kind} {' '.join(extra)}".rstrip())
    except Exception as exc:  # noqa: BLE001 - the record must still be written
        lines.append(f"jax unavailable: {exc}")
    for cmd in ("nvidia-smi", "tpu-info"):
        if shutil.which(cmd) is None:
            continue
        try:
            out = subprocess.run([cmd], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if out.returncode == 0 and out.stdout.strip():
            lines += ["", f"$ {cmd}", out.stdout.rstrip()]
    lines += ["", "all installed distributions:"]
    dists = {(d.metadata["Name"] or "?").lower(): d.version
             for d in importlib.metadata.distributions()}
    lines += [f"  {name}=={version}" for name, version in sorted(dists.items())]
    return "\n".join(lines) + "\n"
