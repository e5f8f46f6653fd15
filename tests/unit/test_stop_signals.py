"""Stop signals in the kernel, in process (issue 28, point 2): training stops at its next step
boundary and saves that step, a stage fails with `Interrupted` naming the signal, signals wait
while the record closes, and Ctrl-C of a command is one line. Through papermill and the runner:
tests/integration/test_stop_signals_papermill.py."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from kaggle_lib import cli, evidence, pipeline, runtime
from kaggle_lib.errors import Interrupted
from kaggle_lib.evidence import close
from kaggle_lib.evidence import index as run_index

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml")


@pytest.fixture(autouse=True)
def unhandled_signals_fail_the_test_not_the_session():
    """Without kaggle_lib's handlers a SIGTERM would end the pytest process and a SIGINT (a
    KeyboardInterrupt) its session."""

    def unhandled(signum: int, frame: object) -> None:
        raise AssertionError(f"{signal.Signals(signum).name} reached the test process: "
                             "kaggle_lib did not handle it")

    previous = {s: signal.signal(s, unhandled) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def manifest(run_dir: Path) -> dict:
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    assert evidence.manifest_errors(m) == []
    return m


def test_sigterm_during_sft_stops_at_the_next_step_boundary_and_saves_that_step(
        tmp_path: Path) -> None:
    from kaggle_lib.training.checkpoints import complete_steps

    overrides = {"train.sft.max_steps": 8, "train.sft.warmup_steps": 0,
                 # A stop between two interval saves: the step it stops at is saved all the same.
                 "train.checkpoint_every": 100, "data.train_limit": 64, "data.max_seq_len": 256,
                 "data.length_buckets": [256], "evidence.tensorboard": False}  # one compilation
    before = signal.getsignal(signal.SIGTERM)
    run = pipeline.start_run(CONFIG, overrides=overrides, run_dir=str(tmp_path / "runs" / "stop"))
    pipeline.load_model(run)
    log_metrics = run.record.log_metrics
    sent: list[int] = []

    def log_and_stop(record: dict) -> None:
        log_metrics(record)
        if record.get("stage") == "sft" and record["step"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # as Kaggle's end of session would
            sent.append(record["step"])

    run.record.log_metrics = log_and_stop
    with pytest.raises(Interrupted, match=r"SIGTERM received; SFT stopped after step (\d) of 8"
                       ) as info:
        pipeline.train(run)
    assert sent == [2]
    stopped = int(info.value.args[0].split("after step ")[1].split()[0])
    # Tunix reports step s while s + 1 runs: the stop is seen at the next dispatch, no later.
    assert 2 < stopped <= 4, str(info.value)
    ckpt_root = run.run_dir / "checkpoints" / "sft"
    # Orbax saves a fresh run's first step; then only the step the stop came at.
    assert complete_steps(ckpt_root) == [1, stopped]
    assert max(r["step"] for r in run.record.read_metrics() if r.get("stage") == "sft") <= stopped

    m = manifest(run.run_dir)
    assert m["status"] == "failed" and m["failure"]["stage"] == "train"
    assert m["failure"]["error_type"] == "Interrupted"
    assert m["failure"]["last_good_checkpoint"] == str(ckpt_root / str(stopped))
    analysis = (run.run_dir / evidence.FAILURE).read_text()
    assert "SIGTERM received" in analysis and f"`{ckpt_root / str(stopped)}`" in analysis
    assert "train.resume: auto" in analysis
    assert signal.getsignal(signal.SIGTERM) is before  # the run is over: handler given back


@pytest.fixture
def open_run(tmp_path: Path) -> pipeline.Run:
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    run = pipeline.start_run(CONFIG, run_dir=str(tmp_path / "runs" / "r"))
    yield run
    assert {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)} == before


def test_a_signal_in_a_stage_fails_it_and_a_repeat_waits_for_the_record_to_close(
        open_run: pipeline.Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """jupyter_client's shutdown sends SIGINT, then SIGTERM: the second must not cut the first's
    closing files (on main, the SIGINT would raise KeyboardInterrupt out of close_failed)."""
    close_failed = close.close_failed

    def close_failed_under_a_second_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        close_failed(*args, **kwargs)

    monkeypatch.setattr(close, "close_failed", close_failed_under_a_second_signal)

    @pipeline.stage("evaluate")
    def evaluate(run: pipeline.Run, which: str) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # not reached: the handler raises first

    with pytest.raises(Interrupted, match="SIGTERM received"):
        evaluate(open_run, "baseline")
    m = manifest(open_run.run_dir)
    assert m["status"] == "failed" and m["failure"]["stage"] == "evaluate:baseline"
    assert m["failure"]["error_type"] == "Interrupted"
    assert (open_run.run_dir / "README.md").is_file()  # close_failed ran to its end
    entries = run_index.read_index(run_index.index_path(open_run.run_dir))
    assert [e["error_type"] for e in entries] == ["Interrupted"]


def test_training_that_misses_the_step_boundary_is_interrupted_mid_step(
        open_run: pipeline.Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "STEP_BOUNDARY_WAIT_S", 0.2)
    with runtime.stage_signals(), runtime.stop_at_step_boundary():
        os.kill(os.getpid(), signal.SIGINT)
        assert runtime.stop_requested() == "SIGINT"  # flagged, not raised: the loop polls it
        with pytest.raises(Interrupted, match="did not reach a step boundary within 0.2 s"):
            while True:
                signal.pause()  # a step that never ends; the deadline's SIGALRM ends the wait
    with runtime.closing_record():
        pass


def test_a_loop_at_its_step_boundary_is_not_cut_and_raises_afterwards(
        open_run: pipeline.Run) -> None:
    with runtime.stage_signals():
        with runtime.stop_at_step_boundary():
            os.kill(os.getpid(), signal.SIGTERM)
            runtime.at_step_boundary()  # what the trainer does when it sees the stop
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # no deadline left
        with pytest.raises(Interrupted, match="SIGTERM received; SFT stopped after step 3"):
            runtime.raise_if_stopped("SFT stopped after step 3")
    with runtime.closing_record():
        pass


def test_grpo_hands_out_no_rollout_batch_after_a_stop_signal(open_run: pipeline.Run) -> None:
    """GRPO's step boundary is the next rollout batch: the stream ends there, Tunix closes the
    learner (which saves its last step) and run_grpo raises Interrupted."""
    from types import SimpleNamespace

    from kaggle_lib.training import grpo

    batches = grpo.PromptBatches([grpo.Prompt(f"q{i}", str(i)) for i in range(8)], batch_size=2)
    state = {"stopped_for_time": False}
    with runtime.stage_signals(), runtime.stop_at_step_boundary():
        stream = grpo._rollout_stream(batches, SimpleNamespace(seed=0), None, state)  # noqa: SLF001
        next(stream), next(stream)  # two steps' batches
        os.kill(os.getpid(), signal.SIGTERM)
        assert list(stream) == []
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # at the boundary: no deadline
        assert not state["stopped_for_time"]
        with pytest.raises(Interrupted, match="SIGTERM received"):
            runtime.raise_if_stopped("GRPO stopped after step 2")
    with runtime.closing_record():
        pass


def test_ctrl_c_in_a_command_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.compare, "compare_runs", interrupted)
    try:
        code = cli.main(["compare", "a", "b"])
    except KeyboardInterrupt:  # (caught here: it would end the pytest session)
        pytest.fail("Ctrl-C left main() as a KeyboardInterrupt traceback")
    assert code == 130
    err = capsys.readouterr().err
    assert err == "[kaggle_lib] compare: interrupted (Ctrl-C)\n"
