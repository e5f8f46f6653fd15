"""The run record ("evidence"): what a run leaves in `evidence/runs/<run_id>/`.

manifest  RunManifest (run_manifest.json): schema, validation, the one manifest reader
identity  git commit, package versions, host, Kaggle identity, env_info.txt, the run id
record    RunRecord (reads and writes a run directory, attempts, metrics); a follower
          process's ProcessLogRecord (make_record)
failure   failure_analysis.md
scan      the secret scan of a record
close     closing a record, whichever way the run ended
readme    README.md of a run
plots     loss.png
index     evidence/index.jsonl
compare   scores of two runs side by side, the regression gate

The names most callers need are importable from here; closing, plots and compare are imported
from their modules (they pull in more: matplotlib, evaluation).
"""

from kaggle_lib.evidence.identity import (
    git_info,
    hash_text,
    kaggle_identity,
    make_run_id,
    package_versions,
)
from kaggle_lib.evidence.manifest import (
    MANIFEST,
    ManifestError,
    RunManifest,
    manifest_errors,
    read_manifest,
    validate_manifest,
)
from kaggle_lib.evidence.record import (
    ATTEMPTS,
    FAILURE,
    METRICS,
    RunRecord,
    last_good_checkpoint,
    make_record,
    seconds_between,
    utc_now,
)

__all__ = [
    "ATTEMPTS", "FAILURE", "MANIFEST", "METRICS", "ManifestError", "RunManifest", "RunRecord",
    "git_info", "hash_text", "kaggle_identity", "last_good_checkpoint", "make_record",
    "make_run_id", "manifest_errors", "package_versions", "read_manifest", "seconds_between",
    "utc_now", "validate_manifest",
]
