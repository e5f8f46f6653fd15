"""`python -m kaggle_lib package`: zip + manifest + sha256 sums that verify (and catch tampering),
and the Kaggle Models upload through the real kagglehub against a fake API on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from kaggle_lib import auth, cli, evidence, package
from kaggle_lib.evidence import lock
from tests.fakes.loopback import LoopbackServer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A small closed run record (no training: the packaging does not care how it was made)."""
    d = tmp_path / "runs" / "20260101T000000Z-abcdef12"
    record = evidence.RunRecord(d)
    record.start(d.name, "demo", "configs/cpu_tiny.yaml")
    record.update_manifest(config_hash="a" * 64, devices={"platform": "cpu", "device_kind": "cpu",
                                                         "device_count": 1},
                           model={"name": "gemma3-tiny", "source": "random"}, metrics={"acc": 0.5})
    record.stage("train", "succeeded", 1.0)
    record.succeed()
    record.log_metrics({"stage": "sft", "step": 1, "loss": 2.0})
    record.write_text("README.md", "# demo\n")
    record.write_text("samples.md", "some samples\n")
    (d / "loss.png").write_bytes(bytes(range(256)) * 4)
    (d / "checkpoints" / "sft" / "1").mkdir(parents=True)
    (d / "checkpoints" / "sft" / "1" / "weights.bin").write_bytes(b"\x00" * 1000)
    (d / "export" / "orbax").mkdir(parents=True)
    (d / "export" / "orbax" / "tokenizer.model").write_bytes(b"spm")
    return d


def _rewrite_zip(src: Path, dst: Path, change: dict[str, bytes | None], add: dict[str, bytes]) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            key = item.filename.split("/", 1)[1]
            if key in change:
                if change[key] is not None:
                    zout.writestr(item, change[key])
                continue
            zout.writestr(item, zin.read(item))
        for name, data in add.items():
            root = zin.namelist()[0].split("/", 1)[0]
            zout.writestr(f"{root}/{name}", data)


def test_package_zip_verifies_and_matches_files(run_dir: Path, tmp_path: Path) -> None:
    out = package.build_package(run_dir, tmp_path / "pkg.zip")
    assert package.verify_package(out) == []
    with zipfile.ZipFile(out) as zf:
        names = {n.split("/", 1)[1] for n in zf.namelist()}
        manifest = json.loads(zf.read(f"{run_dir.name}/{package.PACKAGE_MANIFEST}"))
        sums = zf.read(f"{run_dir.name}/{package.SUMS}").decode().splitlines()
    # weights stay out unless asked for
    assert not any(n.startswith(("checkpoints/", "export/")) for n in names)
    assert {"run_manifest.json", "metrics.jsonl", "README.md", "loss.png", package.SUMS,
            package.PACKAGE_MANIFEST} <= names
    assert manifest["run_id"] == run_dir.name and manifest["status"] == "succeeded"
    assert manifest["metrics"] == {"acc": 0.5}
    # SHA256SUMS is `sha256sum -c` format and agrees with the files on disk
    for line in sums:
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((run_dir / name).read_bytes()).hexdigest() == digest
    assert len(sums) == len(manifest["files"]) == len(names) - 2


def test_package_is_reproducible_and_can_include_weights(run_dir: Path, tmp_path: Path) -> None:
    a = package.build_package(run_dir, tmp_path / "a.zip")
    b = package.build_package(run_dir, tmp_path / "b.zip")
    assert a.read_bytes() == b.read_bytes()
    full = package.build_package(run_dir, tmp_path / "full.zip", with_checkpoints=True,
                                 with_exports=True)
    assert package.verify_package(full) == []
    with zipfile.ZipFile(full) as zf:
        names = set(zf.namelist())
    assert f"{run_dir.name}/checkpoints/sft/1/weights.bin" in names
    assert f"{run_dir.name}/export/orbax/tokenizer.model" in names


@pytest.mark.parametrize(
    ("change", "add", "expected"),
    [
        ({"samples.md": b"tampered\n"}, {}, "samples.md: sha256 mismatch"),
        ({"loss.png": None}, {}, "loss.png: listed in SHA256SUMS but missing"),
        ({}, {"extra.txt": b"x"}, "extra.txt: in the zip but not in SHA256SUMS"),
        ({"run_manifest.json": b'{"status": "weird"}'}, {}, "run_manifest.json: sha256 mismatch"),
    ],
    ids=["modified", "missing", "extra", "manifest"],
)
def test_verify_catches_tampering(run_dir: Path, tmp_path: Path, change: dict, add: dict,
                                  expected: str) -> None:
    good = package.build_package(run_dir, tmp_path / "good.zip")
    bad = tmp_path / "bad.zip"
    _rewrite_zip(good, bad, change, add)
    problems = package.verify_package(bad)
    assert any(expected in p for p in problems), problems
    assert cli.main(["package", "--verify", str(bad)]) == 1


