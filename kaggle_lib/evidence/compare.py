"""Compare the scores of two runs (or two stages of one): tables, regressed items, a baseline
gate, a chart. CLI: `python -m kaggle_lib compare`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kaggle_lib import logs
from kaggle_lib.errors import KaggleLibError
from kaggle_lib.evaluation.runner import PREDICTIONS as PREDICTIONS_FILE
from kaggle_lib.evaluation.runner import SUMMARY as SUMMARY_FILE
from kaggle_lib.evaluation.runner import read_predictions
from kaggle_lib.evaluation.scoring import (
    DELTA_METRICS,
    GROUP_FIELDS,
    STAGES,
    diff,
    fmt_number,
    fmt_rate,
    fmt_rate_delta,
    format_table,
    scorecard_delta,
)
from kaggle_lib.evidence.lock import close_if_writer_gone
from kaggle_lib.evidence.manifest import MANIFEST

log = logs.get_logger(__name__)
BASELINE_FILE = "baseline.json"
DEFAULT_THRESHOLD = 0.02


class CompareError(KaggleLibError, ValueError):
    """Bad input to a comparison (missing/invalid files, unknown stage, bad threshold)."""


@dataclass
class CompareResult:
    """Outcome of comparing run B against run A (`delta` is B minus A)."""

    a_label: str
    b_label: str
    a_scorecard: dict[str, Any]
    b_scorecard: dict[str, Any]
    delta: dict[str, Any]
    accuracy_a: float
    accuracy_b: float
    threshold: float
    regressed: bool
    regressed_items: list[dict[str, Any]]
    unmatched_ids: list[Any] = field(default_factory=list)  # scored in A but absent from B
    table: str = ""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None


def load_run_scores(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read `(eval_summary.json, predictions.jsonl records)` of a run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CompareError(f"run directory not found: {run_dir}")
    close_if_writer_gone(run_dir)
    summary_path, predictions_path = run_dir / SUMMARY_FILE, run_dir / PREDICTIONS_FILE
    missing = [p.name for p in (summary_path, predictions_path) if not p.is_file()]
    if missing:
        raise CompareError(f"run directory {run_dir} lacks {' and '.join(missing)} (a scored "
                           f"run has {SUMMARY_FILE} and {PREDICTIONS_FILE}; did its eval stage "
                           "run?)")
    summary = _read_json(summary_path)
    if not isinstance(summary, dict) or not any(k in summary for k in STAGES):
        raise CompareError(f"{summary_path}: expected an object with a 'baseline' and/or "
                           "'trained' scorecard")
    try:
        predictions = read_predictions(predictions_path)
    except ValueError as exc:
        raise CompareError(str(exc)) from None
    return summary, predictions


def _stage_scorecard(summary: Mapping[str, Any], stage: str, source: Path) -> dict[str, Any]:
    if stage not in STAGES:
        raise CompareError(f"stage must be one of {STAGES}, got {stage!r}")
    card = summary.get(stage)
    if card is None:
        present = [s for s in STAGES if summary.get(s) is not None]
        raise CompareError(f"{source / SUMMARY_FILE}: field {stage!r} is empty; stages "
                           f"present: {present}")
    overall = card.get("overall") if isinstance(card, dict) else None
    if not isinstance(overall, dict) or not isinstance(overall.get("accuracy"), int | float):
        raise CompareError(f"{source / SUMMARY_FILE}: field '{stage}.overall.accuracy' must be a "
                           "number (a scorecard of at least one item)")
    return card


def _stage_predictions(records: Sequence[Mapping[str, Any]], stage: str,
                       source: Path) -> dict[Any, Mapping[str, Any]]:
    by_id: dict[Any, Mapping[str, Any]] = {}
    for index, record in enumerate(records, start=1):
        if record.get("stage") not in STAGES:
            raise CompareError(f"{source / PREDICTIONS_FILE}: record {index} has 'stage' "
                               f"{record.get('stage')!r}; allowed: {list(STAGES)}")
        if record["stage"] != stage:
            continue
        for name in ("id", "correct"):
            if name not in record:
                raise CompareError(f"{source / PREDICTIONS_FILE}: record {index} lacks field "
                                   f"{name!r}")
        if record["id"] in by_id:
            raise CompareError(f"{source / PREDICTIONS_FILE}: id {record['id']!r} appears twice "
                               f"in stage {stage!r}")
        by_id[record["id"]] = record
    return by_id


def _run_id(summary: Mapping[str, Any], run_dir: Path) -> str:
    meta = summary.get("meta") or {}
    return (meta.get("run_id") if isinstance(meta, dict) else None) or run_dir.name


def _metric_cells(metric: str, va: float | None, vb: float | None) -> list[str]:
    """A, B and delta cells: rates, except mean_tokens (a count)."""
    delta = diff(va, vb)
    if metric != "mean_tokens":
        return [fmt_rate(va), fmt_rate(vb), fmt_rate_delta(delta)]
    return [fmt_number(va), fmt_number(vb), "-" if delta is None else f"{delta:+.1f}"]


def format_comparison(result: CompareResult) -> str:
    """Side-by-side text: overall metrics, then accuracy per section / category / difficulty."""
    a, b = result.a_scorecard, result.b_scorecard
    parts = [f"A: {result.a_label}", f"B: {result.b_label}", ""]
    rows = [["n", str(a["overall"]["n"]), str(b["overall"]["n"]), ""]]
    for metric in DELTA_METRICS:
        va, vb = a["overall"].get(metric), b["overall"].get(metric)
        rows.append([metric, *_metric_cells(metric, va, vb)])
    parts.append(format_table(["overall", "A", "B", "delta"], rows))
    for key in GROUP_FIELDS:
        ga, gb = a.get(key, {}), b.get(key, {})
        rows = []
        for name in sorted(set(ga) | set(gb)):
            ma, mb = ga.get(name, {}), gb.get(name, {})
            va, vb = ma.get("accuracy"), mb.get("accuracy")
            rows.append([name, str(ma.get("n", "-")), str(mb.get("n", "-")),
                         fmt_rate(va), fmt_rate(vb), fmt_rate_delta(diff(va, vb))])
        if rows:
            parts += ["", format_table([f"accuracy {key}", "n A", "n B", "A", "B", "delta"], rows)]
    return "\n".join(parts)


def compare_runs(a_dir: str | Path, b_dir: str | Path, *, threshold: float = DEFAULT_THRESHOLD,
                 a_stage: str = "trained", b_stage: str = "trained") -> CompareResult:
    """Compare run B against run A: `regressed` when B's overall accuracy is below A's by more
    than `threshold` (absolute); `regressed_items`: ids correct in A and wrong in B."""
    if not 0 <= threshold < 1:
        raise CompareError(f"threshold must be in [0, 1) (absolute accuracy), got {threshold}")
    a_dir, b_dir = Path(a_dir), Path(b_dir)
    summary_a, preds_a = load_run_scores(a_dir)
    summary_b, preds_b = (summary_a, preds_a) if a_dir == b_dir else load_run_scores(b_dir)
    card_a = _stage_scorecard(summary_a, a_stage, a_dir)
    card_b = _stage_scorecard(summary_b, b_stage, b_dir)
    items_a = _stage_predictions(preds_a, a_stage, a_dir)
    items_b = _stage_predictions(preds_b, b_stage, b_dir)

    regressed_items = []
    for item_id, rec_a in items_a.items():
        rec_b = items_b.get(item_id)
        if rec_b is not None and rec_a["correct"] and not rec_b["correct"]:
            regressed_items.append({
                "id": item_id, "section": rec_a.get("section"), "category": rec_a.get("category"),
                "difficulty": rec_a.get("difficulty"), "expected": rec_a.get("answer"),
                "a_answer": rec_a.get("parsed_answer"), "b_answer": rec_b.get("parsed_answer")})
    unmatched = [item_id for item_id in items_a if item_id not in items_b]

    acc_a, acc_b = card_a["overall"]["accuracy"], card_b["overall"]["accuracy"]
    result = CompareResult(
        a_label=f"{_run_id(summary_a, a_dir)} [{a_stage}]",
        b_label=f"{_run_id(summary_b, b_dir)} [{b_stage}]",
        a_scorecard=card_a, b_scorecard=card_b, delta=scorecard_delta(card_a, card_b),
        accuracy_a=acc_a, accuracy_b=acc_b, threshold=threshold,
        # A tiny epsilon so a drop of exactly `threshold` (float noise) does not count.
        regressed=(acc_a - acc_b) > threshold + 1e-12,
        regressed_items=regressed_items, unmatched_ids=unmatched)
    result.table = format_comparison(result)
    return result


def mark_baseline(run_dir: str | Path, evidence_root: str | Path) -> Path:
    """Record `run_dir` as the baseline in `evidence_root/baseline.json` (relative when under).
    A run whose manifest says it did not succeed (failed, interrupted, still running) is refused:
    a gate against scores that are partial or still changing would mislead."""
    run_dir, evidence_root = Path(run_dir), Path(evidence_root)
    summary, _ = load_run_scores(run_dir)
    manifest_path = run_dir / MANIFEST
    manifest = _read_json(manifest_path) if manifest_path.is_file() else None
    status = manifest.get("status") if isinstance(manifest, dict) else None
    if manifest is not None and status != "succeeded":
        raise CompareError(f"refusing to mark {run_dir} as the baseline: {manifest_path} says "
                           f"status {status!r}; a baseline must be a run that succeeded")
    if manifest is None:
        log.warning(f"compare: warning: {run_dir} has no {MANIFEST}; marking it as the baseline "
                    "without knowing whether the run succeeded")
    card = _stage_scorecard(summary, "trained", run_dir)
    try:
        stored = run_dir.resolve().relative_to(evidence_root.resolve()).as_posix()
    except ValueError:
        stored = str(run_dir.resolve())
    record = {"run_id": _run_id(summary, run_dir), "path": stored,
              "accuracy": card["overall"]["accuracy"],
              "marked_at": datetime.now(UTC).isoformat(timespec="seconds")}
    evidence_root.mkdir(parents=True, exist_ok=True)
    out = evidence_root / BASELINE_FILE
    out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out


def baseline_run_dir(evidence_root: str | Path) -> Path:
    """The run directory recorded by `mark_baseline`."""
    evidence_root = Path(evidence_root)
    path = evidence_root / BASELINE_FILE
    if not path.is_file():
        raise CompareError(f"no baseline marked: {path} not found (mark one with "
                           "`compare --mark-baseline RUN`)")
    record = _read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        raise CompareError(f"{path}: field 'path' must be a string (the baseline run directory)")
    run_dir = Path(record["path"])
    return run_dir if run_dir.is_absolute() else evidence_root / run_dir


def compare_to_baseline(run_dir: str | Path, evidence_root: str | Path,
                        threshold: float = DEFAULT_THRESHOLD) -> CompareResult:
    """Compare `run_dir` (B) against the marked baseline run (A)."""
    return compare_runs(baseline_run_dir(evidence_root), run_dir, threshold=threshold)


def plot_category_accuracy(result: CompareResult, out_png: str | Path) -> Path:
    """Grouped bar chart of per-category accuracy (A vs B) as a PNG."""
    # Figure + Agg canvas instead of pyplot: no global backend switch, so calling this from a
    # notebook does not break its inline plotting.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cats_a = result.a_scorecard.get("by_category", {})
    cats_b = result.b_scorecard.get("by_category", {})
    names = sorted(set(cats_a) | set(cats_b))
    if not names:
        raise CompareError("no per-category scores to plot")

    def values(cats: Mapping[str, Any]) -> list[float]:
        # A category missing on one side is drawn as 0 height; its label still shows.
        return [100 * (cats.get(n, {}).get("accuracy") or 0.0) for n in names]

    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 2), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = range(len(names))
    width = 0.4
    for offset, label, cats in ((-width / 2, result.a_label, cats_a),
                                (width / 2, result.b_label, cats_b)):
        bars = ax.bar([x + offset for x in xs], values(cats), width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("accuracy (%)")
    # Head room above 100 so the legend and bar labels do not cover full bars.
    ax.set_ylim(0, 125)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Accuracy per category")
    ax.legend(loc="upper left", ncol=2, fontsize=9)
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def format_regressions(result: CompareResult, limit: int = 50) -> str:
    """Lines listing items correct in A and wrong in B (at most `limit`)."""
    if not result.regressed_items:
        lines = ["no regressed items (nothing correct in A is wrong in B)"]
    else:
        lines = [f"{len(result.regressed_items)} regressed item(s) (correct in A, wrong in B):"]
        for item in result.regressed_items[:limit]:
            lines.append(f"  {item['id']} [{item['section']}/{item['category']}] expected "
                         f"{item['expected']!r}, A {item['a_answer']!r}, B {item['b_answer']!r}")
        if len(result.regressed_items) > limit:
            lines.append(f"  ... and {len(result.regressed_items) - limit} more")
    if result.unmatched_ids:
        lines.append(f"{len(result.unmatched_ids)} id(s) scored in A are missing from B")
    return "\n".join(lines)
