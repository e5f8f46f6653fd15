"""Every way a run can end closes its record (issue 28, point 2): SIGTERM / SIGINT to the kernel
under plain papermill (how Kaggle runs the notebook), to the runner (`python -m kaggle_lib run`),
and a kernel killed with SIGKILL under the runner.

A stub notebook (no model, no training) starts a real run record with `kl.start_run` on
cpu_tiny, then blocks in a stage (or between stages) until a signal arrives: it writes its pid
to the file named by $STOP_TEST_READY first, so that the test signals it at that fixed point,
never after a timed sleep. Training's own stop at a step boundary: tests/unit/test_stop_signals.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from kaggle_lib import evidence
from kaggle_lib.evidence import index as run_index

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "cpu_tiny.yaml"

PARAMETERS = '''config_path = ""
overrides = {}
run_name = ""
run_dir = ""'''
SETUP = '''import os
import signal
from pathlib import Path

import kaggle_lib as kl
from kaggle_lib import pipeline

# "stage": wait inside a stage; "between": in a plain cell; "deaf": in a stage blocking signals
block = os.environ["STOP_TEST_BLOCK"]'''
START = "run = kl.start_run(config_path, overrides=overrides, run_name=run_name, run_dir=run_dir)"
BLOCK = '''@pipeline.stage("train")
def train_until_a_signal(run):
    # What the training stage does with each saved step: failure_analysis.md names it.
    run.last_checkpoint = str(run.run_dir / "checkpoints" / "sft" / "2")
    if block == "deaf":  # as a kernel stuck in native code: the signal never gets to Python
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    wait_for_a_signal()


def wait_for_a_signal():
    Path(os.environ["STOP_TEST_READY"]).write_text(str(os.getpid()))
    while True:
        signal.pause()


if block in ("stage", "deaf"):
    train_until_a_signal(run)
else:
    wait_for_a_signal()'''
FINISH = "kl.finish(run)"


def stub_notebook(where: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
                *(nbformat.v4.new_code_cell(src) for src in (SETUP, START, BLOCK, FINISH))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = where / "stop_stub.ipynb"
    nbformat.write(nb, path)
    return path


def env_for(ready: Path, block: str = "stage") -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "STOP_TEST_READY": str(ready),
           "STOP_TEST_BLOCK": block, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    return env


def wait_until_ready(process: subprocess.Popen, ready: Path) -> int:
    """The kernel's pid, once the stub has reached its blocking point."""
    deadline = time.monotonic() + 180
    while not ready.is_file() or not ready.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"the stub never blocked:\n{out[-3000:]}\n{err[-3000:]}")
        time.sleep(0.05)
    return int(ready.read_text())


def manifest(run_dir: Path) -> dict:
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    assert evidence.manifest_errors(m) == []
    return m


def assert_closed(run_dir: Path, *, stage: str, error_type: str, says: str) -> dict:
    """Closed as failed, as a stage failure closes it: manifest, analysis, README, index."""
    m = manifest(run_dir)
    assert m["status"] == "failed" and m["ended_at"], m
    failure = m["failure"]
    assert (failure["stage"], failure["error_type"]) == (stage, error_type), failure
    assert says in failure["message"], failure
    analysis = (run_dir / evidence.FAILURE).read_text()
    assert f"`{error_type}`" in analysis and says in analysis
    assert (run_dir / "README.md").is_file() and (run_dir / "checkpoints.json").is_file()
    [line] = [e for e in run_index.read_index(run_index.index_path(run_dir))
              if e["run_id"] == run_dir.name]
    assert line["status"] == "failed" and line["error_type"] == error_type
    return m


