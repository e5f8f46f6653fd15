"""The CI workflow that pushes to Kaggle (.github/workflows/kaggle.yml)."""

from __future__ import annotations

from pathlib import Path

import yaml

WORKFLOW = Path(__file__).resolve().parents[1] / ".github" / "workflows" / "kaggle.yml"
SECRETS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")


def _load() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def test_runs_tests_then_pushes_on_main() -> None:
    wf = _load()
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True
    assert triggers["push"]["branches"] == ["main"]
    jobs = wf["jobs"]
    assert any("make test" in step.get("run", "") for step in jobs["test"]["steps"])
    assert jobs["kaggle"]["needs"] == "test"
    assert wf["concurrency"]["cancel-in-progress"] is False


def test_push_step_waits_and_evidence_is_uploaded_even_on_failure() -> None:
    steps = _load()["jobs"]["kaggle"]["steps"]
    push = next(s for s in steps if "--wait" in s.get("run", ""))
    assert "scripts/kaggle_push.py" in push["run"] and "--timeout" in push["run"]
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert "evidence/kaggle/" in upload["with"]["path"]


def test_secrets_reach_only_the_push_step_as_environment() -> None:
    text = WORKFLOW.read_text()
    steps = _load()["jobs"]["kaggle"]["steps"]
    with_secrets = [s for s in steps if "secrets." in yaml.safe_dump(s)]
    assert len(with_secrets) == 1 and "--wait" in with_secrets[0]["run"]
    for name in SECRETS:
        assert with_secrets[0]["env"][name] == f"${{{{ secrets.{name} }}}}"
    # Never on a command line, never echoed, no shell tracing.
    assert "secrets." not in with_secrets[0]["run"]
    assert "set -x" not in text and "echo $KAGGLE" not in text
