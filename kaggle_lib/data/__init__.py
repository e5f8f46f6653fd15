"""Reasoning data: the shared prompt/target template, synthetic problems, loaders, batching."""

from kaggle_lib.data import reasoning_gym  # noqa: F401 - registers the rg: data spec
from kaggle_lib.data.batching import (
    ByteTokenizer,
    SFTBatches,
    TokenizedSet,
    padding_stats,
    tokenize_example,
    tokenize_items,
)
from kaggle_lib.data.datasets import (
    DataError,
    load_builtin,
    load_items,
    load_jsonl,
    parse_spec,
    validate_item,
    write_jsonl,
)
from kaggle_lib.data.synthetic import generate_items
from kaggle_lib.data.template import SYSTEM_INSTRUCTION, format_prompt, format_target

__all__ = [
    "SYSTEM_INSTRUCTION",
    "ByteTokenizer",
    "DataError",
    "SFTBatches",
    "TokenizedSet",
    "format_prompt",
    "format_target",
    "generate_items",
    "load_builtin",
    "load_items",
    "load_jsonl",
    "padding_stats",
    "parse_spec",
    "tokenize_example",
    "tokenize_items",
    "validate_item",
    "write_jsonl",
]
