"""One run per run directory, and no record left `running` by a process that is gone (issue 28,
points 1 and 2). Real second processes hold the lock; the runner runs without a kernel
(`--kernel no-such-kernel-for-tests`) or a stub notebook without JAX, so the file takes seconds.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from kaggle_lib import cli, evidence, pipeline
from kaggle_lib.evidence import close, lock, start
from kaggle_lib.evidence import index as run_index
from kaggle_lib.evidence import record as record_module

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "cpu_tiny.yaml"
# A second process that holds a run dir's lock until its stdin closes.
HOLDER = ("import sys; from pathlib import Path; from kaggle_lib.evidence import lock; "
          "lock.lock_run_dir(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()")


def env() -> dict[str, str]:
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    environ.pop(lock.LOCK_ENV, None)
    return environ


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """(process, run dir): another live process holding <tmp>/runs/r."""
    run_dir = tmp_path / "runs" / "r"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    yield proc, run_dir
    proc.kill()
    proc.wait()


def running_record(run_dir: Path) -> evidence.RunRecord:
    """A record as a run in training leaves it."""
    record = evidence.RunRecord(run_dir)
    record.start(run_dir.name, "demo", str(TINY))
    record.stage("train", "running")
    record.log_metrics({"stage": "sft", "step": 1, "loss": 2.0})
    (run_dir / "executed.ipynb").write_text("attempt 1 notebook\n")
    return record


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def run_cli(cwd: Path, *args: str, kernel: str = "no-such-kernel-for-tests"
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kaggle_lib", "run", "--config", str(TINY),
                           "--kernel", kernel, *args], cwd=cwd, env=env(), capture_output=True,
                          text=True, timeout=300)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / evidence.MANIFEST).read_text())


def test_a_second_runner_is_refused_naming_the_holder_and_nothing_moves(tmp_path: Path) -> None:
    # The first run: a notebook kernel without a runner (plain papermill), here in process.
    run_dir = tmp_path / "runs" / "r"
    record = start.open_record(str(TINY), None, tmp_path, run_dir=str(run_dir))
    record.stage("train", "running")
    (run_dir / "executed.ipynb").write_text("attempt 1 notebook\n")
    holder = json.loads((run_dir / evidence.LOCK).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == platform.node()
    before = snapshot(run_dir)

    second = run_cli(tmp_path, "--run-dir", str(run_dir))
    assert second.returncode == 1, second.stdout[-2000:] + second.stderr[-2000:]
    assert "refusing --run-dir" in second.stderr and "held by another run" in second.stderr
    assert f"host {platform.node()}, pid {os.getpid()}, started {holder['started_at']}" \
        in second.stderr
    assert "Traceback" not in second.stderr
    assert snapshot(run_dir) == before  # nothing moved, nothing written

    # The record closes: the lock goes with it, and the next run may start.
    record.stage("train", "failed")
    record.fail("train", RuntimeError("stopped"))
    close.close_failed(record, "r")
    assert not (run_dir / evidence.LOCK).exists()
    lock.lock_run_dir(run_dir).release()


def test_a_kernel_without_runner_is_refused_while_another_process_holds_the_dir(
        holder: tuple[subprocess.Popen, Path], tmp_path: Path) -> None:
    proc, run_dir = holder
    running_record(run_dir)
    before = snapshot(run_dir)
    with pytest.raises(lock.RunDirBusy, match=rf"held by another run \(host .*, pid {proc.pid}, "
                                              r"started .*, command `.*-c"):
        pipeline.start_run(str(TINY), run_dir=str(run_dir))
    # eval, compare and package leave a record alone while its writer lives.
    lock.close_if_writer_gone(run_dir)
    assert snapshot(run_dir) == before and manifest(run_dir)["status"] == "running"

    proc.stdin.close()  # the holder ends normally: its lock is released and removed
    assert proc.wait(timeout=30) == 0
    assert not (run_dir / evidence.LOCK).exists()


def test_the_kernel_under_the_runner_works_under_the_runner_lock(tmp_path: Path) -> None:
    """The runner takes the lock first; its kernel (a stub notebook, no JAX) opens the record
    in the same directory without being refused, and sees the runner holding the lock."""
    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {
        "name": "python3", "language": "python", "display_name": "Python 3"}})
    parameters = nbformat.v4.new_code_cell('config_path = ""\noverrides = {}\nrun_name = ""\n'
                                           'run_dir = ""')
    parameters.metadata["tags"] = ["parameters"]
    notebook.cells = [parameters, nbformat.v4.new_code_cell(
        "import json, os\nfrom pathlib import Path\nfrom kaggle_lib.evidence import start\n"
        "record = start.open_record(config_path, None, Path.cwd(), run_dir=run_dir)\n"
        "held = json.loads((Path(run_dir) / 'run.lock').read_text())\n"
        "record.update_manifest(stub={'lock_pid': held['pid'], 'kernel_pid': os.getpid()})")]
    nbformat.write(notebook, tmp_path / "stub.ipynb")
    run_dir = tmp_path / "runs" / "r"
    result = run_cli(tmp_path, "--run-dir", str(run_dir), "--notebook", str(tmp_path / "stub.ipynb"),
                     kernel="python3")
    m = manifest(run_dir)
    assert "RunDirBusy" not in result.stdout + result.stderr, result.stdout[-3000:]
    assert m["stub"]["lock_pid"] != m["stub"]["kernel_pid"]  # the runner's lock, not the kernel's
    # The stub has no finish stage: the runner closes the record it left running, and releases.
    assert m["failure"]["message"] == "the notebook ended before its finish stage ran", m["failure"]
    assert not (run_dir / evidence.LOCK).exists()


@pytest.fixture(scope="module")
def dead_holder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The lock file a holder killed with SIGKILL leaves behind (its flock freed)."""
    run_dir = tmp_path_factory.mktemp("dead") / "r"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return (run_dir / evidence.LOCK).read_text()


