"""HF token from a fake Kaggle Secrets endpoint (127.0.0.1) in a Kaggle-like batch run.

With the secret attached the gated (hub-sourced) model loads and the token value appears in
no file of the run; without it the run fails in `auth` and failure_analysis.md names the secret.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_model_sources import hf_cache

from tests.fakes.loopback import loopback_server

REPO = Path(__file__).resolve().parents[2]
# Kaggle's image provides `kaggle_secrets`; its stand-in talks to the endpoint below.
IMAGE = Path(__file__).resolve().parents[1] / "fakes" / "fake_kaggle_image"
TOKEN = "hf_FakeTokenForTests0123456789abcdefXYZ"
JWE = "fake-jwe-for-tests"


def secrets_handler(secret: str | None) -> type[http.server.BaseHTTPRequestHandler]:
    """Kaggle's secrets endpoint holding `secret` as HF_TOKEN (None: not attached)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            ok = (self.path == "/requests/GetUserSecretByLabelRequest" and body.get("JWE") == JWE
                  and body.get("Label") == "HF_TOKEN" and secret is not None)
            payload = ({"wasSuccessful": True, "result": {"secret": secret}} if ok else
                       {"wasSuccessful": False, "errors": ["No user secrets exist for label HF_TOKEN"]})
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def kaggle_like_run(tmp_path: Path, secret: str | None) -> tuple[subprocess.CompletedProcess[str], Path]:
    cache = tmp_path / "hf"
    hf_cache(cache, "test-org/gemma3-tiny")
    config = yaml.safe_load((REPO / "configs" / "cpu_tiny.yaml").read_text())
    config["model"] = {"name": "gemma3-tiny", "source": "hf", "repo": "test-org/gemma3-tiny",
                       "gated": True, "dtype": "float32"}
    config["train"]["sft"]["max_steps"] = 2
    config["data"]["eval_limit"] = 2
    # The fixture tokenizer (vocab 320) spells words out: longer rows, so examples are not dropped.
    config["data"]["max_seq_len"] = 512
    config["data"]["train_limit"] = 64
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    root = tmp_path / "root"
    (root / "kaggle" / "working").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "HF_TOKEN")}
    env.update({
        "KAGGLE_KERNEL_RUN_TYPE": "Batch", "KAGGLE_LIB_KAGGLE_ROOT": str(root),
        "KAGGLE_USER_SECRETS_TOKEN": JWE, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join([str(IMAGE), str(REPO), env.get("PYTHONPATH", "")]),
    })
    run_dir = root / "kaggle" / "working" / "run"
    with loopback_server(secrets_handler(secret), max_lifetime_s=660) as url:
        env["KAGGLE_URL_BASE"] = url
        result = subprocess.run(
            [sys.executable, "-m", "kaggle_lib", "run", "--config", str(tmp_path / "c.yaml"),
             "--run-dir", str(run_dir)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
    return result, run_dir


@pytest.mark.slow
def test_secret_supplies_token_and_never_lands_in_the_record(tmp_path: Path) -> None:
    result, run_dir = kaggle_like_run(tmp_path, TOKEN)
    assert result.returncode == 0, result.stdout[-3000:]
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    assert manifest["auth"] == {"hf_token_source": "kaggle-secrets:HF_TOKEN", "needed": True}
    assert manifest["environment"]["on_kaggle"] and manifest["environment"]["run_type"] == "Batch"
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.name == "executed.ipynb" for p in files)
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in result.stdout + result.stderr


@pytest.mark.slow
def test_missing_secret_fails_in_auth_naming_it(tmp_path: Path) -> None:
    result, run_dir = kaggle_like_run(tmp_path, None)
    assert result.returncode == 1
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failure"]["stage"] == "auth"
    analysis = (run_dir / "failure_analysis.md").read_text()
    assert "HF_TOKEN" in analysis and "Add-ons -> Secrets" in analysis
    assert "load_model" not in manifest["stages"]
