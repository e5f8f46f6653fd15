#!/usr/bin/env python3
"""Write kaggle_lib/schemas/run_manifest.schema.json from RunManifest (kaggle_lib/evidence/record.py).

    python scripts/make_manifest_schema.py

The schema file is for readers outside Python; kaggle_lib validates with the model itself.
tests/unit/test_evidence.py fails when the file and the model disagree: re-run this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Runs from a checkout without `pip install -e .` too.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kaggle_lib.evidence.manifest import SCHEMA_PATH, manifest_json_schema  # noqa: E402

if __name__ == "__main__":
    SCHEMA_PATH.write_text(json.dumps(manifest_json_schema(), indent=2) + "\n")
    print(f"wrote {SCHEMA_PATH}")
