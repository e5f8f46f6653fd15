"""The run record ("evidence"): what a run leaves in `evidence/runs/<run_id>/`.

record    RunRecord (reads and writes a run directory) and RunManifest (run_manifest.json)
failure   failure_analysis.md
scan      the secret scan of a record
close     closing a record, whichever way the run ended
readme    README.md of a run
plots     loss.png
index     evidence/index.jsonl
compare   scores of two runs side by side, the regression gate

The names most callers need are importable from here; closing, plots and compare are imported
from their modules (they pull in more: matplotlib, evaluation, distributed).
"""

from kaggle_lib.evidence.record import (
    ATTEMPTS,
    FAILURE,
    MANIFEST,
    METRICS,
    ManifestError,
    RunManifest,
    RunRecord,
    git_info,
    hash_text,
    last_good_checkpoint,
    make_run_id,
    manifest_errors,
    package_versions,
    read_jsonl,
    seconds_between,
    utc_now,
    validate_manifest,
)

__all__ = [
    "ATTEMPTS", "FAILURE", "MANIFEST", "METRICS", "ManifestError", "RunManifest", "RunRecord",
    "git_info", "hash_text", "last_good_checkpoint", "make_run_id", "manifest_errors",
    "package_versions", "read_jsonl", "seconds_between", "utc_now", "validate_manifest",
]
