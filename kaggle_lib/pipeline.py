"""The notebook's stages, one function per cell:

    start_run -> authenticate -> load_model -> evaluate("baseline") -> train -> sample
    -> evaluate("trained") -> finish

Each stage records its status and duration in the run manifest. A stage that raises marks the
run failed and writes failure_analysis.md (stage, error, what to do, last good checkpoint)
before the error propagates, so papermill stops with the record already complete.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kaggle_lib import auth, compat, evidence, logs, multihost, runtime
from kaggle_lib import evaluation as ev
from kaggle_lib.config import ConfigError, RunConfig, load_config, read_yaml
from kaggle_lib.data import template
from kaggle_lib.data.fewshot import format_fewshot_prompt
from kaggle_lib.data.sources import load_sources
from kaggle_lib.evidence import close, plots
from kaggle_lib.models import loader, preflight, registry

log = logs.get_logger(__name__)

# Modules that import jax are imported inside the stages that use them, after the config stage
# has set the platform flags (runtime.configure_platform): kaggle_lib.mesh, generation,
# training.*, export. (models.loader imports jax only inside its functions.)

if TYPE_CHECKING:
    import jax

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass
class Run:
    """Everything one run carries from cell to cell."""

    run_id: str
    run_dir: Path
    record: evidence.RunRecord
    config_path: str
    env: runtime.Environment
    config: RunConfig | None = None
    devices: dict[str, Any] = dataclasses.field(default_factory=dict)
    mesh: jax.sharding.Mesh | None = None
    token: auth.Token | None = None
    loaded: loader.LoadedModel | None = None
    eval_items: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    records: dict[str, list[dict[str, Any]]] = dataclasses.field(default_factory=dict)
    samples: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    # stage -> the evaluation's generations, in eval-item order (samples reuse them)
    generations: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    train_results: dict[str, Any] = dataclasses.field(default_factory=dict)
    failed_stage: str | None = None
    last_checkpoint: str | None = None
    lora_applied: bool = False
    generator: Any = None  # generation.Generator, kept so later stages reuse its compilations

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
                raise RuntimeError(
                    f"not running {label}: the run already failed in stage {run.failed_stage} "
                    f"(see {run.run_dir / evidence.FAILURE})"
                )
            started = time.monotonic()
            run.record.stage(label, "running")
            try:
                result = fn(run, *args, **kwargs)
            except BaseException as exc:
                multihost.await_peer_verdict(exc)  # a dead peer is named, not its symptom
                run.failed_stage = label
                multihost.mark_failed(label, exc)  # the other processes stop too
                run.record.stage(label, "failed", time.monotonic() - started)
                run.record.fail(label, exc, checkpoint=run.last_checkpoint)
                _close_failed(run)
                log.info(f"\n[kaggle_lib] stage '{label}' failed: {type(exc).__name__}: "
                      f"{auth.redact(str(exc))}\n[kaggle_lib] record: {run.run_dir}")
                raise
            run.record.stage(label, "succeeded", time.monotonic() - started)
            return result

        return wrapper  # type: ignore[return-value]

    return decorate


def _close_failed(run: Run) -> None:
    """The closing files of a failed run; never masks the original error."""
    try:
        close.close_failed(run.record, run.run_id,
                           write_eval_summary=(lambda: _write_summary(run)) if run.records else None)
    except Exception as exc:  # noqa: BLE001
        log.info(f"[kaggle_lib] could not complete the failed run's record: {exc}")


def _evidence_root(config_path: str, env: runtime.Environment) -> Path:
    """Where run directories go: the config's evidence.root, under /kaggle/working on Kaggle."""
    try:
        root = read_yaml(config_path).get("evidence", {}).get("root", "evidence/runs")
    except (ConfigError, AttributeError):
        root = "evidence/runs"
    root = Path(str(root))
    return root if root.is_absolute() else env.working_dir / root


