"""Kaggle-like local run of the pushed bundle on cpu_tiny (issue item 5).

The notebook that would be pushed is built exactly as for Kaggle (install cell included: it
finds every pin installed and skips pip) and executed with papermill in a fresh process that
looks like a Kaggle batch session: KAGGLE_KERNEL_RUN_TYPE=Batch, a temporary stand-in for
/kaggle/working and /kaggle/input (KAGGLE_LIB_KAGGLE_ROOT), and Kaggle's user-secrets endpoint
served on 127.0.0.1 (KAGGLE_URL_BASE). The bundle cell itself fails the run unless kaggle_lib
is imported from the unpacked bundle rather than from this checkout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.fake_kaggle_server import FakeKaggleServer, Scenario

REPO = Path(__file__).resolve().parents[2]
# Kaggle's image provides `kaggle_secrets`; its stand-in talks to the fake secrets endpoint.
IMAGE = Path(__file__).resolve().parents[1] / "fakes" / "fake_kaggle_image"
FAKE_HF_TOKEN = "hf_FAKEkaggleSecretForTests0123456789"


@pytest.mark.slow
def test_bundle_runs_like_on_kaggle_on_cpu_tiny(tmp_path: Path) -> None:
    bundle_dir = tmp_path / "bundle"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "HF_", "HUGGING", "HTTP_PROXY", "http_proxy"))}
    env["HOME"] = str(tmp_path / "home")
    build = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "kaggle_push.py"), "--path", str(REPO),
         "--dry-run", "--config", "configs/cpu_tiny.yaml", "--run-name", "kaggle-like",
         "--out", str(bundle_dir)],
        env=env, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    (notebook,) = bundle_dir.glob("*.ipynb")

    root = tmp_path / "root"
    working = root / "kaggle" / "working"
    (root / "kaggle" / "input").mkdir(parents=True)
    working.mkdir(parents=True)
    (tmp_path / "tmp").mkdir()
    out_nb = tmp_path / "executed.ipynb"
    scenario = Scenario(secrets={"HF_TOKEN": FAKE_HF_TOKEN})
    with FakeKaggleServer(scenario, max_lifetime_s=600) as server:
        env.update(
            KAGGLE_KERNEL_RUN_TYPE="Batch",
            KAGGLE_LIB_KAGGLE_ROOT=str(root),
            KAGGLE_URL_BASE=server.url,
            KAGGLE_USER_SECRETS_TOKEN=scenario.secrets_token,
            PYTHONPATH=os.pathsep.join([str(IMAGE), env.get("PYTHONPATH", "")]),
            TMPDIR=str(tmp_path / "tmp"),  # where the bundle unpacks
            JAX_PLATFORMS="cpu",
            NO_PROXY="127.0.0.1,localhost",
            PYTHONUNBUFFERED="1",
        )
        env.pop("XLA_FLAGS", None)  # a Kaggle session starts without the test's 8 fake devices
        run = subprocess.run(
            [sys.executable, "-m", "papermill", str(notebook), str(out_nb), "-k", "python3",
             "--cwd", str(working)],
            env=env, capture_output=True, text=True, timeout=840)
        secret_calls = [c for c in server.calls
                        if c["path"] == "/requests/GetUserSecretByLabelRequest"]

    assert run.returncode == 0, run.stderr[-6000:]
    executed = out_nb.read_text()
    assert str(tmp_path / "tmp" / "kaggle_lib_bundle") in executed  # imported from the bundle
    assert "all pinned packages already installed" in executed

    bundle_info = json.loads((bundle_dir / "bundle.json").read_text())
    recorded = json.loads((working / "evidence" / "kaggle_bundle.json").read_text())
    assert recorded["zip_sha256"] == bundle_info["zip_sha256"]

    runs = [p for p in (working / "evidence" / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    manifest = json.loads((runs[0] / "run_manifest.json").read_text())
    # Outside a checkout, kaggle_lib.evidence reads the sha baked into the bundle.
    assert manifest["git"]["sha"] == bundle_info["git"]["sha"]
    assert manifest["git"]["source"] == "bundle"

    # The secret came from the fake Kaggle secrets endpoint and was written nowhere.
    assert [c["body"]["Label"] for c in secret_calls] == ["HF_TOKEN"]
    assert FAKE_HF_TOKEN not in executed
    for path in working.rglob("*"):
        if path.is_file():
            assert FAKE_HF_TOKEN not in path.read_text(errors="replace"), path
