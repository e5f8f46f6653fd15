"""Kaggle Secrets failures as Kaggle's image raises them (tests/fakes/fake_kaggle_image/kaggle_secrets.py
against the fake secrets endpoint): a missing HF secret must not break `model.source: kaggle`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.fake_kaggle_server import FakeKaggleServer, Scenario

REPO = Path(__file__).resolve().parents[2]
IMAGE = Path(__file__).resolve().parents[1] / "fakes" / "fake_kaggle_image"
TOKEN = "hf_FakeTokenForTests0123456789abcdefXYZ"

# Runs in a child so that `import kaggle_secrets` finds the stand-in, as on Kaggle.
PROBE = """
import json, sys
from kaggle_lib import auth
try:
    import kaggle_secrets
    assert kaggle_secrets.__file__.startswith(sys.argv[1]), kaggle_secrets.__file__
except ImportError:
    pass
out = {}
for required in (False, True):
    try:
        token = auth.resolve_hf_token(on_kaggle=True, required=required)
        out[str(required)] = {"source": token.source, "has_value": bool(token)}
    except auth.AuthError as exc:
        out[str(required)] = {"error": str(exc)}
    except Exception as exc:
        out[str(required)] = {"escaped": type(exc).__name__}
print(json.dumps(out))
"""


def _probe(env_extra: dict[str, str], image: bool = True) -> dict:
    import json

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "HF_", "HUGGING"))}
    env["PYTHONPATH"] = os.pathsep.join([*([str(IMAGE)] if image else []), str(REPO),
                                         env.get("PYTHONPATH", "")])
    env["HF_TOKEN_PATH"] = str(REPO / "no-such-hf-token")  # a developer's own login stays out
    env.update(env_extra)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(IMAGE)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert TOKEN not in proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture()
def secrets_env():
    def start(secrets: dict[str, str], jwe: str | None = "fake-jwe-token"):
        srv = FakeKaggleServer(Scenario(secrets=secrets), max_lifetime_s=60).start()
        env = {"KAGGLE_URL_BASE": srv.url, "KAGGLE_KERNEL_RUN_TYPE": "Batch"}
        if jwe is not None:
            env["KAGGLE_USER_SECRETS_TOKEN"] = jwe
        servers.append(srv)
        return env

    servers: list[FakeKaggleServer] = []
    yield start
    for srv in servers:
        srv.stop()


def test_attached_secret_is_read_through_kaggle_secrets(secrets_env) -> None:
    out = _probe(secrets_env({"HF_TOKEN": TOKEN}))
    assert out["False"] == {"source": "kaggle-secrets:HF_TOKEN", "has_value": True}


def test_unattached_secret_means_no_token_unless_one_is_required(secrets_env) -> None:
    """kaggle_secrets raises BackendError for an unattached label; model.source kaggle needs
    no token, so the run must go on; a gated hub model gets an error naming the secret."""
    out = _probe(secrets_env({}))
    assert out["False"] == {"source": "none", "has_value": False}
    assert "BackendError" in out["True"]["error"] and "'HF_TOKEN'" in out["True"]["error"]
    assert "Add-ons -> Secrets" in out["True"]["error"]


def test_refused_session_and_unreachable_service_are_auth_errors(secrets_env) -> None:
    refused = _probe(secrets_env({"HF_TOKEN": TOKEN}, jwe="wrong-jwe"))  # fake answers 401
    assert refused["False"] == {"source": "none", "has_value": False}
    assert "ConnectionError" in refused["True"]["error"]
    no_jwt = _probe(secrets_env({"HF_TOKEN": TOKEN}, jwe=None))
    assert "CredentialError" in no_jwt["True"]["error"]
    unreachable = _probe({"KAGGLE_URL_BASE": "http://127.0.0.1:9",
                          "KAGGLE_USER_SECRETS_TOKEN": "fake-jwe-token"})
    assert unreachable["False"] == {"source": "none", "has_value": False}
    assert "could not be reached" in unreachable["True"]["error"]


def test_outside_kaggles_image_the_secret_is_unavailable_with_a_clear_error(tmp_path: Path) -> None:
    out = _probe({"KAGGLE_KERNEL_RUN_TYPE": "Batch", "HF_TOKEN_PATH": str(tmp_path / "none")},
                 image=False)
    assert out["False"] == {"source": "none", "has_value": False}
    assert "not available in this session" in out["True"]["error"]
    assert "'HF_TOKEN'" in out["True"]["error"] and "Add-ons -> Secrets" in out["True"]["error"]


def test_huggingface_hub_lookup_comes_before_kaggle_secrets(secrets_env, tmp_path: Path) -> None:
    """HF_TOKEN in the environment, then the `hf auth login` token file, then the secret."""
    env = secrets_env({"HF_TOKEN": TOKEN})
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN[::-1] + "\n")
    from_file = _probe({**env, "HF_TOKEN_PATH": str(token_file)})
    assert from_file["False"] == {"source": "huggingface_hub", "has_value": True}
    from_env = _probe({**env, "HF_TOKEN_PATH": str(token_file), "HF_TOKEN": TOKEN[::-1]})
    assert from_env["True"] == {"source": "env:HF_TOKEN", "has_value": True}
    absent = _probe({**env, "HF_TOKEN_PATH": str(tmp_path / "absent")})
    assert absent["False"] == {"source": "kaggle-secrets:HF_TOKEN", "has_value": True}
