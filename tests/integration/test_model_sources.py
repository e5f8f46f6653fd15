"""Model sources resolved offline: HF hub cache (snapshot_download), kagglehub cache (versioned
handle), a local directory, and the gated-hub failure. Weights are the tiny transformers-saved
Gemma 3 fixture (tests/fixtures/reference/gemma3_tiny), so loading is real, just small."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fakes.loopback import loopback_server

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "fixtures" / "reference" / "gemma3_tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

LOAD = """
import json, sys
from kaggle_lib.models.loader import load_model
m = load_model("gemma3-tiny", source=sys.argv[1], repo=sys.argv[2] or None, token=None)
print(json.dumps({k: v for k, v in m.info.items()}))
"""


def run_loader(source: str, repo: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    full.pop("XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", LOAD, source, repo], cwd=REPO, env=full,
                          capture_output=True, text=True, timeout=300)


def hf_cache(root: Path, repo_id: str) -> Path:
    """The on-disk layout huggingface_hub reads with HF_HUB_OFFLINE=1."""
    base = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = base / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for f in TINY.iterdir():
        if f.suffix != ".npz":
            shutil.copy(f, snapshot / f.name)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(COMMIT)
    return snapshot


def test_hf_repo_loads_offline_through_snapshot_download(tmp_path: Path) -> None:
    hf_cache(tmp_path, "test-org/gemma3-tiny")
    result = run_loader("hf", "test-org/gemma3-tiny",
                        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["source"] == "hf" and info["hf_repo"] == "test-org/gemma3-tiny"
    assert info["hf_commit"] == COMMIT
    assert info["path"].endswith(COMMIT)
    assert info["param_count"] > 0


def test_missing_hf_repo_offline_is_a_clear_error(tmp_path: Path) -> None:
    result = run_loader("hf", "test-org/not-there",
                        {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path)})
    assert result.returncode != 0
    assert "test-org/not-there" in result.stderr and "not in the local Hugging Face cache" in result.stderr


class _Refuse(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b'{"error": "Access to model is restricted. You must be authenticated."}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "GatedRepo")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_HEAD = _answer  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


def test_gated_hub_401_is_an_auth_error_naming_the_secret(tmp_path: Path) -> None:
    with loopback_server(_Refuse) as url:
        result = run_loader("hf", "google/gemma-3-1b-it", {
            "HF_ENDPOINT": url,
            "HF_HUB_CACHE": str(tmp_path), "HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DOWNLOAD_TIMEOUT": "5",
        })
    assert result.returncode != 0
    assert "AuthError" in result.stderr and "HF_TOKEN" in result.stderr


def kagglehub_cache(root: Path, handle: str) -> Path:
    """A pre-filled kagglehub cache: models/<owner>/<model>/<framework>/<variation>/<version>/
    plus the `<version>.complete` marker, holding a Kaggle-layout (upstream) Flax checkpoint."""
    from flax import nnx

    from kaggle_lib.models import hf_compat
    from kaggle_lib.models.convert import flat_params
    from kaggle_lib.models.kaggle_format import write_upstream_checkpoint

    owner, model, framework, variation, version = handle.split("/")
    base = root / "models" / owner / model / framework / variation
    target = base / version
    target.mkdir(parents=True)
    tiny = hf_compat.create_model_from_hf_dir(TINY)
    write_upstream_checkpoint(flat_params(tiny), target / variation)
    shutil.copy(TINY / "tokenizer.model", target / "tokenizer.model")
    shutil.copy(TINY / "config.json", target / "config.json")  # tiny: says its architecture
    (base / f"{version}.complete").touch()
    return target, nnx.state(tiny, nnx.Param)


def test_kaggle_versioned_handle_loads_offline(tmp_path: Path) -> None:
    import jax

    from kaggle_lib.models import loader

    handle = "test-owner/gemma-3/flax/gemma3-tiny/2"
    _, reference = kagglehub_cache(tmp_path, handle)
    env = {"KAGGLEHUB_CACHE": str(tmp_path)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        loaded = loader.load_model("gemma3-tiny", source="kaggle", repo=handle)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    from flax import nnx

    assert loaded.info["source"] == "kaggle" and loaded.info["kaggle_handle"] == handle
    got = jax.tree.leaves(nnx.state(loaded.model, nnx.Param))
    want = jax.tree.leaves(reference)
    assert len(got) == len(want)
    assert max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(got, want, strict=True)) == 0.0


def test_unversioned_kaggle_handle_is_refused() -> None:
    from kaggle_lib.models import loader

    with pytest.raises(ValueError, match="owner/model/framework/variation/VERSION"):
        loader.kaggle_download("google/gemma-3/flax/gemma3-1b-it")


def test_local_directory_and_bad_source() -> None:
    from kaggle_lib.models import loader

    loaded = loader.load_model("gemma3-tiny", source="local", path=str(TINY))
    assert loaded.info["source"] == "local" and loaded.tokenizer.eos_id() == 1
    with pytest.raises(ValueError, match="model.source 'pypi' is not available for gemma3-tiny"):
        loader.load_model("gemma3-tiny", source="pypi")
