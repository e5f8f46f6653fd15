"""Runs that never lose a record (issue 11): a re-run in the same run directory is a new attempt.

Fast tests work on RunRecord and the runner without a kernel. The acceptance scenario runs the
notebook three times through `python -m kaggle_lib run` (about 4-5 minutes on 2 cores), from a
working directory other than the repository and with relative paths only:

1. an uninterrupted run (`-p config_path`, `-p run_dir`): the reference losses;
2. the same config in another directory, its kernel killed with SIGKILL during SFT, once a
   checkpoint is saved;
3. the same command again: it resumes in place and succeeds with the reference's losses, and
   the first attempt's executed notebook and failure analysis are kept under attempts/1/.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from kaggle_lib import cli, evidence, jsonl, pipeline
from kaggle_lib.config import ConfigChangeError, ConfigError, load_config
from kaggle_lib.evidence import close, readme
from kaggle_lib.evidence import index as run_index

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "cpu_tiny.yaml"
MAX_STEPS = 12
PREVIOUS_FILES = ("executed.ipynb", "failure_analysis.md", "metrics.jsonl", "predictions.jsonl",
                  "samples.md", "eval_summary.json", "config.yaml", "README.md",
                  "training_log.txt", "run_manifest.json")


def cli_env() -> dict[str, str]:
    # The session's compilation cache (tests/conftest.py) comes along: the three runs, and the
    # other cpu_tiny runs of the session, share their compiled programs (no change in numerics).
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)  # one CPU device, as `make run` has
    return env


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / evidence.MANIFEST).read_text())


def sft_losses(metrics: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in jsonl.read(metrics) if r.get("stage") == "sft"}


# ---------------------------------------------------------------------------- fast: the record


def previous_attempt(run_dir: Path) -> evidence.RunRecord:
    """A failed attempt's files, as a killed or failed run leaves them, plus a checkpoint."""
    record = evidence.RunRecord(run_dir)
    record.start(run_dir.name, "demo", str(TINY))
    record.update_manifest(config_hash="a" * 64, metrics={"trained_accuracy": 0.5})
    record.stage("train", "running")
    record.log_metrics({"stage": "sft", "step": 1, "loss": 2.0})
    for name in ("executed.ipynb", "predictions.jsonl", "samples.md", "eval_summary.json",
                 "config.yaml", "training_log.txt"):
        (run_dir / name).write_text(f"attempt 1 {name}\n")
    (run_dir / "tensorboard").mkdir()
    (run_dir / "checkpoints" / "sft" / "2").mkdir(parents=True)
    record.fail("train", RuntimeError("first attempt's error"))
    readme.write_readme(run_dir)
    return record