def start_run(config_path: str, *, overrides: dict[str, Any] | None = None, run_name: str = "",
              run_dir: str = "") -> Run:
    """Create the run record, validate the config, detect the runtime and print the banner."""
    env = runtime.detect_environment()
    auth.register_environment_secrets()
    auth.install_log_redaction()
    # Not a mapping: left as it is, so that the config stage fails with a ConfigError saying so.
    overrides = dict(overrides) if isinstance(overrides, Mapping) else overrides or {}
    if run_name and isinstance(overrides, dict):
        overrides["run_name"] = run_name
    if run_dir:
        # Absolute: Orbax refuses relative checkpoint paths.
        directory = Path(run_dir).expanduser().absolute()
    else:
        try:
            digest = load_config(config_path, overrides).hash
        except ConfigError:
            path = Path(config_path)
            digest = evidence.hash_text(path.read_bytes() if path.is_file() else config_path)
        directory = (_evidence_root(config_path, env) / evidence.make_run_id(digest)).absolute()
    directory = _join_processes(directory, config_path, overrides)  # process 0's dir on all
    # A directory with an earlier attempt's files: record.start moves them to attempts/<n>/
    # (process 0 only: the others keep their own log under processes/<id>/).
    record = evidence.make_record(directory)
    run = Run(run_id=directory.name, run_dir=directory, record=record, config_path=config_path,
              env=env)
    record.start(run.run_id, run_name or "", config_path)
    record.update_manifest(environment={
        "on_kaggle": env.on_kaggle, "run_type": env.run_type, "working_dir": str(env.working_dir),
        **evidence.kaggle_identity(env.on_kaggle),
    })
    multihost.on_peer_failure(functools.partial(_record_peer_failure, run))
    _configure(run, overrides)
    return run


def _join_processes(directory: Path, config_path: str, overrides: dict[str, Any]) -> Path:
    """Multi-process runs: start jax.distributed (platform flags first) and take process 0's
    run directory. A failed start is recorded by process 0 before it raises."""
    try:
        spec = multihost.spec_from_environment()
        if spec is None:
            return directory
        try:
            device = load_config(config_path, overrides).device
        except ConfigError:
            device = "auto"  # the config+runtime stage reports the config error itself
        runtime.configure_platform(device)
        multihost.initialize(spec, on_start_failure=functools.partial(_record_start_failure,
                                                                      directory))
    except (multihost.DistributedConfigError, multihost.DistributedStartError) as exc:
        _record_start_failure(directory, exc)
        raise
    return multihost.share_run_dir(directory)


def _record_start_failure(directory: Path, error: BaseException) -> None:
    if multihost.claimed_process_id() in (0, None):  # the would-be process 0 records it
        evidence.RunRecord(directory).fail("distributed", error)


def _record_peer_failure(run: Run, error: multihost.PeerProcessError) -> None:
    """Another process died: the stage that was running fails, naming the dead process."""
    manifest = run.record.read_manifest()
    running = [k for k, v in (manifest.get("stages") or {}).items() if v.get("status") == "running"]
    label = running[-1] if running else "distributed"
    run.failed_stage = label
    run.record.stage(label, "failed")
    run.record.fail(label, error, checkpoint=run.last_checkpoint)
    run.record.update_manifest(failure={"dead_processes": error.dead_processes})
    _close_failed(run)


@stage("config+runtime")
def _configure(run: Run, overrides: dict[str, Any]) -> None:
    config = load_config(run.config_path, overrides)
    run.config = config
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
    log.info(runtime.banner(run.env, run.devices, flags))
    log.info(f"run {run.run_id} -> {run.run_dir}")


