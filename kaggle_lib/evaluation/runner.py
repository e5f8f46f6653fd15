"""The one evaluation loop (`evaluate`), for the notebook (`Evaluations`) and `kaggle_lib eval`:
model, items, prompt style ("zero-shot" or "few-shot") -> scored records, a scorecard, a metrics
line. Each process decodes its rows of a batch; the records must agree; process 0 writes them.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kaggle_lib import auth, jsonl, logs, multihost
from kaggle_lib.answer_format import first_answer_only
from kaggle_lib.data.fewshot import format_fewshot_prompt
from kaggle_lib.data.sources import pick_eval_items
from kaggle_lib.data.template import format_prompt
from kaggle_lib.data_spec import DataError
from kaggle_lib.evaluation.scoring import STAGES, score_item, scorecard, summarize

if TYPE_CHECKING:
    from kaggle_lib.config import RunConfig, SampleSection
    from kaggle_lib.evidence import RunRecord
    from kaggle_lib.models.loader import LoadedModel

log = logs.get_logger(__name__)

PREDICTIONS = "predictions.jsonl"
SUMMARY = "eval_summary.json"
PROMPT_STYLES: dict[str, Callable[..., str]] = {"zero-shot": format_prompt,
                                                "few-shot": format_fewshot_prompt}
# Without sample.prompts, the samples ask the first eval items' questions.
SAMPLE_ITEMS = 4


def render_prompts(questions: Iterable[str], *, style: str, instruct: bool) -> list[str]:
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {sorted(PROMPT_STYLES)}, got {style!r}")
    return [PROMPT_STYLES[style](q, instruct=instruct) for q in questions]


def prompt_tokens(loaded: LoadedModel, prompt: str) -> int:
    """The prompt's length as the Generator feeds it (the sampler prepends bos)."""
    return len(loaded.tokenizer.encode(prompt)) + 1


def make_generator(loaded: LoadedModel, prompts: Sequence[str], max_new_tokens: int,
                   max_prompt_tokens: int, mesh: Any = None) -> Any:
    """A `generation.Generator` whose prompt budget fits the longest of `prompts` that is within
    `max_prompt_tokens`: its buffers never exceed the configured limit, whatever the prompts."""
    from kaggle_lib.generation import Generator  # imports jax

    fitting = [n for p in prompts if (n := prompt_tokens(loaded, p)) <= max_prompt_tokens]
    return Generator(loaded.model, loaded.tokenizer, loaded.eos_ids,
                     max_prompt_len=max(fitting, default=max_prompt_tokens),
                     max_new_tokens=max_new_tokens, mesh=mesh)


def generate_with_progress(generator: Any, prompts: Sequence[str], *, max_new_tokens: int,
                           batch_size: int, desc: str = "eval") -> list[Any]:
    """Greedy `generator.generate` batch by batch under a tqdm bar (items done, tokens/s): the
    same outputs as one call, and each batch keeps the compiled shapes (the last is padded)."""
    from tqdm.auto import tqdm

    outputs: list[Any] = []
    started = time.monotonic()
    with tqdm(total=len(prompts), desc=desc, unit="item", file=sys.stderr) as bar:
        for start in range(0, len(prompts), batch_size):
            batch = generator.generate(list(prompts[start:start + batch_size]),
                                       max_new_tokens=max_new_tokens, batch_size=batch_size)
            outputs += batch
            tokens = sum(g.n_tokens for g in outputs)
            bar.update(len(batch))  # then the rate, so each refresh shows both up to date
            bar.set_postfix(tokens_per_s=f"{tokens / max(time.monotonic() - started, 1e-9):.1f}")
    return outputs


