"""Reasoning data: the shared prompt/target template, loaders of items, batching."""

from kaggle_lib.data import reasoning_gym  # noqa: F401 - registers the rg: data spec
from kaggle_lib.data.batching import (
    SFTBatches,
    TokenizedSet,
    padding_stats,
    tokenize_example,
    tokenize_items,
)
from kaggle_lib.data.datasets import (
    DataError,
    Item,
    load_builtin,
    load_items,
    load_jsonl,
    load_sources,
    parse_spec,
    spec_list,
    validate_item,
    write_jsonl,
)
from kaggle_lib.data.template import SYSTEM_INSTRUCTION, format_prompt, format_target

__all__ = [
    "SYSTEM_INSTRUCTION",
    "DataError",
    "Item",
    "SFTBatches",
    "TokenizedSet",
    "format_prompt",
    "format_target",
    "load_builtin",
    "load_items",
    "load_jsonl",
    "load_sources",
    "padding_stats",
    "parse_spec",
    "spec_list",
    "tokenize_example",
    "tokenize_items",
    "validate_item",
    "write_jsonl",
]
