"""data.train / data.eval as one spec or a list of specs (concatenated, counts in the record)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kaggle_lib.config import ConfigError, check_files, load_config, validate_config
from kaggle_lib.data.sources import load_items, load_sources, pick_eval_items
from kaggle_lib.data_spec import DataError, spec_list

BASE = {"model": {"name": "gemma3-tiny", "source": "random"}}
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_list_spec_loads_the_concatenation_with_per_spec_counts() -> None:
    items, sources = load_sources(["builtin:eval", "rg:chain_sum=1@3"], limit=5)
    assert sources == [{"spec": "builtin:eval", "items": 5},
                       {"spec": "rg:chain_sum=1@3", "items": 5}]
    assert items[:5] == load_items("builtin:eval", limit=5)
    assert [i["id"] for i in items[5:]] == [i["id"] for i in load_items("rg:chain_sum=1@3", 5)]


def test_single_spec_loads_as_before() -> None:
    items, sources = load_sources("builtin:eval", limit=3)
    assert items == load_items("builtin:eval", limit=3)
    assert sources == [{"spec": "builtin:eval", "items": 3}]
    assert spec_list("builtin:eval") == ("builtin:eval",)


def test_an_id_in_two_sources_is_refused() -> None:
    with pytest.raises(DataError, match="ids must be unique across a list of specs"):
        load_sources(["builtin:eval", "builtin:eval"], limit=2)


def test_list_spec_validates_and_dumps_as_a_list() -> None:
    cfg = validate_config({**BASE, "data": {"train": ["builtin:eval", "rg:chain_sum=1@3"],
                                            "eval": ["builtin:eval", "builtin:eval_rg"]}})
    assert cfg.data.train == ("builtin:eval", "rg:chain_sum=1@3")
    assert cfg.to_dict()["data"]["eval"] == ["builtin:eval", "builtin:eval_rg"]
    # The resolved config.yaml a run writes reads back to the same config.
    assert validate_config(yaml.safe_load(cfg.to_yaml())).hash == cfg.hash


def test_single_string_spec_dumps_unchanged() -> None:
    cfg = validate_config({**BASE, "data": {"train": "builtin:train"}})
    assert cfg.data.train == "builtin:train"
    assert cfg.to_dict()["data"]["train"] == "builtin:train"
    assert cfg.hash == validate_config(BASE).hash  # the default is the same string


@pytest.mark.parametrize(("bad", "expected"), [
    (["builtin:eval", "csv:/x.csv"], "data.train[1]: data spec 'csv:/x.csv': unknown kind 'csv'"),
    (["builtin:eval", 3], "data.train[1] = 3: each entry must be a data spec string"),
    ([], "must be one data spec or a non-empty list of them"),
])
def test_bad_list_entry_names_its_index_and_the_allowed_forms(bad: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config({**BASE, "data": {"train": bad}})
    assert expected in str(err.value)
    assert "rg:<mix>[@<seed>]" in str(err.value)


def test_check_files_names_the_missing_list_entry() -> None:
    cfg = validate_config({**BASE, "data": {"eval": ["builtin:eval", "jsonl:/nonexistent/e.jsonl"]}})
    with pytest.raises(ConfigError, match=r"data.eval\[1\] = 'jsonl:/nonexistent/e.jsonl': file"):
        check_files(cfg, "c.yaml")


@pytest.mark.parametrize("name", ["tpu_gemma3_1b.yaml", "tpu_gemma2_2b.yaml", "gpu_gemma3_1b.yaml"])
def test_accelerator_configs_train_and_evaluate_on_gsm8k_and_reasoning_gym(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    train, evaluate = spec_list(cfg.data.train), spec_list(cfg.data.eval)
    assert "hf:openai/gsm8k:main@train" in train
    # GRPO reads data.train too: its reasoning-gym items (with answers) get rg rewards.
    assert "grpo" in cfg.train.stages and any(s.startswith("rg:wide_sft") for s in train)
    assert "hf:openai/gsm8k:main@test" in evaluate and "builtin:eval_rg" in evaluate


def test_eval_items_record_each_sources_counts() -> None:
    cfg = validate_config({**BASE, "data": {"eval": ["builtin:eval", "builtin:eval_rg"],
                                            "eval_limit": 350}})
    items, sources = pick_eval_items(cfg.data.eval, cfg.data.eval_limit)
    assert len(items) == 350
    assert [(s["spec"], s["items"]) for s in sources] == [("builtin:eval", 300),
                                                          ("builtin:eval_rg", 128)]
    assert sum(s["evaluated"] for s in sources) == 350
    assert all(s["evaluated"] > 0 for s in sources)  # the stratified pick covers both
