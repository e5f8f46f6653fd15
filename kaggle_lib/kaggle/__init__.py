"""Push the submission notebook to a Kaggle TPU and fetch what it wrote.

- `metadata`: kernel-metadata.json and notebook-metadata rules (`validate_metadata`).
- `bundle`: the self-contained notebook that is pushed (`build_bundle`).
- `push`: credentials, push, wait for the version, download outputs; `main` is the CLI
  (`scripts/kaggle_push.py`, `python -m kaggle_lib push`).

Nothing here imports the `kaggle` client at import time: `import kaggle` authenticates on
import, so it happens only after credentials have been checked, and never for `--dry-run`.
"""

from kaggle_lib.kaggle.bundle import Bundle, BundleError, BundleOptions, build_bundle
from kaggle_lib.kaggle.metadata import MetadataError, load_metadata, validate_metadata
from kaggle_lib.kaggle.push import (
    CredentialsError,
    PushFailure,
    add_push_arguments,
    main,
    run_push,
)

__all__ = [
    "Bundle",
    "BundleError",
    "BundleOptions",
    "CredentialsError",
    "MetadataError",
    "PushFailure",
    "add_push_arguments",
    "build_bundle",
    "load_metadata",
    "main",
    "run_push",
    "validate_metadata",
]
