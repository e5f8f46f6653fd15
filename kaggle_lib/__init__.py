"""kaggle_lib: glue and guardrails around Tunix for Gemma reasoning fine-tunes. The notebook
calls one function per stage (`kaggle_lib.pipeline`). Importing this package does not import
jax: platform flags are set by `start_run` first.
"""

from kaggle_lib.pipeline import (
    Run,
    authenticate,
    evaluate,
    export_model,
    finish,
    load_model,
    sample,
    start_run,
    train,
)

__all__ = ["Run", "authenticate", "evaluate", "export_model", "finish", "load_model", "sample",
           "start_run", "train"]
__version__ = "0.1.0"
