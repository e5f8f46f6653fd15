"""Multi-process runs over jax.distributed (docs/MULTIHOST.md).

Integration tests start real processes: 2 CPU processes on 127.0.0.1 with 4 simulated devices
each (gloo collectives) against the 1-process 8-device run, all driving the notebook's stages
through tests/multihost_worker.py (the same kaggle_lib calls the notebook makes). Every
subprocess has a timeout, so nothing hangs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kaggle_lib import multihost
from kaggle_lib.data.batching import SFTBatches, tokenize_items
from kaggle_lib.multihost import collectives
from tests.fakes.byte_tokenizer import ByteTokenizer

pytestmark = pytest.mark.multihost

REPO = Path(__file__).resolve().parents[2]
WORKER = REPO / "tests" / "multihost_worker.py"
CONFIG = str(REPO / "configs" / "cpu_tiny.yaml")
TOLERANCE = 1e-5
# The coordinator's heartbeat timeout in these tests (<= 20 s). jax aborts the survivor of a
# killed process about 0.6 x this after the kill; the watchdog names the dead process after a
# quarter of it, which leaves the record ~7 s to be written on a loaded machine.
HEARTBEAT_S = 20
# One padded length (one compilation of the train step) keeps each run short.
BASE = {"train.checkpoint_every": 1, "evidence.export": False, "evidence.tensorboard": False,
        "data.length_buckets": [256]}
RUN_TIMEOUT_S = 240


# --- environment detection and validation (no processes) ---------------------------------------

def _env(**values: str) -> dict[str, str]:
    return dict(values)


def test_no_multiprocess_variables_is_a_single_process_run() -> None:
    assert multihost.spec_from_environment(_env()) is None
    assert multihost.spec_from_environment(_env(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="1",
                                                  JAX_PROCESS_ID="0")) is None


def test_explicit_variables_give_the_spec_with_timeouts() -> None:
    spec = multihost.spec_from_environment(_env(
        JAX_COORDINATOR_ADDRESS="10.0.0.2:1234", JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3",
        KAGGLE_LIB_HEARTBEAT_TIMEOUT_S="20", KAGGLE_LIB_INIT_TIMEOUT_S="60"))
    assert spec == multihost.ProcessSpec("10.0.0.2:1234", 4, 3, heartbeat_timeout_s=20,
                                           init_timeout_s=60)


def test_auto_mode_leaves_detection_to_jax() -> None:
    spec = multihost.spec_from_environment(_env(KAGGLE_LIB_MULTIHOST="auto"))
    assert spec is not None and spec.auto and spec.coordinator_address is None


@pytest.mark.parametrize("env, words", [
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="2"), ["JAX_PROCESS_ID", "missing"]),
    (dict(JAX_PROCESS_ID="0"), ["JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "missing"]),
    (dict(JAX_COORDINATOR_ADDRESS="nohost", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0"),
     ["JAX_COORDINATOR_ADDRESS", "host:port"]),
    (dict(JAX_COORDINATOR_ADDRESS="h:99999", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0"),
     ["JAX_COORDINATOR_ADDRESS", "host:port"]),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="2"),
     ["JAX_PROCESS_ID = 2", "0..1"]),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="two", JAX_PROCESS_ID="0"),
     ["JAX_NUM_PROCESSES", "integer"]),
    (dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="0", JAX_PROCESS_ID="0"),
     ["JAX_NUM_PROCESSES = 0", ">= 1"]),
    (dict(KAGGLE_LIB_MULTIHOST="yes"), ["KAGGLE_LIB_MULTIHOST", "auto"]),
    (dict(KAGGLE_LIB_MULTIHOST="auto", KAGGLE_LIB_HEARTBEAT_TIMEOUT_S="-1"),
     ["KAGGLE_LIB_HEARTBEAT_TIMEOUT_S", ">= 1"]),
])
def test_bad_variables_are_named_with_what_is_allowed(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(multihost.DistributedConfigError) as err:
        multihost.spec_from_environment(env)
    for word in words:
        assert word in str(err.value)


def test_process_shares_of_a_batch_rebuild_the_global_batch() -> None:
    items = [{"id": str(i), "prompt": "q" * (5 + 3 * i), "reasoning": "r" * (3 + i), "answer": str(i)}
             for i in range(32)]
    data = tokenize_items(ByteTokenizer(), items, 512, instruct=False)
    whole = SFTBatches(data, 8, seed=3, length_buckets=(128, 256, 512))
    halves = [SFTBatches(data, 8, seed=3, length_buckets=(128, 256, 512), rows=slice(s, s + 4))
              for s in (0, 4)]
    for step in range(6):
        full = whole.batch_at(step)
        parts = [h.batch_at(step) for h in halves]
        for key, value in full.items():
            assert parts[0][key].shape == (4, value.shape[1])  # same padded width everywhere
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), value)


# --- real processes ----------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env_for(process_id: int | None, devices: int, port: int | None, extra: dict[str, str] | None = None
             ) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                                "KAGGLE_LIB_MULTIHOST"))}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", PYTHONFAULTHANDLER="1",
               KAGGLE_LIB_HEARTBEAT_TIMEOUT_S=str(HEARTBEAT_S), KAGGLE_LIB_INIT_TIMEOUT_S="90")
    if process_id is not None:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(process_id))
    env.update(extra or {})
    return env


class Launch:
    """One run: 1 process with 8 devices, or 2 processes with 4 each, started in the background."""

    def __init__(self, tmp: Path, name: str, processes: int, overrides: dict[str, Any],
                 stages: str = "train", extra_env: dict[str, str] | None = None,
                 only: list[int] | None = None, notebook: Path | None = None):
        """`notebook`: run `python -m kaggle_lib run --notebook <notebook>` on every process (the
        same command everywhere, no --run-dir) instead of the stage worker."""
        self.root = tmp / name
        self.root.mkdir(parents=True)
        overrides = {**BASE, **overrides}
        # start_run takes the evidence root from the config file: a copy that points into tmp.
        config = self.root / "config.yaml"
        config.write_text(Path(CONFIG).read_text()
                          + f"evidence:\n  root: {json.dumps(str(self.root / 'evidence'))}\n")
        port = _free_port() if processes > 1 else None
        self.procs: list[subprocess.Popen[str]] = []
        self.logs: list[Path] = []
        for pid in (only if only is not None else range(processes)):
            log = self.root / f"process{pid}.log"
            self.logs.append(log)
            env = _env_for(pid if processes > 1 else None, 8 // processes, port, extra_env)
            command = [sys.executable, str(WORKER), str(config), "", json.dumps(overrides), stages]
            if notebook is not None:
                command = [sys.executable, "-m", "kaggle_lib", "run", "--config", str(config),
                           "--notebook", str(notebook), "--kernel", "python3",
                           "-y", json.dumps({"overrides": overrides})]
            self.procs.append(subprocess.Popen(
                command, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
                start_new_session=True, cwd=self.root))

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        deadline = time.monotonic() + timeout
        codes = []
        try:
            for proc in self.procs:
                codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        finally:
            self.kill()
        return codes

    def kill(self) -> None:
        """Stop what is still running; SIGABRT first so faulthandler logs where it was stuck."""
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGABRT)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=30)

    def output(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text()[-4000:]}" for log in self.logs)

    def run_dirs(self) -> list[Path]:
        return sorted(p.parent for p in (self.root / "evidence").glob("*/run_manifest.json"))

    def run_dir(self) -> Path:
        dirs = self.run_dirs()
        assert len(dirs) == 1, f"expected exactly one run record, found {dirs}\n{self.output()}"
        return dirs[0]


def _losses(run_dir: Path) -> dict[int, float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x]
    return {r["step"]: r["loss"] for r in lines if r.get("stage") == "sft"}


def _succeeded(launch: Launch, codes: list[int]) -> Path:
    assert codes == [0] * len(codes), launch.output()
    run_dir = launch.run_dir()
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    assert manifest["status"] == "succeeded", launch.output()
    return run_dir


@pytest.fixture(scope="module")
def first_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """3 SFT steps (with baseline and trained evaluation) on 1 process x 8 devices and on
    2 processes x 4 devices, started together; alongside, a process without its partner and a
    2-process `python -m kaggle_lib run`."""
    tmp = tmp_path_factory.mktemp("multihost")
    # Evaluation in 2 batches of 4 prompts: with 2 processes each batch is padded to the 8 devices,
    # each process decodes its 4 rows of it, and the ids of both batches are gathered once.
    overrides = {"train.sft.max_steps": 3, "eval.batch_size": 4}
    single = Launch(tmp, "single", 1, overrides, stages="train eval")
    # The 2-process run is the submission notebook through `python -m kaggle_lib run`: the same
    # command on both processes, no --run-dir (the single run drives the same stages directly).
    scratch = tmp / "runner_tmp"
    scratch.mkdir()
    multi = Launch(tmp, "multi", 2, overrides, notebook=_submission_notebook_without_sample(tmp),
                   extra_env={"TMPDIR": str(scratch)})
    # Mostly waiting for its missing partner: started alongside to save wall time.
    alone = Launch(tmp, "alone", 2, {"train.sft.max_steps": 1}, only=[0],
                   extra_env={"KAGGLE_LIB_INIT_TIMEOUT_S": "5"})
    single_dir = _succeeded(single, single.wait())
    multi_dir = _succeeded(multi, multi.wait())
    return {"single": single_dir, "multi": multi_dir, "tmp": tmp, "multi_root": multi.root,
            "alone": alone, "multi_launch": multi, "runner_tmp": scratch}


def _submission_notebook_without_sample(tmp: Path) -> Path:
    """notebooks/submission.ipynb without its trained `kl.sample` cell (the stages of the single
    run)."""
    notebook = json.loads((REPO / "notebooks" / "submission.ipynb").read_text())
    cells = [c for c in notebook["cells"]
             if 'kl.sample(run, "trained")' not in "".join(c["source"])]
    assert len(cells) == len(notebook["cells"]) - 1
    notebook["cells"] = cells
    path = tmp / "submission_without_sample.ipynb"
    path.write_text(json.dumps(notebook))
    return path


def test_two_processes_train_like_one_process_with_one_record(first_runs: dict[str, Any]) -> None:
    single, multi = _losses(first_runs["single"]), _losses(first_runs["multi"])
    assert sorted(single) == sorted(multi) == [1, 2, 3]
    diffs = [abs(single[s] - multi[s]) for s in single]
    print(f"loss |1-process - 2-process| per step: {diffs}")
    assert max(diffs) <= TOLERANCE
    # Exactly one run record, under the run directory process 0 chose; process 1 only logs.
    root = first_runs["multi_root"] / "evidence"
    records = sorted(p.relative_to(root) for p in root.rglob("run_manifest.json"))
    assert len(records) == 1, records
    run_dir = first_runs["multi"]
    follower = run_dir / "processes" / "1"
    # Its log, and the notebook its runner executed (test_the_same_command_...).
    assert sorted(p.name for p in follower.iterdir()) == ["executed.ipynb", "log.jsonl"]
    assert not (run_dir / "processes" / "0").exists()
    logged = [json.loads(x) for x in (follower / "log.jsonl").read_text().splitlines()]
    assert [r["metrics"]["step"] for r in logged if r.get("metrics", {}).get("stage") == "sft"] == [1, 2, 3]
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    processes = manifest["processes"]
    assert [p["process_index"] for p in processes] == [0, 1]
    assert all(len(p["devices"]) == 4 for p in processes)
    assert manifest["devices"]["device_count"] == 8 and manifest["devices"]["process_count"] == 2
    # Predictions written once per evaluation (8 items x zero-shot baseline, few-shot baseline
    # and trained), like 1 process.
    multi_preds = (run_dir / "predictions.jsonl").read_text().splitlines()
    single_preds = (first_runs["single"] / "predictions.jsonl").read_text().splitlines()
    assert len(multi_preds) == len(single_preds) == 24
    assert sorted({json.loads(x)["stage"] for x in multi_preds}) == [
        "baseline", "baseline_fewshot", "trained"]
    assert ([json.loads(x)["output"] for x in multi_preds]
            == [json.loads(x)["output"] for x in single_preds])
    ckpts = sorted(int(p.name) for p in (run_dir / "checkpoints" / "sft").iterdir() if p.name.isdigit())
    assert ckpts[-1] == 3


def _with_damaged_step(source: Path, target: Path, step: int) -> Path:
    """A copy of the checkpoints under `source` plus a `step` that Orbax lists as complete but
    that does not restore: a copy of the newest step with every model-parameter file cut short
    (all processes fail to read it alike)."""
    shutil.copytree(source, target)
    newest = max(int(p.name) for p in target.iterdir() if p.name.isdigit())
    shutil.copytree(target / str(newest), target / str(step))
    for f in (target / str(step) / "model_params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])
    return target


def test_checkpoints_resume_across_process_counts(first_runs: dict[str, Any]) -> None:
    """2-process checkpoint -> 1 process, and 1-process checkpoint -> 2 processes: steps 4-5
    agree (the step-3 checkpoints are the same model to 1e-5). The 2-process resume also meets a
    newest step that does not restore: it is set aside once, by process 0, and both processes
    continue from step 3."""
    tmp = first_runs["tmp"]
    overrides = {"train.sft.max_steps": 5}
    one_from_two = Launch(tmp, "resume_1_from_2", 1, {
        **overrides, "train.resume_from": str(first_runs["multi"] / "checkpoints" / "sft")})
    damaged = _with_damaged_step(first_runs["single"] / "checkpoints" / "sft",
                                 tmp / "single_with_damaged_step4", 4)
    two_from_one = Launch(tmp, "resume_2_from_1", 2, {**overrides, "train.resume_from": str(damaged)})
    a = _losses(_succeeded(one_from_two, one_from_two.wait()))
    two_dir = _succeeded(two_from_one, two_from_one.wait())
    b = _losses(two_dir)
    assert sorted(a) == sorted(b) == [4, 5], (a, b)  # resumed at step 3, not from scratch
    diffs = [abs(a[s] - b[s]) for s in a]
    print(f"resumed loss |1-from-2 - 2-from-1| steps 4-5: {diffs}")
    assert max(diffs) <= TOLERANCE
    # The damaged step 4 was moved aside exactly once (a second mover would have made 4-2 or
    # failed), with its reason; the step 4 now there is the one this run trained.
    corrupt = two_dir / "checkpoints" / "sft" / "corrupt"
    assert [p.name for p in corrupt.iterdir()] == ["4"], two_from_one.output()
    assert (corrupt / "4" / "reason.txt").read_text().startswith("does not restore:")
    manifest = json.loads((two_dir / "run_manifest.json").read_text())
    assert [(e["stage"], e["step"]) for e in manifest["checkpoints_set_aside"]] == [("sft", 4)]
    follower = (two_dir / "processes" / "1" / "log.jsonl").read_text()
    assert str(corrupt / "4") in follower  # process 1 learned where process 0 moved it


def test_a_dead_process_fails_the_run_naming_it(tmp_path: Path) -> None:
    launch = Launch(tmp_path, "dies", 2, {"train.sft.max_steps": 200})
    survivor, victim = launch.procs
    follower_log = launch.root / "evidence"
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not any('"metrics"' in p.read_text() for p in follower_log.glob("*/processes/1/log.jsonl")):
            assert time.monotonic() < deadline, launch.output()
            assert survivor.poll() is None and victim.poll() is None, launch.output()
            time.sleep(0.3)
        os.killpg(victim.pid, signal.SIGKILL)  # mid-training
        killed = time.monotonic()
        code = survivor.wait(timeout=90)
        seconds = time.monotonic() - killed
    finally:
        launch.kill()
    print(f"survivor exited {code} {seconds:.1f} s after process 1 was killed")
    assert code == multihost.PEER_FAILURE_EXIT_CODE, launch.output()
    assert seconds < 90
    assert "process 1 stopped sending heartbeats" in launch.logs[0].read_text()
    run_dir = launch.run_dir()
    manifest = json.loads((run_dir / "run_manifest.json").read_text())
    assert manifest["status"] == "failed"
    failure = manifest["failure"]
    assert failure["stage"] == "train" and failure["error_type"] == "PeerProcessError"
    assert failure["dead_processes"] == [1]
    assert "process 1" in failure["message"]
    analysis = (run_dir / "failure_analysis.md").read_text()
    assert "process 1 stopped sending heartbeats" in analysis and "processes/<id>/" in analysis


def test_a_missing_process_is_a_clear_start_error(first_runs: dict[str, Any]) -> None:
    launch = first_runs["alone"]
    codes = launch.wait(timeout=120)
    assert codes != [0]
    text = launch.logs[0].read_text()
    assert codes == [multihost.PEER_FAILURE_EXIT_CODE], text[-3000:]
    assert "DistributedStartError" in text and "a process is missing" in text, text[-3000:]
    manifest = json.loads((launch.run_dir() / "run_manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest["failure"]["stage"] == "distributed"


def test_the_same_command_on_every_process_gives_one_run_directory(first_runs: dict[str, Any]) -> None:
    """The 2-process run was `python -m kaggle_lib run` without --run-dir on both processes:
    process 0's runner chose the directory, process 1's kernel learned it and its runner put its
    executed notebook there."""
    launch = first_runs["multi_launch"]
    root = launch.root / "evidence"
    assert [p for p in root.iterdir() if p.is_dir()] == [first_runs["multi"]]
    run_dir = first_runs["multi"]
    assert (run_dir / "executed.ipynb").is_file()
    executed = json.loads((run_dir / "processes" / "1" / "executed.ipynb").read_text())
    assert any("kl.finish(" in "".join(c["source"]) for c in executed["cells"])
    assert "process 1 finished" in launch.logs[1].read_text()
    assert list(first_runs["runner_tmp"].iterdir()) == []  # the follower's scratch is gone


def test_runner_knows_its_process_without_a_run_dir(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "KAGGLE_LIB_MULTIHOST"):
        monkeypatch.delenv(name, raising=False)
    assert multihost.runner_process_id() is None  # one process: unchanged
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.setenv("JAX_PROCESS_ID", "1")
    assert multihost.runner_process_id() == 1
    path = multihost.follower_notebook_path(tmp_path / "run", 1)
    assert path == tmp_path / "run" / "processes" / "1" / "executed.ipynb" and path.parent.is_dir()
    # A follower's notebook waits in scratch until its kernel reports the run directory.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    monkeypatch.setenv(multihost.ENV_RUN_DIR_FILE, "")  # set by the call below; undone after
    scratch = multihost.follower_scratch_notebook(1)
    assert scratch.parent.parent == tmp_path
    scratch.write_text("{}")
    assert multihost.place_follower_notebook(scratch, 1) == scratch  # the kernel never joined
    Path(os.environ[multihost.ENV_RUN_DIR_FILE]).write_text(str(tmp_path / "chosen"))
    placed = multihost.place_follower_notebook(scratch, 1)
    assert placed == tmp_path / "chosen" / "processes" / "1" / "executed.ipynb"
    assert placed.read_text() == "{}" and not scratch.parent.exists()


def test_a_jax_error_waits_for_the_watchdog_to_name_a_dead_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gloo error from a collective with a dead peer is not recorded before the watchdog has
    had its chance (seen in a real 2-process run: 'Gloo AllGather failed ... Connection reset')."""
    import threading

    verdict = threading.Event()

    class Watchdog(threading.Thread):  # stands in for the real one: decides after 0.5 s
        stale_s, tick_s = 0.5, 0.1

        def run(self) -> None:
            verdict.wait(0.5)

    watchdog = Watchdog(daemon=True)
    monkeypatch.setattr(collectives._state, "started", True)
    monkeypatch.setattr(collectives._state, "watchdog", watchdog)
    JaxRuntimeError = type("JaxRuntimeError", (RuntimeError,), {"__module__": "jax.errors"})

    started = time.monotonic()
    multihost.await_peer_verdict(ValueError("a config mistake"))  # not jax's: no wait
    assert time.monotonic() - started < 0.1
    watchdog.start()
    multihost.await_peer_verdict(JaxRuntimeError("Gloo AllGather failed: Connection reset"))
    waited = time.monotonic() - started
    assert not watchdog.is_alive() and 0.4 <= waited < 1.5  # waited until the verdict, no longer
