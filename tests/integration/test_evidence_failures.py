"""Failure paths of the notebook's stages, in process: a missing HF token and a secret planted
in a log before the closing scan. Each must leave a complete, schema-valid record with status
`failed`, the stage, the error and what to do next. (A NaN loss mid-run: tests/unit/test_training_nan.py;
a refused token through papermill: tests/integration/test_evidence_run.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kaggle_lib import auth, evidence, pipeline
from kaggle_lib.evidence import index as run_index
from kaggle_lib.evidence import scan

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "cpu_tiny.yaml"


@pytest.fixture(autouse=True)
def isolated_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    saved = set(auth._secret_values)  # noqa: SLF001
    for var in (*auth.SECRET_ENV_VARS, "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))
    yield
    auth._secret_values.clear()  # noqa: SLF001
    auth._secret_values.update(saved)  # noqa: SLF001


def manifest(run: pipeline.Run) -> dict:
    m = json.loads((run.run_dir / evidence.MANIFEST).read_text())
    assert evidence.manifest_errors(m) == []
    return m


def assert_absent(directory: Path, *values: str) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            for value in values:
                assert value.encode() not in path.read_bytes(), f"{value[:6]}... in {path}"


def test_missing_token_for_a_gated_model_fails_auth(tmp_path: Path) -> None:
    tree = yaml.safe_load(TINY.read_text())
    tree["model"] = {"name": "gemma3-270m", "source": "hf"}
    config = tmp_path / "gated.yaml"
    config.write_text(yaml.safe_dump(tree))
    run = pipeline.start_run(str(config), run_dir=str(tmp_path / "runs" / "no-token"))
    with pytest.raises(auth.AuthError, match="HF_TOKEN"):
        pipeline.authenticate(run)
    m = manifest(run)
    assert m["status"] == "failed" and m["failure"]["stage"] == "auth"
    assert m["failure"]["error_type"] == "AuthError"
    analysis = (run.run_dir / evidence.FAILURE).read_text()
    assert "export HF_TOKEN" in analysis and "Add-ons -> Secrets" in analysis
    with pytest.raises(RuntimeError, match="already failed in stage auth"):
        pipeline.load_model(run)  # later cells refuse to run on a failed record
    assert run_index.read_index(tmp_path / "index.jsonl")[0]["failed_stage"] == "auth"


def test_planted_token_fails_the_run_and_is_redacted(tmp_path: Path) -> None:
    run = pipeline.start_run(str(TINY), run_dir=str(tmp_path / "runs" / "leak"))
    token = "hf_" + "PlantedInALogLine" * 2 + "xyz"
    registered = "kaggle-secret-value-not-token-shaped"
    auth.register_secret(registered)  # e.g. a Kaggle key read from Secrets
    (run.run_dir / "training_log.txt").write_text(f"sft step 1 loss 2.0 debug: token={token}\n")
    (run.run_dir / "samples.md").write_text(f"# samples\nleaked {registered}\n")
    with pytest.raises(scan.SecretLeakError, match="training_log.txt"):
        pipeline.finish(run)
    m = manifest(run)
    assert m["status"] == "failed" and m["failure"]["stage"] == "finish"
    assert m["failure"]["error_type"] == "SecretLeakError"
    assert set(m["secret_scan"]["hits"]) == {"training_log.txt", "samples.md"}
    assert (run.run_dir / "training_log.txt").read_text() == (
        f"sft step 1 loss 2.0 debug: token={auth.REDACTED}\n")
    assert_absent(run.run_dir, token, registered)
    assert "remove that print" in (run.run_dir / evidence.FAILURE).read_text()
    assert run_index.read_index(tmp_path / "index.jsonl")[0]["error_type"] == "SecretLeakError"
