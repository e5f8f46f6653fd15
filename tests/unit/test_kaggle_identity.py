"""The run manifest records the Kaggle image (/etc/git_commit, /etc/build_date) on Kaggle."""

from __future__ import annotations

from pathlib import Path

import pytest

from kaggle_lib import evidence, pipeline


@pytest.fixture()
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KAGGLE_LIB_KAGGLE_ROOT", str(tmp_path))
    for var in ("KAGGLE_LIB_KERNEL_SLUG", "KAGGLE_LIB_KERNEL_VERSION", "KAGGLE_URL_BASE",
                "KAGGLE_KERNEL_INTEGRATIONS", "GIT_COMMIT", "BUILD_DATE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "git_commit").write_text("3f2b9c1e7d\n")
    (tmp_path / "etc" / "build_date").write_text("20261120-031502\n")
    return tmp_path


def test_image_identity_is_recorded_on_kaggle_and_passes_the_schema(root: Path) -> None:
    identity = evidence.kaggle_identity(on_kaggle=True)
    assert identity["kaggle_image"] == {"git_commit": "3f2b9c1e7d",
                                        "build_date": "20261120-031502"}
    record = evidence.RunRecord(root / "run")
    record.start("r1", "", "configs/cpu_tiny.yaml")
    record.update_manifest(environment={"on_kaggle": True, "run_type": "Batch", **identity})
    assert record.read_manifest()["environment"]["kaggle_image"]["git_commit"] == "3f2b9c1e7d"
    with pytest.raises(Exception, match="kaggle_image"):
        record.update_manifest(environment={"on_kaggle": True, "run_type": "Batch",
                                            "kaggle_image": {"git_commit": 7}})


def test_image_identity_is_absent_off_kaggle_and_when_files_are_missing(root: Path) -> None:
    assert "kaggle_image" not in evidence.kaggle_identity(on_kaggle=False)
    (root / "etc" / "git_commit").unlink()
    assert evidence.kaggle_identity(on_kaggle=True)["kaggle_image"] == {
        "build_date": "20261120-031502"}
    (root / "etc" / "build_date").unlink()
    assert "kaggle_image" not in evidence.kaggle_identity(on_kaggle=True)


def test_image_identity_falls_back_to_the_tpu_images_environment(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "etc" / "git_commit").unlink()
    (root / "etc" / "build_date").unlink()
    monkeypatch.setenv("GIT_COMMIT", "abc123")
    monkeypatch.setenv("BUILD_DATE", "unknown")  # the Dockerfile's default: not an identity
    assert evidence.kaggle_identity(on_kaggle=True)["kaggle_image"] == {"git_commit": "abc123"}


def test_start_run_on_kaggle_writes_the_image_identity_into_the_manifest(
        root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring, not only the helper: a run started on Kaggle (here one whose config then
    fails) has environment.kaggle_image in run_manifest.json; off Kaggle it has none."""
    from kaggle_lib.config import ConfigError

    config = root / "bad.yaml"
    config.write_text("model:\n  name: gemma3-tiny\n  source: random\ncolour: blue\n")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    with pytest.raises(ConfigError):
        pipeline.start_run(str(config), run_dir=str(root / "runs" / "on"))
    env = evidence.RunRecord(root / "runs" / "on").read_manifest()["environment"]
    assert env["on_kaggle"] is True
    assert env["kaggle_image"] == {"git_commit": "3f2b9c1e7d", "build_date": "20261120-031502"}
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE")
    monkeypatch.setenv("KAGGLE_LIB_KAGGLE_ROOT", str(root / "elsewhere"))
    with pytest.raises(ConfigError):
        pipeline.start_run(str(config), run_dir=str(root / "runs" / "off"))
    env = evidence.RunRecord(root / "runs" / "off").read_manifest()["environment"]
    assert env["on_kaggle"] is False and "kaggle_image" not in env
