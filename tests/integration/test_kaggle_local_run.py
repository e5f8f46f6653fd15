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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.fake_kaggle_server import FakeKaggleServer, Scenario

REPO = Path(__file__).resolve().parents[2]
# Kaggle's image provides `kaggle_secrets`; its stand-in talks to the fake secrets endpoint.
IMAGE = Path(__file__).resolve().parents[1] / "fakes" / "fake_kaggle_image"
FAKE_HF_TOKEN = "hf_FAKEkaggleSecretForTests0123456789"


def _build_like_push(tmp_path: Path, env: dict[str, str]) -> Path:
    """The notebook `push` would send for cpu_tiny (a dry run builds exactly that)."""
    bundle_dir = tmp_path / "bundle"
    build = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "kaggle_push.py"), "--path", str(REPO),
         "--dry-run", "--config", "configs/cpu_tiny.yaml", "--run-name", "kaggle-like",
         "--out", str(bundle_dir)],
        env=env, capture_output=True, text=True, timeout=120)
    assert build.returncode == 0, build.stdout + build.stderr
    (notebook,) = bundle_dir.glob("*.ipynb")
    return notebook


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """No Kaggle or HF settings; and pip, should the install cell call it, reaches no index, so
    it can never change the test environment."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "HF_", "HUGGING", "HTTP_PROXY", "http_proxy", "PIP_"))}
    env.update(HOME=str(tmp_path / "home"), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    return env


def test_a_stack_other_than_the_locks_stops_the_install_cell(tmp_path: Path) -> None:
    """The image has flax 9.9.9 (a dist-info first on the path) and pip reaches no index: the
    pushed notebook stops in its install cell, naming flax and both versions."""
    env = _clean_env(tmp_path)
    notebook = _build_like_push(tmp_path, env)
    image = tmp_path / "image" / "flax-9.9.9.dist-info"
    image.mkdir(parents=True)
    (image / "METADATA").write_text("Metadata-Version: 2.1\nName: flax\nVersion: 9.9.9\n")
    env.update(PYTHONPATH=str(image.parent), KAGGLE_KERNEL_RUN_TYPE="Batch", JAX_PLATFORMS="cpu")
    out_nb = tmp_path / "executed.ipynb"
    run = subprocess.run(
        [sys.executable, "-m", "papermill", str(notebook), str(out_nb), "-k", "python3",
         "--cwd", str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "flax: installed 9.9.9, requirements.lock has 0.12.8" in out_nb.read_text()
    cells = {c["metadata"]["tags"][0]: c for c in json.loads(out_nb.read_text())["cells"]
             if c["metadata"].get("tags")}
    assert cells["kaggle-bundle"]["execution_count"] is None  # stopped before the bundle cell


@pytest.mark.slow
def test_bundle_runs_like_on_kaggle_on_cpu_tiny(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    notebook = _build_like_push(tmp_path, env)
    bundle_dir = notebook.parent

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


def test_a_run_continues_from_a_fetched_output_directory(tmp_path: Path) -> None:
    """Locally, what `push --continue-from` bakes: version 7 (cpu_tiny, 2 steps) leaves its
    outputs; fetched, find_continuation picks its checkpoints and a new run trained from them
    does steps 3-4 only and names the run it continued in its manifest."""
    from kaggle_lib import jsonl, pipeline
    from kaggle_lib.kaggle.bundle import find_continuation

    config = str(REPO / "configs" / "cpu_tiny.yaml")

    def train(run_dir: Path, **overrides: object) -> dict:
        run = pipeline.start_run(config, overrides={"train.checkpoint_every": 2, **overrides},
                                 run_dir=str(run_dir))
        pipeline.authenticate(run)
        pipeline.load_model(run)
        pipeline.train(run)
        pipeline.finish(run)
        return json.loads((run_dir / "run_manifest.json").read_text())

    working = tmp_path / "v7" / "working"  # /kaggle/working of version 7
    first = train(working / "evidence" / "runs" / "r1", **{"train.sft.max_steps": 2})
    assert first["status"] == "succeeded"
    (working / "evidence" / "kaggle_bundle.json").write_text("{}")
    fetched = tmp_path / "evidence" / "gemma-tunix-reasoning" / "v7"
    shutil.copytree(working, fetched)  # what `push --version 7 --wait` downloads

    cont = find_continuation("tester/gemma-tunix-reasoning/v7", tmp_path / "evidence")
    assert (cont.run_id, cont.step) == ("r1", 2)
    second_dir = tmp_path / "v8" / "evidence" / "runs" / "r2"
    second = train(second_dir, **{"train.sft.max_steps": 4,
                                  "train.resume_from": str(fetched / cont.checkpoints)})
    assert second["status"] == "succeeded"
    assert second["continued_from"] == {"checkpoints": str(fetched / cont.checkpoints),
                                        "step": 2, "run_id": first["run_id"]}
    steps = [r["step"] for r in jsonl.read(second_dir / "metrics.jsonl") if r.get("stage") == "sft"]
    assert steps == [3, 4]
