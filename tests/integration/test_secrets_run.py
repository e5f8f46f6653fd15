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

from kaggle_lib import auth
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


KAGGLE_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # legacy Kaggle key: 32 hex, not token-shaped


@pytest.mark.parametrize(("var", "value"), [("HF_TOKEN", TOKEN), ("KAGGLE_KEY", KAGGLE_KEY)])
def test_a_secret_in_the_run_dir_is_refused_before_anything_is_written(
        tmp_path: Path, var: str, value: str) -> None:
    """Issue 28 point 8: the runner refuses it without echoing it; no directory is made."""
    env = {k: v for k, v in os.environ.items() if k not in auth.SECRET_ENV_VARS}
    env.update({var: value, "KAGGLE_CONFIG_DIR": str(tmp_path / "no-kaggle"),
                "HF_TOKEN_PATH": str(tmp_path / "no-hf-token"),
                "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])})
    result = subprocess.run(
        [sys.executable, "-m", "kaggle_lib", "run", "--config", str(REPO / "configs" / "cpu_tiny.yaml"),
         "--run-dir", str(tmp_path / "x" / f"run-{value}"), "--kernel", "no-such-kernel-for-tests"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "refusing to start: the run directory holds a secret value" in output
    assert value not in output and "Traceback" not in output
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("where", ["run_dir", "run_name", "data path", "config path"])
def test_the_kernel_refuses_a_secret_in_a_path_before_anything_is_written(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """The notebook under plain papermill (Kaggle): start_run is the first writer."""
    from kaggle_lib import pipeline
    from kaggle_lib.evidence import start

    # Registered secrets are process-global: this test's go with it.
    monkeypatch.setattr(auth, "_secret_values", set(auth.registered_secrets()))
    monkeypatch.setenv("KAGGLE_KEY", KAGGLE_KEY)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    config = yaml.safe_load((REPO / "configs" / "cpu_tiny.yaml").read_text())
    if where == "data path":
        config["data"]["train"] = f"jsonl:/data/{KAGGLE_KEY}.jsonl"
    folder = tmp_path / (f"configs-{KAGGLE_KEY}" if where == "config path" else "configs")
    folder.mkdir()
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "runs" / (f"r-{KAGGLE_KEY}" if where == "run_dir" else "r")
    with pytest.raises(start.SecretInPathError) as raised:
        pipeline.start_run(str(folder / "c.yaml"), run_dir=str(run_dir),
                           run_name=f"n-{KAGGLE_KEY}" if where == "run_name" else "")
    named = {"run_dir": "the run directory", "run_name": "the run name",
             "data path": "config key 'data.train'", "config path": "the config path"}[where]
    assert str(raised.value).startswith(f"refusing to start: {named}")
    assert "a secret value or a token-shaped string (not shown)" in str(raised.value)
    assert KAGGLE_KEY not in str(raised.value)
    assert not (tmp_path / "runs").exists()
