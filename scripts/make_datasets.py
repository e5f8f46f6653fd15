#!/usr/bin/env python
"""Regenerate the shipped synthetic data: kaggle_lib/data/files/{train,eval}.jsonl.

Deterministic: the same code gives byte-identical files (tests/unit/test_data_files.py checks the
shipped files against a fresh generation). Prints per-split counts.

    .venv/bin/python scripts/make_datasets.py [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from kaggle_lib.data.datasets import FILES_DIR, write_jsonl  # noqa: E402
from scripts.synthetic_data import BUILTIN_SEED, BUILTIN_SIZES, build_builtin_splits  # noqa: E402


def _serialize(items: list[dict]) -> str:
    return "".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FILES_DIR, help="output folder")
    parser.add_argument("--train", type=int, default=BUILTIN_SIZES["train"])
    parser.add_argument("--eval", type=int, default=BUILTIN_SIZES["eval"])
    parser.add_argument("--seed", type=int, default=BUILTIN_SEED)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the files in --out differ")
    args = parser.parse_args(argv)
    splits = build_builtin_splits(args.train, args.eval, args.seed)
    stale = []
    for name, items in splits.items():
        path = args.out / f"{name}.jsonl"
        if args.check:
            current = path.read_text(encoding="utf-8") if path.is_file() else None
            if current != _serialize(items):
                stale.append(str(path))
        else:
            write_jsonl(path, items)
        by_cat = Counter((it["section"], it["category"]) for it in items)
        by_diff = Counter(it["difficulty"] for it in items)
        print(f"{name}: {len(items)} items -> {path}")
        for (section, category), count in sorted(by_cat.items()):
            print(f"  {section}/{category}: {count}")
        print("  difficulty: " + ", ".join(f"{k} {v}" for k, v in sorted(by_diff.items())))
    if stale:
        print("out of date: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
