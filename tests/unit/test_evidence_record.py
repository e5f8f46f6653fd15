"""The typed run manifest and its generated schema, the common error base and its hints, the
log handler's redaction, and binary files with a secret leaving the record."""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest

from kaggle_lib import auth, errors, evidence, logs
from kaggle_lib.evidence import close, readme, scan
from kaggle_lib.evidence import index as run_index
from kaggle_lib.evidence.manifest import SCHEMA_PATH, manifest_json_schema

REPO = Path(__file__).resolve().parents[2]
COMMITTED_MANIFESTS = sorted((REPO / "evidence" / "runs").rglob(evidence.MANIFEST))
TOKEN = "hf_" + "Qx7" * 12


pytestmark = pytest.mark.usefixtures("clean_secrets")  # tests/conftest.py


# ---------------------------------------------------------------------------- manifest


def test_schema_file_is_the_one_generated_from_the_model() -> None:
    on_disk = json.loads(SCHEMA_PATH.read_text())
    assert on_disk == manifest_json_schema(), "run scripts/make_manifest_schema.py"


def test_committed_manifests_still_load() -> None:
    assert len(COMMITTED_MANIFESTS) >= 2
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    for path in COMMITTED_MANIFESTS:
        data = json.loads(path.read_text())
        assert evidence.manifest_errors(data) == [], path
        assert list(validator.iter_errors(data)) == [], path  # readers outside Python agree
        typed = evidence.RunManifest.model_validate(data)
        assert typed.status == data["status"] and typed.git.sha == data["git"]["sha"]


def test_typed_read_of_a_record(tmp_path: Path) -> None:
    record = evidence.RunRecord(tmp_path / "r1")
    record.start("r1", "demo", "configs/cpu_tiny.yaml")
    typed = evidence.RunManifest.model_validate(record.read_manifest())
    assert typed.run_id == "r1" and typed.status == "running" and typed.attempt == 1
    assert typed.packages.jax is not None


def test_unknown_fields_stay_allowed_but_named_fields_are_typed(tmp_path: Path) -> None:
    record = evidence.RunRecord(tmp_path / "r1")
    record.start("r1", "demo", "configs/cpu_tiny.yaml")
    record.update_manifest(training={"sft": {"steps": 3}})  # a stage's own field
    with pytest.raises(evidence.ManifestError, match=r"model\.param_count"):
        record.update_manifest(model={"name": "m", "source": "random", "param_count": "ten"})



def test_committed_runs_give_the_same_readme_and_index_line(tmp_path: Path) -> None:
    """README and index read the typed manifest now; what they write must not change."""
    committed_index = run_index.read_index(REPO / "evidence" / "index.jsonl")
    for manifest_path in COMMITTED_MANIFESTS:
        source = manifest_path.parent
        copy = tmp_path / "evidence" / "runs" / source.name
        shutil.copytree(source, copy)
        text = readme.write_readme(copy).read_text()
        # The Data section (issue 28) is new: the rest must read as it was committed.
        data = json.loads(manifest_path.read_text()).get("data") or {}
        section = re.search(r"\n## Data\n\n(?:- .*\n)+", text)
        assert (section is not None) == ("examples" in data), source.name
        if section:
            assert (f"{data['train_items']} items -> {data['examples']} examples; "
                    f"**{data['dropped']} dropped** as longer than data.max_seq_len "
                    f"({data['max_len']} tokens)") in section.group()
            text = text.replace(section.group(), "")
        assert text == (source / "README.md").read_text()
        line = [e for e in committed_index if e["run_id"] == source.name][-1]
        assert run_index.index_entry(copy) == {"attempt": 1, **line}


def test_readme_and_index_of_a_manifest_that_does_not_validate(tmp_path: Path) -> None:
    record = evidence.RunRecord(tmp_path / "runs" / "r1")
    record.start("r1", "demo", "configs/cpu_tiny.yaml")
    broken = {**record.read_manifest(), "devices": {"platform": "cpu"}}
    record.manifest_path.write_text(json.dumps(broken))
    record.fail("load_model", RuntimeError("host OOM"))
    assert "does not validate" in readme.write_readme(record.run_dir).read_text()
    entry = run_index.index_entry(record.run_dir)
    assert entry["run_id"] == "r1" and entry["status"] == "failed" and entry["schema_errors"]


# ---------------------------------------------------------------------------- errors


