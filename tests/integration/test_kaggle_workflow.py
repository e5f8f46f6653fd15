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

    # Run the recording step's script on push records like the ones kaggle_push.py writes.
    kernel = tmp_path / "evidence" / "kaggle" / "gemma-tunix-reasoning"
    url = "https://www.kaggle.com/code/me/gemma-tunix-reasoning"
    dropped = "KAGGLE_API_TOKEN was refused by Kaggle (expired or revoked)"
    for folder, version, push_id in (("v12", 12, "p12"), ("queued-p13", None, "p13")):
        (kernel / folder).mkdir(parents=True)
        (kernel / folder / "push.json").write_text(json.dumps({
            "kernel_id": "me/gemma-tunix-reasoning", "version": version, "url": url,
            "status": "PUSHED" if version else "QUEUED_UNKNOWN", "bundle": {"push_id": push_id},
            "credentials": "KAGGLE_USERNAME/KAGGLE_KEY", "warnings": [dropped]}))
    script = _step(steps, "Record the queued version")["run"].replace(".venv/bin/python",
                                                                     sys.executable)
    summary = tmp_path / "summary.md"
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={"GITHUB_STEP_SUMMARY": str(summary), "PATH": "/usr/bin:/bin"},
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = summary.read_text()
    assert "me/gemma-tunix-reasoning** version **12**" in text
    assert "`kaggle-fetch` workflow with version `12` and push_id `p12`" in text
    assert "push id `p13`; the server returned no version number: find it on " + url in text
    assert f"**Warning**: {dropped}" in text
    assert "Authenticated with KAGGLE_USERNAME/KAGGLE_KEY" in text


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


def _run_fetch_step(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess, str]:
    """The fetch step's script with a stand-in .venv/bin/python that records its arguments."""
    (job,) = _load(FETCH)["jobs"].values()
    step = _step(job["steps"], "--wait")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True, exist_ok=True)
    python.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/args"\n')
    python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "TIMEOUT_MAX": step["env"]["TIMEOUT_MAX"], "VERSION": "7",
           "PUSH_ID": "p7", **env}
    proc = subprocess.run(["bash", "-c", step["run"]], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    args = python.with_name("args")
    return proc, args.read_text() if args.is_file() else ""


def test_fetch_timeout_is_capped_below_the_job_limit(tmp_path: Path) -> None:
    """A wait longer than the job would have the job killed before push.json says TIMEOUT."""
    wf = _load(FETCH)
    (job,) = wf["jobs"].values()
    cap = int(_step(job["steps"], "--wait")["env"]["TIMEOUT_MAX"])
    assert cap + 30 * 60 <= job["timeout-minutes"] * 60  # room for set-up, downloads, upload
    description = _triggers(wf)["workflow_dispatch"]["inputs"]["timeout"]["description"]
    assert f"at most {cap}" in description and "340-minute job limit" in description

    proc, args = _run_fetch_step(tmp_path, TIMEOUT="99999")
    assert proc.returncode == 0, proc.stderr
    assert f"--timeout {cap}" in args and "--version 7 --push-id p7 --wait" in args
    assert f"::warning::input timeout=99999 s is cut to {cap} s" in proc.stdout
    proc, args = _run_fetch_step(tmp_path, TIMEOUT="600")
    assert "--timeout 600" in args and "::warning::" not in proc.stdout
    (tmp_path / ".venv" / "bin" / "args").unlink()
    proc, args = _run_fetch_step(tmp_path, TIMEOUT="9h")
    assert proc.returncode == 2 and args == ""
    assert "::error::input timeout='9h': must be whole seconds" in proc.stdout


def test_fetch_needs_the_push_id_and_passes_it() -> None:
    wf = _load(FETCH)
    push_id = _triggers(wf)["workflow_dispatch"]["inputs"]["push_id"]
    assert push_id["required"] is True
    (job,) = wf["jobs"].values()
    step = _step(job["steps"], "--wait")
    assert step["env"]["PUSH_ID"] == "${{ inputs.push_id }}"  # never pasted into the script
    assert '--push-id "$PUSH_ID"' in step["run"]


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
