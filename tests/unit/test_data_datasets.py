"""Item validation, jsonl errors, data specs, and the HF / Kaggle loaders on local fixtures only.

HF: `datasets.load_dataset` is pointed at a temporary directory laid out like the real
`openai/gsm8k` hub repo (README with YAML `configs`, parquet shards per config/split). A local
directory goes through the same config/data-file resolution and parquet builder as a hub
repo, without any network; the arrow cache is redirected into the temporary directory.

Kaggle: kagglehub 1.0.2 (kagglehub/cache.py) keeps one file of dataset version N at
`$KAGGLEHUB_CACHE/datasets/<owner>/<dataset>/versions/<N>/<file>` and counts it as present
only with the marker `$KAGGLEHUB_CACHE/datasets/<owner>/<dataset>/.complete/<N>/<file>.complete`
(the whole bundle uses `.../<dataset>/<N>.complete` instead). The test pre-fills that layout,
so a versioned handle resolves from the cache without calling the API.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kaggle_lib.data.datasets import (
    last_boxed,
    load_builtin,
    load_jsonl,
    map_record,
    split_gsm8k_answer,
)
from kaggle_lib.data.sources import load_items
from kaggle_lib.data_spec import DataError, DataSpec, parse_spec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "data"
GOOD = {"id": "a-1", "section": "math", "category": "arithmetic", "difficulty": "easy",
        "prompt": "What is 2 + 3?", "answer": "5"}


def _write_lines(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


# ------------------------------------------------------------------------------ jsonl files


def test_load_jsonl_reads_valid_items_and_keeps_extra_fields() -> None:
    items = load_jsonl(FIXTURES / "items_valid.jsonl")
    assert [it["id"] for it in items] == ["v-1", "v-2"]
    assert items[1]["source"] == "hand-written"
    assert items[0]["reasoning"] == "2 + 3 = 5."
    with pytest.raises(DataError, match=r"items_valid.jsonl:3: missing field 'reasoning'"):
        load_jsonl(FIXTURES / "items_valid.jsonl", require_reasoning=True)


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "answer"},
         r"bad.jsonl:2: missing field 'answer'; required fields: id, section, category"),
        ({**GOOD, "answer": 5}, r"bad.jsonl:2: field 'answer' must be a string, got int 5 \(write"),
        ({**GOOD, "difficulty": "expert"},
         r"bad.jsonl:2: field 'difficulty' = 'expert' is not allowed; allowed: easy, medium, hard"),
        ({**GOOD, "section": "Math Problems"},
         r"bad.jsonl:2: field 'section' = 'Math Problems' is not allowed; use a lower-case label"),
        ({**GOOD, "prompt": "  "}, r"bad.jsonl:2: field 'prompt' is empty"),
        ({**GOOD, "reasoning": ["x"]},
         r"bad.jsonl:2: field 'reasoning' must be a string, got list"),
        ({**GOOD, "reasoning": None},
         r"bad.jsonl:2: field 'reasoning' must be a string, got NoneType None"),
        ({**GOOD, "category": "", "answer": 7},  # several problems: the first one in field order
         r"bad.jsonl:2: field 'category' is empty"),
        ('{"id": "a-2", ', r"bad.jsonl:2: not valid JSON"),
        ('["a list"]', r"bad.jsonl:2: expected a JSON object, got list"),
        ({**GOOD}, r"bad.jsonl:2: duplicate id 'a-1' \(first on line 1\)"),
    ],
)
def test_load_jsonl_errors_name_file_line_field_and_allowed(
    tmp_path: Path, record: object, message: str
) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [GOOD, record])
    with pytest.raises(DataError, match=message):
        load_jsonl(path)


def test_load_jsonl_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match="empty.jsonl: no items"):
        load_jsonl(tmp_path / "empty.jsonl")


def test_load_builtin_and_limit() -> None:
    assert len(load_builtin("eval", limit=7)) == 7
    with pytest.raises(DataError, match="split 'test' is not allowed; allowed: train, eval"):
        load_builtin("test")


# ------------------------------------------------------------------------------ data specs


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("builtin:train", DataSpec("builtin", "train")),
        ("jsonl:/data/x.jsonl", DataSpec("jsonl", "/data/x.jsonl")),
        ("hf:openai/gsm8k", DataSpec("hf", "openai/gsm8k", None, "train")),
        ("hf:openai/gsm8k:main@test", DataSpec("hf", "openai/gsm8k", "main", "test")),
        ("hf:openai/gsm8k:main@test[:100]", DataSpec("hf", "openai/gsm8k", "main", "test[:100]")),
        ("hf:HuggingFaceH4/MATH-500@test", DataSpec("hf", "HuggingFaceH4/MATH-500", None, "test")),
        ("kaggle:acme/mini/versions/3/train.csv",
         DataSpec("kaggle", "acme/mini/versions/3", file="train.csv")),
        ("kaggle:acme/mini/versions/12/sub/dir/a.jsonl",
         DataSpec("kaggle", "acme/mini/versions/12", file="sub/dir/a.jsonl")),
    ],
)
def test_parse_spec(spec: str, parsed: DataSpec) -> None:
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("train.jsonl", r"'train.jsonl' is not allowed; use one of: builtin:train"),
        ("builtin:test", r"builtin split must be one of train, eval"),
        ("jsonl:", r"missing path"),
        ("hf:", r"use hf:<repo>\[:<config>\]\[@<split>\]"),
        ("hf:openai/gsm8k:@test", r"use hf:<repo>"),
        ("hf:openai/gsm8k@", r"use hf:<repo>"),
        ("kaggle:acme/mini/train.csv",
         r"kaggle:<owner>/<dataset>/versions/<N>/<file> \(the version"),
        ("kaggle:acme/mini/versions/latest/train.csv", r"versions/<N>/<file>"),
        ("kaggle:acme/mini/versions/3", r"versions/<N>/<file>"),
        ("s3:bucket/x", r"unknown kind 's3'"),
    ],
)
def test_parse_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_spec(spec)


def test_load_items_builtin_and_jsonl() -> None:
    assert [it["id"] for it in load_items("builtin:eval", limit=3)] == [
        "eval-00000", "eval-00001", "eval-00002"]
    assert len(load_items(f"jsonl:{FIXTURES / 'items_valid.jsonl'}")) == 2
    with pytest.raises(DataError, match="limit must be >= 1"):
        load_items("builtin:eval", limit=0)


# ---------------------------------------------------------------------- external mappings


def test_split_gsm8k_answer_strips_annotations_and_commas() -> None:
    text = "It holds 1200+1400 = <<1200+1400=2600>>2,600.\n#### 2,600"
    reasoning, answer = split_gsm8k_answer(text)
    assert (reasoning, answer) == ("It holds 1200+1400 = 2,600.", "2600")
    bare = map_record({"question": "2 + 2?", "answer": "#### 4"}, source="x", index=0)
    assert bare["answer"] == "4" and "reasoning" not in bare
    with pytest.raises(DataError, match="no '#### <final answer>' line"):
        split_gsm8k_answer("no final line")


def test_map_record_math_style_and_unknown_layout() -> None:
    item = map_record({"problem": "Compute $\\frac{1}{2}+\\frac{1}{2}$.",
                       "solution": "We get $\\boxed{\\frac{2}{2}}$, i.e. $\\boxed{1}$.",
                       "level": "Level 4", "type": "Prealgebra"}, source="hf:x", index=3)
    assert (item["answer"], item["difficulty"], item["category"]) == ("1", "hard", "prealgebra")
    assert last_boxed("\\boxed{\\frac{a}{b}}") == "\\frac{a}{b}"
    with pytest.raises(DataError, match=r"hf:x: record 0: unrecognized columns \['text'\]"):
        map_record({"text": "hi"}, source="hf:x", index=0)


# ---------------------------------------------------------------------------- HuggingFace


def _gsm8k_like_repo(root: Path) -> Path:
    """A local copy of the openai/gsm8k repo layout holding the fixture records."""
    lines = (FIXTURES / "gsm8k_sample.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    repo = root / "gsm8k"
    (repo / "main").mkdir(parents=True)
    shards = repo / "main"
    pq.write_table(pa.Table.from_pylist(records[:3]), shards / "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(records[3:]), shards / "test-00000-of-00001.parquet")
    (repo / "README.md").write_text(
        "---\nlicense: mit\nconfigs:\n- config_name: main\n  data_files:\n"
        "  - split: train\n    path: main/train-*\n  - split: test\n    path: main/test-*\n---\n"
        "# GSM8K-shaped fixture\n"
    )
    return repo


@pytest.fixture
def hf_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import datasets
    import huggingface_hub.constants

    # Keep the arrow cache out of ~/.cache and make any hub access fail fast instead of waiting.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return tmp_path


def test_hf_loader_maps_gsm8k_configs_and_splits(hf_offline: Path) -> None:
    repo = _gsm8k_like_repo(hf_offline)
    train = load_items(f"hf:{repo}:main@train")
    assert [it["answer"] for it in train] == ["72", "10", "2600"]
    first = train[0]
    assert first["prompt"].startswith("Natalia sold clips to 48")
    assert first["reasoning"] == ("Natalia sold 48/2 = 24 clips in May.\n"
                                  "Natalia sold 48+24 = 72 clips altogether in April and May.")
    labels = (first["section"], first["category"], first["difficulty"])
    assert labels == ("math", "gsm8k", "unrated")
    assert len({it["id"] for it in train}) == 3
    test = load_items(f"hf:{repo}:main@test")
    assert [it["answer"] for it in test] == ["-2"]
    assert len(load_items(f"hf:{repo}:main@train", limit=2)) == 2
    assert [it["answer"] for it in load_items(f"hf:{repo}:main@train[1:2]")] == ["10"]


def test_hf_loader_errors_name_the_spec(hf_offline: Path) -> None:
    repo = _gsm8k_like_repo(hf_offline)
    with pytest.raises(DataError, match=rf"hf:{repo}:socratic@train: cannot load"):
        load_items(f"hf:{repo}:socratic")
    with pytest.raises(DataError, match=r"hf:no-such-org/no-such-data@train: cannot load"):
        load_items("hf:no-such-org/no-such-data")


# --------------------------------------------------------------------------------- Kaggle


def _kaggle_cache(root: Path, owner: str, dataset: str, version: int, file: Path) -> Path:
    base = root / "datasets" / owner / dataset
    (base / "versions" / str(version)).mkdir(parents=True)
    shutil.copy(file, base / "versions" / str(version) / file.name)
    marker = base / ".complete" / str(version) / f"{file.name}.complete"
    marker.parent.mkdir(parents=True)
    marker.touch()
    return root


@pytest.fixture
def kaggle_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "kagglehub"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(cache))
    # Outside a Kaggle notebook / Colab so kagglehub uses its HTTP resolver and its cache.
    for var in ("KAGGLE_KERNEL_RUN_TYPE", "KAGGLE_DATA_PROXY_URL", "TBE_RUNTIME_ADDR"):
        monkeypatch.delenv(var, raising=False)
    return cache


def test_kaggle_loader_reads_a_cached_versioned_file(kaggle_offline: Path) -> None:
    _kaggle_cache(kaggle_offline, "acme", "reasoning-mini", 3, FIXTURES / "kaggle_reasoning.csv")
    items = load_items("kaggle:acme/reasoning-mini/versions/3/kaggle_reasoning.csv")
    assert [it["id"] for it in items] == ["k-1", "k-2", "k-3"]
    assert items[1] == {"id": "k-2", "section": "logic", "category": "riddle",
                        "difficulty": "unrated",
                        "prompt": "I have keys but open no locks, what am I?",
                        "answer": "a piano", "reasoning": "Keys with no locks, as on a piano."}
    spec = "kaggle:acme/reasoning-mini/versions/3/kaggle_reasoning.csv"
    assert len(load_items(spec, limit=1)) == 1


def test_kaggle_loader_gsm8k_jsonl_and_bad_file_type(kaggle_offline: Path) -> None:
    _kaggle_cache(kaggle_offline, "acme", "gsm", 1, FIXTURES / "gsm8k_sample.jsonl")
    items = load_items("kaggle:acme/gsm/versions/1/gsm8k_sample.jsonl")
    assert [it["answer"] for it in items] == ["72", "10", "2600", "-2"]
    with pytest.raises(DataError, match=r"kaggle:acme/gsm/versions/1/notes.txt: unsupported file"):
        load_items("kaggle:acme/gsm/versions/1/notes.txt")


def test_kaggle_file_without_completion_marker_is_not_trusted(
    kaggle_offline: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The file is there but its marker is not (an interrupted download): kagglehub must go to
    # the API, which points at localhost here so nothing leaves the machine.
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    _kaggle_cache(kaggle_offline, "acme", "half", 2, FIXTURES / "kaggle_reasoning.csv")
    (kaggle_offline / "datasets/acme/half/.complete/2/kaggle_reasoning.csv.complete").unlink()
    with pytest.raises(DataError, match=r"kaggle:acme/half/versions/2/kaggle_reasoning.csv: "
                                        r"cannot download"):
        load_items("kaggle:acme/half/versions/2/kaggle_reasoning.csv")


def test_non_utf8_data_file_names_file_and_line(tmp_path: Path) -> None:
    good = ('{"id": "a", "section": "math", "category": "arithmetic", "difficulty": "easy", '
            '"prompt": "1+1?", "answer": "2"}\n')
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(good.encode() + good.replace('"a"', '"b"').replace("1+1?", "caf\xe9?")
                     .encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 text"):
        load_items(f"jsonl:{path}")


@pytest.mark.parametrize(("field", "value", "tag"), [
    ("answer", "<answer>5</answer>", "<answer>"),
    ("answer", "5</answer>", "</answer>"),
    ("reasoning", "2 + 3 = 5.< /Reasoning>", "< /Reasoning>"),
    ("reasoning", "Think <reasoning> first. 2 + 3 = 5.", "<reasoning>"),
])
def test_format_tag_in_answer_or_reasoning_is_refused_with_file_line_field(
        tmp_path: Path, field: str, value: str, tag: str) -> None:
    tagged = {**GOOD, "id": "a-2", "reasoning": "2 + 3 = 5.", field: value}
    path = _write_lines(tmp_path / "tagged.jsonl", [{**GOOD, "reasoning": "2 + 3 = 5."}, tagged])
    with pytest.raises(DataError, match=rf"tagged.jsonl:2: field '{field}' holds the format tag "
                                        rf"'{tag}'.*must not contain <answer>, </answer>"):
        load_items(f"jsonl:{path}")


def test_format_tag_in_a_mapped_record_is_refused_naming_the_record() -> None:
    from kaggle_lib.data.datasets import validate_items

    with pytest.raises(DataError, match=r"hf:x@train: item 1: field 'answer' holds the format tag"):
        validate_items([GOOD, {**GOOD, "id": "a-2", "answer": "<ANSWER>5"}], source="hf:x@train")
    # A question may mention the tags: only answers and reasoning are read back through them.
    assert validate_items([{**GOOD, "prompt": "What does <answer> mark?"}], source="s")
