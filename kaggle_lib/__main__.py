"""Command line: `python -m kaggle_lib <command>`.

    run      execute notebooks/submission.ipynb headless through papermill into a run record
    eval     evaluate a finished run's trained model on another jsonl
    compare  scorecards side by side; exit 1 on a regression
    package  zip a run with a manifest and sha256 sums
    push     validate, bundle and push the notebook to Kaggle (see docs/KAGGLE.md)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOK = REPO_ROOT / "notebooks" / "submission.ipynb"
# Parameter names that look like credentials are refused: secrets never travel as parameters.
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "kaggle_key", "hf_")


def _parse_params(pairs: list[list[str]], yamls: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for text in yamls:
        loaded = yaml.safe_load(text)
        if not isinstance(loaded, dict):
            raise SystemExit(f"-y expects a YAML mapping, got {text!r}")
        params.update(loaded)
    for name, value in pairs:
        params[name] = yaml.safe_load(value) if value else value  # papermill's -p typing
    for name, value in params.items():
        if any(w in name.lower() for w in _SECRET_WORDS) or (
            isinstance(value, str) and value.startswith(("hf_", "KGAT_"))
        ):
            raise SystemExit(
                f"refusing parameter {name!r}: secrets are never passed as papermill parameters "
                "(they would be stored in the executed notebook). Export HF_TOKEN instead."
            )
    allowed = {"config_path", "overrides", "run_name", "run_dir"}
    unknown = set(params) - allowed
    if unknown:
        raise SystemExit(f"unknown notebook parameter(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return params


def cmd_run(args: argparse.Namespace) -> int:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from kaggle_lib import distributed, evidence, report, runtime
    from kaggle_lib.config import ConfigError, load_config

    params = _parse_params(args.param or [], args.yaml or [])
    config_path = params.get("config_path", args.config)
    overrides = params.get("overrides") or {}
    run_name = params.get("run_name") or ""
    if run_name:
        overrides = {**overrides, "run_name": run_name}
    env = runtime.detect_environment()
    # Several processes (docs/MULTIHOST.md): one shared run dir; process 0's runner owns the record.
    process_id = distributed.runner_process_id(bool(args.run_dir or params.get("run_dir")))
    if args.run_dir:
        run_dir = Path(args.run_dir)
    else:
        try:
            cfg = load_config(config_path, overrides)
            digest, root = cfg.hash, Path(cfg.evidence.root)
        except ConfigError:
            path = Path(config_path)
            digest = evidence.hash_text(path.read_bytes() if path.is_file() else str(config_path))
            root = Path("evidence/runs")
        root = root if root.is_absolute() else env.working_dir / root
        run_dir = root / evidence.make_run_id(digest)
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / "executed.ipynb"
    if process_id:
        output = distributed.follower_notebook_path(run_dir, process_id)
    parameters = {"config_path": str(config_path), "overrides": params.get("overrides") or {},
                  "run_name": run_name, "run_dir": str(run_dir)}
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    print(f"[kaggle_lib] running {args.notebook} -> {output}", flush=True)
    started = time.monotonic()
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(args.notebook), str(output), parameters=parameters, kernel_name=args.kernel,
            log_output=True, progress_bar=False, cwd=str(REPO_ROOT),
            execution_timeout=args.cell_timeout,
        )
    except PapermillExecutionError as exc:
        error = exc
    except Exception as exc:  # DeadKernelError (OOM), missing kernel, ...
        error = exc
    seconds = time.monotonic() - started
    if process_id:  # not process 0: its notebook and log are under processes/<id>/, no record
        print(f"[kaggle_lib] process {process_id} {'failed' if error else 'finished'} in "
              f"{seconds:.1f} s -> {output}")
        return 1 if error else 0
    manifest = report.close_after_kernel(run_dir, output, error, seconds)
    status = manifest.get("status")
    print(f"[kaggle_lib] run {manifest.get('run_id')} {status} in {seconds:.1f} s -> {run_dir}")
    if status != "succeeded":
        failure = manifest.get("failure") or {}
        print(f"[kaggle_lib] failed in stage '{failure.get('stage')}': {failure.get('error_type')}: "
              f"{failure.get('message', '')[:500]}")
        print(f"[kaggle_lib] see {run_dir / evidence.FAILURE}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m kaggle_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute the notebook headless into a run record")
    run_p.add_argument("--config", default="configs/cpu_gemma3_270m.yaml")
    run_p.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    run_p.add_argument("--kernel", default="kaggle-lib")
    run_p.add_argument("--run-dir", default="")
    run_p.add_argument("--cell-timeout", type=int, default=None,
                       help="seconds a single cell may run before the run fails (default: none)")
    run_p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                       help="papermill-style parameter (config_path, overrides, run_name, run_dir)")
    run_p.add_argument("-y", "--yaml", action="append", help="papermill-style YAML parameters")
    for name in ("eval", "compare", "package", "push"):
        sub.add_parser(name, add_help=False)
    if argv and argv[0] in ("eval", "compare", "package", "push"):
        return _delegate(argv[0], argv[1:])
    args = parser.parse_args(argv)
    if args.command == "run":
        return cmd_run(args)
    parser.error(f"unknown command {args.command}")
    return 2


def _delegate(command: str, rest: list[str]) -> int:
    if command == "compare":
        from kaggle_lib import compare

        return compare.main(rest)
    if command == "eval":
        from kaggle_lib import eval_cli

        return eval_cli.main(rest)
    if command == "package":
        from kaggle_lib import package

        return package.main(rest)
    from kaggle_lib.kaggle import push

    return push.main(rest)


if __name__ == "__main__":
    sys.exit(main())
