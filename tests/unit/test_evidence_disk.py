"""A full or read-only disk (issue 28): one DiskError naming the path and the free space, refused
before anything moves, atomic record and notebook writes, a record closed `failed` when the disk
fills mid-run. The disk is filled by a simulated ENOSPC / EROFS at the write where it happens
(tests run as root, where chmod stops nothing, and a small tmpfs needs root)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kaggle_lib import cli, errors, evidence, pipeline
from kaggle_lib.evidence import index as run_index
from kaggle_lib.evidence import start

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "cpu_tiny.yaml"
NO_KERNEL = "no-such-kernel-for-tests"


pytestmark = pytest.mark.usefixtures("clean_secrets")  # tests/conftest.py


class _CutFile:
    """A file whose writes stop half way with `code` (ENOSPC: the disk filled)."""

    def __init__(self, fh: Any, code: int) -> None:
        self._fh, self._code = fh, code

    def write(self, data: Any) -> int:
        self._fh.write(data[: len(data) // 2])
        self._fh.flush()
        raise OSError(self._code, os.strerror(self._code))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)

    def __enter__(self) -> _CutFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def fail_writes(monkeypatch: pytest.MonkeyPatch, hit: Callable[[Path], bool],
                code: int = errno.ENOSPC) -> None:
    """Every file opened for writing whose path satisfies `hit` fails with `code` on its first
    write, after half of it reached the file (open() and Path.open() alike)."""
    real_open = io.open

    def fake_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        if isinstance(file, str | os.PathLike) and set(mode) & set("wax+") and hit(Path(file)):
            return _CutFile(fh, code)
        return fh

    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(builtins, "open", fake_open)


def under(directory: Path) -> Callable[[Path], bool]:
    return lambda p: Path(os.path.abspath(p)).is_relative_to(directory)


def started(run_dir: Path) -> evidence.RunRecord:
    record = evidence.RunRecord(run_dir)
    record.start(run_dir.name, "demo", str(TINY))
    return record


def listing(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes()
            for p in sorted(directory.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- the record's writes


def test_a_manifest_write_cut_by_a_full_disk_keeps_the_old_file(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    record = started(tmp_path / "runs" / "r1")
    before = record.manifest_path.read_bytes()
    fail_writes(monkeypatch, under(record.run_dir))
    with pytest.raises(errors.DiskError) as raised:
        record.update_manifest(metrics={"trained_accuracy": 0.5})
    message = str(raised.value)
    assert str(record.manifest_path) in message and "no space left" in message
    assert " free of " in message  # shutil.disk_usage of that disk
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value, OSError)
    assert record.manifest_path.read_bytes() == before
    assert sorted(p.name for p in record.run_dir.iterdir()) == [evidence.MANIFEST]  # no .tmp


def test_a_full_disk_during_training_closes_the_record_failed_naming_path_and_space(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = pipeline.Run(record=started(tmp_path / "evidence" / "runs" / "r1"))
    step_file = run.run_dir / "checkpoints" / "sft" / "3" / "model_params" / "d" / "0a1b"

    class XlaRuntimeError(RuntimeError):
        """How Orbax's TensorStore write reports a full disk (same name as jaxlib's)."""

    @pipeline.stage("train")
    def train(run: pipeline.Run) -> None:
        raise XlaRuntimeError(f'RESOURCE_EXHAUSTED: Error writing local file "{step_file}": '
                              "[OS error 28: No space left on device]")

    with pytest.raises(errors.DiskError) as raised:
        train(run)
    assert str(step_file) in str(raised.value) and " free of " in str(raised.value)
    assert isinstance(raised.value.__cause__, XlaRuntimeError)  # the original is kept
    m = run.record.read_manifest()
    assert m["status"] == "failed" and m["failure"]["stage"] == "train"
    assert m["failure"]["error_type"] == "DiskError" and str(step_file) in m["failure"]["message"]
    analysis = (run.run_dir / evidence.FAILURE).read_text()
    assert str(step_file) in analysis and " free of " in analysis
    assert "Free space on that disk" in analysis and "ran out of memory" not in analysis
    [line] = run_index.read_index(tmp_path / "evidence" / "index.jsonl")
    assert line["error_type"] == "DiskError"
    assert "stage 'train' failed: DiskError: cannot write" in capsys.readouterr().out


def test_a_disk_too_full_for_failure_analysis_is_said_on_the_console(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    run = pipeline.Run(record=started(tmp_path / "runs" / "r1"))
    metrics = run.run_dir / evidence.METRICS

    @pipeline.stage("train")
    def train(run: pipeline.Run) -> None:
        fail_writes(monkeypatch, under(run.run_dir))  # the disk fills up now
        run.record.log_metrics({"step": 1, "loss": 2.0})

    with pytest.raises(errors.DiskError, match="cannot write .*metrics.jsonl: no space left"):
        train(run)
    out = capsys.readouterr().out
    assert "the failure could not be recorded in full: cannot write" in out
    assert str(metrics) in out and "Traceback" not in out
    assert not list(run.run_dir.glob("*.tmp"))


# ---------------------------------------------------------------------------- the runner


def run_cli(run_dir: Path, *extra: str) -> int:
    return cli.main(["run", "--config", str(TINY), "--run-dir", str(run_dir), "--kernel", NO_KERNEL,
                     *extra])


def earlier_attempt(tmp_path: Path) -> tuple[Path, dict[str, bytes], dict[str, bytes]]:
    """A run dir with a failed attempt and its index line: (run dir, its files, evidence root's
    other files)."""
    run_dir = tmp_path / "evidence" / "runs" / "r"
    record = started(run_dir)
    record.fail("train", RuntimeError("attempt 1"))
    run_index.append_index(run_dir)
    return run_dir, listing(run_dir), {k: v for k, v in listing(tmp_path / "evidence").items()
                                       if not k.startswith("runs/")}


@pytest.mark.parametrize("problem", ["full", "read-only"])
def test_the_runner_refuses_a_full_or_read_only_run_dir_before_anything_moves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        problem: str) -> None:
    run_dir, files, index_files = earlier_attempt(tmp_path)
    if problem == "full":
        usage = shutil.disk_usage(tmp_path)._replace(free=3 * 2**20)
        monkeypatch.setattr(errors.shutil, "disk_usage", lambda path: usage)
    else:
        fail_writes(monkeypatch, under(run_dir), errno.EROFS)
    with pytest.raises(SystemExit) as raised:
        run_cli(run_dir)
    message = str(raised.value.code)
    assert message.startswith("refusing to start") and str(run_dir) in message
    assert ("the disk is full (3.0 MiB free of" in message if problem == "full"
            else "the file system is read-only" in message and " free of " in message)
    assert listing(run_dir) == files  # the earlier attempt was not moved
    assert {k: v for k, v in listing(tmp_path / "evidence").items()
            if not k.startswith("runs/")} == index_files
    assert "Traceback" not in capsys.readouterr().out


def test_the_kernel_refuses_a_full_disk_before_the_earlier_attempt_moves(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir, files, _ = earlier_attempt(tmp_path)
    usage = shutil.disk_usage(tmp_path)._replace(free=2**20)
    monkeypatch.setattr(errors.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(errors.DiskError, match=f"refusing to start in {run_dir}: the disk is full"):
        start.open_record(str(TINY), None, tmp_path, run_dir=str(run_dir))
    assert listing(run_dir) == files


def fake_papermill(fill_disk: Callable[[], None]) -> Callable[..., None]:
    """papermill.execute_notebook that saves the notebook once, then lets the disk fill and saves
    again (as papermill does after each cell); the failed save is raised, as papermill does."""
    from papermill.iorw import write_ipynb

    def execute_notebook(input_path: str, output_path: str, **kwargs: Any) -> None:
        import nbformat

        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('step 1')")])
        write_ipynb(nb, output_path)
        fill_disk()
        nb.cells.append(nbformat.v4.new_code_cell("x = 1\n" * 2000))
        write_ipynb(nb, output_path)

    return execute_notebook


def test_a_notebook_save_cut_by_a_full_disk_keeps_the_last_good_save(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import papermill

    run_dir = tmp_path / "runs" / "r"
    notebook = run_dir / "executed.ipynb"
    monkeypatch.setattr(papermill, "execute_notebook", fake_papermill(
        lambda: fail_writes(monkeypatch, lambda p: p.name.startswith("executed.ipynb"))))
    assert run_cli(run_dir) == 1
    cells = json.loads(notebook.read_text())["cells"]  # still valid JSON: the first save
    assert ["".join(c["source"]) for c in cells] == ["print('step 1')"]
    assert not list(run_dir.glob("*.tmp"))
    m = json.loads((run_dir / evidence.MANIFEST).read_text())
    assert m["status"] == "failed" and m["failure"]["error_type"] == "DiskError"
    assert str(notebook) in m["failure"]["message"]
    analysis = (run_dir / evidence.FAILURE).read_text()
    assert str(notebook) in analysis and " free of " in analysis
    assert "Traceback" not in capsys.readouterr().out


def test_a_record_the_runner_cannot_close_is_said_without_a_traceback(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import papermill

    run_dir = tmp_path / "runs" / "r"
    monkeypatch.setattr(papermill, "execute_notebook", fake_papermill(
        lambda: fail_writes(monkeypatch, under(run_dir))))
    assert run_cli(run_dir) == 1
    out = capsys.readouterr().out
    assert "its record could not be closed: cannot write" in out
    assert "no space left on the device" in out and " free of " in out
    assert "Free space on that disk" in out and "Traceback" not in out
    assert json.loads((run_dir / "executed.ipynb").read_text())["cells"]  # the last good save


# ---------------------------------------------------------------------------- the index


APPENDER = """
import sys, time
from pathlib import Path
from kaggle_lib.evidence.index import append_index
runs, tag, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
for n in range(30):
    append_index(runs / f"{tag}-{n}")