@pytest.mark.parametrize("block", ["stage", "between"])
def test_sigterm_to_the_kernel_under_plain_papermill_closes_the_record(
        tmp_path: Path, block: str) -> None:
    """Kaggle runs the notebook with papermill and no runner: the kernel closes its own record."""
    run_dir = tmp_path / "runs" / "kaggle-like"
    ready = tmp_path / "ready"
    papermill = subprocess.Popen(
        [sys.executable, "-m", "papermill", str(stub_notebook(tmp_path)),
         str(tmp_path / "out.ipynb"), "-k", "python3", "-p", "config_path", str(TINY),
         "-p", "run_dir", str(run_dir)],
        cwd=tmp_path, env=env_for(ready, block), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    os.kill(wait_until_ready(papermill, ready), signal.SIGTERM)
    out, err = papermill.communicate(timeout=120)
    assert papermill.returncode != 0, out[-2000:] + err[-2000:]
    if block == "stage":
        m = assert_closed(run_dir, stage="train", error_type="Interrupted", says="SIGTERM received")
        # The last good checkpoint the stage had noted is named (no real training here).
        assert m["failure"]["last_good_checkpoint"] == str(run_dir / "checkpoints" / "sft" / "2")
        assert "Re-run in the same run directory" in (run_dir / evidence.FAILURE).read_text()
        # The kernel was still alive to report the stage's error in the executed notebook.
        assert "Interrupted" in (tmp_path / "out.ipynb").read_text()
    else:  # an idle kernel closes the record, then dies of the signal as it would have
        assert_closed(run_dir, stage="notebook", error_type="Interrupted",
                      says="SIGTERM received between two stages")
        assert "DeadKernelError" in err


def start_runner(tmp_path: Path, run_dir: Path, ready: Path, *extra: str,
                 block: str = "stage") -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kaggle_lib", "run", "--notebook", str(stub_notebook(tmp_path)),
         "--kernel", "python3", "--config", str(TINY), "--run-dir", str(run_dir), *extra],
        cwd=tmp_path, env=env_for(ready, block), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_runner_closes_the_record_and_ends_in_one_line(
        tmp_path: Path, signum: signal.Signals) -> None:
    """The runner passes the signal on to the kernel (papermill starts it in its own session, so
    Ctrl-C in a terminal reaches the runner only); the kernel closes the record naming it."""
    run_dir = tmp_path / "runs" / "runner"
    ready = tmp_path / "ready"
    runner = start_runner(tmp_path, run_dir, ready)
    kernel = wait_until_ready(runner, ready)
    runner.send_signal(signum)
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 128 + signum.value, out[-2000:] + err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith(f"[kaggle_lib] stopped by {signum.name}: run "
                                                   "runner failed"), err[-2000:]
    assert_closed(run_dir, stage="train", error_type="Interrupted", says=f"{signum.name} received")
    with pytest.raises(ProcessLookupError):  # the kernel is gone too
        os.kill(kernel, 0)


def test_a_kernel_that_does_not_stop_is_killed_and_the_runner_closes_the_record(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "deaf"
    ready = tmp_path / "ready"
    runner = start_runner(tmp_path, run_dir, ready, "--stop-wait", "1", block="deaf")
    kernel = wait_until_ready(runner, ready)
    runner.send_signal(signal.SIGTERM)
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 143, out[-2000:] + err[-2000:]
    assert "Traceback" not in err, err[-3000:]
    assert_closed(run_dir, stage="train", error_type="Interrupted",
                  says="SIGTERM received by the runner; the kernel did not close the run record "
                       "(the kernel was killed by SIGKILL)")
    with pytest.raises(ProcessLookupError):
        os.kill(kernel, 0)


def test_a_kernel_killed_under_the_runner_is_named_as_killed(tmp_path: Path) -> None:
    """kill -9 of the kernel: the runner closes the record and says which signal killed it."""
    run_dir = tmp_path / "runs" / "killed"
    ready = tmp_path / "ready"
    runner = start_runner(tmp_path, run_dir, ready)
    os.kill(wait_until_ready(runner, ready), signal.SIGKILL)
    out, err = runner.communicate(timeout=120)
    assert runner.returncode == 1, out[-2000:] + err[-2000:]
    assert_closed(run_dir, stage="train", error_type="DeadKernelError",
                  says="the kernel was killed by SIGKILL")
    analysis = (run_dir / evidence.FAILURE).read_text()
    assert "Killed by SIGKILL: the host's out-of-memory killer" in analysis
