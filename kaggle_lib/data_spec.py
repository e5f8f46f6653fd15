"""The data-spec language (:data:`SPEC_FORMS`), checked without loading anything: `config`
checks a run's specs before any model loads; `data.sources` loads them. Imports only `errors`.

``builtin:`` names a file of ``kaggle_lib/data/files/``; ``hf:`` a hub id or a local directory
laid out like a hub repo (split ``train`` by default, HF slicing allowed: ``test[:100]``);
``kaggle:`` one csv/jsonl/json/parquet file, its version required: runs must be reproducible,
and kagglehub resolves an unversioned handle by asking the Kaggle API even when it is cached;
``rg:`` reasoning-gym problems, ``<mix>`` a preset of :data:`MIXES` or ``family=weight,...``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kaggle_lib.errors import KaggleLibError

BUILTIN_SPLITS: tuple[str, ...] = ("train", "eval", "eval_rg")  # eval_rg: reasoning-gym
SPEC_FORMS = (
    "builtin:train | builtin:eval | builtin:eval_rg | jsonl:<path> | "
    "hf:<repo>[:<config>][@<split>] | kaggle:<owner>/<dataset>/versions/<N>/<file> | "
    "rg:<mix>[@<seed>][/op|/place_value]")
LINE_STYLES = ("op", "place_value")  # reasoning lines: one per operation, or per place value

OURS_PREFIX = "ours."

# family -> section; the category is the family name, so scorecards show it.
FAMILIES: dict[str, str] = {
    "gsm_symbolic": "math", "basic_arithmetic": "math", "chain_sum": "math",
    "knights_knaves": "logic", "syllogism": "logic", "number_sequence": "logic",
    "leg_counting": "counting", "letter_counting": "counting",
    "spell_backward": "algorithmic", "word_sorting": "algorithmic",
    "calendar_arithmetic": "date_time"}
# Our shipped categories kept: unit_conversion and ordering have no reasoning-gym counterpart;
# knights_knaves, sequence and date_time have one, but without a worked solution, so only ours
# can teach their reasoning in SFT.
OURS_CATEGORIES: dict[str, str] = {"unit_conversion": "math", "ordering": "logic",
                                   "knights_knaves": "logic", "sequence": "logic",
                                   "date_time": "math"}

MIXES: dict[str, dict[str, float]] = {
    "gsm": {"gsm_symbolic": 1.0},
    "wide": {
        "gsm_symbolic": 4.0, "basic_arithmetic": 1.0, "chain_sum": 1.0, "knights_knaves": 1.0,
        "syllogism": 1.0, "number_sequence": 1.0, "leg_counting": 1.0, "letter_counting": 1.0,
        "spell_backward": 1.0, "word_sorting": 1.0, "calendar_arithmetic": 1.0,
        "ours.unit_conversion": 1.0, "ours.ordering": 1.0},
    # SFT needs a worked solution in every item: the families that have one or get one from
    # RENDERED, plus our categories reasoning-gym has no worked solution for.
    "wide_sft": {
        "gsm_symbolic": 4.0, "basic_arithmetic": 1.0, "chain_sum": 1.0, "knights_knaves": 1.0,
        "syllogism": 1.0, "leg_counting": 1.0, "letter_counting": 1.0, "spell_backward": 1.0,
        "word_sorting": 1.0, "ours.unit_conversion": 0.5, "ours.ordering": 0.5,
        "ours.sequence": 0.5, "ours.date_time": 0.5},
}
# wide_sft with the arithmetic families at weight 3 (33% of the problems instead of 14%): the
# long CPU recipe's mix (configs/cpu_gemma3_270m_long.yaml says why).
MIXES["wide_sft_arith"] = {**MIXES["wide_sft"], "basic_arithmetic": 3.0, "chain_sum": 3.0}


class DataError(KaggleLibError, ValueError):
    """Bad data or data spec; the message names the file or spec, the field and what is allowed."""


@dataclass(frozen=True)
class DataSpec:
    """A parsed data spec; see the module docstring for the forms."""

    kind: str  # builtin | jsonl | hf | kaggle | rg
    name: str  # split, path, repo, kaggle handle (owner/dataset/versions/N) or rg body
    config: str | None = None  # hf config
    split: str | None = None  # hf split
    file: str | None = None  # kaggle file inside the dataset


def parse_spec(spec: str) -> DataSpec:
    """Parse a data spec string; raises DataError naming the spec and the allowed forms."""
    if not isinstance(spec, str) or ":" not in spec:
        raise DataError(f"data spec {spec!r} is not allowed; use one of: {SPEC_FORMS}")
    kind, _, body = spec.partition(":")
    if kind == "builtin":
        if body not in BUILTIN_SPLITS:
            raise DataError(f"data spec {spec!r}: builtin split must be one of "
                            f"{', '.join(BUILTIN_SPLITS)}")
        return DataSpec("builtin", body)
    if kind == "jsonl":
        if not body:
            raise DataError(f"data spec {spec!r}: missing path; use jsonl:<path>")
        return DataSpec("jsonl", body)
    if kind == "hf":
        split = "train"
        if "@" in body:
            body, split = body.rsplit("@", 1)
        repo, _, config = body.partition(":")
        if not repo or not split or (":" in body and not config):
            raise DataError(f"data spec {spec!r}: use hf:<repo>[:<config>][@<split>]")
        return DataSpec("hf", repo, config=config or None, split=split)
    if kind == "rg":
        split_rg_spec(body)  # checked now; generated when loaded
        return DataSpec("rg", body)
    if kind == "kaggle":
        parts = body.split("/")
        if len(parts) < 5 or parts[2] != "versions" or not parts[3].isdigit() or not all(parts):
            raise DataError(f"data spec {spec!r}: use kaggle:<owner>/<dataset>/versions/<N>/<file> "
                            "(the version number is required so that runs are reproducible)")
        return DataSpec("kaggle", "/".join(parts[:4]), file="/".join(parts[4:]))
    raise DataError(f"data spec {spec!r}: unknown kind {kind!r}; use one of: {SPEC_FORMS}")


def spec_list(specs: str | Sequence[str]) -> tuple[str, ...]:
    """A config's ``data.train`` / ``data.eval`` (one spec or a list of them) as a tuple."""
    return (specs,) if isinstance(specs, str) else tuple(specs)


