"""Config validation: every mistake names the file, the key, the value and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kaggle_lib.config import ConfigError, RunConfig, config_changes, load_config, parse_duration

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))  # configs/ablations/ too


def write(tmp_path: Path, tree: dict, name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


BASE = {"model": {"name": "gemma3-tiny", "source": "random"}}


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
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


# ------------------------------------------------------------------ issue 11: hostile values


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ({"train.sft.max_steps": 10**30}, "train.sft.max_steps"),
        ({"train.sft.batch_size": 10**9}, "train.sft.batch_size"),
        ({"train.sft.weight_decay": float("inf")}, "train.sft.weight_decay"),
        ({"train.sft.learning_rate": float("nan")}, "train.sft.learning_rate"),
        ({"train.grpo.max_new_tokens": 10**6}, "train.grpo.max_new_tokens"),
        ({"data.length_buckets": [0, 256]}, "data.length_buckets.0"),
        ({"data.length_buckets": [-16, 256]}, "data.length_buckets.0"),
        ({"seed": -1}, "seed"),
        ({"eval.batch_size": 10**9}, "eval.batch_size"),
    ],
    ids=["max_steps", "batch", "inf", "nan", "grpo-tokens", "zero-bucket", "negative-bucket",
         "seed", "eval-batch"],
)
def test_numbers_out_of_bounds_are_refused_by_key(tmp_path: Path, override: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BASE), override)
    assert f"  {key} = " in str(err.value)


def test_grpo_clips_gradients_by_its_own_max_grad_norm(tmp_path: Path) -> None:
    """GRPO used to read train.sft.max_grad_norm; its own key defaults to that key's default."""
    path = write(tmp_path, BASE)
    cfg = load_config(path, {"train.sft.max_grad_norm": 0.5})
    assert cfg.train.grpo.max_grad_norm == 1.0 == load_config(path).train.sft.max_grad_norm
    assert load_config(path, {"train.grpo.max_grad_norm": None}).train.grpo.max_grad_norm is None
    with pytest.raises(ConfigError, match=r"train\.grpo\.max_grad_norm = 0:"):
        load_config(path, {"train.grpo.max_grad_norm": 0})


def test_duplicate_yaml_keys_name_file_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("model:\n  name: gemma3-tiny\n  source: random\ntrain:\n  sft:\n"
                    "    max_steps: 3\n    max_steps: 5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert str(path) in message and "duplicate key 'max_steps' on line 7" in message
    assert "first given on line 6" in message


def test_an_override_given_as_a_dotted_key_and_nested_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(ConfigError, match=r"^overrides: train.sft.max_steps given twice"):
        load_config(path, {"train.sft.max_steps": 2, "train": {"sft": {"max_steps": 3}}})
    assert load_config(path, {"train.sft.max_steps": 2, "train": {"sft": {"batch_size": 2}}}
                       ).train.sft.max_steps == 2


def test_data_spec_and_lora_regex_are_checked_before_any_model_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, "data": {"train": "csv:/x.csv"}}))
    assert "data.train = 'csv:/x.csv'" in str(err.value) and "unknown kind 'csv'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, "data": {"eval": "kaggle:owner/ds/file.jsonl"}}))
    assert "data.eval" in str(err.value) and "version number is required" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, "train": {"sft": {"lora": {"target_modules": ".*(q"}}}}))
    assert "train.sft.lora.target_modules" in str(err.value)
    assert "not a valid regular expression" in str(err.value)


def test_error_messages_quote_long_values_briefly(tmp_path: Path) -> None:
    huge = "x" * 350_000
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, "train": {"sft": {"max_stepz": huge}}}))
    assert "train.sft.max_stepz: unknown key" in str(err.value)
    assert len(str(err.value)) < 1500 and "(350002 characters)" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**BASE, "run_name": huge}))
    assert len(str(err.value)) < 1500


def test_non_utf8_config_and_non_mapping_overrides_are_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"model:\n  name: gemma3-tiny\nrun_name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml is not UTF-8 text: byte 40 \(line 3\)"):
        load_config(path)
    with pytest.raises(ConfigError, match="overrides must be a mapping"):
        load_config(write(tmp_path, BASE), ["train.sft.max_steps=3"])  # type: ignore[arg-type]


TINY = CONFIG_DIR / "cpu_tiny.yaml"


@pytest.mark.parametrize(("overrides", "resumable"), [
    ({"train.sft.lora.rank": 8}, False), ({"train.sft.mode": "full"}, False),
    ({"model.name": "gemma3-270m"}, False), ({"train.sft.optimizer": "adafactor"}, False),
    ({"train.sft.learning_rate": 0.01}, False), ({"seed": 1}, False),
    ({"data.train_limit": 128}, False), ({"data.max_seq_len": 128}, False),
    ({"train.sft.batch_size": 4}, False), ({"train.grpo.num_generations": 2}, False),
    ({"train.sft.max_steps": 9}, True), ({"train.grpo.max_steps": 9}, True),
    ({"eval.batch_size": 2}, True), ({"data.eval_limit": 2}, True),
    ({"train.max_wall_time": "1h"}, True), ({"evidence.root": "elsewhere"}, True),
    ({"train.checkpoint_every": 1}, True), ({"run_name": "other"}, True),
    ({"train.stages": ["sft", "grpo"]}, True),
], ids=lambda value: str(value))
def test_a_config_change_is_classed_by_whether_checkpoints_survive_it(
        overrides: dict, resumable: bool) -> None:
    [change] = config_changes(load_config(TINY).to_dict(), load_config(TINY, overrides))
    [(key, value)] = overrides.items()
    assert (change.key, change.new, change.resumable) == (key, value, resumable)


def test_config_change_notes_say_what_else_changes() -> None:
    old = load_config(TINY, {"train.stages": ["sft", "grpo"]}).to_dict()
    [stages] = config_changes(old, load_config(TINY))
    assert not stages.resumable and stages.note == "a stage removed or reordered"
    [steps] = config_changes(old, load_config(TINY, {"train.stages": ["sft", "grpo"],
                                                      "train.sft.max_steps": 8}))
    assert steps.describe() == ("train.sft.max_steps: 4 -> 8 (also changes the learning-rate "
                                "schedule, which decays over max_steps)")
    # An older config.yaml without keys added since is read with their defaults: no change.
    trimmed = {**old, "train": {k: v for k, v in old["train"].items() if k != "remat"}}
    assert config_changes(trimmed, load_config(TINY, {"train.stages": ["sft", "grpo"]})) == []


def test_a_lora_rank_above_the_smallest_adapted_dimension_is_refused_at_model_build() -> None:
    from kaggle_lib.config import LoraSection
    from kaggle_lib.models import build
    from tests import training_helpers as th

    model = th.build_model(th.tiny_config())  # embed_dim 64: q_einsum maps 64 -> 4 x 16
    with pytest.raises(ConfigError) as raised:
        build.add_lora(model, LoraSection(rank=65), seed=0, source="configs/x.yaml")
    message = str(raised.value)
    assert message.startswith("invalid config configs/x.yaml:\n  train.sft.lora.rank = 65: ")
    assert "more than 64, the smallest input or output size of a weight it adapts" in message
    assert message.endswith("train.sft.lora.target_modules: 1..64")