"""


def copies_of_a_record(runs: Path, names: list[str]) -> None:
    record = started(runs / names[0])
    record.fail("train", RuntimeError("x"))
    manifest = record.read_manifest()
    for name in names[1:]:
        (runs / name).mkdir()
        (runs / name / evidence.MANIFEST).write_text(json.dumps({**manifest, "run_id": name}))


def test_two_processes_appending_at_once_keep_every_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    runs = tmp_path / "evidence" / "runs"
    copies_of_a_record(runs, [f"{tag}-{n}" for tag in "ab" for n in range(30)])
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    writers = [subprocess.Popen([sys.executable, "-c", APPENDER, str(runs), tag, str(go)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for tag in "ab"]
    for writer in writers:
        assert writer.stdout.readline() == "ready\n"
    go.touch()  # both start appending together
    for writer in writers:
        _, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err[-2000:]
    index = tmp_path / "evidence" / "index.jsonl"
    ids = [e["run_id"] for e in run_index.read_index(index)]
    assert sorted(ids) == sorted(f"{tag}-{n}" for tag in "ab" for n in range(30))
    assert [p.name for p in index.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_line_that_is_not_json_is_moved_aside_and_named_never_deleted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = tmp_path / "evidence" / "runs"
    copies_of_a_record(runs, ["a", "b"])
    index = run_index.append_index(runs / "a")
    with index.open("a") as fh:
        fh.write("<<<<<<< HEAD\n{\"run_id\": \"cut sh\n")
    run_index.append_index(runs / "b")
    assert [e["run_id"] for e in run_index.read_index(index)] == ["a", "b"]
    assert len(index.read_text().splitlines()) == 2
    rejected = index.parent / "index.rejected.jsonl"
    assert rejected.read_text() == "<<<<<<< HEAD\n{\"run_id\": \"cut sh\n"
    err = capsys.readouterr().err
    assert f"{index}: line(s) 2, 3 are not index entries" in err and str(rejected) in err


def test_a_symlinked_run_dir_writes_to_the_evidence_root_the_user_named(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "runs" / "real"
    copies_of_a_record(target.parent, ["real"])
    runs = tmp_path / "evidence" / "runs"
    runs.mkdir(parents=True)
    (runs / "link").symlink_to(target, target_is_directory=True)
    index = run_index.append_index(runs / "link")
    assert index == tmp_path / "evidence" / "index.jsonl"
    assert [e["path"] for e in run_index.read_index(index)] == ["runs/link"]
    assert not (tmp_path / "elsewhere" / "index.jsonl").exists()


def test_a_full_disk_leaves_the_index_as_it_was(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "evidence" / "runs"
    copies_of_a_record(runs, ["a", "b"])
    index = run_index.append_index(runs / "a")
    before = index.read_bytes()
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", _cut_temporary_file)
    with pytest.raises(errors.DiskError, match="index.jsonl: no space left"):
        run_index.append_index(runs / "b")
    assert index.read_bytes() == before
    assert sorted(p.name for p in index.parent.iterdir()) == ["index.jsonl", "index.jsonl.lock",
                                                              "runs"]


_REAL_TEMPORARY_FILE = tempfile.NamedTemporaryFile


def _cut_temporary_file(*args: Any, **kwargs: Any) -> _CutFile:
    return _CutFile(_REAL_TEMPORARY_FILE(*args, **kwargs), errno.ENOSPC)
