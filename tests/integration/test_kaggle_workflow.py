"""The CI workflows that push to Kaggle and fetch the outputs (.github/workflows/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

WORKFLOWS = Path(__file__).resolve().parents[2] / ".github" / "workflows"
PUSH = WORKFLOWS / "kaggle.yml"
FETCH = WORKFLOWS / "kaggle-fetch.yml"
SECRETS = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN")


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _triggers(wf: dict) -> dict:
    return wf.get("on", wf.get(True))  # YAML 1.1 reads the key `on` as True


def _step(steps: list[dict], needle: str) -> dict:
    return next(s for s in steps if needle in s.get("run", "") or needle in s.get("name", ""))


def test_push_runs_by_hand_or_for_a_tag_never_on_ordinary_pushes() -> None:
    wf = _load(PUSH)
    triggers = _triggers(wf)
    assert set(triggers) == {"push", "workflow_dispatch"}
    assert triggers["push"] == {"tags": ["v*"]}  # no branches: a TPU run costs quota
    jobs = wf["jobs"]
    assert any("make test" in step.get("run", "") for step in jobs["test"]["steps"])
    assert jobs["kaggle"]["needs"] == "test"
    assert wf["concurrency"]["cancel-in-progress"] is False


def test_push_does_not_wait_and_records_the_queued_version(tmp_path: Path) -> None:
    steps = _load(PUSH)["jobs"]["kaggle"]["steps"]
    push = _step(steps, "Push (queues")
    assert "scripts/kaggle_push.py" in push["run"] and "--wait" not in push["run"]
    assert _load(PUSH)["jobs"]["kaggle"]["timeout-minutes"] <= 60
    upload = next(s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "evidence/kaggle/" in upload["with"]["path"]

    # Run the recording step's script on a push record like the one kaggle_push.py writes.
    record = tmp_path / "evidence" / "kaggle" / "gemma-tunix-reasoning" / "v12" / "push.json"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"kernel_id": "me/gemma-tunix-reasoning", "version": 12,
                                  "url": "https://www.kaggle.com/code/me/gemma-tunix-reasoning",
                                  "status": "PUSHED"}))
    script = _step(steps, "Record the queued version")["run"].replace(".venv/bin/python",
                                                                     sys.executable)
    summary = tmp_path / "summary.md"
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"GITHUB_STEP_SUMMARY": str(summary), "PATH": "/usr/bin:/bin"},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = summary.read_text()
    assert "me/gemma-tunix-reasoning** version **12**" in text
    assert "`kaggle-fetch` workflow with version `12`" in text


def test_fetch_is_manual_with_a_version_and_keeps_the_evidence() -> None:
    wf = _load(FETCH)
    triggers = _triggers(wf)
    assert set(triggers) == {"workflow_dispatch"}
    assert triggers["workflow_dispatch"]["inputs"]["version"]["required"] is True
    (job,) = wf["jobs"].values()
    fetch = _step(job["steps"], "--wait")
    assert '--version "$VERSION"' in fetch["run"] and '--timeout "$TIMEOUT"' in fetch["run"]
    assert fetch["env"]["VERSION"] == "${{ inputs.version }}"  # never pasted into the script
    assert job["timeout-minutes"] < 360  # inside GitHub's 6 h job limit
    upload = next(s for s in job["steps"]
                  if str(s.get("uses", "")).startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "evidence/kaggle/" in upload["with"]["path"]


def test_secrets_reach_only_the_kaggle_step_as_environment() -> None:
    for path, needle in ((PUSH, "Push (queues"), (FETCH, "--wait")):
        text = path.read_text()
        steps = [s for job in _load(path)["jobs"].values() for s in job["steps"]]
        with_secrets = [s for s in steps if "secrets." in yaml.safe_dump(s)]
        assert with_secrets == [_step(steps, needle)], path
        for name in SECRETS:
            assert with_secrets[0]["env"][name] == f"${{{{ secrets.{name} }}}}"
        # Never on a command line, never echoed, no shell tracing.
        assert "secrets." not in with_secrets[0]["run"]
        assert "set -x" not in text and "echo $KAGGLE" not in text
