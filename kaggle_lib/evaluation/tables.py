"""Plain-text tables of scorecards: the notebook's summary, `eval`'s and `compare`'s output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kaggle_lib.evaluation.scoring import diff


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain-text table: first column left-aligned, the rest right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def fmt_rate_delta(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f}pp"


def fmt_number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def format_scorecard_table(summary: Mapping[str, Any]) -> str:
    """Overall + per-section table of an `eval_summary.json` structure, for the notebook."""
    # The baseline columns show the baseline the delta is taken against.
    baseline = summary.get(summary.get("delta_against") or "baseline")
    if baseline is None:
        baseline = summary.get("baseline") or summary.get("baseline_fewshot")
    trained = summary.get("trained")
    if baseline is None and trained is None:
        raise ValueError("summary has neither a 'baseline' nor a 'trained' scorecard")
    empty: dict[str, Any] = {}

    def group(card: Mapping[str, Any] | None, name: str | None) -> Mapping[str, Any]:
        if card is None:
            return empty
        return card["overall"] if name is None else card["by_section"].get(name, empty)

    names = sorted(set((baseline or empty).get("by_section", {}))
                   | set((trained or empty).get("by_section", {})))
    rows = []
    for label, name in [("overall", None), *((f"  {s}", s) for s in names)]:
        b, t = group(baseline, name), group(trained, name)
        n = t.get("n", b.get("n"))
        rows.append([
            label,
            "-" if n is None else str(n),
            fmt_rate(b.get("accuracy")),
            fmt_rate(t.get("accuracy")),
            fmt_rate_delta(diff(b.get("accuracy"), t.get("accuracy"))),
            fmt_rate(b.get("format_exact")),
            fmt_rate(t.get("format_exact")),
            fmt_number(t.get("mean_tokens", b.get("mean_tokens"))),
        ])
    fewshot = baseline is not None and baseline is summary.get("baseline_fewshot")
    base = "base few-shot" if fewshot else "base"
    headers = ["group", "n", f"acc {base}", "acc trained", "delta", f"fmt {base}", "fmt trained",
               "tokens"]
    return format_table(headers, rows)
