"""The shipped data files: sizes, balance, disjointness, and that they are up to date."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

from kaggle_lib.data.datasets import FILES_DIR, load_builtin
from scripts.synthetic_data import (
    BUILTIN_SIZES,
    CATEGORIES,
    DIFFICULTIES,
    SECTIONS,
    normalize_prompt,
)

TRAIN = load_builtin("train")
EVAL = load_builtin("eval")
REPO = Path(__file__).resolve().parents[2]


def _cells(items: list[dict]) -> Counter:
    return Counter((it["category"], it["difficulty"]) for it in items)


def test_sizes_and_fields() -> None:
    assert len(TRAIN) == BUILTIN_SIZES["train"] == 4000
    assert len(EVAL) == BUILTIN_SIZES["eval"] == 300
    assert all(it["reasoning"].strip() for it in TRAIN)
    assert all(it["id"].startswith("train-") for it in TRAIN)
    assert all(it["id"].startswith("eval-") for it in EVAL)


def test_balanced_across_sections_categories_difficulties() -> None:
    for items in (TRAIN, EVAL):
        cells = _cells(items)
        assert set(cells) == {(c, d) for c in CATEGORIES for d in DIFFICULTIES}
        assert max(cells.values()) - min(cells.values()) <= 1, cells
        sections = Counter(it["section"] for it in items)
        assert set(sections) == set(SECTIONS.values())
        assert max(sections.values()) - min(sections.values()) <= len(CATEGORIES), sections


def test_train_and_eval_are_disjoint_and_duplicate_free() -> None:
    train = [normalize_prompt(it["prompt"]) for it in TRAIN]
    evals = [normalize_prompt(it["prompt"]) for it in EVAL]
    assert len(set(train)) == len(train)
    assert len(set(evals)) == len(evals)
    assert not set(train) & set(evals)
    assert not {it["id"] for it in TRAIN} & {it["id"] for it in EVAL}


def test_normalize_prompt_ignores_case_spacing_and_punctuation() -> None:
    assert normalize_prompt("What is  2 + 2?") == normalize_prompt("what is 2+2")
    assert normalize_prompt("What is 2 + 3?") != normalize_prompt("What is 2 + 2?")


def test_shipped_files_match_the_generator(tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_datasets.py"
    spec = importlib.util.spec_from_file_location("make_datasets", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--check", "--out", str(FILES_DIR)]) == 0
    # --check really compares: a changed file is reported.
    (tmp_path / "train.jsonl").write_text((FILES_DIR / "train.jsonl").read_text() + "\n")
    (tmp_path / "eval.jsonl").write_text((FILES_DIR / "eval.jsonl").read_text())
    assert module.main(["--check", "--out", str(tmp_path)]) == 1
