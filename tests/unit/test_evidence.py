"""The run record without a model: manifest schema on every write, failure analysis, secret scan,
checkpoint listing, README, index, and closing a record after the kernel is gone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kaggle_lib import auth, errors, evidence
from kaggle_lib.evidence import close, readme, scan
from kaggle_lib.evidence import index as run_index

pytestmark = pytest.mark.usefixtures("clean_secrets")  # tests/conftest.py


def started(run_dir: Path) -> evidence.RunRecord:
    record = evidence.RunRecord(run_dir)
    record.start(run_dir.name, "demo", "configs/cpu_tiny.yaml")
    return record


def complete(record: evidence.RunRecord) -> evidence.RunRecord:
    record.update_manifest(config_hash="b" * 64, metrics={"trained_accuracy": 0.25},
                           devices={"platform": "cpu", "device_kind": "cpu", "device_count": 1},
                           model={"name": "gemma3-tiny", "source": "random", "param_count": 10})
    record.stage("train", "succeeded", 2.5)
    return record


# ---------------------------------------------------------------------------- schema


def test_started_manifest_is_valid_and_running(tmp_path: Path) -> None:
    record = started(tmp_path / "r1")
    m = record.read_manifest()
    assert evidence.manifest_errors(m) == []
    assert m["status"] == "running" and m["schema_version"] == 1
    assert m["packages"]["google-tunix"] == "0.1.7"
    assert "ended_at" not in m  # a running record may lack the closing fields


@pytest.mark.parametrize(
    ("fields", "field_name"),
    [
        ({"status": "finished"}, "status"),
        ({"stages": {"train": {"status": "ok", "seconds": 1}}}, "stages.train.status"),
        ({"stages": {"train": {"status": "succeeded", "seconds": -1}}}, "stages.train.seconds"),
        ({"devices": {"platform": "cpu", "device_kind": "cpu", "device_count": 0}},
         "devices.device_count"),
        ({"config_hash": "not-a-hash"}, "config_hash"),
        ({"environment": {"on_kaggle": True, "run_type": None}}, "environment.run_type"),
        ({"started_at": "yesterday"}, "started_at"),
    ],
)
def test_bad_writes_are_refused_and_leave_the_file(tmp_path: Path, fields: dict,
                                                   field_name: str) -> None:
    record = started(tmp_path / "r1")
    before = record.manifest_path.read_text()
    with pytest.raises(evidence.ManifestError) as info:
        record.update_manifest(**fields)
    assert field_name in str(info.value) and "run_manifest.schema.json" in str(info.value)
    assert str(record.manifest_path) in str(info.value)
    assert record.manifest_path.read_text() == before


def test_succeeded_requires_the_closing_fields(tmp_path: Path) -> None:
    record = started(tmp_path / "r1")
    with pytest.raises(evidence.ManifestError, match="config_hash"):
        record.succeed()
    complete(record).succeed()
    m = record.read_manifest()
    assert m["status"] == "succeeded" and m["started_at"] <= m["ended_at"]
    assert m["duration_s"] >= 0 and evidence.manifest_errors(m) == []


def test_succeeded_run_cannot_have_a_failed_stage(tmp_path: Path) -> None:
    record = complete(started(tmp_path / "r1"))
    record.stage("sample", "failed", 1.0)
    with pytest.raises(evidence.ManifestError, match="stages.sample.status"):
        record.succeed()


def test_kaggle_runs_record_run_type_and_notebook_url(tmp_path: Path) -> None:
    record = started(tmp_path / "r1")
    record.update_manifest(environment={"on_kaggle": True, "run_type": "Batch",
                                        "notebook_url": "https://www.kaggle.com/code/me/gemma-rl",
                                        "notebook_version": "7"})
    with pytest.raises(evidence.ManifestError, match="notebook_url"):
        record.update_manifest(environment={"notebook_url": "http://example.com/x"})


# ---------------------------------------------------------------------------- failures


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - we want the traceback
        return caught


def test_fail_writes_analysis_with_stage_error_checkpoint_and_next_step(tmp_path: Path) -> None:
    record = complete(started(tmp_path / "r1"))
    record.log_metrics({"stage": "sft", "step": 7, "loss": float("nan")})
    from kaggle_lib.training.sft import NonFiniteLossError

    record.fail("train", _raise(NonFiniteLossError(7, float("nan"))), checkpoint="checkpoints/sft/6")
    m = record.read_manifest()
    assert evidence.manifest_errors(m) == []
    assert m["status"] == "failed" and m["ended_at"] and m["duration_s"] >= 0
    assert {k: m["failure"][k] for k in ("stage", "error_type", "last_good_checkpoint")} == {
        "stage": "train", "error_type": "NonFiniteLossError",
        "last_good_checkpoint": "checkpoints/sft/6"}
    assert m["failure"]["message"].startswith("loss became nan at step 7")
    text = (record.run_dir / evidence.FAILURE).read_text()
    assert "# Run failed in stage `train`" in text
    assert "last good checkpoint: `checkpoints/sft/6`" in text
    assert "Lower train.sft.learning_rate" in text  # what to do next
    assert "resume" in text and "## Last metrics before the failure" in text
    assert "## Traceback" in text and "NonFiniteLossError" in text


def test_first_failure_wins(tmp_path: Path) -> None:
    record = started(tmp_path / "r1")
    record.fail("auth", _raise(auth.AuthError("no token")))
    record.fail("notebook", _raise(RuntimeError("later")))
    assert record.read_manifest()["failure"]["stage"] == "auth"
    assert "later" not in (record.run_dir / evidence.FAILURE).read_text()


def test_fail_on_a_directory_the_notebook_never_touched(tmp_path: Path) -> None:
    record = evidence.RunRecord(tmp_path / "never")
    record.fail("notebook", _raise(RuntimeError("kernel not found: kaggle-lib")))
    m = record.read_manifest()
    assert evidence.manifest_errors(m) == []
    assert m["run_id"] == "never" and m["status"] == "failed"
    assert m["failure"]["last_good_checkpoint"] is None


def test_a_failure_is_never_lost_to_a_schema_error(tmp_path: Path) -> None:
    record = started(tmp_path / "r1")
    # A stage wrote something the schema does not allow, bypassing update_manifest.
    broken = {**record.read_manifest(), "devices": {"platform": "cpu"}}
    record.manifest_path.write_text(json.dumps(broken))
    record.fail("load_model", _raise(MemoryError("host OOM")))
    m = record.read_manifest()
    assert m["status"] == "failed" and m["failure"]["error_type"] == "MemoryError"
    assert any("devices" in e for e in m["schema_errors"])


class XlaRuntimeError(RuntimeError):
    """Stands in for jaxlib's XlaRuntimeError (same name)."""


