#!/usr/bin/env python
"""Regenerate the reasoning-gym evaluation split: kaggle_lib/data/files/eval_rg.jsonl.

Run once and commit the file; deterministic for the seed (reasoning-gym 0.1.25, see
requirements.lock), so `--check` tells whether the committed file still matches.

    PYTHONPATH=. .venv/bin/python scripts/make_eval_split.py [--out FILE] [--seed N] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from kaggle_lib.data.datasets import write_jsonl
from kaggle_lib.data.reasoning_gym import EVAL_SEED, EVAL_SPLIT_FILE, build_eval_split


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=EVAL_SPLIT_FILE, help="output file")
    parser.add_argument("--seed", type=int, default=EVAL_SEED)
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if --out differs from a fresh generation")
    args = parser.parse_args(argv)
    items = build_eval_split(args.seed)
    text = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items)
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != text:
            print(f"{args.out} differs from a fresh generation (seed {args.seed})", file=sys.stderr)
            return 1
    else:
        write_jsonl(args.out, items)
    print(f"{len(items)} items -> {args.out}")
    for (section, category), count in sorted(Counter(
            (i["section"], i["category"]) for i in items).items()):
        print(f"  {section}/{category}: {count}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