def test_a_new_attempt_keeps_the_earlier_files_and_starts_a_clean_manifest(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r"
    record = previous_attempt(run_dir)
    run_index.append_index(run_dir)
    record.start(run_dir.name, "demo", str(TINY))  # the re-run, as start_run does it
    kept = run_dir / "attempts" / "1"
    for name in PREVIOUS_FILES:
        text = (kept / name).read_text()
        assert text, name
    assert "attempt 1 executed.ipynb" in (kept / "executed.ipynb").read_text()
    assert (kept / "tensorboard").is_dir()
    assert (run_dir / "checkpoints" / "sft" / "2").is_dir()  # stays for the resume
    assert sorted(p.name for p in run_dir.iterdir()) == ["attempts", "checkpoints", evidence.MANIFEST]
    m = manifest(run_dir)
    # Nothing of attempt 1 leaks into attempt 2's manifest (point 1 and 2).
    for stale in ("failure", "stages", "metrics", "config_hash", "ended_at"):
        assert stale not in m, stale
    assert m["status"] == "running" and m["attempt"] == 2
    [first] = m["attempts"]
    assert first["n"] == 1 and first["status"] == "failed" and first["path"] == "attempts/1"
    assert first["failure"]["error_type"] == "RuntimeError"
    assert first["failure"]["message"] == "first attempt's error" and first["ended_at"]
    # Attempt 2 succeeds with a valid manifest (the schema error of point 1 is gone).
    record.update_manifest(config_hash="b" * 64, metrics={"trained_accuracy": 0.25},
                           devices={"platform": "cpu", "device_kind": "cpu", "device_count": 1},
                           model={"name": "gemma3-tiny", "source": "random", "param_count": 10})
    record.stage("train", "succeeded", 1.0)
    record.succeed()
    assert evidence.manifest_errors(manifest(run_dir)) == []
    assert record.read_metrics() == []  # metrics.jsonl starts empty, not appended to
    readme.write_readme(run_dir)
    assert "attempt 1: failed: `RuntimeError` in `train`" in (run_dir / "README.md").read_text()
    # One index line per attempt.
    run_index.append_index(run_dir)
    entries = run_index.read_index(run_index.index_path(run_dir))
    assert [(e["run_id"], e["attempt"], e["status"]) for e in entries] == [
        ("r", 1, "failed"), ("r", 2, "succeeded")]


def test_runner_prepared_attempt_is_not_moved_twice(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r"
    previous_attempt(run_dir)
    record = evidence.RunRecord(run_dir)
    record.prepare_attempt(run_dir.name, "", str(TINY))  # the runner, before papermill
    (run_dir / "executed.ipynb").write_text("attempt 2 notebook\n")  # papermill writes it
    record.start(run_dir.name, "demo", str(TINY))  # then start_run in the kernel
    assert (run_dir / "executed.ipynb").read_text() == "attempt 2 notebook\n"
    assert not (run_dir / "attempts" / "2").exists()
    m = manifest(run_dir)
    assert m["attempt"] == 2 and [a["n"] for a in m["attempts"]] == [1]
    assert "prepared_by_runner" not in m
    # A third attempt numbers on.
    record.start(run_dir.name, "demo", str(TINY))
    assert manifest(run_dir)["attempt"] == 3
    assert (run_dir / "attempts" / "2" / "executed.ipynb").read_text() == "attempt 2 notebook\n"
    assert [a["n"] for a in manifest(run_dir)["attempts"]] == [1, 2]


def test_a_truncated_metrics_line_does_not_stop_the_record_from_closing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from nbclient.exceptions import DeadKernelError

    record = evidence.RunRecord(tmp_path / "runs" / "r")
    record.start("r", "demo", str(TINY))
    record.stage("train", "running")
    record.log_metrics({"stage": "sft", "step": 1, "loss": 2.0})
    with (record.run_dir / evidence.METRICS).open("a") as fh:
        fh.write('{"stage": "sft", "step": 2, "lo')  # the kernel died mid-write
    m = close.close_after_kernel(record.run_dir, None, DeadKernelError("Kernel died"), 1.0)
    assert m["status"] == "failed" and m["failure"]["error_type"] == "DeadKernelError"
    assert (record.run_dir / evidence.FAILURE).is_file() and (record.run_dir / "README.md").is_file()
    assert [r["step"] for r in record.read_metrics()] == [1]
    # Skipped, and reported with the file and line (not silently dropped).
    assert f"{record.run_dir / evidence.METRICS}:2: skipped a line that is not JSON" in \
        capsys.readouterr().err
    # A later write is not glued onto the cut line.
    record.log_metrics({"stage": "sft", "step": 3, "loss": 1.0})
    assert [r["step"] for r in record.read_metrics()] == [1, 3]


def test_a_cut_last_prediction_line_is_skipped_and_reported_but_a_bad_middle_line_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kaggle_lib.evaluation.runner import read_predictions

    path = tmp_path / "predictions.jsonl"
    path.write_text('{"id": "a", "correct": true}\n{"id": "b", "correct": false}\n{"id": "c", "cor')
    assert [r["id"] for r in read_predictions(path)] == ["a", "b"]
    assert f"{path}:3: skipped a last line cut short" in capsys.readouterr().err
    path.write_text('{"id": "a", "correct": true}\n{"id": "b", "cor\n{"id": "c", "correct": true}\n')
    with pytest.raises(ValueError, match=r"predictions.jsonl:2: not valid JSON"):
        read_predictions(path)


def test_start_run_records_a_non_utf8_config_and_non_mapping_overrides(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(TINY.read_bytes().replace(b"run_name: cpu-tiny", b"run_name: caf\xe9"))
    run_dir = tmp_path / "runs" / "latin1"
    with pytest.raises(ConfigError, match="is not UTF-8 text: byte"):
        pipeline.start_run(str(bad), run_dir=str(run_dir))
    analysis = (run_dir / evidence.FAILURE).read_text()
    assert str(bad) in analysis and "save the file as UTF-8" in analysis
    assert manifest(run_dir)["failure"]["stage"] == "config+runtime"

    run_dir = tmp_path / "runs" / "list"
    with pytest.raises(ConfigError, match="overrides must be a mapping"):
        pipeline.start_run(str(TINY), overrides=["train.sft.max_steps", 3],  # type: ignore[arg-type]
                           run_dir=str(run_dir))
    assert manifest(run_dir)["failure"]["error_type"] == "ConfigError"


def attempt_with_config(run_dir: Path, checkpoint: bool = True, **overrides: object) -> None:
    """A killed attempt as the config stage leaves it (a resolved config.yaml), with or without
    a checkpoint step to resume."""
    record = evidence.RunRecord(run_dir)
    record.start(run_dir.name, "demo", str(TINY))
    record.write_text("config.yaml", load_config(TINY, overrides).to_yaml())
    record.fail("train", RuntimeError("killed"))
    if checkpoint:
        (run_dir / "checkpoints" / "sft" / "2").mkdir(parents=True)


def tree(run_dir: Path) -> dict[str, bytes]:
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() if p.is_file() else b""
            for p in sorted(run_dir.rglob("*"))}


def test_a_rerun_that_changes_what_the_checkpoints_hold_is_refused_before_anything_moves(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r"
    attempt_with_config(run_dir)
    before = tree(run_dir)
    rank_and_steps = {"train.sft.lora.rank": 8, "train.sft.max_steps": 6}
    with pytest.raises(ConfigChangeError) as raised:  # the kernel under plain papermill
        pipeline.start_run(str(TINY), overrides=rank_and_steps, run_dir=str(run_dir))
    message = str(raised.value)
    assert "train.sft.lora.rank: 4 -> 8" in message and "max_steps" not in message
    assert f"delete {run_dir / 'checkpoints'}" in message and "new run directory" in message
    assert tree(run_dir) == before
    with pytest.raises(SystemExit) as exited:  # `python -m kaggle_lib run`, before papermill
        cli.main(["run", "--config", str(TINY), "--run-dir", str(run_dir),
                  "-y", "overrides: {train.sft.lora.rank: 8}"])
    assert str(exited.value.code).startswith("refusing --run-dir: ")
    assert "train.sft.lora.rank: 4 -> 8" in str(exited.value.code)
    assert tree(run_dir) == before


def test_a_rerun_may_change_the_step_count_and_the_manifest_lists_each_change(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r"
    attempt_with_config(run_dir)
    record = evidence.RunRecord(run_dir)
    record.prepare_attempt(run_dir.name, "", str(TINY), load_config(  # the runner
        TINY, {"train.sft.max_steps": 6, "eval.batch_size": 2, "train.stages": ["sft", "grpo"]}))
    record.start(run_dir.name, "demo", str(TINY))  # then the kernel: the list is kept
    m = manifest(run_dir)
    assert m["attempt"] == 2 and evidence.manifest_errors(m) == []
    changes = m["config_changes"]
    assert changes["compared_with"] == "attempts/1/config.yaml" and changes["checkpoints"]
    by_key = {c["key"]: c for c in changes["changes"]}
    assert list(by_key) == ["train.stages", "train.sft.max_steps", "eval.batch_size"]
    assert (by_key["train.sft.max_steps"]["old"], by_key["train.sft.max_steps"]["new"]) == (4, 6)
    assert "learning-rate schedule" in by_key["train.sft.max_steps"]["note"]
    assert by_key["train.stages"]["note"] == "stage(s) grpo appended"
    readme.write_readme(run_dir)
    assert ("Config changes against `attempts/1/config.yaml`: `train.stages` ['sft'] -> "
            "['sft', 'grpo'] (stage(s) grpo appended)") in (run_dir / "README.md").read_text()


def test_without_checkpoints_any_change_is_allowed_against_the_last_config_that_loaded(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r"
    attempt_with_config(run_dir, checkpoint=False)
    evidence.RunRecord(run_dir).start(run_dir.name, "demo", str(TINY))  # attempt 2: no config
    (run_dir / "config.yaml").write_text(f"{evidence.record.RAW_CONFIG_MARK}; see ...)\ncolour: blue\n")
    evidence.RunRecord(run_dir).start(run_dir.name, "demo", str(TINY),
                                      load_config(TINY, {"train.sft.lora.rank": 8}))
    changes = manifest(run_dir)["config_changes"]
    assert changes["compared_with"] == "attempts/1/config.yaml" and not changes["checkpoints"]
    assert [(c["key"], c["old"], c["new"], c["resumable"]) for c in changes["changes"]] == [
        ("train.sft.lora.rank", 4, 8, False)]


def run_without_kernel(cwd: Path, config: str, run_dir: str | None) -> subprocess.CompletedProcess[str]:
    where = ["--run-dir", run_dir] if run_dir else []
    return subprocess.run(
        [sys.executable, "-m", "kaggle_lib", "run", "--config", config, *where,
         "--kernel", "no-such-kernel-for-tests"],
        cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=300)


def test_rerun_without_a_kernel_reports_its_own_error(tmp_path: Path) -> None:
    """Point 3: the new attempt's error, not the previous attempt's."""
    run_dir = tmp_path / "runs" / "r"
    bad = tmp_path / "unknown_key.yaml"
    bad.write_text(TINY.read_text() + "colour: blue\n")
    with pytest.raises(ConfigError):  # attempt 1 fails in the kernel's config stage
        pipeline.start_run(str(bad), run_dir=str(run_dir))
    assert manifest(run_dir)["failure"]["error_type"] == "ConfigError"
    (tmp_path / "good.yaml").write_text(TINY.read_text())
    result = run_without_kernel(tmp_path, "good.yaml", "runs/r")
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    m = manifest(run_dir)
    assert m["failure"]["error_type"] == "NoSuchKernel", m["failure"]
    assert m["attempt"] == 2 and m["failure"]["stage"] == "notebook"
    assert "no-such-kernel-for-tests" in m["failure"]["message"]
    assert "NoSuchKernel" in result.stdout
    assert m["attempts"][0]["failure"]["error_type"] == "ConfigError"
    assert "NoSuchKernel" in (run_dir / evidence.FAILURE).read_text()
    assert "ConfigError" in (run_dir / "attempts" / "1" / evidence.FAILURE).read_text()
    assert m["config_path"] == str(tmp_path / "good.yaml")  # resolved against the caller's cwd


def test_runner_survives_a_non_utf8_config_and_leaves_a_record(tmp_path: Path) -> None:
    """Point 9: the runner names its run directory from the config (no --run-dir); a config
    that is not UTF-8 gives no traceback but a failed record with failure_analysis.md."""
    (tmp_path / "latin1.yaml").write_bytes(b"run_name: caf\xe9\n")
    result = run_without_kernel(tmp_path, "latin1.yaml", None)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    [run_dir] = (tmp_path / "evidence" / "runs").iterdir()  # evidence.root under the caller's cwd
    m = manifest(run_dir)
    assert m["status"] == "failed" and (run_dir / evidence.FAILURE).is_file()
    assert "caf" in (run_dir / "config.yaml").read_text()


# ---------------------------------------------------------------------------- acceptance


def write_config(where: Path) -> None:
    tree = yaml.safe_load(TINY.read_text())
    tree["train"]["sft"]["max_steps"] = MAX_STEPS
    tree["train"]["checkpoint_every"] = 2
    tree["eval"]["baseline"] = False
    tree["data"]["eval_limit"] = 4
    tree["evidence"] = {"export": False}
    where.mkdir(parents=True, exist_ok=True)
    (where / "tiny.yaml").write_text(yaml.safe_dump(tree))


def kernel_processes(runner: subprocess.Popen) -> list[psutil.Process]:
    """The kernel papermill started for this runner (its child running ipykernel)."""
    children = psutil.Process(runner.pid).children(recursive=True)
    return [p for p in children if "ipykernel" in " ".join(p.cmdline())]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from kaggle_lib.training import checkpoints

    work = tmp_path_factory.mktemp("caller")  # the caller's directory, not the repository
    write_config(work / "cfg")
    env = cli_env()
    run = [sys.executable, "-m", "kaggle_lib", "run"]

    reference = subprocess.run(run + ["-p", "config_path", "cfg/tiny.yaml", "-p", "run_dir",
                                      "runs/reference"],
                               cwd=work, env=env, capture_output=True, text=True, timeout=900)

    command = run + ["--config", "cfg/tiny.yaml", "--run-dir", "runs/resumed"]
    first = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    root = work / "runs" / "resumed" / "checkpoints" / "sft"
    deadline = time.monotonic() + 600
    killed: list[int] = []
    while not killed:
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"no SFT checkpoint to kill after:\n{first.stdout.read()[-3000:]}")
        if any(step >= 2 for step in checkpoints.complete_steps(root)):
            for kernel in kernel_processes(first):
                os.kill(kernel.pid, signal.SIGKILL)
                killed.append(kernel.pid)
        time.sleep(0.05)
    first_out, _ = first.communicate(timeout=300)
    first_attempt = {"returncode": first.returncode, "out": first_out,
                     "manifest": manifest(work / "runs" / "resumed"),
                     "losses": sft_losses(work / "runs" / "resumed" / evidence.METRICS)}

    rerun = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    return {"work": work, "reference": reference, "first": first_attempt, "rerun": rerun,
            "run_dir": work / "runs" / "resumed"}


def test_relative_paths_and_run_dir_parameter_are_honoured(scenario: dict) -> None:
    """Points 6 and 7: everything lands under the caller's directory; -p run_dir is used."""
    ref = scenario["reference"]
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    work = scenario["work"]
    m = manifest(work / "runs" / "reference")
    assert m["status"] == "succeeded" and m["run_id"] == "reference"
    assert m["config_path"] == str(work / "cfg" / "tiny.yaml")
    assert (work / "runs" / "reference" / "checkpoints" / "sft" / str(MAX_STEPS)).is_dir()
    assert not (REPO / "runs").exists() and not (REPO / "cfg").exists()


def test_first_attempt_was_killed_during_sft_and_recorded(scenario: dict) -> None:
    first = scenario["first"]
    assert first["returncode"] == 1, first["out"][-3000:]
    m = first["manifest"]
    assert m["status"] == "failed" and m["failure"]["error_type"] == "DeadKernelError"
    assert m["failure"]["stage"] == "train" and m["failure"]["last_good_checkpoint"]
    assert 0 < len(first["losses"]) < MAX_STEPS, "the kill came after SFT had finished"


def test_rerun_resumes_in_place_with_the_uninterrupted_losses(scenario: dict) -> None:
    rerun = scenario["rerun"]
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    run_dir = scenario["run_dir"]
    m = manifest(run_dir)
    assert m["status"] == "succeeded" and evidence.manifest_errors(m) == []
    assert m["attempt"] == 2 and "failure" not in m
    [first] = m["attempts"]
    assert first["status"] == "failed" and first["failure"]["error_type"] == "DeadKernelError"
    start = m["training"]["sft"]["start_step"]
    assert start >= 2 and m["training"]["sft"]["steps"] == MAX_STEPS
    reference = sft_losses(scenario["work"] / "runs" / "reference" / evidence.METRICS)
    resumed = sft_losses(run_dir / evidence.METRICS)
    assert sorted(resumed) == list(range(start + 1, MAX_STEPS + 1))  # this attempt's steps only
    for step, loss in resumed.items():
        print(f"step {step}: resumed {loss:.7f} uninterrupted {reference[step]:.7f} "
              f"(resumed from step {start})")
        assert abs(loss - reference[step]) <= 1e-5, (step, loss, reference[step])


def test_first_attempts_notebook_and_failure_analysis_are_kept(scenario: dict) -> None:
    run_dir = scenario["run_dir"]
    kept = run_dir / "attempts" / "1"
    notebook = json.loads((kept / "executed.ipynb").read_text())
    assert any("kl.train(run)" in "".join(c["source"]) for c in notebook["cells"])
    assert "DeadKernelError" in (kept / evidence.FAILURE).read_text()
    assert json.loads((kept / evidence.MANIFEST).read_text())["status"] == "failed"
    assert not (run_dir / evidence.FAILURE).exists()  # the succeeded attempt has none
    entries = [e for e in run_index.read_index(run_index.index_path(run_dir)) if e["run_id"] == "resumed"]
    assert [(e["attempt"], e["status"]) for e in entries] == [(1, "failed"), (2, "succeeded")]


def test_a_directory_that_is_not_a_run_record_is_never_emptied(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine\n")
    with pytest.raises(ValueError, match="not a run record"):
        evidence.RunRecord(tmp_path).start("x", "demo", str(TINY))
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and not (tmp_path / "attempts").exists()
