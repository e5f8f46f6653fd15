"""Push / wait / fetch through the real kaggle client against a fake Kaggle on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kaggle_lib import auth
from kaggle_lib.kaggle import push as kp
from tests.fakes.fake_kaggle_server import (
    FakeKaggleServer,
    Scenario,
    make_standin_repo,
    standin_metadata,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kaggle_push.py"
OUTPUTS = {
    "evidence/runs/r1/manifest.json": b'{"status": "complete"}',
    "evidence/runs/r1/metrics.jsonl": b'{"step": 1, "loss": 2.5}\n',
}
BUNDLE_INFO = "evidence/kaggle_bundle.json"  # the fake's run writes it from the pushed notebook
SERVED = len(OUTPUTS) + 1
DEST = ("evidence", "gemma-tunix-reasoning", "v3")


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return make_standin_repo(tmp_path / "repo", REPO)


def _home(tmp_path: Path, sc: Scenario, with_credentials: bool = True) -> Path:
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True, exist_ok=True)
    if with_credentials:
        cred = home / ".kaggle" / "kaggle.json"
        cred.write_text(json.dumps({"username": sc.username, "key": sc.key}))
        cred.chmod(0o600)
    return home


def _run(args: list[str], env_extra: dict[str, str], timeout: float = 60):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KAGGLE_", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy",
                                "https_proxy"))}
    env.update(env_extra)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _push(tmp_path: Path, repo: Path, sc: Scenario, *extra: str, credentials: bool = True,
          timeout_s: str = "10", env: dict[str, str] | None = None):
    home = _home(tmp_path, sc, credentials)
    with FakeKaggleServer(sc, max_lifetime_s=60) as srv:
        proc = _run(["--path", str(repo), "--repo-root", str(repo),
                     "--config", "configs/tpu_standin.yaml", "--out", str(tmp_path / "bundle"),
                     "--evidence-dir", str(tmp_path / "evidence"), "--timeout", timeout_s,
                     "--poll-interval", "0.02", "--max-poll-interval", "0.05", *extra],
                    {**srv.client_env(), "HOME": str(home), **(env or {})})
    return proc, srv


def _record(tmp_path: Path, *parts: str) -> dict:
    return json.loads(tmp_path.joinpath(*(parts or DEST), "push.json").read_text())


def test_push_wait_fetch_complete(tmp_path: Path, repo: Path) -> None:
    sc = Scenario(outputs=OUTPUTS, statuses=["QUEUED", "RUNNING", "RUNNING", "COMPLETE"])
    proc, srv = _push(tmp_path, repo, sc, "--wait")
    assert proc.returncode == 0, proc.stderr
    for status in ("QUEUED", "RUNNING", "COMPLETE"):
        assert f"v3: {status}" in proc.stdout

    (saved,) = srv.pushed
    assert saved["slug"] == "tester/gemma-tunix-reasoning"
    assert saved["machineShape"] == "TpuV5E8" and saved["enableTpu"] is True
    assert "dockerImage" not in saved
    assert saved["dockerImagePinningType"] == "original"
    assert saved["modelDataSources"] == ["google/gemma-3/flax/gemma3-1b-it/1"]
    pushed_nb = json.loads(saved["text"])
    assert "kaggle" not in pushed_nb["metadata"]
    assert any("kaggle-bundle" in c["metadata"].get("tags", []) for c in pushed_nb["cells"])

    status_calls = srv.calls_to("GetKernelSessionStatus")
    assert len(status_calls) == 4
    # the new version only, as `v3` (the fake, like the real API, answers 404 to a bare `3`)
    assert {c["body"]["versionLabel"] for c in status_calls} == {"v3"}
    assert {c["body"]["versionLabel"] for c in srv.calls_to("ListKernelSessionOutput")} == {"v3"}
    assert all(c["auth"] for c in srv.calls if c["path"].startswith("/api/"))
    downloads = [c for c in srv.calls if c["method"] == "GET"]
    assert len(downloads) == SERVED and not any(c["auth"] for c in downloads)  # no creds to URLs

    dest = tmp_path.joinpath(*DEST)
    for name, content in OUTPUTS.items():
        assert (dest / name).read_bytes() == content
    assert "hello from the fake kernel" in (dest / "gemma-tunix-reasoning.log").read_text()
    record = json.loads((dest / "push.json").read_text())
    assert record["status"] == "COMPLETE" and record["version"] == 3
    assert record["version_label"] == "v3"
    assert record["bundle"]["zip_sha256"] and sorted(record["files"]) == sorted(
        [*OUTPUTS, BUNDLE_INFO, "gemma-tunix-reasoning.log"])
    # The outputs are this push's: the run wrote back the push id the bundle carried.
    push_id = record["bundle"]["push_id"]
    assert json.loads((dest / BUNDLE_INFO).read_text())["push_id"] == push_id
    assert record["outputs_push_id"] == push_id and f"push id {push_id} confirmed" in proc.stdout
    assert record["credentials"].startswith("kaggle.json (")
    assert not dest.with_name("v3.unverified").exists()
    everything = proc.stdout + proc.stderr + "".join(
        p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()
        and "home" not in p.parts)
    assert sc.key not in everything  # the Kaggle key is never printed or written


def test_push_without_wait_reports_version(tmp_path: Path, repo: Path) -> None:
    proc, srv = _push(tmp_path, repo, Scenario())
    assert proc.returncode == 0, proc.stderr
    assert "pushed tester/gemma-tunix-reasoning version 3" in proc.stdout
    assert not srv.calls_to("GetKernelSessionStatus")


def test_server_side_push_error_exits_1(tmp_path: Path, repo: Path) -> None:
    proc, srv = _push(tmp_path, repo, Scenario(push_error="Notebook not found or access denied"),
                      "--wait")
    assert proc.returncode == 1
    assert ("Kaggle rejected the push of tester/gemma-tunix-reasoning: Notebook not found or "
            "access denied") in proc.stderr
    assert not srv.calls_to("GetKernelSessionStatus")


def test_http_500_on_push_exits_1(tmp_path: Path, repo: Path) -> None:
    proc, _ = _push(tmp_path, repo, Scenario(push_http_status=500))
    assert proc.returncode == 1
    assert "push of tester/gemma-tunix-reasoning failed: HTTP 500" in proc.stderr


def test_unattached_model_source_still_reports_and_records_the_queued_version(
        tmp_path: Path, repo: Path) -> None:
    """The server queues the version anyway: say which one, where, and keep push.json."""
    sc = Scenario(invalid_model_sources=["google/gemma-3/flax/gemma3-1b-it/1"])
    proc, _ = _push(tmp_path, repo, sc)
    assert proc.returncode == 0, proc.stderr
    assert ("pushed tester/gemma-tunix-reasoning version 3: "
            "https://www.kaggle.com/code/tester/gemma-tunix-reasoning") in proc.stdout
    assert "version 3 is queued without" in proc.stdout and "accept the licence" in proc.stdout
    record = json.loads((tmp_path / "evidence" / "gemma-tunix-reasoning" / "v3" /
                         "push.json").read_text())
    assert record["version"] == 3 and record["status"] == "PUSHED"
    assert record["invalid_sources"] == {"model_sources": ["google/gemma-3/flax/gemma3-1b-it/1"]}


def test_bare_number_label_is_tried_when_v_form_is_not_found(tmp_path: Path, repo: Path) -> None:
    sc = Scenario(label_form="bare", outputs={"a.txt": b"A"}, statuses=["RUNNING", "COMPLETE"])
    proc, srv = _push(tmp_path, repo, sc, "--wait")
    assert proc.returncode == 0, proc.stderr
    labels = [c["body"]["versionLabel"] for c in srv.calls_to("GetKernelSessionStatus")]
    assert labels[0] == "v3" and set(labels[1:]) == {"3"}  # the form that answered is kept
    assert [c["body"]["versionLabel"] for c in srv.calls_to("ListKernelSessionOutput")] == ["3"]
    dest = tmp_path / "evidence" / "gemma-tunix-reasoning" / "v3"
    assert (dest / "a.txt").read_bytes() == b"A"
    assert json.loads((dest / "push.json").read_text())["version_label"] == "3"


def test_not_found_only_after_both_label_forms_404_until_the_timeout(
        tmp_path: Path, repo: Path) -> None:
    proc, srv = _push(tmp_path, repo, Scenario(label_form="neither"), "--wait", timeout_s="1")
    assert proc.returncode == 1
    assert ("not found: the status API answered HTTP 404 for version labels 'v3' and '3' "
            "until --timeout") in proc.stderr
    labels = [c["body"]["versionLabel"] for c in srv.calls_to("GetKernelSessionStatus")]
    assert len(labels) > 6 and labels[:4] == ["v3", "3", "v3", "3"]  # kept trying, alternating


def test_status_call_that_never_answers_ends_at_the_timeout(tmp_path: Path, repo: Path) -> None:
    start = time.monotonic()
    proc, srv = _push(tmp_path, repo, Scenario(status_hangs=True), "--wait", timeout_s="2")
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    assert "after 2 s (--timeout)" in proc.stderr
    assert srv.calls_to("GetKernelSessionStatus")
    assert elapsed < 25  # bundle build + client start + 2 s, not a hang


@pytest.mark.parametrize(("failures", "listing_calls", "downloads"), [
    ({"ListKernelSessionOutput": [429, "reset"]}, 2 + 2, SERVED),
    ({"download": [503, "reset"]}, 2, 2 + SERVED),
], ids=["listing", "download"])
def test_listing_and_download_retry_transient_failures(
        tmp_path: Path, repo: Path, failures: dict, listing_calls: int, downloads: int) -> None:
    sc = Scenario(outputs=OUTPUTS, statuses=["COMPLETE"], retry_after="1",
                  failures={k: list(v) for k, v in failures.items()})
    proc, srv = _push(tmp_path, repo, sc, "--wait")
    assert proc.returncode == 0, proc.stderr
    dest = tmp_path / "evidence" / "gemma-tunix-reasoning" / "v3"
    for name, content in OUTPUTS.items():
        assert (dest / name).read_bytes() == content
    listing = srv.calls_to("ListKernelSessionOutput")
    gets = [c for c in srv.calls if c["method"] == "GET"]
    assert (len(listing), len(gets)) == (listing_calls, downloads)  # two failures, then pages
    # Retry-After: 1 after the first failure was honoured (urllib3's first backoff is 0 s).
    first, retry = (listing if "ListKernelSessionOutput" in failures else gets)[:2]
    assert retry["time"] - first["time"] >= 0.9


def test_persistent_listing_failure_is_bounded(tmp_path: Path, repo: Path) -> None:
    sc = Scenario(outputs=OUTPUTS, statuses=["COMPLETE"], retry_after="1",
                  failures={"ListKernelSessionOutput": [503] * 50})
    proc, srv = _push(tmp_path, repo, sc, "--wait")
    assert proc.returncode == 1
    assert "listing outputs of tester/gemma-tunix-reasoning v3 failed: HTTP 503" in proc.stderr
    assert len(srv.calls_to("ListKernelSessionOutput")) == kp.OUTPUT_RETRIES + 1


def _inflate(repo: Path, size: int = 600_000) -> None:
    """Incompressible bytes inside kaggle_lib/: the inlined zip grows by ~4/3 of them."""
    (repo / "kaggle_lib" / "data" / "files" / "noise.bin").write_bytes(os.urandom(size))


def test_notebook_over_the_source_limit_is_refused_before_sending(
        tmp_path: Path, repo: Path) -> None:
    _inflate(repo)
    proc, srv = _push(tmp_path, repo, Scenario(), "--wait")
    assert proc.returncode == 2, proc.stderr
    assert "the notebook text sent to Kaggle would be" in proc.stderr
    assert "allowed: at most 950,000" in proc.stderr and "noise.bin" in proc.stderr
    assert srv.pushed == [] and srv.calls == []


def test_dry_run_prints_the_size_as_sent_and_fails_above_the_limit(
        tmp_path: Path, repo: Path) -> None:
    args = ["--path", str(repo), "--repo-root", str(repo), "--dry-run", "--config",
            "configs/tpu_standin.yaml", "--out", str(tmp_path / "b")]
    proc = _run(args, {"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    sent = json.loads((tmp_path / "b" / "bundle.json").read_text())["sent_bytes"]
    assert f"notebook as sent: {sent:,} bytes (limit 950,000" in proc.stdout
    assert sent < 800_000  # the real package leaves room below the limit
    _inflate(repo)
    proc = _run(args, {"HOME": str(tmp_path)})
    assert proc.returncode == 2 and "would be" in proc.stderr
    # The documented entry point, `python -m kaggle_lib push --dry-run`, says the same.
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "kaggle_lib", "push", *args], env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    inflated = json.loads((tmp_path / "b" / "bundle.json").read_text())["sent_bytes"]
    assert inflated > 950_000
    assert f"the notebook text sent to Kaggle would be {inflated:,} bytes" in proc.stderr
    assert "allowed: at most 950,000" in proc.stderr


def test_kaggle_doc_quotes_no_measured_size_and_names_the_dry_run() -> None:
    """Bundle sizes change with every commit: docs/KAGGLE.md points at the dry run, whose line
    the test above checks, and quotes no figure but the limit. (The jax stack's section quotes
    a dated download size measured by scripts/check_kaggle_stack.py: that is the stack's, not
    the bundle's.)"""
    text = (REPO / "docs" / "KAGGLE.md").read_text()
    stack = text.index("## The jax stack on Kaggle")
    text = text[:stack] + text[text.index("\n## ", stack + 1):]
    figures = set(re.findall(r"(\d[\d,.]*)\**\s*(?:bytes|KiB|kB|KB)\b", text))
    assert figures <= {f"{kp.MAX_SENT_BYTES:,}"}, figures
    assert "python -m kaggle_lib push --path . --dry-run" in text
    assert f"`notebook as sent: N bytes (limit {kp.MAX_SENT_BYTES:,}; ...)`" in text


def test_fake_refuses_a_source_of_1_mb_like_kaggle(tmp_path: Path, repo: Path) -> None:
    """The fake's limit, through the real client: what an unchecked push would get."""
    import requests

    from kaggle_lib.kaggle.bundle import BundleOptions, build_bundle

    bundle = build_bundle(BundleOptions(path=repo, repo_root=repo, out_dir=tmp_path / "b",
                                        config="configs/tpu_standin.yaml"))
    nb = json.loads(bundle.notebook.read_text())
    nb["cells"][0]["source"] = "x" * 1_000_000
    bundle.notebook.write_text(json.dumps(nb))
    sc = Scenario()
    home = _home(tmp_path, sc)
    code = ("import sys, requests\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "from kaggle_lib.kaggle import push\n"
            "api = push.connect().api\n"
            f"try:\n    api.kernels_push({str(bundle.dir)!r})\n"
            "except requests.HTTPError as e:\n"
            "    print(e.response.status_code, e.response.text); sys.exit(3)\n")
    with FakeKaggleServer(sc, max_lifetime_s=60) as srv:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
        env.update(srv.client_env(), HOME=str(home))
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "400" in proc.stdout and "less than 1 megabytes" in proc.stdout
    assert requests  # the client raises requests' HTTPError for a refused push


def test_error_status_exits_1_with_failure_message(tmp_path: Path, repo: Path) -> None:
    sc = Scenario(statuses=["RUNNING", ("ERROR", "CellExecutionError: out of HBM")],
                  outputs={"evidence/runs/r1/failure.json": b"{}"})
    proc, _ = _push(tmp_path, repo, sc, "--wait")
    assert proc.returncode == 1
    assert "v3 failed (ERROR): CellExecutionError: out of HBM" in proc.stderr
    dest = tmp_path / "evidence" / "gemma-tunix-reasoning" / "v3"
    assert (dest / "gemma-tunix-reasoning.log").is_file()  # the log comes back for debugging
    assert json.loads((dest / "push.json").read_text())["failure_message"] == \
        "CellExecutionError: out of HBM"


def test_cancelled_run_exits_1(tmp_path: Path, repo: Path) -> None:
    proc, _ = _push(tmp_path, repo, Scenario(statuses=["CANCEL_ACKNOWLEDGED"]), "--wait")
    assert proc.returncode == 1 and "was cancelled (CANCEL_ACKNOWLEDGED)" in proc.stderr


def test_run_that_never_finishes_times_out(tmp_path: Path, repo: Path) -> None:
    start = time.monotonic()
    proc, srv = _push(tmp_path, repo, Scenario(statuses=["RUNNING"]), "--wait", timeout_s="0.6")
    assert proc.returncode == 1
    assert "v3 is still RUNNING after 0.6 s (--timeout)" in proc.stderr
    assert len(srv.calls_to("GetKernelSessionStatus")) >= 3  # it did poll, with backoff
    assert time.monotonic() - start < 20
    record = tmp_path / "evidence" / "gemma-tunix-reasoning" / "v3" / "push.json"
    assert json.loads(record.read_text())["status"] == "TIMEOUT"


def test_missing_credentials_exit_1_before_any_request(tmp_path: Path, repo: Path) -> None:
    proc, srv = _push(tmp_path, repo, Scenario(), "--wait", credentials=False)
    assert proc.returncode == 1
    assert "no Kaggle credentials found" in proc.stderr and "KAGGLE_API_TOKEN" in proc.stderr
    assert srv.calls == []


def test_credentials_only_the_kaggle_client_reads_are_used(tmp_path: Path, repo: Path) -> None:
    """kaggle.json under $XDG_CONFIG_HOME/kaggle (read by the kaggle client when ~/.kaggle is
    absent, not by kagglehub): the push goes ahead with the client's own credentials."""
    sc = Scenario(statuses=["COMPLETE"])
    home = tmp_path / "home"
    xdg = tmp_path / "xdg"
    (xdg / "kaggle").mkdir(parents=True)
    home.mkdir()
    cred = xdg / "kaggle" / "kaggle.json"
    cred.write_text(json.dumps({"username": sc.username, "key": sc.key}))
    cred.chmod(0o600)
    with FakeKaggleServer(sc, max_lifetime_s=60) as srv:
        proc = _run(["--path", str(repo), "--repo-root", str(repo),
                     "--config", "configs/tpu_standin.yaml", "--out", str(tmp_path / "bundle"),
                     "--evidence-dir", str(tmp_path / "evidence"), "--timeout", "10",
                     "--poll-interval", "0.02", "--max-poll-interval", "0.05", "--wait"],
                    {**srv.client_env(), "HOME": str(home), "XDG_CONFIG_HOME": str(xdg)})
    assert proc.returncode == 0, proc.stderr
    assert f"authenticated with credentials from kaggle.json ({cred})" in proc.stdout
    assert srv.pushed and all(c["auth"] for c in srv.calls if c["path"].startswith("/api/"))


def test_wrong_credentials_are_refused(tmp_path: Path, repo: Path) -> None:
    sc = Scenario()
    home = _home(tmp_path, sc)
    (home / ".kaggle" / "kaggle.json").write_text(json.dumps({"username": "tester", "key": "bad"}))
    with FakeKaggleServer(sc, max_lifetime_s=60) as srv:
        proc = _run(["--path", str(repo), "--repo-root", str(repo), "--config",
                     "configs/tpu_standin.yaml", "--out", str(tmp_path / "b")],
                    {**srv.client_env(), "HOME": str(home)})
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr and "bad" not in proc.stdout


def test_version_flag_follows_an_existing_version(tmp_path: Path, repo: Path) -> None:
    sc = Scenario(version=7, statuses=["COMPLETE"],
                  outputs={"a.txt": b"A", BUNDLE_INFO: b'{"push_id": "p7"}'})
    proc, srv = _push(tmp_path, repo, sc, "--version", "7", "--push-id", "p7", "--wait")
    assert proc.returncode == 0, proc.stderr
    assert srv.pushed == []
    assert (tmp_path / "evidence" / "gemma-tunix-reasoning" / "v7" / "a.txt").read_bytes() == b"A"


@pytest.mark.parametrize(("served", "seen"), [
    ({BUNDLE_INFO: b'{"push_id": "an-older-push"}'}, "has push_id 'an-older-push'"),
    ({}, "is missing"),
], ids=["another-push", "missing"])
def test_outputs_not_carrying_the_push_id_are_kept_aside(
        tmp_path: Path, repo: Path, served: dict, seen: str) -> None:
    """The server answered with outputs that are not this push's (it ignored the version
    label, or the run never wrote its bundle info): exit 1 naming both values; the files stay
    out of v3/."""
    sc = Scenario(outputs={**OUTPUTS, **served}, statuses=["COMPLETE"], runs_pushed_bundle=False)
    proc, _ = _push(tmp_path, repo, sc, "--wait")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    record = _record(tmp_path)
    push_id = record["bundle"]["push_id"]
    assert f"{BUNDLE_INFO} in the outputs {seen}" in proc.stderr
    assert f"has push_id {push_id!r}" in proc.stderr
    dest = tmp_path.joinpath(*DEST)
    assert sorted(p.name for p in dest.iterdir()) == ["push.json"]
    aside = dest.with_name("v3.unverified")
    for name, content in OUTPUTS.items():
        assert (aside / name).read_bytes() == content
    assert record["outputs_unverified"] == str(aside) and seen in record["verification_error"]


def test_fetch_by_version_checks_the_push_record(tmp_path: Path, repo: Path) -> None:
    """Push now, fetch later (the CI workflows): the fetch compares with push.json's push id;
    --push-id names it where there is no record, and a wrong one is refused."""
    sc = Scenario(outputs=dict(OUTPUTS), statuses=["COMPLETE"])
    proc, _ = _push(tmp_path, repo, sc)
    assert proc.returncode == 0, proc.stderr
    push_id = _record(tmp_path)["bundle"]["push_id"]
    ran = Scenario(outputs=sc.outputs, statuses=["COMPLETE"])  # what that version wrote
    proc, srv = _push(tmp_path, repo, ran, "--version", "3", "--wait")
    assert proc.returncode == 0, proc.stderr
    assert srv.pushed == [] and f"push id {push_id} confirmed" in proc.stdout
    record = _record(tmp_path)
    assert record["bundle"]["push_id"] == push_id and record["status"] == "COMPLETE"

    proc, _ = _push(tmp_path, repo, ran, "--version", "3", "--push-id", "not-it", "--wait")
    assert proc.returncode == 1
    assert f"has push_id {push_id!r}; --push-id is 'not-it'" in proc.stderr
    assert tmp_path.joinpath(*DEST).with_name("v3.unverified").is_dir()


def test_push_answered_without_a_version_number_is_recorded_as_queued(
        tmp_path: Path, repo: Path) -> None:
    """kaggle-cli reports such a push as a success: exit 0, a warning, and a push.json."""
    proc, srv = _push(tmp_path, repo, Scenario(push_without_version=True), "--wait")
    assert proc.returncode == 0, proc.stderr
    assert "warning: the server returned no version number" in proc.stdout
    (record_path,) = (tmp_path / "evidence" / "gemma-tunix-reasoning").glob("queued-*/push.json")
    record = json.loads(record_path.read_text())
    push_id = record["bundle"]["push_id"]
    assert record_path.parent.name == f"queued-{push_id}"
    assert record["status"] == "QUEUED_UNKNOWN" and record["version"] is None
    assert f"--version N --push-id {push_id}" in record["warnings"][0]
    assert record["url"] == "https://www.kaggle.com/code/tester/gemma-tunix-reasoning"
    assert not srv.calls_to("GetKernelSessionStatus")


EXPIRED_TOKEN = "KGAT_expiredtoken00000000000000000"


@pytest.mark.parametrize("introspection", ["inactive", "401"])
def test_expired_api_token_beside_a_valid_key_is_dropped(
        tmp_path: Path, repo: Path, introspection: str) -> None:
    """kagglesdk would send the refused KAGGLE_API_TOKEN as a bearer on every call (401) after
    the client fell back to the legacy key: the push drops it, says so, and uses the key."""
    sc = Scenario(outputs=dict(OUTPUTS), statuses=["COMPLETE"],
                  introspect_refuses_bad_bearer=introspection == "401")
    proc, srv = _push(tmp_path, repo, sc, "--wait", env={"KAGGLE_API_TOKEN": EXPIRED_TOKEN})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "warning: KAGGLE_API_TOKEN was refused by Kaggle (expired or revoked)" in proc.stdout
    assert "authenticated with credentials from kaggle.json (" in proc.stdout
    kernel_calls = [c for c in srv.calls if "KernelsApiService" in c["path"]]
    assert kernel_calls and {c["auth_scheme"] for c in kernel_calls} == {"Basic"}
    record = _record(tmp_path)
    assert record["credentials"].startswith("kaggle.json") and "KAGGLE_API_TOKEN" in \
        record["warnings"][0]
    assert EXPIRED_TOKEN not in proc.stdout + proc.stderr + json.dumps(record)


def test_valid_api_token_is_used_beside_a_key(tmp_path: Path, repo: Path) -> None:
    sc = Scenario()
    proc, srv = _push(tmp_path, repo, sc, env={"KAGGLE_API_TOKEN": sc.api_token})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "authenticated with credentials from KAGGLE_API_TOKEN" in proc.stdout
    assert {c["auth_scheme"] for c in srv.calls_to("SaveKernel")} == {"Bearer"}
    assert "warning" not in proc.stdout and _record(tmp_path)["credentials"] == "KAGGLE_API_TOKEN"


def test_token_that_cannot_be_checked_is_not_called_refused(tmp_path: Path, repo: Path) -> None:
    """Kaggle failing while the client checks the token is not an expired token: no fallback
    to the key, no push, and the message says what happened."""
    sc = Scenario(failures={"IntrospectToken": [503] * 4})
    proc, srv = _push(tmp_path, repo, sc, env={"KAGGLE_API_TOKEN": sc.api_token})
    assert proc.returncode == 1
    assert "could not check the access token from KAGGLE_API_TOKEN with Kaggle: HTTP 503" in \
        proc.stderr
    assert "refused" not in proc.stdout and srv.pushed == []


def test_expired_token_file_is_refused_naming_it(tmp_path: Path, repo: Path) -> None:
    """A token file cannot be taken out of kagglesdk's reach: refuse before pushing."""
    sc = Scenario()
    (_home(tmp_path, sc) / ".kaggle" / "access_token").write_text(EXPIRED_TOKEN + "\n")
    proc, srv = _push(tmp_path, repo, sc)
    assert proc.returncode == 1
    assert ("the access token in ~/.kaggle/access_token was refused by Kaggle (expired or "
            "revoked)") in proc.stderr
    assert "Remove ~/.kaggle/access_token" in proc.stderr
    assert srv.pushed == [] and EXPIRED_TOKEN not in proc.stdout + proc.stderr


def test_dry_run_needs_no_credentials_and_no_network(tmp_path: Path, repo: Path) -> None:
    code = (
        "import socket, sys\n"
        "def refuse(*a, **k): raise AssertionError('network used in --dry-run')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from kaggle_lib.cli import main\n"
        f"rc = main(['push', '--path', {str(repo)!r}, '--repo-root', {str(repo)!r}, '--dry-run',\n"
        f"           '--config', 'configs/tpu_standin.yaml', '--out', {str(tmp_path / 'b')!r}])\n"
        "assert 'kaggle' not in sys.modules, 'the kaggle client was imported'\n"
        "sys.exit(rc)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAGGLE_")}
    env["HOME"] = str(tmp_path / "empty-home")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "dry run: metadata, notebook, config and pins are valid" in proc.stdout
    assert (tmp_path / "b" / "gemma-tunix-reasoning.ipynb").is_file()


