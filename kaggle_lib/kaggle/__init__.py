"""Push the submission notebook to a Kaggle TPU and fetch what it wrote.

- `metadata`: kernel-metadata.json and notebook-metadata rules (`validate_metadata`).
- `bundle`: the self-contained notebook that is pushed (`build_bundle`).
- `push`: credentials, push, wait for the version, download outputs (`run_push`; the
  command line is `python -m kaggle_lib push` in kaggle_lib.cli).

Nothing here imports the `kaggle` client at import time: `import kaggle` authenticates on
import, so it happens only after credentials have been checked, and never for `--dry-run`.
"""
