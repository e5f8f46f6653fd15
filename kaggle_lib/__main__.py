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
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from kaggle_lib import logs

log = logs.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOK = REPO_ROOT / "notebooks" / "submission.ipynb"
DEFAULT_CONFIG = "configs/cpu_gemma3_270m.yaml"
NOTEBOOK_PARAMETERS = ("config_path", "overrides", "run_name", "run_dir")
# Parameter names that look like credentials are refused: secrets never travel as parameters.
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "kaggle_key", "hf_")
_REFUSAL = ("secrets are never passed as papermill parameters (they would be stored in the "
            "executed notebook). Export HF_TOKEN (or KAGGLE_API_TOKEN, WANDB_API_KEY) instead.")


def _leaves(node: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(parameter path, text) of every key and scalar in a parameter value, at any depth."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield f"{where}.{key}", key
            yield from _leaves(value, f"{where}.{key}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            yield from _leaves(value, f"{where}[{i}]")
    elif node is not None:
        yield where, node


def refuse_secrets(params: dict[str, Any]) -> None:
    """SystemExit, naming the parameter path and never the value, for any parameter whose name
    looks like a credential or whose value (at any depth) holds a known secret value (the
    variables of `auth.SECRET_ENV_VARS`, the usual credential files) or a token-shaped string."""
    from kaggle_lib import auth
    from kaggle_lib.evidence import scan

    known = [v for v in scan.secret_values() if len(v) >= 8]
    for name in params:
        if any(w in str(name).lower() for w in _SECRET_WORDS):
            raise SystemExit(f"refusing parameter {name!r}: its name looks like a credential; "
                             + _REFUSAL)
    for name, value in params.items():
        for where, leaf in _leaves(value, str(name)):
            text = str(leaf)
            if any(v in text for v in known) or any(p.search(text) for p in auth.TOKEN_PATTERNS):
                raise SystemExit(f"refusing parameter {where!r}: it holds a secret value or a "
                                 "token-shaped string; " + _REFUSAL)


def _parse_params(pairs: list[list[str]], yamls: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for text in yamls:
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SystemExit(f"-y is not valid YAML: {str(exc)[:200]}") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"-y expects a YAML mapping, got {type(loaded).__name__}")
        params.update(loaded)
    for name, value in pairs:
        try:
            params[name] = yaml.safe_load(value) if value else value  # papermill's -p typing
        except yaml.YAMLError:
            params[name] = value
    refuse_secrets(params)
    unknown = set(params) - set(NOTEBOOK_PARAMETERS)
    if unknown:
        raise SystemExit(f"unknown notebook parameter(s) {sorted(map(str, unknown))}; "
                         f"allowed: {sorted(NOTEBOOK_PARAMETERS)}")
    overrides = params.get("overrides")
    if overrides is not None and not isinstance(overrides, dict):
        raise SystemExit(f"parameter 'overrides' must be a mapping of config keys to values "
                         f"(e.g. -y 'overrides: {{train.sft.max_steps: 10}}'), got "
                         f"{type(overrides).__name__}")
    for name in ("config_path", "run_dir", "run_name"):
        if name in params and not isinstance(params[name], str):
            raise SystemExit(f"parameter {name!r} must be a string, got {type(params[name]).__name__}")
    return params


def _absolute(path: str | Path) -> Path:
    """A path given on the command line, made absolute against the caller's directory (once,
    here: the kernel gets absolute paths)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def resolve_paths(params: dict[str, Any], config: str | None, run_dir: str) -> tuple[Path, Path | None]:
    """(config path, run directory or None) from the flags and the parameters, absolute. A path
    given both ways must agree."""
    chosen: dict[str, Path | None] = {}
    for name, flag, param in (("config", config, params.get("config_path")),
                              ("run-dir", run_dir, params.get("run_dir"))):
        flag_path = _absolute(flag) if flag else None
        param_path = _absolute(param) if param else None
        if flag_path and param_path and flag_path != param_path:
            raise SystemExit(f"--{name} {flag} and -p {name.replace('-', '_')} {param} disagree; "
                             "give one")
        chosen[name] = flag_path or param_path
    config_path = chosen["config"]
    if config_path is None:
        # The default config lives in this checkout, wherever the command is run from.
        config_path = _absolute(DEFAULT_CONFIG)
        if not config_path.is_file():
            config_path = REPO_ROOT / DEFAULT_CONFIG
    return config_path, chosen["run-dir"]


def cmd_run(args: argparse.Namespace) -> int:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from kaggle_lib import evidence, multihost, runtime
    from kaggle_lib.config import ConfigError, load_config
    from kaggle_lib.evidence import close

    params = _parse_params(args.param or [], args.yaml or [])
    config_path, run_dir = resolve_paths(params, args.config, args.run_dir)
    overrides = params.get("overrides") or {}
    run_name = params.get("run_name") or ""
    if run_name:
        overrides = {**overrides, "run_name": run_name}
    env = runtime.detect_environment()
    # Several processes (docs/MULTIHOST.md): process 0's runner chooses the run dir and owns the
    # record; the others' kernels learn the dir from process 0 and tell their runners.
    process_id = multihost.runner_process_id()
    if run_dir is None and not process_id:
        try:
            cfg = load_config(config_path, overrides)
            digest, root = cfg.hash, Path(cfg.evidence.root)
        except ConfigError:  # the kernel records the error; the run still gets a directory
            digest = evidence.hash_text(config_path.read_bytes() if config_path.is_file()
                                        else str(config_path))
            root = Path("evidence/runs")
        root = root if root.is_absolute() else env.working_dir / root
        run_dir = root / evidence.make_run_id(digest)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
    # A re-run in an existing directory is a new attempt: the earlier one's files go to
    # attempts/<n>/ now, before papermill writes this attempt's executed.ipynb.
    attempt: Any = "of process 0"  # only process 0's runner manages attempts
    if not process_id:
        try:
            attempt = evidence.RunRecord(run_dir).prepare_attempt(
                run_dir.name, run_name, str(config_path))["attempt"]
        except ValueError as exc:  # not a run directory
            raise SystemExit(f"refusing --run-dir: {exc}") from None
    if process_id:
        output = multihost.follower_scratch_notebook(process_id)
    else:
        output = run_dir / "executed.ipynb"
    parameters = {"config_path": str(config_path), "overrides": params.get("overrides") or {},
                  "run_name": run_name, "run_dir": str(run_dir or "")}
    # The kernel runs in the caller's directory (relative paths inside the config mean the same
    # thing to the runner and the kernel) and imports this checkout's kaggle_lib.
    python_path = os.environ.get("PYTHONPATH", "")
    if str(REPO_ROOT) not in python_path.split(os.pathsep):
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), python_path) if p)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    log.info(f"[kaggle_lib] running {args.notebook} -> {output} (attempt {attempt})")
    started = time.monotonic()
    error: BaseException | None = None
    try:
        papermill.execute_notebook(
            str(args.notebook), str(output), parameters=parameters, kernel_name=args.kernel,
            log_output=True, progress_bar=False, cwd=os.getcwd(),
            execution_timeout=args.cell_timeout,
        )
    except PapermillExecutionError as exc:
        error = exc
    except Exception as exc:  # DeadKernelError (OOM), missing kernel, ...
        error = exc
    seconds = time.monotonic() - started
    if process_id:  # not process 0: its notebook and log are under processes/<id>/, no record
        output = multihost.place_follower_notebook(output, process_id)
        log.info(f"[kaggle_lib] process {process_id} {'failed' if error else 'finished'} in "
              f"{seconds:.1f} s -> {output}")
        return 1 if error else 0
    manifest = close.close_after_kernel(run_dir, output, error, seconds)
    status = manifest.get("status")
    log.info(f"[kaggle_lib] run {manifest.get('run_id')} {status} in {seconds:.1f} s -> {run_dir}")
    if status != "succeeded":
        failure = manifest.get("failure") or {}
        log.info(f"[kaggle_lib] failed in stage '{failure.get('stage')}': {failure.get('error_type')}: "
              f"{failure.get('message', '')[:500]}")
        log.info(f"[kaggle_lib] see {run_dir / evidence.FAILURE}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m kaggle_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute the notebook headless into a run record")
    run_p.add_argument("--config", default=None,
                       help=f"run config (default: {DEFAULT_CONFIG} of this checkout)")
    run_p.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    run_p.add_argument("--kernel", default="kaggle-lib")
    run_p.add_argument("--run-dir", default="",
                       help="run directory (default: <evidence.root>/<utc time>-<config hash>); "
                       "re-running in one is a new attempt, earlier ones kept under attempts/<n>/")
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
        from kaggle_lib.evidence import compare

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
