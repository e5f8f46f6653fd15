"""Config validation: every mistake names the file, the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kaggle_lib.config import ConfigError, RunConfig, load_config, parse_duration

CONFIGS = sorted((Path(__file__).resolve().parent.parent / "configs").glob("*.yaml"))


def write(tmp_path: Path, tree: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


BASE = {"model": {"name": "gemma3-tiny", "source": "random"}}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)
    assert len(cfg.hash) == 64


def test_required_configs_are_shipped() -> None:
    names = {p.name for p in CONFIGS}
    assert {"cpu_tiny.yaml", "cpu_gemma3_270m.yaml", "tpu_gemma3_1b.yaml", "tpu_gemma2_2b.yaml",
            "gpu_gemma3_1b.yaml"} <= names


def test_unknown_key_names_file_key_and_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "train": {"sft": {"max_stepz": 3}}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert "train.sft.max_stepz" in text
    assert "unknown key" in text
    assert "max_steps" in text  # the allowed keys are listed


def test_wrong_type_names_value(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "train": {"sft": {"batch_size": "eight"}}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "train.sft.batch_size = 'eight'" in str(err.value)
    assert "integer" in str(err.value)


def test_out_of_range_value(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "train": {"sft": {"learning_rate": -1}}})
    with pytest.raises(ConfigError, match=r"train.sft.learning_rate = -1: .*greater than 0"):
        load_config(path)


def test_bad_enum_lists_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "device": "npu"})
    with pytest.raises(ConfigError, match=r"device = 'npu'.*'auto', 'cpu', 'gpu' or 'tpu'"):
        load_config(path)


def test_missing_required_key(tmp_path: Path) -> None:
    path = write(tmp_path, {"device": "cpu"})
    with pytest.raises(ConfigError, match="model: required key is missing"):
        load_config(path)


def test_missing_files(tmp_path: Path) -> None:
    path = write(tmp_path, {**BASE, "data": {"train": "jsonl:/nonexistent/train.jsonl"}})
    with pytest.raises(ConfigError, match=r"data.train = 'jsonl:/nonexistent/train.jsonl': file does not exist"):
        load_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_overrides_dotted_and_nested(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    cfg = load_config(path, {"train.sft.max_steps": 7, "eval": {"batch_size": 2}})
    assert cfg.train.sft.max_steps == 7
    assert cfg.eval.batch_size == 2
    assert cfg.hash != load_config(path).hash


def test_bad_override_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"\(with overrides\)"):
        load_config(path, {"train.sft.max_steps": 0})


def test_duration_and_stage_order(tmp_path: Path) -> None:
    assert parse_duration("8h30m") == 30600
    assert parse_duration("90s") == 90
    with pytest.raises(ValueError):
        parse_duration("soon")
    path = write(tmp_path, {**BASE, "train": {"stages": ["grpo", "sft"]}})
    with pytest.raises(ConfigError, match="sft before grpo"):
        load_config(path)
    path = write(tmp_path, {**BASE, "train": {"max_wall_time": "tomorrow"}})
    with pytest.raises(ConfigError, match="train.max_wall_time"):
        load_config(path)


def test_local_source_needs_path(tmp_path: Path) -> None:
    path = write(tmp_path, {"model": {"name": "gemma3-270m", "source": "local"}})
    with pytest.raises(ConfigError, match="model.path is required"):
        load_config(path)