def test_dry_run_validates_the_shipped_metadata_and_notebook(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    proc = _run(["--path", str(REPO), "--dry-run", "--out", str(tmp_path / "b")], env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "config configs/tpu_gemma3_1b.yaml" in proc.stdout
    meta = json.loads((tmp_path / "b" / "kernel-metadata.json").read_text())
    assert meta["machine_shape"] == "TpuV5E8" and meta["code_file"].endswith(".ipynb")


@pytest.mark.parametrize(("change", "message"), [
    ({"id": "tester/gtr", "title": "Gtr"}, "slug 'gtr' is shorter than 5 characters"),
    ({"docker_image": "gcr.io/kaggle-images/python@sha256:1"}, "docker_image = "),
    ({"model_sources": ["google/gemma-3/flax/gemma3-1b-it"]}, "model_sources[0] = "
     "'google/gemma-3/flax/gemma3-1b-it': no version"),
    ({"machine_shape": "TpuV38"}, "TpuV38 is retired; the server would run TpuV5E8"),
])
def test_dry_run_rejects_bad_metadata(tmp_path: Path, change: dict, message: str) -> None:
    repo = make_standin_repo(tmp_path / "repo", REPO, metadata=standin_metadata(**change))
    proc = _run(["--path", str(repo), "--repo-root", str(repo), "--dry-run", "--config",
                 "configs/tpu_standin.yaml", "--out", str(tmp_path / "b")], {"HOME": str(tmp_path)})
    assert proc.returncode == 2
    assert "invalid input:" in proc.stderr and "kernel-metadata.json" in proc.stderr
    assert message in proc.stderr


def test_placeholder_owner_is_refused_for_a_real_push(tmp_path: Path) -> None:
    repo = make_standin_repo(tmp_path / "repo", REPO, metadata=standin_metadata(
        id="your-kaggle-username/gemma-tunix-reasoning"))
    proc = _run(["--path", str(repo), "--repo-root", str(repo), "--config",
                 "configs/tpu_standin.yaml", "--out", str(tmp_path / "b")], {"HOME": str(tmp_path)})
    assert proc.returncode == 2 and "placeholder owner" in proc.stderr


# ---------------------------------------------------------------------------- in-process units


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def __call__(self) -> float:
        return self.now


class _HTTPError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.response = type("R", (), {"status_code": code})()


def test_wait_backs_off_and_times_out() -> None:
    clock = _Clock()
    with pytest.raises(kp.WaitTimeout, match="still RUNNING after 100 s"):
        kp.wait_for_version(lambda label, timeout: ("RUNNING", ""), label="k v1", timeout_s=100,
                            version_labels=("v1", "1"), poll_s=10, max_poll_s=30,
                            sleep=clock.sleep, clock=clock)
    assert clock.sleeps[:4] == [10, 15, 22.5, 30]
    assert max(clock.sleeps) == 30 and sum(clock.sleeps) == pytest.approx(100)


def test_wait_retries_transient_errors_but_not_client_errors() -> None:
    clock = _Clock()
    answers = iter([_HTTPError(503), _HTTPError(404), ("RUNNING", ""), ("COMPLETE", "")])
    asked: list[tuple[str, float]] = []

    def status(label: str, timeout: float):
        asked.append((label, timeout))
        item = next(answers)
        if isinstance(item, Exception):
            raise item
        return item

    result = kp.wait_for_version(status, label="k v1", timeout_s=100, poll_s=1,
                                 version_labels=("v1", "1"), sleep=clock.sleep, clock=clock)
    assert (result.status, result.polls, result.version_label) == ("COMPLETE", 4, "1")
    assert [a[0] for a in asked] == ["v1", "v1", "1", "1"]  # 404 moves to the other form
    assert all(0 < t <= kp.STATUS_HTTP_TIMEOUT_S for _, t in asked)

    def forbidden(label: str, timeout: float):
        raise _HTTPError(403)

    with pytest.raises(kp.PushFailure, match="HTTP 403"):
        kp.wait_for_version(forbidden, label="k v1", timeout_s=100, poll_s=1,
                            version_labels=("v1", "1"), sleep=clock.sleep, clock=clock)


def test_output_names_cannot_escape(tmp_path: Path) -> None:
    assert kp._safe_target(tmp_path, "evidence/a.json") == tmp_path / "evidence" / "a.json"
    for bad in ("../x", "/etc/passwd", "a/../../x", ""):
        with pytest.raises(kp.PushFailure, match="refusing output file name"):
            kp._safe_target(tmp_path, bad)


def test_credential_sources_as_kagglehub_resolves_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kagglehub fixes its default folder (~/.kaggle) at import: import it before HOME changes,
    # or later tests in this process would look in this test's folder.
    import kagglehub.config  # noqa: F401
    home = tmp_path / "h"
    (home / ".kaggle").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for var in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(var, raising=False)

    def source(**env: str) -> str | None:
        with monkeypatch.context() as m:
            for name, value in env.items():
                m.setenv(name, value)
            return auth.kaggle_credentials_source()

    assert source() is None
    assert source(KAGGLE_API_TOKEN="x") == "KAGGLE_API_TOKEN"
    assert source(KAGGLE_USERNAME="u", KAGGLE_KEY="k") == "KAGGLE_USERNAME/KAGGLE_KEY"
    assert source(KAGGLE_USERNAME="u") is None
    (home / ".kaggle" / "kaggle.json").write_text('{"username": "u", "key": "k"}')
    assert source().endswith("kaggle.json")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    assert source(KAGGLE_CONFIG_DIR=str(cfg)) is None
    (home / ".kaggle" / "access_token").write_text("tok\n")
    assert source() == "~/.kaggle/access_token"
    # A malformed kaggle.json is no credentials (kagglehub raises ValueError on it).
    (home / ".kaggle" / "access_token").unlink()
    (home / ".kaggle" / "kaggle.json").write_text("{not json")
    assert source() is None


def test_retry_after_is_honoured_on_5xx_but_capped() -> None:
    from urllib3.response import HTTPResponse

    policy = kp._retry_policy(3)
    for status in (429, 500, 502, 503, 504):
        assert policy.is_retry("POST", status, has_retry_after=True)
    hour = HTTPResponse(body=b"", headers={"Retry-After": "3600"}, status=503)
    assert policy.get_retry_after(hour) == kp.MAX_RETRY_AFTER_S  # bounded: not an hour
    assert policy.get_retry_after(HTTPResponse(body=b"", headers={"Retry-After": "2"},
                                               status=500)) == 2
    assert policy.total == 3 and not policy.is_retry("POST", 404, has_retry_after=False)


def checkpoint_outputs(run: str = "r1", steps: tuple[int, ...] = (2, 4)) -> dict[str, bytes]:
    """Output files of a version that saved SFT checkpoints: each step as Orbax finalises it
    (its _CHECKPOINT_METADATA lists the two items Tunix writes), plus the bundle info."""
    handler = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"
    metadata = json.dumps({"item_handlers": {"model_params": handler,
                                             "optimizer_state": handler}}).encode()
    files = {"evidence/kaggle_bundle.json": b'{"zip_sha256": "v7"}\n'}
    for step in steps:
        base = f"evidence/runs/{run}/checkpoints/sft/{step}"
        files |= {f"{base}/_CHECKPOINT_METADATA": metadata,
                  f"{base}/model_params/_METADATA": b"{}", f"{base}/optimizer_state/_METADATA": b"{}"}
    return files


def test_continue_from_attaches_version_7_outputs_and_bakes_the_resume(
        tmp_path: Path, repo: Path) -> None:
    """v7 runs and its outputs are fetched; the continuing push (v8) attaches them as a kernel
    source, bakes train.resume_from at their mounted checkpoints and records v7 and its run."""
    outputs = checkpoint_outputs()
    proc, _ = _push(tmp_path, repo, Scenario(version=7, outputs=outputs), "--wait")
    assert proc.returncode == 0, proc.stderr
    proc, srv = _push(tmp_path, repo, Scenario(version=8), "--continue-from",
                      "tester/gemma-tunix-reasoning/v7")
    assert proc.returncode == 0, proc.stderr

    (saved,) = srv.pushed
    assert saved["kernelDataSources"] == ["tester/gemma-tunix-reasoning/7"]
    cells = json.loads(saved["text"])["cells"]
    injected = next(c["source"] for c in cells
                    if "injected-parameters" in c["metadata"].get("tags", []))
    checkpoints = "evidence/runs/r1/checkpoints/sft"
    assert (f'overrides = {{"train.resume_from": "/kaggle/input/gemma-tunix-reasoning/'
            f'{checkpoints}"}}' in injected)
    record = json.loads((tmp_path / "evidence" / "gemma-tunix-reasoning" / "v8" / "push.json")
                        .read_text())
    assert record["bundle"]["continues_from"] == {
        "kernel_id": "tester/gemma-tunix-reasoning", "version": 7, "run_id": "r1",
        "checkpoints": checkpoints, "step": 4, "outputs_bundle_sha256": hashlib.sha256(
            # the fake's run writes the pushed version's own bundle info over the given one
            (tmp_path / "evidence" / "gemma-tunix-reasoning" / "v7" / "evidence" /
             "kaggle_bundle.json").read_bytes()).hexdigest()}


def test_continue_from_needs_the_fetched_outputs_and_a_checkpoint(
        tmp_path: Path, repo: Path) -> None:
    proc, srv = _push(tmp_path, repo, Scenario(version=8), "--continue-from",
                      "tester/gemma-tunix-reasoning/v7")
    assert proc.returncode == 2 and not srv.pushed
    assert "gemma-tunix-reasoning/v7/evidence/kaggle_bundle.json not found; fetch version 7's " \
           "outputs first: python -m kaggle_lib push --version 7 --wait" in proc.stderr
    fetched = tmp_path / "evidence" / "gemma-tunix-reasoning" / "v7"
    (fetched / "evidence").mkdir(parents=True)
    (fetched / "evidence" / "kaggle_bundle.json").write_text("{}")
    proc, srv = _push(tmp_path, repo, Scenario(version=8), "--continue-from",
                      "tester/gemma-tunix-reasoning/v7")
    assert proc.returncode == 2 and not srv.pushed
    assert "no complete SFT checkpoint step under" in proc.stderr
    proc, _ = _push(tmp_path, repo, Scenario(), "--continue-from", "gemma-tunix-reasoning")
    assert proc.returncode == 2 and "expected OWNER/SLUG/vN" in proc.stderr