class JaxRuntimeError(RuntimeError):
    """Stands in for jax's JaxRuntimeError (same name)."""


def test_out_of_memory_is_recognised_by_its_message() -> None:
    hint = errors.hint_for(XlaRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating"))
    assert "ran out of memory" in hint
    assert "ran out of memory" in errors.hint_for(JaxRuntimeError("RESOURCE_EXHAUSTED: x"))
    assert "HF_TOKEN" in errors.hint_for(auth.AuthError("401"))
    assert "Add-ons -> Secrets" in errors.hint_for(auth.AuthError("401"))


def fake_step(root: Path, step: int, items: tuple[str, ...]) -> Path:
    """A step directory as Orbax leaves it: the step metadata lists the items written."""
    d = root / str(step)
    d.mkdir(parents=True)
    handler = "orbax.checkpoint._src.handlers.pytree_checkpoint_handler.PyTreeCheckpointHandler"
    if items:
        (d / "_CHECKPOINT_METADATA").write_text(json.dumps(
            {"item_handlers": {i: handler for i in items}, "metrics": {}, "custom_metadata": {}}))
    for item in items:
        (d / item).mkdir()
        (d / item / "_METADATA").write_text("{}")
    return d


def test_last_good_checkpoint_is_the_newest_complete_step(tmp_path: Path) -> None:
    import os
    import time

    root = tmp_path / "r" / "checkpoints" / "sft"
    both = ("model_params", "optimizer_state")
    # 6: an empty step directory; 8: no optimizer state; 10: Orbax's temporary (unfinished) name.
    for step, items in ((2, both), (4, both), (6, ()), (8, ("model_params",))):
        d = fake_step(root, step, items)
        stamp = time.time() - 100 + step
        os.utime(d, (stamp, stamp))
    (root / "10.orbax-checkpoint-tmp-1234").mkdir()
    assert evidence.last_good_checkpoint(tmp_path / "r") == str(root / "4")
    assert evidence.last_good_checkpoint(tmp_path / "empty") is None


# ---------------------------------------------------------------------------- secrets


def test_scan_redacts_text_and_removes_binary_files_with_secrets(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    key = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # a Kaggle legacy key: 32 hex, not token-shaped
    kaggle_dir = tmp_path / "kaggle"
    kaggle_dir.mkdir()
    (kaggle_dir / "kaggle.json").write_text(json.dumps({"username": "me", "key": key}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(kaggle_dir))
    shaped = "hf_" + "a1B2" * 9
    registered = "my-registered-secret-value"
    auth.register_secret(registered)
    d = tmp_path / "run"
    d.mkdir()
    (d / "log.txt").write_text(f"key={key}\ntoken={shaped}\nother={registered}\nclean\n")
    (d / "events.bin").write_bytes(b"\x00\x01" + shaped.encode() + b"\x02" + key.encode())
    (d / "clean.md").write_text("nothing here, sha256 " + "c" * 64)
    hits = scan.scan_for_secrets(scan.run_files(d))
    assert sorted(Path(h).name for h in hits) == ["events.bin", "log.txt"]
    text = (d / "log.txt").read_text()
    assert key not in text and shaped not in text and registered not in text
    assert text.count(auth.REDACTED) == 3 and "clean" in text
    # A binary file is removed, not masked: masking would break its framing and checksums.
    assert not (d / "events.bin").exists()
    assert [Path(h).name for h in scan.removed_files(hits)] == ["events.bin"]
    assert (d / "clean.md").read_text().startswith("nothing here")
    assert scan.scan_for_secrets(scan.run_files(d)) == []  # idempotent


def test_weights_directories_are_not_scanned_byte_by_byte(tmp_path: Path) -> None:
    d = tmp_path / "run"
    (d / "checkpoints" / "sft" / "1").mkdir(parents=True)
    (d / "export" / "hf").mkdir(parents=True)
    (d / "export" / "hf" / "config.json").write_text("{}")
    (d / "checkpoints" / "sft" / "1" / "w").write_bytes(b"x")
    (d / "README.md").write_text("x")
    names = {p.relative_to(d).as_posix() for p in scan.scan_files(d)}
    assert names == {"README.md", "export/hf/config.json"}


# ---------------------------------------------------------------------------- listing, README, index


def test_checkpoint_listing_is_relative_and_hashes_content(tmp_path: Path) -> None:
    d = tmp_path / "run"
    step = d / "checkpoints" / "sft" / "2"
    (step / "model_params").mkdir(parents=True)
    (step / "model_params" / "a").write_bytes(b"123")
    (step / "_CHECKPOINT_METADATA").write_text("{}")
    (d / "export" / "orbax").mkdir(parents=True)
    (d / "export" / "orbax" / "tokenizer.model").write_bytes(b"spm")
    first = close.checkpoint_listing(d)
    assert [(e["kind"], e["stage"], e["step"], e["path"]) for e in first] == [
        ("checkpoint", "sft", 2, "checkpoints/sft/2"), ("export", "orbax", None, "export/orbax")]
    assert first[0]["files"] == 2 and first[0]["bytes"] == 5
    (step / "model_params" / "a").write_bytes(b"124")
    assert close.checkpoint_listing(d)[0]["sha256"] != first[0]["sha256"]


def test_readme_says_what_ran_and_how_it_ended(tmp_path: Path) -> None:
    record = complete(started(tmp_path / "runs" / "r1"))
    record.update_manifest(devices={"device_count": 8, "device_kind": "TPU v5 lite",
                                    "platform": "tpu"},
                           training={"sft": {"steps": 40, "mode": "lora"}},
                           config_resolved={"train": {"stages": ["sft"]}})
    record.log_metrics({"stage": "sft", "step": 1, "loss": 3.5})
    record.log_metrics({"stage": "sft", "step": 40, "loss": 1.25})
    record.fail("evaluate:trained", _raise(TimeoutError("cell timed out")))
    text = readme.write_readme(record.run_dir).read_text()
    assert "trained **gemma3-tiny**" in text and "LoRA supervised fine-tuning for 40 steps" in text
    assert "8 x TPU v5 lite (tpu)" in text
    assert "**failed** in stage `evaluate:trained` with `TimeoutError`: cell timed out" in text
    assert "3.5 at step 1 -> 1.25 at step 40" in text
    assert "failure_analysis.md" in text and "| train | succeeded | 2.5 |" in text


def test_readme_counts_the_items_dropped_as_too_long(tmp_path: Path) -> None:
    record = complete(started(tmp_path / "runs" / "r1"))
    record.update_manifest(
        config_resolved={"train": {"stages": ["sft", "grpo"], "grpo": {"max_prompt_len": 128}}},
        data={"train_items": 10, "examples": 7, "dropped": 3, "max_len": 256,
              "grpo_prompts": 9, "grpo_dropped_long": 1, "eval_max_prompt_tokens": 1024,
              "eval_dropped_long": {"baseline": 1, "trained": 1}, "eval_dropped_ids": ["huge-1"]})
    record.succeed()
    text = readme.write_readme(record.run_dir).read_text()
    assert ("- training: 10 items -> 7 examples; **3 dropped** as longer than data.max_seq_len "
            "(256 tokens)") in text
    assert "- GRPO: 9 prompts; **1 dropped** as longer than train.grpo.max_prompt_len (128 " \
        "tokens)" in text
    assert ("- evaluation: items dropped as longer than eval.max_prompt_tokens (1024 tokens): "
            "1 in baseline, 1 in trained (ids: `huge-1`)") in text


def test_readme_says_training_stopped_early_for_max_wall_time(tmp_path: Path) -> None:
    record = complete(started(tmp_path / "runs" / "r1"))
    record.update_manifest(training={"sft": {"steps": 2, "stopped_reason": "max_wall_time"}},
                           config_resolved={"train": {"stages": ["sft"], "max_wall_time": "0s",
                                                      "sft": {"max_steps": 4}}})
    record.succeed()
    text = readme.write_readme(record.run_dir).read_text()
    assert "**succeeded**. **Training stopped early**: sft stopped early at step 2 of 4: " \
        "train.max_wall_time (0s) ran out;" in text
    for reason in ("max_steps", "max_wall_time"):  # the last step reached: not early
        record.update_manifest(training={"sft": {"steps": 4, "stopped_reason": reason}})
        assert "stopped early" not in readme.write_readme(record.run_dir).read_text()


def test_index_has_one_line_per_run_and_updates_it(tmp_path: Path) -> None:
    runs = tmp_path / "evidence" / "runs"
    a = started(runs / "run-a")
    a.fail("auth", _raise(auth.AuthError("no token")))
    index = run_index.append_index(a.run_dir)
    assert index == tmp_path / "evidence" / "index.jsonl"
    b = complete(started(runs / "run-b"))
    b.succeed()
    run_index.append_index(b.run_dir)
    run_index.append_index(b.run_dir)  # closing twice (kernel, then runner) does not duplicate
    with index.open("a") as fh:
        fh.write("<<<<<<< HEAD\n")  # a merge conflict marker is dropped, not fatal
    # run-a re-run into the same directory: its line is replaced in place
    (a.run_dir / evidence.MANIFEST).unlink()
    (a.run_dir / evidence.FAILURE).unlink()
    complete(started(a.run_dir)).succeed()
    run_index.append_index(a.run_dir)
    entries = run_index.read_index(index)
    assert [e["run_id"] for e in entries] == ["run-a", "run-b"]
    assert [e["status"] for e in entries] == ["succeeded", "succeeded"]
    assert entries[1]["path"] == "runs/run-b" and entries[1]["trained_accuracy"] == 0.25
    assert len(index.read_text().splitlines()) == 2
    # any other layout: the index sits next to the run directory
    assert run_index.index_path(tmp_path / "elsewhere" / "x") == tmp_path / "elsewhere" / "index.jsonl"


# ---------------------------------------------------------------------------- after the kernel


class DeadKernelError(RuntimeError):
    """Stands in for nbclient's DeadKernelError (same name, same hint)."""


def test_kernel_death_is_recorded_against_the_running_stage(tmp_path: Path) -> None:
    record = complete(started(tmp_path / "runs" / "r1"))
    record.stage("train", "running")
    ckpt = fake_step(record.run_dir / "checkpoints" / "sft", 3, ("model_params", "optimizer_state"))
    m = close.close_after_kernel(record.run_dir, record.run_dir / "executed.ipynb",
                                  _raise(DeadKernelError("Kernel died")), 123.4)
    assert m["status"] == "failed" and m["failure"]["stage"] == "train"
    assert m["stages"]["train"]["status"] == "failed"
    assert m["failure"]["last_good_checkpoint"] == str(ckpt)
    assert m["notebook_wall_seconds"] == 123.4 and evidence.manifest_errors(m) == []
    for name in ("env_info.txt", "checkpoints.json", "README.md", evidence.FAILURE):
        assert (record.run_dir / name).is_file(), name
    assert "out-of-memory killer" in (record.run_dir / evidence.FAILURE).read_text()
    assert run_index.read_index(run_index.index_path(record.run_dir))[0]["failed_stage"] == "train"


def test_secret_in_the_executed_notebook_fails_a_succeeded_run(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    token = "hf_" + "Z9" * 18
    monkeypatch.setenv("HF_TOKEN", token)  # the runner's process knows it from the environment
    record = complete(started(tmp_path / "runs" / "r1"))
    record.succeed()
    notebook = record.run_dir / "executed.ipynb"
    notebook.write_text(json.dumps({"cells": [{"outputs": [{"text": f"oops {token}\n"}]}]}))
    m = close.close_after_kernel(record.run_dir, notebook, None, 10.0)
    assert m["status"] == "failed" and m["failure"]["stage"] == "secret-scan"
    assert m["failure"]["error_type"] == "SecretLeakError"
    assert m["secret_scan"]["hits"] == ["executed.ipynb"]
    for path in record.run_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    assert json.loads(notebook.read_text())["cells"][0]["outputs"][0]["text"] == "oops [REDACTED]\n"
