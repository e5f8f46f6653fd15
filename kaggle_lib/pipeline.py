"""The notebook's stages, one function per cell, each a call into its domain module: start_run,
authenticate, load_model, evaluate("baseline"), sample("baseline"), evaluate("baseline_fewshot"),
train, evaluate("trained"), sample("trained"), export_model, finish. Each records its status and
duration in the manifest; one that raises first fails the run and writes failure_analysis.md,
so papermill stops with the record already complete. So does a stop signal (SIGTERM, SIGINT):
it raises `Interrupted` in the running stage, after training has saved a checkpoint at its next
step boundary (`runtime.STEP_BOUNDARY_WAIT_S`); between stages the record is closed at once.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kaggle_lib import auth, compat, evidence, logs, multihost, runtime
from kaggle_lib.config import RunConfig, load_config
from kaggle_lib.errors import DiskError, as_disk_error
from kaggle_lib.evaluation import runner, scoring
from kaggle_lib.evidence import close, start
from kaggle_lib.models import build

log = logs.get_logger(__name__)

# Modules that import jax are imported inside the stages that use them, after the config stage
# has set the platform flags (runtime.configure_platform): training.*, export.

if TYPE_CHECKING:
    import jax

    from kaggle_lib.models.loader import LoadedModel

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass
class Run:
    """Everything one run carries from cell to cell."""

    record: evidence.RunRecord
    config: RunConfig | None = None
    devices: dict[str, Any] = dataclasses.field(default_factory=dict)
    mesh: jax.sharding.Mesh | None = None
    token: auth.Token | None = None
    loaded: LoadedModel | None = None
    evals: runner.Evaluations | None = None  # eval items, records, samples, shared Generator
    train_results: dict[str, Any] = dataclasses.field(default_factory=dict)
    failed_stage: str | None = None
    last_checkpoint: str | None = None  # failure_analysis.md names it if a later step fails

    @property
    def run_dir(self) -> Path:
        return self.record.run_dir

    @property
    def cfg(self) -> RunConfig:
        if self.config is None:
            raise RuntimeError("the config did not load; see failure_analysis.md")
        return self.config


def stage(name: str) -> Callable[[F], F]:
    """Record the stage's status and timing; on error, fail the run record and re-raise."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(run: Run, *args: Any, **kwargs: Any) -> Any:
            label = f"{name}:{args[0]}" if args and isinstance(args[0], str) else name
            if run.failed_stage:
                raise RuntimeError(f"not running {label}: the run already failed in stage "
                                   f"{run.failed_stage} (see {run.run_dir / evidence.FAILURE})")
            started = time.monotonic()
            # SIGTERM / SIGINT raise Interrupted in the stage (training stops at a step boundary
            # first), which fails the run like any error; handled until the record is closed.
            with runtime.stage_signals():
                try:
                    run.record.stage(label, "running")
                    result = fn(run, *args, **kwargs)
                except BaseException as exc:
                    # A full or read-only disk (an OSError, or Orbax's RESOURCE_EXHAUSTED) is
                    # named with its path and the free space there.
                    error = as_disk_error(exc, run.run_dir) or exc
                    multihost.await_peer_verdict(error)  # a dead peer is named, not its symptom
                    multihost.mark_failed(label, error)  # the other processes stop too
                    _fail(run, label, error, time.monotonic() - started)
                    log.info(f"\n[kaggle_lib] stage '{label}' failed: {type(error).__name__}: "
                             f"{auth.redact(str(error))}\n[kaggle_lib] record: {run.run_dir}")
                    if error is not exc:
                        raise error from exc
                    raise
            run.record.stage(label, "succeeded", time.monotonic() - started)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _fail(run: Run, label: str, error: BaseException, seconds: float | None = None) -> None:
    """Stage `label` failed: so says the record, closed as failed (never masking the error).
    Stop signals wait while it is written (the first comes first in the manifest)."""
    run.failed_stage = label
    with runtime.closing_record():
        try:
            run.record.stage(label, "failed", seconds)
            run.record.fail(label, error, checkpoint=run.last_checkpoint)
        except DiskError as unwritten:  # the stage's own error is the one raised
            log.info(f"[kaggle_lib] the failure could not be recorded in full: {unwritten}")
            return
        if isinstance(error, multihost.PeerProcessError):
            run.record.update_manifest(failure={"dead_processes": error.dead_processes})
        try:
            close.close_failed(run.record, run.run_dir.name, write_eval_summary=run.evals.write_summary
                               if run.evals and run.evals.records else None)
        except Exception as exc:  # noqa: BLE001
            log.info(f"[kaggle_lib] could not complete the failed run's record: {exc}")


