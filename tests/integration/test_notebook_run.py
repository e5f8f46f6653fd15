"""The notebook through papermill, headless: one real cpu_tiny run (shared, tests/conftest.py), and
runs that must fail early.

Each failing config must stop before any model is loaded and still leave a run record with
status `failed` and a failure_analysis.md that names the problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
RECORD_FILES = ["executed.ipynb", "config.yaml", "run_manifest.json", "metrics.jsonl"]


def run_notebook(config: Path, run_dir: Path, extra_env: dict[str, str] | None = None,
                 timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **(extra_env or {})}
    # A single CPU device, as `make run` has; the sharded paths are tested elsewhere.
    env.pop("XLA_FLAGS", None)
    return subprocess.run(
        [sys.executable, "-m", "kaggle_lib", "run", "--config", str(config), "--run-dir", str(run_dir)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "run_manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny_run(tiny_notebook_run: tuple[Path, subprocess.CompletedProcess[str]]
             ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """tests/conftest.py's shared cpu_tiny run (plus a validation loss, which these checks leave
    aside: its metrics are stage `sft_validation`); these tests only read it."""
    return tiny_notebook_run


def test_cpu_tiny_end_to_end(tiny_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, result = tiny_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in RECORD_FILES:
        assert (run_dir / name).is_file(), name
    m = manifest(run_dir)
    assert m["status"] == "succeeded"
    assert m["run_id"] == run_dir.name
    assert len(m["config_hash"]) == 64
    assert m["git"]["sha"] and isinstance(m["git"]["dirty"], bool)
    assert m["packages"]["google-tunix"] == "0.1.7"
    assert m["devices"]["platform"] == "cpu" and m["devices"]["device_count"] == 1
    assert m["started_at"] <= m["ended_at"]
    assert all(s["status"] == "succeeded" for s in m["stages"].values())
    steps = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
             if r.get("stage") == "sft"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["loss"] > 0 for r in steps)


def test_executed_notebook_has_banner_first(tiny_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, _ = tiny_run
    nb = nbformat.read(run_dir / "executed.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    # papermill inserts the injected-parameters cell after the tagged one
    assert "injected-parameters" in code[1].metadata.get("tags", [])
    start = next(c for c in code if "kl.start_run" in c.source)
    text = "".join(o.get("text", "") for o in start.outputs)
    assert text.lstrip().startswith("=" * 20) and "kaggle_lib runtime" in text
    assert "devices : 1 x cpu" in text


def test_executed_notebook_shows_a_text_progress_bar_and_no_widget_warning(
        tiny_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, _ = tiny_run
    nb = nbformat.read(run_dir / "executed.ipynb", as_version=4)
    streams = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                      for o in c.outputs)
    assert "IProgress" not in streams and "TqdmWarning" not in streams
    # Orbax's "Metadata file does not exist" (absl WARNING) while our checkpoint rule looks at
    # a step: nothing a user can act on.
    assert "Metadata file does not exist" not in streams
    assert "4/4 [" in streams  # Tunix's SFT bar, as tqdm's text bar


def write_config(tmp_path: Path, mutate: dict) -> Path:
    tree = yaml.safe_load((REPO / "configs" / "cpu_tiny.yaml").read_text())
    for key, value in mutate.items():
        node = tree
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.mark.parametrize(
    ("mutate", "stage", "message"),
    [
        ({"train.sft.max_stepz": 3}, "config+runtime", "train.sft.max_stepz: unknown key"),
        ({"train.sft.batch_size": "eight"}, "config+runtime", "train.sft.batch_size = 'eight'"),
        ({"device": "tpu"}, "config+runtime", "device: tpu was requested"),
    ],
    ids=["unknown-key", "wrong-type", "absent-tpu"],
)
def test_bad_runs_fail_before_model_and_leave_record(tmp_path: Path, mutate: dict, stage: str,
                                                     message: str) -> None:
    config = write_config(tmp_path, mutate)
    run_dir = tmp_path / "run"
    result = run_notebook(config, run_dir, timeout=300)
    assert result.returncode == 1
    assert message in result.stdout  # the runner prints the reason
    m = manifest(run_dir)
    assert m["status"] == "failed"
    assert m["failure"]["stage"] == stage
    assert message in m["failure"]["message"]
    assert "load_model" not in m.get("stages", {})  # failed before any model work
    analysis = (run_dir / "failure_analysis.md").read_text()
    assert f"stage `{stage}`" in analysis and message in analysis and "## What to do" in analysis
    assert (run_dir / "executed.ipynb").is_file()


def test_secrets_are_refused_as_parameters(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kaggle_lib", "run", "--config", "configs/cpu_tiny.yaml",
         "-p", "hf_token", "hf_abcdefghijklmnopqrstuvwxyz0123456789"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode != 0
    assert "secrets are never passed as papermill parameters" in result.stderr + result.stdout
    assert "abcdefghijklmnopqrstuvwxyz" not in result.stderr + result.stdout
