"""Command line: `python -m kaggle_lib <command>`.

    run      execute notebooks/submission.ipynb headless through papermill into a run record
    eval     evaluate a finished run's trained model on another jsonl
    compare  scorecards side by side; exit 1 on a regression
    package  zip a run with a manifest and sha256 sums
    push     validate, bundle and push the notebook to Kaggle (see docs/KAGGLE.md)
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from kaggle_lib import auth, eval_cli, logs, package
from kaggle_lib.evaluation.scoring import fmt_rate, format_scorecard_table
from kaggle_lib.evidence import compare
from kaggle_lib.kaggle import bundle, push

log = logs.get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NOTEBOOK = REPO_ROOT / "notebooks" / "submission.ipynb"
DEFAULT_CONFIG = "configs/cpu_gemma3_270m.yaml"
NOTEBOOK_PARAMETERS = ("config_path", "overrides", "run_name", "run_dir")
# Parameter names that look like credentials are refused: secrets never travel as parameters.
_SECRET_WORDS = ("token", "secret", "password", "api_key", "apikey", "kaggle_key", "hf_")
_REFUSAL = ("secrets are never passed as papermill parameters (they would be stored in the "
            "executed notebook). Export HF_TOKEN (or KAGGLE_API_TOKEN, WANDB_API_KEY) instead.")


def refuse_secrets(params: dict[str, Any]) -> None:
    """SystemExit, naming the parameter path and never the value, for any parameter whose name
    looks like a credential or whose value (at any depth) holds a known secret value (the
    variables of `auth.SECRET_ENV_VARS`, the usual credential files) or a token-shaped string."""
    from kaggle_lib.evidence import scan

    for name in params:
        if any(w in str(name).lower() for w in _SECRET_WORDS):
            raise SystemExit(f"refusing parameter {name!r}: its name looks like a credential; "
                             + _REFUSAL)
    for name, value in params.items():
        for where in scan.secret_holders(scan.leaves(value, str(name))):
            raise SystemExit(f"refusing parameter {where!r}: it holds a secret value or a "
                             "token-shaped string; " + _REFUSAL)


def _parse_params(pairs: list[list[str]], yamls: list[str]) -> dict[str, Any]:
    from kaggle_lib.config import UniqueKeyLoader

    params: dict[str, Any] = {}
    given: dict[str, str] = {}  # parameter name -> the flag that gave it first

    def take(name: Any, value: Any, flag: str) -> None:
        # papermill keeps the last of two values silently (a second -y 'overrides: ...' would
        # drop the first one's overrides): refused, naming both flags.
        if str(name) in given:
            raise SystemExit(f"parameter {str(name)!r} given twice ({given[str(name)]} and "
                             f"{flag}); give it once (all overrides in one mapping)")
        given[str(name)] = flag
        params[name] = value

    for i, text in enumerate(yamls, 1):
        try:
            # Our loader refuses a key given twice (papermill's -y keeps the last one).
            loaded = yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as exc:
            raise SystemExit(f"-y is not valid YAML: {str(exc)[:200]}") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"-y expects a YAML mapping, got {type(loaded).__name__}")
        for name, value in loaded.items():
            take(name, value, f"-y #{i}")
    for name, value in pairs:
        try:
            take(name, yaml.safe_load(value) if value else value, f"-p {name}")  # papermill's typing
        except yaml.YAMLError:
            take(name, value, f"-p {name}")
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
    """A command-line path made absolute against the caller's directory (the kernel's cwd too)."""
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


# How long the runner waits (--stop-wait), after passing a SIGTERM / SIGINT on to the kernel, for
# the kernel to stop (training at a step boundary, runtime.STEP_BOUNDARY_WAIT_S), save and close
# the record; then it kills the kernel and closes the record itself. 30 s: the tiny and LoRA runs
# close in a few seconds; a second signal stops the wait at once.
KERNEL_STOP_WAIT_S = 30.0


def _kernel_end(process: Any) -> str:
    """How the kernel process ended, in words ("" while it runs or when unknown)."""
    code = getattr(process, "returncode", None)
    if code is None:
        return ""
    if code < 0:
        return f"the kernel was killed by {signal.Signals(-code).name}"
    return f"the kernel exited with status {code}"


def _execute_forwarding_signals(execute: Callable[..., None], stop_wait: float
                                ) -> tuple[BaseException | None, str | None, Any]:
    """Run `execute(kernel_manager_class=...)` (papermill) in a worker thread, so that nbclient
    leaves SIGTERM and SIGINT to the runner (it only takes them in the main thread). A signal is
    passed on to the kernel (which papermill starts in its own session, so Ctrl-C does not reach
    it), which stops and closes the record; after `stop_wait` seconds, or at a second signal, the
    kernel is killed. Returns (papermill's error, the signal's name or None, the kernel process)."""
    from jupyter_client import AsyncKernelManager

    kernels: list[Any] = []

    class WatchedKernelManager(AsyncKernelManager):  # type: ignore[misc]
        """Remembers its kernel process: to pass signals on and to say how it ended."""

        async def start_kernel(self, **kwargs: Any) -> None:
            await super().start_kernel(**kwargs)
            kernels.append(getattr(self.provisioner, "process", None))

    outcome: dict[str, BaseException] = {}
    received: list[int] = []

    def work() -> None:
        try:
            execute(kernel_manager_class=WatchedKernelManager)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = exc

    def signal_kernel(signum: int) -> bool:
        for process in kernels:
            if process is not None:
                process.send_signal(signum)  # a no-op once it has ended
        return bool(kernels)

    worker = threading.Thread(target=work, name="papermill", daemon=True)
    # The handler only notes the signal; the loop below acts on it (also on a kernel that
    # starts after it came).
    previous = {s: signal.signal(s, lambda signum, frame: received.append(signum))
                for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        worker.start()
        deadline: float | None = None
        passed_on = killed = False
        while worker.is_alive():
            worker.join(0.1)
            if not received:
                continue
            if deadline is None:
                deadline = time.monotonic() + stop_wait
                log.info(f"[kaggle_lib] {signal.Signals(received[0]).name} received: passing it "
                         f"on to the kernel; waiting up to {stop_wait:g} s for it to "
                         "close the record (again to stop now)")
            if not passed_on:
                passed_on = signal_kernel(received[0])
            if killed and time.monotonic() > deadline:
                break  # papermill did not notice the dead kernel: the record is closed anyway
            if not killed and (len(received) > 1 or time.monotonic() > deadline):
                killed = signal_kernel(signal.SIGKILL)
                deadline = time.monotonic() + 10  # papermill notices a dead kernel in ~1 s
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stop = signal.Signals(received[0]).name if received else None
    return outcome.get("error"), stop, kernels[0] if kernels else None


def cmd_run(args: argparse.Namespace) -> int:
    import papermill
    from papermill.iorw import LocalHandler, papermill_io

    from kaggle_lib import evidence, multihost, runtime
    from kaggle_lib.config import ConfigError, load_config
    from kaggle_lib.errors import DiskError, Interrupted, check_writable
    from kaggle_lib.evidence import close, lock, readme, start

    class AtomicNotebookHandler(LocalHandler):
        """papermill's writer of this run's executed.ipynb: every save (after each cell) goes
        through a temporary file and a rename, so a full disk keeps the last good save instead
        of leaving a notebook cut short (papermill's LocalHandler writes in place)."""

        def write(self, buf: str, path: str) -> None:
            evidence.write_atomically(Path(path), buf)

    params = _parse_params(args.param or [], args.yaml or [])
    config_path, run_dir = resolve_paths(params, args.config, args.run_dir)
    overrides = params.get("overrides") or {}
    run_name = params.get("run_name") or ""
    if run_name:
        overrides = {**overrides, "run_name": run_name}
    env = runtime.detect_environment()
    try:
        cfg = load_config(config_path, overrides)
    except ConfigError:  # the kernel records the error; the run still gets a directory
        cfg = None
    try:  # before anything is written: a secret in a path would name files after it
        start.refuse_secrets_in_paths(config_path, run_dir, run_name, cfg)
    except start.SecretInPathError as exc:
        raise SystemExit(f"{exc}. {exc.hint}") from None
    # Several processes (docs/MULTIHOST.md): process 0's runner chooses the run dir and owns the
    # record; the others' kernels learn the dir from process 0 and tell their runners.
    process_id = multihost.runner_process_id()
    if run_dir is None and not process_id:
        run_dir = start.new_run_dir(config_path, cfg, env.working_dir)
    # A re-run in an existing directory is a new attempt: the earlier one's files go to
    # attempts/<n>/ now, before papermill writes this attempt's executed.ipynb (unless the
    # config changed what the earlier attempt's checkpoints depend on); a full or read-only
    # disk is refused before that.
    attempt: Any = "of process 0"  # only process 0's runner manages attempts
    try:
        if run_dir is not None:
            check_writable(run_dir)
        if not process_id:  # process 0's runner holds the run dir until it exits
            os.environ.pop(lock.LOCK_ENV, None)  # a lock is its kernel's to share, not a runner's
            held = lock.lock_run_dir(run_dir)
            os.environ[lock.LOCK_ENV] = held.token  # its kernel works under this lock
            attempt = evidence.RunRecord(run_dir).prepare_attempt(
                run_dir.name, run_name, str(config_path), cfg)["attempt"]
    except (ValueError, lock.RunDirBusy, OSError) as exc:  # not a run dir, config change, held
        if run_dir is not None:  # refused: the directory is left as it was, lock file included
            lock.release_run_dir(run_dir)
        if isinstance(exc, DiskError):
            raise SystemExit(f"refusing to start: {exc}. {exc.hint}") from None
        raise SystemExit(f"refusing --run-dir: {exc}") from None
    if process_id:
        output = multihost.follower_scratch_notebook(process_id)
    else:
        output = run_dir / "executed.ipynb"
        papermill_io.register(str(output), AtomicNotebookHandler())
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
    # papermill's errors: PapermillExecutionError (a cell raised), DeadKernelError (the kernel
    # died: out of memory, a kill), a missing kernel, ...
    error, stop, kernel = _execute_forwarding_signals(functools.partial(
        papermill.execute_notebook, str(args.notebook), str(output), parameters=parameters,
        kernel_name=args.kernel, log_output=True, progress_bar=False, cwd=os.getcwd(),
        execution_timeout=args.cell_timeout), args.stop_wait)
    seconds = time.monotonic() - started
    if type(error).__name__ == "DeadKernelError" and _kernel_end(kernel):
        error = type(error)(f"{error}: {_kernel_end(kernel)}")
    if process_id:  # not process 0: its notebook and log are under processes/<id>/, no record
        output = multihost.place_follower_notebook(output, process_id)
        log.info(f"[kaggle_lib] process {process_id} {'failed' if error else 'finished'} in "
              f"{seconds:.1f} s -> {output}")
        return 1 if error else 0
    if stop and evidence.RunRecord(run_dir).read_manifest().get("status") == "running":
        # The kernel did not close the record (it was killed, or it never got the signal).
        error = Interrupted(f"{stop} received by the runner; the kernel did not close the run "
                            f"record ({_kernel_end(kernel) or 'it was still running'})")
    try:
        manifest = close.close_after_kernel(run_dir, output, error, seconds)
    except DiskError as exc:
        log.info(f"[kaggle_lib] the run {'failed' if error else 'ended'} and its record could not "
                 f"be closed: {exc}\n[kaggle_lib] {exc.hint}")
        if error is not None:
            log.info(f"[kaggle_lib] the run's own error: {type(error).__name__}: "
                     f"{auth.redact(str(error))[:500]}")
        return 1
    status = manifest.get("status")
    if stop:  # one line, not papermill's traceback; the record says the rest
        print(f"[kaggle_lib] stopped by {stop}: run {manifest.get('run_id')} {status} after "
              f"{seconds:.1f} s -> {run_dir}", file=sys.stderr)
        return 128 + signal.Signals[stop].value
    log.info(f"[kaggle_lib] run {manifest.get('run_id')} {status} in {seconds:.1f} s -> {run_dir}")
    cfg_train = (manifest.get("config_resolved") or {}).get("train") or {}
    for name, done in (manifest.get("training") or {}).items():
        if early := readme.stopped_early(name, done or {}, cfg_train):
            log.info(f"[kaggle_lib] note: {early} (see README.md)")
    if status != "succeeded":
        failure = manifest.get("failure") or {}
        log.info(f"[kaggle_lib] failed in stage '{failure.get('stage')}': {failure.get('error_type')}: "
              f"{failure.get('message', '')[:500]}")
        log.info(f"[kaggle_lib] see {run_dir / evidence.FAILURE}")
        return 1
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        summary = eval_cli.evaluate_run(
            args.run_dir, args.data, out_name=args.out_name, limit=args.limit,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, model=args.model,
            few_shot=args.few_shot, overwrite=args.overwrite, step=args.step)
    except eval_cli.EvalError as exc:
        log.error(f"eval: error: {exc}")
        return 2
    log.info(format_scorecard_table(summary))
    log.info(f"eval: wrote {summary['meta']['out_dir']}/{{{eval_cli.PREDICTIONS},{eval_cli.SUMMARY}}}")
    log.info(json.dumps(eval_cli.final_line(summary)))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    modes = sum([bool(args.runs), args.baseline is not None, args.mark_baseline is not None])
    if modes != 1 or len(args.runs) > 2:
        args.parser.print_usage(sys.stderr)
        log.error("error: give A B, one RUN, --baseline RUN or --mark-baseline RUN")
        return 2
    try:
        if args.mark_baseline is not None:
            out = compare.mark_baseline(args.mark_baseline, args.evidence_root)
            log.info("baseline marked: %s -> %s", args.mark_baseline, out)
            return 0
        if args.baseline is not None:
            result = compare.compare_to_baseline(args.baseline, args.evidence_root, args.threshold)
        elif len(args.runs) == 2:
            result = compare.compare_runs(args.runs[0], args.runs[1], threshold=args.threshold)
        else:
            result = compare.compare_runs(args.runs[0], args.runs[0], threshold=args.threshold,
                                          a_stage="baseline", b_stage="trained")
        log.info("%s\n\n%s", result.table, compare.format_regressions(result))
        if args.png:
            log.info("chart: %s", compare.plot_category_accuracy(result, args.png))
    except (compare.CompareError, OSError) as exc:
        log.error("error: %s", exc)
        return 2
    if result.regressed:
        log.info("REGRESSION: accuracy %s -> %s (drop %.1fpp > threshold %.1fpp)",
                 fmt_rate(result.accuracy_a), fmt_rate(result.accuracy_b),
                 100 * (result.accuracy_a - result.accuracy_b), 100 * result.threshold)
        return 1
    log.info("OK: accuracy %s -> %s (threshold %.1fpp)", fmt_rate(result.accuracy_a),
             fmt_rate(result.accuracy_b), 100 * result.threshold)
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from kaggle_lib import evidence
    from kaggle_lib.hashing import sha256_hex

    if args.verify:
        problems = package.verify_package(args.verify)
        for problem in problems:
            log.info(f"FAIL {problem}")
        log.info(f"{args.verify}: {'OK' if not problems else f'{len(problems)} problem(s)'}")
        return 1 if problems else 0
    if not args.run_dir:
        args.parser.error("--run-dir is required (or --verify ZIP)")
    try:
        if args.upload:
            result = package.upload_model(args.run_dir / args.upload_dir, args.upload,
                                          license_name=args.license or None,
                                          version_notes=args.notes)
            if result is not None:
                evidence.RunRecord(args.run_dir).update_manifest(kaggle_model=result)
                log.info(f"uploaded {len(result['files'])} files to {result['url']}")
        out = package.build_package(args.run_dir, args.out,
                                    with_checkpoints=args.with_checkpoints,
                                    with_exports=args.with_exports)
    except package.PackageError as exc:
        log.error(f"package: {exc}")
        return 1
    problems = package.verify_package(out)
    with zipfile.ZipFile(out) as zf:
        count = len(zf.namelist())
    log.info(f"{out}: {count} files, {out.stat().st_size:,} bytes, "
             f"sha256 {sha256_hex(out)}; checksums {'OK' if not problems else problems}")
    return 0 if not problems else 1


def build_parser() -> argparse.ArgumentParser:
    """Every command's arguments; each subparser's `func` runs it."""
    parser = argparse.ArgumentParser(prog="python -m kaggle_lib", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    run_p = sub.add_parser("run", help="execute the notebook headless into a run record")
    run_p.add_argument("--config", help=f"run config (default: {DEFAULT_CONFIG} of this checkout)")
    run_p.add_argument("--notebook", type=Path, default=DEFAULT_NOTEBOOK)
    run_p.add_argument("--kernel", default="kaggle-lib")
    run_p.add_argument("--run-dir", default="",
                       help="run directory (default: <evidence.root>/<utc time>-<config hash>); "
                       "re-running in one is a new attempt, earlier ones kept under attempts/<n>/")
    run_p.add_argument("--cell-timeout", type=int, default=None,
                       help="seconds a single cell may run before the run fails (default: none)")
    run_p.add_argument("--stop-wait", type=float, default=KERNEL_STOP_WAIT_S, metavar="SECONDS",
                       help="after SIGTERM / Ctrl-C, how long the kernel may take to stop, save a "
                       f"checkpoint and close the record before it is killed (default "
                       f"{KERNEL_STOP_WAIT_S:g})")
    run_p.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                       help="papermill-style parameter (config_path, overrides, run_name, run_dir)")
    run_p.add_argument("-y", "--yaml", action="append", help="papermill-style YAML parameters")
    # Unknown arguments of `run` were always reported by the top-level parser.
    run_p.set_defaults(func=cmd_run, parser=parser)

    eval_p = sub.add_parser(
        "eval",
        description="Evaluate a finished run's trained model (latest SFT checkpoint) on a jsonl "
                    "of items {id, section, category, difficulty, prompt, answer}.")
    eval_p.add_argument("--run-dir", required=True, type=Path, help="the finished run directory")
    eval_p.add_argument("--data", required=True, type=Path, help="jsonl file of evaluation items")
    eval_p.add_argument("--model", choices=eval_cli.MODELS, default="trained",
                        help="trained (default): the run's latest SFT checkpoint; base: the "
                             "untrained weights it started from")
    eval_p.add_argument("--few-shot", action="store_true",
                        help="ask with the few-shot prompt (kaggle_lib.data.fewshot)")
    eval_p.add_argument("--out-name", help="output folder name under <run>/eval/ (default: the "
                        "data file stem, plus -baseline or -baseline_fewshot for --model base)")
    eval_p.add_argument("--overwrite", action="store_true", help="replace the results an earlier "
                        "eval left in that folder (default: refuse, naming them)")
    eval_p.add_argument("--limit", type=int, default=None, help="evaluate the first N items only")
    eval_p.add_argument("--step", type=int, default=None,
                        help="the SFT checkpoint step to evaluate (default: the latest complete "
                             "one); scores a learning curve from one run's checkpoints")
    eval_p.add_argument("--max-new-tokens", type=int, help="default: the run's eval.max_new_tokens")
    eval_p.add_argument("--batch-size", type=int, help="default: the run's eval.batch_size")
    eval_p.set_defaults(func=cmd_eval, parser=eval_p)

    cmp_p = sub.add_parser(
        "compare",
        description="Compare evaluation scores of runs (exit 1 when accuracy regressed).")
    cmp_p.add_argument("runs", nargs="*", help="A B (B against A) or one RUN (baseline vs trained)")
    cmp_p.add_argument("--threshold", type=float, default=compare.DEFAULT_THRESHOLD,
                       help="allowed absolute drop in overall accuracy (default 0.02)")
    cmp_p.add_argument("--png", help="write a per-category accuracy chart here")
    cmp_p.add_argument("--baseline", metavar="RUN", help="compare RUN against the marked baseline")
    cmp_p.add_argument("--mark-baseline", metavar="RUN", help="mark RUN as the baseline")
    cmp_p.add_argument("--evidence-root", default="evidence",
                       help="where baseline.json lives (default: evidence)")
    cmp_p.set_defaults(func=cmd_compare, parser=cmp_p)

    pkg_p = sub.add_parser("package", description=package.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    pkg_p.add_argument("--run-dir", type=Path, help="evidence/runs/<run_id>")
    pkg_p.add_argument("--out", type=Path, help="zip path, or an existing directory to write "
                       "<run_id>.zip into (default: <run_id>.zip next to the run directory)")
    pkg_p.add_argument("--with-checkpoints", action="store_true", help="include checkpoints/")
    pkg_p.add_argument("--with-exports", action="store_true", help="include export/")
    pkg_p.add_argument("--verify", type=Path, metavar="ZIP", help="check a package's checksums")
    pkg_p.add_argument("--upload", metavar="HANDLE",
                       help="Kaggle Model handle owner/model/framework/variation")
    pkg_p.add_argument("--upload-dir", default="export/orbax",
                       help="directory to upload, relative to the run dir (default export/orbax)")
    pkg_p.add_argument("--license", default="Gemma", help="Kaggle Models license name")
    pkg_p.add_argument("--notes", default="", help="version notes for the upload")
    pkg_p.set_defaults(func=cmd_package, parser=pkg_p)

    push_p = sub.add_parser(
        "push", prog="kaggle_push.py",  # the name scripts/kaggle_push.py always had
        description="Validate and build the self-contained Kaggle bundle, push it as a new "
                    "kernel version, optionally wait for it and download its outputs.")
    push_p.add_argument("--path", type=Path, default=Path("."),
                        help="folder holding kernel-metadata.json (default: .)")
    push_p.add_argument("--config", default=bundle.DEFAULT_CONFIG,
                        help="config under configs/ baked into the notebook "
                             f"(default {bundle.DEFAULT_CONFIG})")
    push_p.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="config override baked in as a parameter (repeatable; YAML value)")
    push_p.add_argument("--run-name", default="", help="run name baked in as a parameter")
    push_p.add_argument("--owner", help="Kaggle username for the kernel id (default: "
                        "$KAGGLE_USERNAME, else the owner in kernel-metadata.json)")
    push_p.add_argument("--out", type=Path, help="bundle folder (default: build/kaggle/<slug>)")
    push_p.add_argument("--skip-install", action="store_true",
                        help="leave out the pip install cell (images that already have the pins)")
    push_p.add_argument("--stack", choices=bundle.STACKS, default="lock",
                        help="lock (default): install the jax stack the tests ran (jax[tpu] at "
                             "requirements.lock's jax, flax, optax, orbax, qwix, tunix) and fail "
                             "on any difference; image: keep the Kaggle image's, with warnings")
    push_p.add_argument("--continue-from", metavar="OWNER/SLUG/vN",
                        help="train on from version N's newest SFT checkpoint: attaches its "
                             "outputs (kernel_sources) and bakes train.resume_from; fetch them "
                             "first with --version N --wait (docs/KAGGLE.md)")
    push_p.add_argument("--dry-run", action="store_true",
                        help="validate and build the bundle only; no credentials, no network")
    push_p.add_argument("--wait", action="store_true",
                        help="poll the new version until it ends, then download its outputs")
    push_p.add_argument("--timeout", type=float, default=push.DEFAULT_TIMEOUT_S,
                        help=f"seconds to wait with --wait (default {push.DEFAULT_TIMEOUT_S:g})")
    push_p.add_argument("--version", type=int, default=None,
                        help="do not push: wait for / fetch this existing version")
    push_p.add_argument("--push-id",
                        help="with --version: the push id that version was pushed with (the "
                             "push prints it); default: the one in its push.json. Outputs "
                             "that do not carry it are kept aside in v<N>.unverified/")
    push_p.add_argument("--evidence-dir", type=Path,
                        default=bundle.REPO_ROOT / "evidence" / "kaggle",
                        help="outputs go to <dir>/<slug>/v<N>/ (default evidence/kaggle)")
    push_p.add_argument("--repo-root", type=Path, default=bundle.REPO_ROOT,
                        help="repository whose kaggle_lib/, configs/ and pins are bundled "
                             "(default: the one this kaggle_lib comes from)")
    push_p.add_argument("--poll-interval", type=float, default=push.DEFAULT_POLL_S,
                        help="first poll interval in seconds; it grows x1.5 per poll")
    push_p.add_argument("--max-poll-interval", type=float, default=push.DEFAULT_MAX_POLL_S)
    push_p.set_defaults(func=push.run_push, parser=push_p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kaggle_lib <command> ...` and the `kaggle-lib` script; returns the exit code."""
    try:
        args, extra = build_parser().parse_known_args(list(sys.argv[1:] if argv is None else argv))
        if extra:  # reported by the command's own parser, with its usage, as before
            args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return int(exc.code or 0)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (`run` closes its record first)
        print(f"[kaggle_lib] {args.command}: interrupted (Ctrl-C)", file=sys.stderr)
        return 128 + signal.SIGINT.value
