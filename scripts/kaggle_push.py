#!/usr/bin/env python3
"""Validate, bundle and push the submission notebook to Kaggle; optionally wait and fetch.

    python scripts/kaggle_push.py --path . --dry-run
    python scripts/kaggle_push.py --path . --wait --timeout 30000

Same as `python -m kaggle_lib push` (kaggle_lib.cli). See docs/KAGGLE.md; exit codes in
kaggle_lib/kaggle/push.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Runs from a checkout without `pip install -e .` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_lib.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["push", *sys.argv[1:]]))