def test_package_refuses_a_record_with_a_secret(run_dir: Path, tmp_path: Path) -> None:
    token = "hf_" + "Q" * 36
    (run_dir / "training_log.txt").write_text(f"step 1 token={token}\n")
    with pytest.raises(package.PackageError, match="training_log.txt"):
        package.build_package(run_dir, tmp_path / "x.zip")
    assert token not in (run_dir / "training_log.txt").read_text()
    assert not (tmp_path / "x.zip").exists()
    # redacted now: packaging again works
    assert package.verify_package(package.build_package(run_dir, tmp_path / "x.zip")) == []


def test_out_may_be_an_existing_directory_and_a_package_inside_the_run_is_left_out(
        run_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "packages"
    folder.mkdir()
    out = package.build_package(run_dir, folder)
    assert out == folder / f"{run_dir.name}.zip" and package.verify_package(out) == []
    # --out inside the run directory, twice: the second zip does not hold the first.
    first = package.build_package(run_dir, run_dir / "run.zip")
    second = package.build_package(run_dir, run_dir / "again.zip")
    with zipfile.ZipFile(second) as zf:
        names = {n.split("/", 1)[1] for n in zf.namelist()}
    assert "run.zip" not in names and "again.zip" not in names
    assert second.read_bytes() == first.read_bytes() == out.read_bytes()
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_failed_write_names_the_path_and_leaves_no_tmp(run_dir: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(package, "_add", full_disk)
    with pytest.raises(package.PackageError,
                       match=r"cannot write the package .*x\.zip: No space left on device"):
        package.build_package(run_dir, tmp_path / "x.zip")
    assert list(tmp_path.iterdir()) == [tmp_path / "runs"]


def test_a_running_run_is_refused_and_a_failed_one_packaged_with_a_warning(
        run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = evidence.RunRecord(run_dir)
    with lock.lock_run_dir(run_dir):  # a live writer (a gone one's: closed as interrupted)
        record.update_manifest(status="running", ended_at=None, duration_s=None)
        assert cli.main(["package", "--run-dir", str(run_dir), "--out",
                         str(tmp_path / "r.zip")]) == 1
    assert "is still running" in capsys.readouterr().err
    assert not (tmp_path / "r.zip").exists()
    record.fail("train", RuntimeError("boom"))
    assert cli.main(["package", "--run-dir", str(run_dir), "--out", str(tmp_path / "f.zip")]) == 0
    assert ("WARNING: run 20260101T000000Z-abcdef12 did not succeed: status 'failed' in stage "
            "train (RuntimeError)") in capsys.readouterr().err
    with zipfile.ZipFile(tmp_path / "f.zip") as zf:
        inside = json.loads(zf.read(f"{run_dir.name}/{package.PACKAGE_MANIFEST}"))
    assert inside["status"] == "failed"


def test_cli_package_and_verify(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli.zip"
    result = subprocess.run(
        [sys.executable, "-m", "kaggle_lib", "package", "--run-dir", str(run_dir), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "checksums OK" in result.stdout
    verify = subprocess.run([sys.executable, "-m", "kaggle_lib", "package", "--verify", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and verify.stdout.strip().endswith("OK")
    missing = subprocess.run([sys.executable, "-m", "kaggle_lib", "package", "--run-dir",
                              str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    assert missing.returncode == 1 and "not a run directory" in missing.stderr


# ---------------------------------------------------------------------------- kagglehub upload


class FakeKaggleModels:
    """Just enough of Kaggle's models + blobs API for kagglehub.model_upload; stops by itself."""

    def __init__(self, max_lifetime_s: float = 60.0) -> None:
        self.calls: list[dict[str, Any]] = []
        self.blobs: dict[str, bytes] = {}
        self.blob_names: dict[str, str] = {}
        self.models: set[str] = set()
        self._lock = threading.Lock()
        self._loopback = LoopbackServer(self._handler(), max_lifetime_s)

    @property
    def url(self) -> str:
        return self._loopback.url

    def __enter__(self) -> FakeKaggleModels:
        self._loopback.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loopback.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                path = urlsplit(self.path).path
                body = json.loads(self._body() or b"{}")
                method = path.rsplit("/", 1)[-1]
                with fake._lock:
                    fake.calls.append({"method": method, "body": body,
                                       "auth": self.headers.get("Authorization")})
                if method == "GetModel":
                    key = f"{body.get('ownerSlug')}/{body.get('modelSlug')}"
                    if key not in fake.models:
                        self._reply(404, {"code": 404, "message": "Model not found"})
                        return
                    self._reply(200, {"ref": key, "slug": body.get("modelSlug")})
                elif method == "CreateModel":
                    fake.models.add(f"{body.get('ownerSlug')}/{body.get('slug')}")
                    self._reply(200, {"ref": body.get("slug"), "url": "http://localhost/m"})
                elif method == "StartBlobUpload":
                    token = f"blob-{len(fake.blob_names)}"
                    fake.blob_names[token] = body.get("name")
                    self._reply(200, {"token": token,
                                      "createUrl": f"http://localhost/upload/{token}"})
                elif method in ("CreateModelInstance", "CreateModelInstanceVersion"):
                    self._reply(200, {"ref": "instance", "url": "http://localhost/m/i"})
                else:
                    self._reply(404, {"code": 404, "message": f"unknown method {method}"})

            def do_PUT(self) -> None:  # noqa: N802 - http.server API
                path = urlsplit(self.path).path
                token = path.rsplit("/", 1)[-1]
                fake.blobs[token] = fake.blobs.get(token, b"") + self._body()
                self._reply(200, {})

        return Handler


@pytest.fixture
def kaggle_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No credentials anywhere (an empty HOME), and no way out of 127.0.0.1."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "KAGGLE_KERNEL_RUN_TYPE",
                "NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    return home


def test_upload_without_credentials_skips_with_a_message(run_dir: Path, kaggle_env: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert auth.kaggle_credentials_source() is None
    result = package.upload_model(run_dir / "export" / "orbax", "me/gemma-reasoning/jax/tiny")
    assert result is None
    assert "no Kaggle credentials" in capsys.readouterr().out


def test_upload_handle_and_directory_are_checked(run_dir: Path, kaggle_env: Path) -> None:
    with pytest.raises(package.PackageError, match="owner/model/framework/variation"):
        package.upload_model(run_dir / "export" / "orbax", "me/gemma-reasoning/jax/tiny/3")
    with pytest.raises(package.PackageError, match="nothing to upload"):
        package.upload_model(run_dir / "export" / "hf", "me/gemma-reasoning/jax/tiny")


def test_upload_sends_every_file_to_kaggle_models(run_dir: Path, kaggle_env: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    export_dir = run_dir / "export" / "orbax"
    (export_dir / "d").mkdir()
    (export_dir / "d" / "shard0").write_bytes(bytes(range(200)) * 50)
    (export_dir / "_METADATA").write_text('{"tree": 1}')
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef0123456789abcdef")
    with FakeKaggleModels() as fake:
        monkeypatch.setenv("HTTP_PROXY", fake.url)
        monkeypatch.setenv("http_proxy", fake.url)
        assert cli.main(["package", "--run-dir", str(run_dir), "--upload", "tester/gemma-reasoning/jax/tiny",
                             "--notes", "test upload", "--out", str(run_dir.parent / "p.zip")]) == 0
    methods = [c["method"] for c in fake.calls]
    assert methods[:2] == ["GetModel", "CreateModel"]
    assert methods[-1] == "CreateModelInstance"
    assert methods.count("StartBlobUpload") == 3
    # every file arrived byte for byte
    uploaded = {fake.blob_names[t]: data for t, data in fake.blobs.items()}
    assert uploaded == {"tokenizer.model": b"spm", "shard0": bytes(range(200)) * 50,
                        "_METADATA": b'{"tree": 1}'}
    instance = fake.calls[-1]["body"]
    assert instance["ownerSlug"] == "tester" and instance["modelSlug"] == "gemma-reasoning"
    assert instance["body"]["instanceSlug"] == "tiny"
    assert instance["body"]["licenseName"] == "Gemma"
    assert [d["name"] for d in instance["body"]["directories"]] == ["d"]
    expected_auth = "Basic " + base64.b64encode(b"tester:0123456789abcdef0123456789abcdef").decode()
    assert all(c["auth"] == expected_auth for c in fake.calls)
    # the run record says where its model went; the key is nowhere in the package
    manifest = evidence.RunRecord(run_dir).read_manifest()
    assert manifest["kaggle_model"]["handle"] == "tester/gemma-reasoning/jax/tiny"
    assert sorted(manifest["kaggle_model"]["files"]) == ["_METADATA", "d/shard0", "tokenizer.model"]
    with zipfile.ZipFile(run_dir.parent / "p.zip") as zf:
        assert not any(b"0123456789abcdef0123456789abcdef" in zf.read(n) for n in zf.namelist())
