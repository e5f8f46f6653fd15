"""kaggle_lib: glue and guardrails around Tunix for Gemma reasoning fine-tunes.

The notebook calls one function per stage (see `kaggle_lib.pipeline`):

    run = kl.start_run(config_path, overrides=..., run_name=..., run_dir=...)
    kl.authenticate(run); kl.load_model(run)
    kl.evaluate(run, "baseline"); kl.sample(run, "baseline"); kl.evaluate(run, "baseline_fewshot")
    kl.train(run); kl.evaluate(run, "trained"); kl.sample(run, "trained")
    kl.export_model(run); kl.finish(run)

Importing this package does not import jax: platform flags are set by `start_run` first.
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