@stage("auth")
def authenticate(run: Run) -> None:
    """HF token for gated hub downloads (env, then Kaggle Secrets). Never printed."""
    cfg = run.cfg
    spec = registry.get_spec(cfg.model.name)
    source = spec.default_source if cfg.model.source == "auto" else cfg.model.source
    gated = spec.gated if cfg.model.gated is None else cfg.model.gated
    needs_token = source == "hf" and gated
    run.token = auth.resolve_hf_token(run.env.on_kaggle, required=needs_token)
    run.record.update_manifest(auth={"hf_token_source": run.token.source, "needed": needs_token})
    log.info(f"auth: model source {source}; HF token {'found via ' + run.token.source if run.token else 'not needed' if not needs_token else 'missing'}")


@stage("load_model")
def load_model(run: Run) -> None:
    """Build the mesh, check the memory budget, load weights and tokenizer onto the mesh."""
    from kaggle_lib import mesh as mesh_lib  # imports jax (see the note at the top)

    cfg = run.cfg
    run.mesh = mesh_lib.make_mesh(cfg.mesh.fsdp, cfg.mesh.tp)
    if "sft" in cfg.train.stages:
        mesh_lib.check_batch(cfg.train.sft.batch_size, run.mesh)
    budget = preflight.check(cfg, run.devices, mesh_shape=dict(run.mesh.shape))
    log.info(budget.text)
    run.record.update_manifest(preflight=budget.to_dict())
    started = time.monotonic()
    multiprocess = multihost.is_multiprocess()
    run.loaded = loader.load_model(
        cfg.model.name, source=cfg.model.source, path=cfg.model.path, revision=cfg.model.revision,
        repo=cfg.model.repo, dtype=cfg.model.dtype, platform=run.devices["platform"],
        mesh=None if multiprocess else run.mesh,
        token=run.token.value if run.token else None, seed=cfg.seed,
    )
    if multiprocess:
        _lora_then_shard(run)
    info = {**run.loaded.info, "load_seconds": round(time.monotonic() - started, 2),
            "mesh": dict(run.mesh.shape)}
    run.record.update_manifest(model=info)
    log.info(f"model: {cfg.model.name} from {info['source']} | {info['param_count']:,} params "
          f"({info['param_bytes'] / 2**20:.0f} MiB, {info['dtype']}) | mesh {dict(run.mesh.shape)} "
          f"| loaded in {info['load_seconds']} s")


def _lora_then_shard(run: Run) -> None:
    """Several processes: wrap LoRA while the weights are still process-local, then shard.

    qwix finds the layers to wrap by running the model op by op; op-by-op computations on
    arrays spread over processes can deadlock on CPU (gloo) collectives (docs/MULTIHOST.md).
    The LoRA init is seeded, so the weights are those of a one-process run."""
    from kaggle_lib.training.sft import apply_lora  # imports jax (see the note at the top)

    lora = run.cfg.train.sft.lora
    if "sft" in run.cfg.train.stages and run.cfg.train.sft.mode == "lora":
        run.loaded.model = apply_lora(run.loaded.model, rank=lora.rank, alpha=lora.alpha,
                                      target_modules=lora.target_modules, seed=run.cfg.seed)
        run.lora_applied = True
    run.loaded.model = loader.shard_model(run.loaded.model, run.mesh)


def _eval_items(run: Run) -> list[dict[str, Any]]:
    if not run.eval_items:
        # A list of specs is one union: eval_limit's stratified pick covers every group of it.
        items, sources = load_sources(run.cfg.data.eval)
        run.eval_items = stratified(items, run.cfg.data.eval_limit)
        owners = [source["spec"] for source in sources for _ in range(source["items"])]
        spec_of = {item["id"]: spec for item, spec in zip(items, owners, strict=True)}
        picked = Counter(spec_of[item["id"]] for item in run.eval_items)
        # The record says how many items of each source the scorecards are over.
        run.record.update_manifest(data={"eval": run.cfg.data.eval, "eval_sources": [
            {**source, "evaluated": picked[source["spec"]]} for source in sources]})
    return run.eval_items