def _error_classes() -> list[type]:
    """Every exception class defined in kaggle_lib (found in the source, then imported)."""
    found = []
    for path in sorted((REPO / "kaggle_lib").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and any(
                    isinstance(b, ast.Name | ast.Attribute)
                    and ast.unparse(b).endswith(("Error", "Exception", "Failure"))
                    for b in node.bases):
                module = ".".join(path.relative_to(REPO).with_suffix("").parts)
                found.append(getattr(importlib.import_module(module), node.name))
    return found


def test_every_error_has_the_common_base_and_keeps_its_builtin_one() -> None:
    classes = _error_classes()
    assert len(classes) >= 20
    # Raised inside pydantic validators only (pydantic turns them into its ValidationError,
    # which our loaders re-word); they never reach a user.
    outside = sorted(c.__name__ for c in classes if not issubclass(c, errors.KaggleLibError))
    assert outside == ["_Blank", "_NotALabel", "_Problem"]
    from kaggle_lib import config, mesh
    from kaggle_lib.training.sft import NonFiniteLossError

    assert issubclass(mesh.MeshError, ValueError) and issubclass(config.ConfigError, ValueError)
    assert issubclass(auth.AuthError, RuntimeError)
    assert issubclass(NonFiniteLossError, FloatingPointError)


def test_hint_is_on_the_class_and_one_raise_may_override_it(tmp_path: Path) -> None:
    assert "HF_TOKEN" in auth.AuthError.hint
    assert errors.hint_for(auth.AuthError("no token")) == auth.AuthError.hint
    custom = auth.AuthError("no token", hint="Accept the licence on the model page.")
    assert errors.hint_for(custom) == "Accept the licence on the model page."
    assert auth.AuthError.hint != custom.hint  # the class keeps its own
    record = evidence.RunRecord(tmp_path / "r1")
    record.fail("auth", custom)
    assert "Accept the licence on the model page." in (record.run_dir / evidence.FAILURE).read_text()


def test_errors_of_other_libraries_still_get_a_hint() -> None:
    assert "time limit" in errors.hint_for(TimeoutError("cell timed out"))
    assert errors.hint_for(ZeroDivisionError("x")) == errors.DEFAULT_HINT


# ---------------------------------------------------------------------------- logs


def test_log_lines_are_plain_and_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    auth.register_secret(TOKEN)
    log = logs.get_logger("kaggle_lib.test_module")
    log.info("[kaggle_lib] token is %s", TOKEN)
    log.warning("[kaggle_lib] warning: careful")
    out = capsys.readouterr()
    assert out.out == f"[kaggle_lib] token is {auth.REDACTED}\n"
    assert out.err == "[kaggle_lib] warning: careful\n"


# ---------------------------------------------------------------------------- binary secrets


def _events_file(directory: Path, text: str) -> Path:
    """A TensorBoard event file (TFRecord framing, CRC per record) holding `text`."""
    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(directory))
    writer.add_text("config", text)
    writer.add_scalar("loss", 1.5, 1)
    writer.close()
    return next(directory.glob("events.out.tfevents.*"))


def _event_count(path: Path) -> int:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return len(list(EventFileLoader(str(path)).Load()))


def test_tensorboard_file_with_a_secret_is_removed_and_named(tmp_path: Path) -> None:
    auth.register_secret(TOKEN)
    record = evidence.RunRecord(tmp_path / "runs" / "r1")
    record.start("r1", "demo", "configs/cpu_tiny.yaml")
    leaked = _events_file(record.run_dir / "tensorboard" / "sft", f"token={TOKEN}")
    kept = _events_file(record.run_dir / "tensorboard" / "grpo", "no secret here")
    kept_bytes = kept.read_bytes()
    record.update_manifest(config_hash="b" * 64, metrics={"trained_accuracy": 0.25},
                           devices={"platform": "cpu", "device_kind": "cpu", "device_count": 1},
                           model={"name": "gemma3-tiny", "source": "random"})
    record.stage("train", "succeeded", 2.5)
    record.succeed()
    m = close.close_after_kernel(record.run_dir, None, None, 1.0)
    assert not leaked.exists()
    assert kept.read_bytes() == kept_bytes and _event_count(kept) == 3  # intact, readable
    rel = leaked.relative_to(record.run_dir).as_posix()
    assert m["status"] == "failed" and m["failure"]["error_type"] == "SecretLeakError"
    assert m["secret_scan"]["removed"] == [rel] and evidence.manifest_errors(m) == []
    analysis = (record.run_dir / evidence.FAILURE).read_text()
    assert rel in analysis and "removed from the record" in analysis
    assert TOKEN not in analysis
    assert "remove that print" in analysis  # SecretLeakError's hint, as before


def test_removed_binary_is_named_when_the_run_had_already_failed(tmp_path: Path) -> None:
    auth.register_secret(TOKEN)
    record = evidence.RunRecord(tmp_path / "runs" / "r1")
    record.start("r1", "demo", "configs/cpu_tiny.yaml")
    leaked = _events_file(record.run_dir / "tensorboard", f"token={TOKEN}")
    record.fail("train", RuntimeError("loss exploded"))
    m = close.close_after_kernel(record.run_dir, None, None, 1.0)
    rel = leaked.relative_to(record.run_dir).as_posix()
    assert m["failure"]["stage"] == "train"  # the first failure stays the headline
    assert m["secret_leak"] == [rel] and not leaked.exists()
    analysis = (record.run_dir / evidence.FAILURE).read_text()
    assert "## Secret scan" in analysis and rel in analysis


def test_scan_of_a_package_refuses_a_binary_hit(tmp_path: Path) -> None:
    auth.register_secret(TOKEN)
    blob = tmp_path / "weights.bin"
    blob.write_bytes(b"\x00" + TOKEN.encode() + b"\x01")
    hits = scan.scan_for_secrets([blob])
    assert hits == [str(blob)] and scan.removed_files(hits) == [str(blob)]