def stale_lock(run_dir: Path, dead_holder: str, where: str) -> dict:
    """A running record with a stale lock: of a dead process here, or taken on another host (a
    run directory fetched from Kaggle)."""
    running_record(run_dir)
    holder = json.loads(dead_holder)
    if where == "another host":
        holder.update(host="kaggle-0a1b2c", pid=1)
    (run_dir / evidence.LOCK).write_text(json.dumps(holder))
    return holder


@pytest.mark.parametrize("where", ["dead process", "another host"])
def test_run_takes_over_a_stale_lock_and_closes_the_record_left_running(
        tmp_path: Path, dead_holder: str, where: str) -> None:
    run_dir = tmp_path / "runs" / "r"
    holder = stale_lock(run_dir, dead_holder, where)
    result = run_cli(tmp_path, "--run-dir", str(run_dir))
    assert result.returncode == 1  # no kernel: this attempt fails, the earlier one is closed
    why = "its process no longer exists" if where == "dead process" else "taken on another host"
    assert f"taking over the stale lock {run_dir / evidence.LOCK}" in result.stderr, result.stderr
    assert f"pid {holder['pid']}" in result.stderr and why in result.stderr
    first = manifest(run_dir / "attempts" / "1")
    assert first["status"] == "interrupted" and evidence.manifest_errors(first) == []
    assert first["failure"]["error_type"] == "WriterGone" and first["failure"]["stage"] == "train"
    assert first["stages"]["train"]["status"] == "failed"
    analysis = (run_dir / "attempts" / "1" / evidence.FAILURE).read_text()
    assert f"pid {holder['pid']}" in analysis and "no longer exists" in analysis
    assert "last good checkpoint: none" in analysis
    m = manifest(run_dir)
    assert m["attempt"] == 2 and m["attempts"][0]["status"] == "interrupted"
    assert m["failure"]["error_type"] == "NoSuchKernel"
    entries = run_index.read_index(run_index.index_path(run_dir))
    assert [(e["attempt"], e["status"]) for e in entries] == [(1, "interrupted"), (2, "failed")]
    assert not (run_dir / evidence.LOCK).exists()  # released when the runner ended


@pytest.mark.parametrize("command", ["eval", "compare", "package"])
def test_eval_compare_and_package_close_a_record_whose_writer_is_gone(
        tmp_path: Path, dead_holder: str, command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "runs" / "r"
    holder = stale_lock(run_dir, dead_holder, "dead process")
    checkpoint = str(run_dir / "checkpoints" / "sft" / "4")
    monkeypatch.setattr(record_module, "last_good_checkpoint", lambda _: checkpoint)
    argv = {"eval": ["eval", "--run-dir", str(run_dir), "--data", str(tmp_path / "x.jsonl")],
            "compare": ["compare", str(run_dir)],
            "package": ["package", "--run-dir", str(run_dir), "--out", str(tmp_path / "r.zip")]}
    code = cli.main(argv[command])
    assert code == (0 if command == "package" else 2)  # no config / no scores: after closing
    m = manifest(run_dir)
    assert m["status"] == "interrupted" and evidence.manifest_errors(m) == []
    assert m["failure"]["last_good_checkpoint"] == checkpoint and m["ended_at"]
    analysis = (run_dir / evidence.FAILURE).read_text()
    assert f"pid {holder['pid']}" in analysis and f"last good checkpoint: `{checkpoint}`" in analysis
    assert "was **interrupted** in stage `train`" in (run_dir / "README.md").read_text()
    [entry] = run_index.read_index(run_index.index_path(run_dir))
    assert entry["status"] == "interrupted" and entry["error_type"] == "WriterGone"
    assert not (run_dir / evidence.LOCK).exists()
    if command == "package":
        with zipfile.ZipFile(tmp_path / "r.zip") as zf:
            assert json.loads(zf.read("r/PACKAGE_MANIFEST.json"))["status"] == "interrupted"