@dataclasses.dataclass
class Evaluation:
    """One evaluation: its records and the generations they scored, in item order."""

    stage: str
    records: list[dict[str, Any]]
    generations: list[Any]
    seconds: float
    dropped: list[str]  # ids of the items whose prompt was over eval.max_prompt_tokens

    def metrics(self) -> dict[str, Any]:
        """The `metrics.jsonl` line: items (and those dropped as too long), decode time and
        speed, the overall scorecard."""
        tokens = sum(g.n_tokens for g in self.generations)
        return {"stage": f"eval_{self.stage}", "items": len(self.records),
                "items_dropped_long": len(self.dropped),
                "seconds": round(self.seconds, 2), "generated_tokens": tokens,
                "tokens_per_s": round(tokens / self.seconds, 2) if self.seconds > 0 else None,
                **scorecard(self.records)["overall"]}


def evaluate(loaded: LoadedModel, items: Sequence[Mapping[str, Any]], *, stage: str,
             max_new_tokens: int, max_prompt_tokens: int, batch_size: int, predictions: Path,
             source: str, style: str = "zero-shot", append: bool = False, mesh: Any = None,
             generator: Any = None) -> Evaluation:
    """Generate greedily for every item in the prompt `style`, score, write to `predictions`.
    Items whose prompt is over `max_prompt_tokens` are dropped and counted; none left is a
    DataError naming `source` (the data file or spec)."""
    prompts = render_prompts([i["prompt"] for i in items], style=style,
                             instruct=loaded.spec.instruct)
    fits = [prompt_tokens(loaded, p) <= max_prompt_tokens for p in prompts]
    dropped = [str(item["id"]) for item, fit in zip(items, fits, strict=True) if not fit]
    if len(dropped) == len(items):
        raise DataError(f"{source}: all {len(items)} eval items have {style} prompts longer than "
                        f"eval.max_prompt_tokens ({max_prompt_tokens} tokens); nothing to "
                        "evaluate: shorten the prompts or raise eval.max_prompt_tokens")
    if dropped:
        log.info(f"[{stage}] {len(dropped)} of {len(items)} items dropped: {style} prompt longer "
                 f"than eval.max_prompt_tokens ({max_prompt_tokens} tokens): "
                 + ", ".join(dropped[:10]) + (", ..." if len(dropped) > 10 else ""))
        items = [item for item, fit in zip(items, fits, strict=True) if fit]
        prompts = [prompt for prompt, fit in zip(prompts, fits, strict=True) if fit]
    generator = generator or make_generator(loaded, prompts, max_new_tokens, max_prompt_tokens,
                                            mesh)
    started = time.monotonic()
    gens = generate_with_progress(generator, prompts, max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, desc=f"eval {stage}")
    seconds = time.monotonic() - started
    records = []
    for item, gen in zip(items, gens, strict=True):
        text, n_tokens, truncated = gen.text, gen.n_tokens, gen.truncated
        if style == "few-shot" and (cut := first_answer_only(text)) != text:
            # The model went on with an invented question: scored up to its first </answer>,
            # which is where it stopped, not truncated.
            text, n_tokens, truncated = cut, len(loaded.tokenizer.encode(cut)), False
        records.append(score_item(item, text, n_tokens, truncated, stage=stage))
    multihost.check_agreement(f"predictions_{stage}", records)
    if multihost.is_writer():
        write_predictions(predictions, records, stage=stage, append=append)
    overall = scorecard(records)["overall"]
    log.info(f"[{stage}] {len(items)} items in {seconds:.1f} s: accuracy {overall['accuracy']:.3f}, "
             f"format exact {overall['format_exact']:.3f}, approx {overall['format_approx']:.3f}")
    return Evaluation(stage, records, gens, seconds, dropped)


def summary_of(records: Mapping[str, Sequence[Mapping[str, Any]]],
               meta: Mapping[str, Any]) -> dict[str, Any]:
    """The `eval_summary.json` structure of the stages in `records` (stage -> records)."""
    return summarize(records.get("baseline"), records.get("trained"), meta=meta,
                     fewshot_records=records.get("baseline_fewshot"))


