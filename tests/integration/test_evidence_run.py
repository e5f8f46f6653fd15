"""Whole runs through papermill (`python -m kaggle_lib run`): the record a real cpu_tiny run
leaves, with fake secrets in its environment, and a gated model whose hub refuses the token.

One successful run (~60-90 s on 2 cores, tests/conftest.py's `tiny_notebook_run`) is shared with
test_notebook_run and test_eval_cli; the refused-token run stops in load_model (~20 s).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import nbformat
import pytest
import yaml

from kaggle_lib import evidence
from kaggle_lib.evidence import close
from kaggle_lib.evidence import index as run_index
from tests.fakes.loopback import LoopbackServer

REPO = Path(__file__).resolve().parents[2]
RECORD = ["executed.ipynb", "config.yaml", "run_manifest.json", "env_info.txt", "training_log.txt",
          "metrics.jsonl", "loss.png", "eval_summary.json", "predictions.jsonl", "samples.md",
          "checkpoints.json", "README.md"]


def run_cli(config: Path, run_dir: Path, env_extra: dict[str, str],
            timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_extra}
    env.pop("XLA_FLAGS", None)  # one CPU device, as `make run` has
    env.pop("HF_HUB_OFFLINE", None)
    return subprocess.run(
        [sys.executable, "-m", "kaggle_lib", "run", "--config", str(config), "--run-dir", str(run_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def assert_absent(directory: Path, *values: str) -> None:
    """No file under `directory` holds any of `values`, in any bytes (weights included)."""
    for path in directory.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value in values:
                assert value.encode() not in data, f"{value[:6]}... found in {path}"


@pytest.fixture(scope="module")
def tiny(tiny_notebook_run: tuple[Path, subprocess.CompletedProcess[str]]
         ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """tests/conftest.py's shared cpu_tiny run (with validation every 2 steps and the fake
    `run_secrets` in its environment); these tests only read it."""
    return tiny_notebook_run


def test_every_record_file_exists_and_the_manifest_validates(tiny) -> None:
    run_dir, result = tiny
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in RECORD:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    assert not (run_dir / evidence.FAILURE).exists()
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    assert evidence.manifest_errors(m) == []
    assert m["status"] == "succeeded" and m["run_id"] == "tiny-run"
    assert m["started_at"] <= m["ended_at"] and m["duration_s"] > 0
    assert m["stages"] and all(s["status"] == "succeeded" and s["seconds"] >= 0
                               for s in m["stages"].values())
    assert {"load_model", "train", "finish"} <= set(m["stages"])
    assert m["metrics"]["sft_steps"] == 4 and "trained_format_exact" in m["metrics"]
    assert m["environment"]["on_kaggle"] is False
    # what else the machine was doing: load averages when the run started and closed
    for key in ("load_average_start", "load_average_end"):
        assert len(m["host"][key]) == 3 and all(x >= 0 for x in m["host"][key]), m["host"]
    assert m["host"]["cpu_count"] >= 1 and m["host"]["system"]
    assert m["secret_scan"]["hits"] == [] and m["secret_scan"]["files_scanned"] >= 10
    assert m["auth"]["hf_token_source"] == "env:HF_TOKEN"  # found, used for nothing, shown nowhere


def test_fake_secrets_appear_nowhere(tiny, run_secrets: dict[str, str]) -> None:
    run_dir, result = tiny
    hf_token = run_secrets["HF_TOKEN"]
    assert_absent(run_dir, hf_token, run_secrets["KAGGLE_KEY"])
    assert hf_token not in result.stdout + result.stderr
    nb = nbformat.read(run_dir / "executed.ipynb", as_version=4)
    assert hf_token not in json.dumps(nb)


def test_checkpoints_json_lists_steps_with_checksums_that_verify(tiny) -> None:
    run_dir, _ = tiny
    entries = json.loads((run_dir / "checkpoints.json").read_text())
    steps = [e["step"] for e in entries if e["kind"] == "checkpoint"]
    # checkpoint_every: 2, max_steps: 4 (Orbax also keeps the first step it saw)
    assert steps == sorted(steps) and steps[-1] == 4 and 2 in steps
    for entry in entries:
        sha, files, size = close.tree_digest(run_dir / entry["path"])
        assert (sha, files, size) == (entry["sha256"], entry["files"], entry["bytes"])


def test_readme_and_index_describe_the_run(tiny) -> None:
    run_dir, _ = tiny
    text = (run_dir / "README.md").read_text()
    assert "trained **gemma3-tiny**" in text and "**succeeded**" in text
    assert "1 x cpu (cpu)" in text and "LoRA supervised fine-tuning for 4 steps" in text
    assert "load average (1/5/15 min)" in text and "at the end" in text
    entries = run_index.read_index(run_dir.parent.parent / "index.jsonl")
    assert [e["run_id"] for e in entries] == ["tiny-run"]
    assert entries[0]["status"] == "succeeded" and entries[0]["path"] == "runs/tiny-run"
    env_info = (run_dir / "env_info.txt").read_text()
    assert "jax 0.10.2: 1 devices" in env_info and "google-tunix==0.1.7" in env_info


def test_training_log_and_metrics_agree(tiny) -> None:
    run_dir, _ = tiny
    log_lines = (run_dir / "training_log.txt").read_text().splitlines()
    lines = [line for line in log_lines if "validation" not in line]
    steps = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft = [r for r in steps if r.get("stage") == "sft"]
    assert len(lines) == len(sft) == 4
    assert all(f"loss {r['loss']:.4f}" in line for r, line in zip(sft, lines, strict=True))
    # The validation loss: before step 1 and every 2 steps, in the log, metrics, manifest, README.
    validation = [r for r in steps if r.get("stage") == "sft_validation"]
    assert [r["step"] for r in validation] == [0, 2, 4]
    assert [f"validation loss {r['val_loss']:.4f}" in line for r, line in zip(
        validation, [x for x in log_lines if "validation" in x], strict=True)] == [True] * 3
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    assert m["data"]["validation"] == "rg:wide_sft@1" and m["data"]["validation_items"] == 16
    assert m["data"]["validation_dropped_as_training"] == 0  # training is builtin:train
    assert m["training"]["sft"]["validation_loss"] == [
        [r["step"], round(r["val_loss"], 5)] for r in validation]
    assert f"{validation[-1]['val_loss']:.4g} at step 4" in (run_dir / "README.md").read_text()


# ---------------------------------------------------------------------------- refused token


class FakeHub:
    """A Hugging Face endpoint on 127.0.0.1 that refuses every token (401); stops by itself."""

    def __init__(self, max_lifetime_s: float = 300.0) -> None:
        self.requests: list[tuple[str, str | None]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server API
                hub.requests.append((self.path, self.headers.get("Authorization")))
                body = b'{"error": "Invalid credentials in Authorization header"}'
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET

        self._loopback = LoopbackServer(Handler, max_lifetime_s)

    @property
    def url(self) -> str:
        return self._loopback.url

    def __enter__(self) -> FakeHub:
        self._loopback.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loopback.stop()


def test_refused_hf_token_fails_in_load_model_and_says_where_to_attach_it(tmp_path: Path) -> None:
    tree = yaml.safe_load((REPO / "configs" / "cpu_tiny.yaml").read_text())
    tree["model"] = {"name": "gemma3-270m", "source": "hf", "dtype": "float32"}  # gated on HF
    config = tmp_path / "gated.yaml"
    config.write_text(yaml.safe_dump(tree))
    run_dir = tmp_path / "runs" / "gated"
    bad_token = "hf_" + "RefusedToken" * 3
    with FakeHub() as hub:
        result = run_cli(config, run_dir, {"HF_TOKEN": bad_token, "HF_ENDPOINT": hub.url,
                                           "HF_HOME": str(tmp_path / "hf-home"),
                                           "HF_HUB_CACHE": str(tmp_path / "hf-cache")},
                         timeout=300)
    assert result.returncode == 1, result.stdout[-3000:]
    assert hub.requests and hub.requests[0][0].startswith("/api/models/google/gemma-3-270m")
    assert hub.requests[0][1] == f"Bearer {bad_token}"  # the token was sent to the hub only
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    assert evidence.manifest_errors(m) == []
    assert m["status"] == "failed"
    assert m["failure"]["stage"] == "load_model" and m["failure"]["error_type"] == "AuthError"
    assert m["stages"]["auth"]["status"] == "succeeded"
    assert m["stages"]["load_model"]["status"] == "failed"
    analysis = (run_dir / evidence.FAILURE).read_text()
    assert "stage `load_model`" in analysis and "401" in analysis
    assert "`HF_TOKEN`" in analysis and "Add-ons -> Secrets" in analysis
    assert "export HF_TOKEN=" in analysis
    for name in ("executed.ipynb", "config.yaml", "env_info.txt", "checkpoints.json", "README.md"):
        assert (run_dir / name).is_file(), name
    assert "**failed** in stage `load_model`" in (run_dir / "README.md").read_text()
    assert_absent(run_dir, bad_token)
    assert bad_token not in result.stdout + result.stderr
    entry = run_index.read_index(tmp_path / "index.jsonl")[0]
    assert entry["status"] == "failed" and entry["failed_stage"] == "load_model"