def stratified(items: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    """The first `limit` items taken round-robin over (section, category, difficulty), so a
    small evaluation still covers every group; order within a group is the file's order."""
    if limit is None or limit >= len(items):
        return list(items)
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for item in items:
        key = (str(item.get("section")), str(item.get("category")), str(item.get("difficulty")))
        groups.setdefault(key, []).append(item)
    queues = [list(reversed(g)) for g in groups.values()]
    picked: list[dict[str, Any]] = []
    while len(picked) < limit:
        for queue in queues:
            if queue and len(picked) < limit:
                picked.append(queue.pop())
    return picked


def _prompts(run: Run, questions: list[str]) -> list[str]:
    return [template.format_prompt(q, instruct=run.loaded.spec.instruct) for q in questions]


def _generator(run: Run, max_new_tokens: int) -> Any:
    from kaggle_lib.generation import Generator  # imports jax (see the note at the top)

    if run.generator is not None and run.generator.serves(run.loaded.model, max_new_tokens):
        return run.generator
    prompts = _prompts(run, [i["prompt"] for i in _eval_items(run)] + _sample_questions(run))
    longest = max(len(run.loaded.tokenizer.encode(p)) + 1 for p in prompts)
    run.generator = Generator(run.loaded.model, run.loaded.tokenizer, run.loaded.eos_ids,
                              max_prompt_len=longest, max_new_tokens=max_new_tokens, mesh=run.mesh)
    return run.generator


def _sample_questions(run: Run) -> list[str]:
    if run.cfg.sample.prompts:
        return list(run.cfg.sample.prompts)
    return [item["prompt"] for item in _eval_items(run)[:4]]


def _samples_from_evaluation(run: Run, which: str) -> list[Any] | None:
    """The evaluation's own outputs for the sample questions when sampling would only repeat
    them: the default questions (the first eval items), greedy, the eval's token budget.
    Greedy decoding does not depend on the other rows of a batch (tests/integration/
    test_generation.py), so a second decode would cost a batch of decode steps for the same
    tokens."""
    cfg, gens = run.cfg.sample, run.generations.get(which)
    if gens is None or cfg.prompts or cfg.temperature != 0.0 \
            or cfg.max_new_tokens != run.cfg.eval.max_new_tokens:
        return None
    return gens[: len(_sample_questions(run))]


def _generate_samples(run: Run, which: str, generator: Any) -> None:
    sample_cfg = run.cfg.sample
    questions = _sample_questions(run)
    gens = _samples_from_evaluation(run, which)
    if gens is None:
        gens = generator.generate(
            _prompts(run, questions),
            max_new_tokens=min(sample_cfg.max_new_tokens, generator.max_new_tokens),
            temperature=sample_cfg.temperature, top_p=sample_cfg.top_p, top_k=sample_cfg.top_k,
            seed=sample_cfg.seed, batch_size=run.cfg.eval.batch_size,
        )
    run.samples[which] = list(zip(questions, gens, strict=True))
    _write_samples(run)
    for question, gen in run.samples[which]:
        log.info(f"--- [{which}] {question}\n{gen.text}\n")


def _write_samples(run: Run) -> None:
    lines = [f"# Samples: run {run.run_id}", ""]
    cfg = run.cfg.sample
    lines.append(f"Decoding: temperature {cfg.temperature}, top_p {cfg.top_p}, top_k {cfg.top_k}, "
                 f"seed {cfg.seed}, max {cfg.max_new_tokens} new tokens.")
    lines.append("")
    for which, pairs in run.samples.items():
        lines += [f"## {which}", ""]
        for i, (question, gen) in enumerate(pairs, 1):
            lines += [f"### {i}. {question}", "", "```", gen.text.strip() or "(empty)", "```",
                      f"({gen.n_tokens} tokens{', truncated' if gen.truncated else ''})", ""]
    run.record.write_text("samples.md", auth.redact("\n".join(lines)))


@stage("evaluate")
def evaluate(run: Run, which: str = "trained") -> None:
    """Generate for every eval item, score, append to predictions.jsonl. Baseline also samples."""
    if which not in ev.STAGES:
        raise ValueError(f"evaluate() stage must be one of {ev.STAGES}, got {which!r}")
    cfg = run.cfg
    if which == "baseline" and not cfg.eval.baseline:
        log.info("baseline evaluation disabled (eval.baseline: false)")
        return
    items = _eval_items(run)
    generator = _generator(run, max(cfg.eval.max_new_tokens, cfg.sample.max_new_tokens))
    started = time.monotonic()
    gens = ev.generate_with_progress(generator, _prompts(run, [i["prompt"] for i in items]),
                                     max_new_tokens=cfg.eval.max_new_tokens,
                                     batch_size=cfg.eval.batch_size, desc=f"eval {which}")
    seconds = time.monotonic() - started
    records = [ev.score_item(item, gen.text, gen.n_tokens, gen.truncated, stage=which)
               for item, gen in zip(items, gens, strict=True)]
    run.records[which] = records
    run.generations[which] = gens
    # Several processes: each decoded its rows of every batch and the ids were gathered once;
    # the scored records must agree, and only process 0 writes them.
    multihost.check_agreement(f"predictions_{which}", records)
    if multihost.is_writer():
        ev.write_predictions(run.run_dir / "predictions.jsonl", records, stage=which,
                             append=(run.run_dir / "predictions.jsonl").exists())
    card = ev.scorecard(records)
    tokens = sum(g.n_tokens for g in gens)
    run.record.log_metrics({"stage": f"eval_{which}", "items": len(items), "seconds": round(seconds, 2),
                            "generated_tokens": tokens, "tokens_per_s": round(tokens / seconds, 2),
                            **{f"{k}": v for k, v in card["overall"].items()}})
    _write_summary(run)
    log.info(f"[{which}] {len(items)} items in {seconds:.1f} s: accuracy {card['overall']['accuracy']:.3f}, "
          f"format exact {card['overall']['format_exact']:.3f}, approx {card['overall']['format_approx']:.3f}")
    if which == "baseline":
        _generate_samples(run, "baseline", generator)
        if cfg.eval.fewshot_baseline:
            _evaluate_fewshot(run)


def _evaluate_fewshot(run: Run) -> None:
    """The untrained model asked with the few-shot prompt (issue 14): a fairer baseline than
    zero-shot for a base model; the summary takes the delta against the better of the two."""
    from kaggle_lib.generation import Generator  # imports jax (see the note at the top)

    cfg, items, tokenizer = run.cfg, _eval_items(run), run.loaded.tokenizer
    prompts = [format_fewshot_prompt(i["prompt"], instruct=run.loaded.spec.instruct)
               for i in items]
    generator = Generator(run.loaded.model, tokenizer, run.loaded.eos_ids,
                          max_prompt_len=max(len(tokenizer.encode(p)) + 1 for p in prompts),
                          max_new_tokens=cfg.eval.max_new_tokens)
    started = time.monotonic()
    gens = ev.generate_with_progress(generator, prompts, max_new_tokens=cfg.eval.max_new_tokens,
                                     batch_size=cfg.eval.batch_size, desc="eval baseline_fewshot")
    seconds = time.monotonic() - started
    records = []
    for item, gen in zip(items, gens, strict=True):
        text, n_tokens, truncated = ev.trim_fewshot(gen.text, gen.n_tokens, gen.truncated,
                                                    lambda t: len(tokenizer.encode(t)))
        records.append(ev.score_item(item, text, n_tokens, truncated, stage="baseline_fewshot"))
    run.records["baseline_fewshot"] = records
    multihost.check_agreement("predictions_baseline_fewshot", records)
    if multihost.is_writer():
        ev.write_predictions(run.run_dir / "predictions.jsonl", records, stage="baseline_fewshot",
                             append=(run.run_dir / "predictions.jsonl").exists())
    card = ev.scorecard(records)
    run.record.log_metrics({"stage": "eval_baseline_fewshot", "items": len(items),
                            "seconds": round(seconds, 2), **card["overall"]})
    _write_summary(run)
    log.info(f"[baseline_fewshot] {len(items)} items in {seconds:.1f} s: accuracy "
          f"{card['overall']['accuracy']:.3f}, format exact {card['overall']['format_exact']:.3f}")


def _write_summary(run: Run) -> dict[str, Any]:
    summary = ev.summarize(run.records.get("baseline"), run.records.get("trained"),
                           meta={"run_id": run.run_id, "eval_data": run.cfg.data.eval,
                                 "model": run.cfg.model.name},
                           fewshot_records=run.records.get("baseline_fewshot"))
    if multihost.is_writer():
        ev.write_summary(run.run_dir / "eval_summary.json", summary)
    return summary


@stage("train")
def train(run: Run) -> None:
    """Run the configured stages (SFT, then GRPO) on the loaded model, in place; then loss.png."""
    from kaggle_lib.training import stages  # imports jax (see the note at the top)

    def note_checkpoint(path: str) -> None:
        run.last_checkpoint = path  # failure_analysis.md names it if a later step fails

    inputs = stages.StageInputs(
        config=run.cfg, loaded=run.loaded, mesh=run.mesh, run_dir=run.run_dir, record=run.record,
        lora=stages.lora_settings(run.cfg), lora_applied=run.lora_applied,
        on_checkpoint=note_checkpoint)
    try:
        run.train_results.update(stages.run_stages(inputs))
    finally:
        run.lora_applied = inputs.lora_applied
    plots.plot_loss(run.record, run.run_id)


@stage("sample")
def sample(run: Run) -> None:
    """The fixed sample prompts after training, next to the baseline's, in samples.md."""
    generator = _generator(run, max(run.cfg.eval.max_new_tokens, run.cfg.sample.max_new_tokens))
    _generate_samples(run, "trained", generator)


@stage("export")
def _export(run: Run) -> None:
    """The trained model merged and exported into <run_dir>/export/ (HF safetensors and Orbax),
    recorded in the manifest (`exports`). Skipped, with a message, for families other than
    Gemma 3 (their Tunix code has no safetensors merge helper to check against) and in
    multi-process runs."""
    from kaggle_lib import export  # imports jax (see the note at the top)

    if multihost.is_multiprocess():  # the weights are spread over processes (docs/MULTIHOST.md)
        log.info("export: skipped in a multi-process run; restore its last checkpoint in a 1-process "
              "run (train.resume_from: <run>/checkpoints/sft) to export")
        return
    loaded = run.loaded
    if loaded is None or loaded.spec.family != "gemma3":
        family = loaded.spec.family if loaded is not None else "no model"
        log.info(f"export: skipped ({family}; exports are implemented for gemma3 models)")
        return
    sft = run.cfg.train.sft
    alpha = sft.lora.alpha if sft.mode == "lora" else None
    step = (run.train_results.get("sft") or {}).get("steps")
    result = export.export_model(loaded.model, run.run_dir / "export", tokenizer=loaded.tokenizer,
                                 alpha=alpha, eos_ids=loaded.eos_ids)
    run.record.update_manifest(exports=result.to_manifest(run.run_dir, step))
    log.info(f"export: {result.hf_dir} (HF safetensors, max |logit diff| {result.hf_max_logit_diff:.2e})"
          f" and {result.orbax_dir} (Orbax for Kaggle Models, {result.orbax_max_logit_diff:.2e})")


@stage("finish")
def finish(run: Run) -> None:
    """Exports, summaries, plots, secret scan, README; status succeeded."""
    if run.cfg.evidence.export and run.train_results:
        _export(run)
    summary = _write_summary(run) if run.records else {}
    if summary:
        log.info(ev.format_scorecard_table(summary))
    headline = close.headline_metrics(summary, run.train_results)
    run.record.update_manifest(metrics=headline)
    close.finalize(run.record, status="succeeded")
    multihost.mark_done()
    log.info(json.dumps(headline, indent=2))