def reused_samples(sample: SampleSection, eval_max_new_tokens: int,
                   generations: list[Any] | None) -> list[Any] | None:
    """The eval's own outputs for the default sample questions when sampling is greedy with the
    eval's budget: greedy rows are independent (tests/integration/test_generation.py)."""
    if generations is None or sample.prompts or sample.temperature != 0.0 \
            or sample.max_new_tokens != eval_max_new_tokens:
        return None
    return generations[:SAMPLE_ITEMS]


class Evaluations:
    """A run's eval items, records, generations and samples between the notebook's cells, and the
    Generator that zero-shot evaluations and samples share (new weights reuse its compilations)."""

    def __init__(self, config: RunConfig, record: RunRecord) -> None:
        self.config, self.record = config, record
        self._items: list[dict[str, Any]] = []
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.generations: dict[str, list[Any]] = {}
        self.samples: dict[str, list[tuple[str, Any]]] = {}
        self.dropped: dict[str, list[str]] = {}  # stage -> ids over eval.max_prompt_tokens
        self.generator: Any = None

    @property
    def items(self) -> list[dict[str, Any]]:
        if not self._items:
            data = self.config.data
            self._items, sources = pick_eval_items(data.eval, data.eval_limit)
            # The record says how many items of each source the scorecards are over.
            self.record.update_manifest(data={"eval": data.eval, "eval_sources": sources})
        return self._items

    def questions(self, loaded: LoadedModel) -> list[str]:
        """The sample questions: sample.prompts, else the first eval items' that the zero-shot
        evaluation keeps (so samples may reuse its outputs). A sample prompt over
        eval.max_prompt_tokens is a ConfigError naming it."""
        from kaggle_lib.config import ConfigError

        limit = self.config.eval.max_prompt_tokens

        def fits(question: str) -> bool:
            prompt = render_prompts([question], style="zero-shot", instruct=loaded.spec.instruct)
            return prompt_tokens(loaded, prompt[0]) <= limit

        for i, question in enumerate(self.config.sample.prompts):
            if not fits(question):
                raise ConfigError(f"sample.prompts[{i}] is longer than eval.max_prompt_tokens "
                                  f"({limit} tokens as a prompt); shorten it or raise the limit")
        if self.config.sample.prompts:
            return list(self.config.sample.prompts)
        questions: list[str] = []
        for item in self.items:
            if len(questions) == SAMPLE_ITEMS:
                break
            if fits(item["prompt"]):
                questions.append(item["prompt"])
        return questions

    def shared_generator(self, loaded: LoadedModel, mesh: Any = None) -> Any:
        """The zero-shot Generator of eval items and samples; rebuilt only for another model.
        Sized by the longest prompt within eval.max_prompt_tokens (longer ones are dropped)."""
        cfg = self.config
        max_new = max(cfg.eval.max_new_tokens, cfg.sample.max_new_tokens)
        if self.generator is None or not self.generator.serves(loaded.model, max_new):
            questions = [i["prompt"] for i in self.items] + self.questions(loaded)
            self.generator = make_generator(loaded, render_prompts(
                questions, style="zero-shot", instruct=loaded.spec.instruct), max_new,
                cfg.eval.max_prompt_tokens, mesh)
        return self.generator

    def enabled(self, stage: str) -> bool:
        """Whether the config asks for this evaluation and its samples."""
        if stage not in STAGES:
            raise ValueError(f"the evaluation stage must be one of {STAGES}, got {stage!r}")
        cfg = self.config.eval
        if stage == "trained" or cfg.baseline and (stage == "baseline" or cfg.fewshot_baseline):
            return True
        log.info(f"{stage} evaluation disabled (eval.baseline / eval.fewshot_baseline: false)")
        return False

    def evaluate(self, loaded: LoadedModel, stage: str, mesh: Any = None) -> Evaluation | None:
        """Evaluate `stage` on the eval items when `enabled`; write records and the summary."""
        if not self.enabled(stage):
            return None
        style = "few-shot" if stage == "baseline_fewshot" else "zero-shot"
        # The few-shot prompts are much longer and asked once: their own Generator.
        generator = self.shared_generator(loaded, mesh) if style == "zero-shot" else None
        cfg = self.config.eval
        result = evaluate(loaded, self.items, stage=stage, style=style,
                          max_new_tokens=cfg.max_new_tokens, max_prompt_tokens=cfg.max_prompt_tokens,
                          batch_size=cfg.batch_size, predictions=self.record.run_dir / PREDICTIONS,
                          source=f"data.eval {self.config.data.eval!r}", append=True, mesh=mesh,
                          generator=generator)
        self.records[stage], self.generations[stage] = result.records, result.generations
        self.dropped[stage] = result.dropped
        ids = sorted({i for dropped in self.dropped.values() for i in dropped})
        self.record.update_manifest(data={
            "eval_max_prompt_tokens": cfg.max_prompt_tokens,
            "eval_dropped_long": {name: len(dropped) for name, dropped in self.dropped.items()},
            "eval_dropped_ids": ids[:20]})
        self.record.log_metrics(result.metrics())
        self.write_summary()
        return result

    def sample(self, loaded: LoadedModel, which: str, mesh: Any = None) -> None:
        """The sample questions answered after evaluation `which` (when `enabled`): samples.md."""
        if not self.enabled(which):
            return
        cfg = self.config.sample
        questions = self.questions(loaded)
        gens = reused_samples(cfg, self.config.eval.max_new_tokens, self.generations.get(which))
        if gens is None:
            generator = self.shared_generator(loaded, mesh)
            gens = generator.generate(
                render_prompts(questions, style="zero-shot", instruct=loaded.spec.instruct),
                max_new_tokens=min(cfg.max_new_tokens, generator.max_new_tokens),
                temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, seed=cfg.seed,
                batch_size=self.config.eval.batch_size)
        self.samples[which] = list(zip(questions, gens, strict=True))
        lines = [f"# Samples: run {self.record.run_dir.name}", "",
                 f"Decoding: temperature {cfg.temperature}, top_p {cfg.top_p}, top_k {cfg.top_k}, "
                 f"seed {cfg.seed}, max {cfg.max_new_tokens} new tokens.", ""]
        for stage, pairs in self.samples.items():
            lines += [f"## {stage}", ""]
            for i, (question, gen) in enumerate(pairs, 1):
                lines += [f"### {i}. {question}", "", "```", gen.text.strip() or "(empty)", "```",
                          f"({gen.n_tokens} tokens{', truncated' if gen.truncated else ''})", ""]
        self.record.write_text("samples.md", auth.redact("\n".join(lines)))
        for question, gen in self.samples[which]:
            log.info(f"--- [{which}] {question}\n{gen.text}\n")

    def write_summary(self) -> dict[str, Any]:
        """eval_summary.json of every stage evaluated so far; returns it."""
        summary = summary_of(self.records, {"run_id": self.record.run_dir.name,
                                            "eval_data": self.config.data.eval,
                                            "model": self.config.model.name})
        if multihost.is_writer():
            write_summary(self.record.run_dir / SUMMARY, summary)
        return summary


def write_predictions(path: str | Path, records: Iterable[Mapping[str, Any]], *,
                      stage: str | None = None, append: bool = False) -> Path:
    """Write records as JSON lines, each stamped with `stage` when given (a copy)."""
    if stage is not None and stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a" if append else "w", encoding="utf-8") as handle:
        for record in records:
            row = dict(record)
            if stage is not None:  # stage first so the file reads well; overrides any old one
                row = {"stage": stage, **{k: v for k, v in row.items() if k != "stage"}}
            handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    return path


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Read a `predictions.jsonl`; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    records = []
    # A last line cut short (a killed kernel) is skipped: the rest still counts.
    for lineno, record in jsonl.read_lines(path, skip_bad="last", decode="replace"):
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object per line")
        records.append(record)
    return records


def write_summary(path: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write `eval_summary.json` (indented; NaN is refused so the file stays strict JSON)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path
