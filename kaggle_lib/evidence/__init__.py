"""The run record ("evidence"): what a run leaves in `evidence/runs/<run_id>/`.

manifest (run_manifest.json schema and reader), identity (git, versions, host, Kaggle, run id),
record (RunRecord; a follower process's ProcessLogRecord), lock (one run per run dir; a record
whose writer is gone closed as interrupted), failure (failure_analysis.md), scan
(secret scan), close (closing a record), readme, plots (loss.png), index (evidence/index.jsonl),
compare (two runs side by side, the regression gate). The names most callers need are
importable from here; close, plots and compare pull in more (matplotlib, evaluation).
"""

from kaggle_lib.evidence.identity import hash_text, kaggle_identity, make_run_id
from kaggle_lib.evidence.manifest import (
    MANIFEST,
    ManifestError,
    RunManifest,
    manifest_errors,
    read_manifest,
)
from kaggle_lib.evidence.record import (
    FAILURE,
    LOCK,
    METRICS,
    RunRecord,
    last_good_checkpoint,
    make_record,
    utc_now,
    write_atomically,
)

__all__ = [
    "FAILURE", "LOCK", "MANIFEST", "METRICS", "ManifestError", "RunManifest", "RunRecord", "hash_text",
    "kaggle_identity", "last_good_checkpoint", "make_record", "make_run_id", "manifest_errors",
    "read_manifest", "utc_now", "write_atomically",
]