def parse_mix(text: str) -> dict[str, float]:
    """A preset name (``gsm``, ``wide``) or ``family=weight,...`` -> {family: weight}."""
    allowed = (f"a preset ({', '.join(MIXES)}) or family=weight,... with families from "
               f"{', '.join(FAMILIES)} and {', '.join(OURS_PREFIX + c for c in OURS_CATEGORIES)}")
    if text in MIXES:
        return dict(MIXES[text])
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, eq, weight = part.strip().partition("=")
        known = name in FAMILIES or name.removeprefix(OURS_PREFIX) in OURS_CATEGORIES and \
            name.startswith(OURS_PREFIX)
        try:
            value = float(weight) if eq else 1.0
        except ValueError:
            value = -1.0
        if not known or value <= 0:
            raise DataError(f"reasoning-gym mix {text!r}: {part.strip()!r} is not allowed; "
                            f"use {allowed} (weights > 0)")
        mix[name] = value
    return mix


def split_rg_spec(body: str) -> tuple[dict[str, float], int, str]:
    """(mix, seed, line style) of the body of ``rg:<mix>[@<seed>][/<lines>]``."""
    rest, slash, style = body.partition("/")
    mix_text, _, seed_text = rest.partition("@")
    if seed_text and not seed_text.isdigit():
        raise DataError(f"data spec 'rg:{body}': the seed after '@' must be an integer >= 0, "
                        f"got {seed_text!r}")
    if slash and style not in LINE_STYLES:
        raise DataError(f"data spec 'rg:{body}': the line style after '/' must be one of "
                        f"{', '.join(LINE_STYLES)}, got {style!r}")
    return parse_mix(mix_text), int(seed_text or 0), style or "op"