def start_run(config_path: str, *, overrides: dict[str, Any] | None = None, run_name: str = "",
              run_dir: str = "") -> Run:
    """Read and validate the config once, start the run record, detect the runtime, banner."""
    env = runtime.detect_environment()
    auth.register_environment_secrets()
    auth.install_log_redaction()
    # Not a mapping: left as it is, so that the config stage fails with a ConfigError saying so.
    overrides = dict(overrides) if isinstance(overrides, Mapping) else overrides or {}
    if run_name and isinstance(overrides, dict):
        overrides["run_name"] = run_name
    try:
        config: RunConfig | Exception = load_config(config_path, overrides)
    except Exception as exc:  # noqa: BLE001 - the config stage records it, once there is a record
        config = exc
    loaded = config if isinstance(config, RunConfig) else None
    run = Run(record=start.open_record(config_path, loaded, env.working_dir, run_name=run_name,
                                       run_dir=run_dir))
    runtime.watch_stop_signals(functools.partial(_fail, run, "notebook"))  # the record exists
    run.record.update_manifest(environment={
        "on_kaggle": env.on_kaggle, "run_type": env.run_type, "working_dir": str(env.working_dir),
        **evidence.kaggle_identity(env.on_kaggle),
    })
    multihost.on_peer_failure(functools.partial(_record_peer_failure, run))
    _configure(run, config, env)
    return run


def _record_peer_failure(run: Run, error: multihost.PeerProcessError) -> None:
    """Another process died: the stage that was running fails, naming the dead process."""
    stages = run.record.read_manifest().get("stages") or {}
    running = [k for k, v in stages.items() if v.get("status") == "running"]
    _fail(run, running[-1] if running else "distributed", error)


@stage("config+runtime")
def _configure(run: Run, config: RunConfig | Exception, env: runtime.Environment) -> None:
    if isinstance(config, Exception):
        raise config
    run.config, run.evals = config, runner.Evaluations(config, run.record)
    run.record.write_text("config.yaml", auth.redact(config.to_yaml()))
    run.record.update_manifest(run_name=config.run_name, config_hash=config.hash,
                               config_resolved=config.to_dict())
    compat.check_versions(strict=config.strict_versions)  # warns (or raises) once per process
    flags = runtime.configure_platform(config.device)
    if multihost.is_multiprocess():  # flags were set in start_run, before jax.distributed began
        flags["jax_already_started"] = False
    run.devices = runtime.describe_devices(config.device)
    run.record.update_manifest(devices=run.devices, platform_flags=flags)
    if multihost.is_multiprocess():  # the manifest names every process and its devices
        run.record.update_manifest(processes=multihost.describe_processes())
    log.info(runtime.banner(env, run.devices, flags))
    log.info(f"run {run.run_dir.name} -> {run.run_dir}")


@stage("auth")
def authenticate(run: Run) -> None:
    """HF token for gated hub downloads (env, then Kaggle Secrets). Never printed."""
    source, needs_token = build.hf_source(run.cfg.model)
    run.token = auth.resolve_hf_token(runtime.detect_environment().on_kaggle, required=needs_token)
    run.record.update_manifest(auth={"hf_token_source": run.token.source, "needed": needs_token})
    log.info(f"auth: model source {source}; HF token {'found via ' + run.token.source if run.token else 'not needed' if not needs_token else 'missing'}")


@stage("load_model")
def load_model(run: Run) -> None:
    """Build the mesh, check the memory budget, load weights and tokenizer onto the mesh."""
    run.loaded, run.mesh = build.load_for_run(run.cfg, run.devices, run.record,
                                              token=run.token.value if run.token else None)


@stage("evaluate")
def evaluate(run: Run, which: str = "trained") -> None:
    """Generate for every eval item, score, append to predictions.jsonl: `which` is baseline
    (zero-shot), baseline_fewshot (few-shot prompt: the delta is against the better) or trained."""
    run.evals.evaluate(run.loaded, which, mesh=run.mesh)


@stage("sample")
def sample(run: Run, which: str = "trained") -> None:
    """The fixed sample prompts answered by the model (baseline or trained), into samples.md."""
    run.evals.sample(run.loaded, which, mesh=run.mesh)


@stage("train")
def train(run: Run) -> None:
    """Run the configured stages (SFT, then GRPO) on the loaded model, in place; then loss.png."""
    from kaggle_lib.training import stages  # imports jax (see the note at the top)

    run.train_results.update(stages.run_stages(stages.StageInputs(
        config=run.cfg, loaded=run.loaded, mesh=run.mesh, run_dir=run.run_dir, record=run.record,
        on_checkpoint=lambda path: setattr(run, "last_checkpoint", path))))


@stage("export")
def export_model(run: Run) -> None:
    """The trained model merged and exported into <run_dir>/export/ (HF safetensors and Orbax),
    recorded in the manifest, when evidence.export is on and a stage trained."""
    from kaggle_lib.export import export_run  # imports jax (see the note at the top)

    if run.cfg.evidence.export and run.train_results:
        export_run(run.loaded, run.cfg.train.sft, run.record,
                   (run.train_results.get("sft") or {}).get("steps"))


@stage("finish")
def finish(run: Run) -> None:
    """Summaries, plots, secret scan, README; status succeeded."""
    summary = run.evals.write_summary() if run.evals and run.evals.records else {}
    if summary:
        log.info(scoring.format_scorecard_table(summary))
    headline = close.headline_metrics(summary, run.train_results)
    run.record.update_manifest(metrics=headline)
    with runtime.closing_record():
        close.finalize(run.record, status="succeeded")
    multihost.mark_done()
    log.info(json.dumps(headline, indent=2))
