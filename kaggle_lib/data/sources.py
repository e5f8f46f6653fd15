"""Items for a data spec (`kaggle_lib.data_spec`). `LOADERS` is the whole registry of spec
kinds: a new source adds its loader here, so nothing is registered by importing a module."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from kaggle_lib.data import datasets, reasoning_gym
from kaggle_lib.data_spec import DataError, DataSpec, parse_spec, spec_list

Items = list[dict[str, Any]]

LOADERS: dict[str, Callable[[DataSpec, int | None], Items]] = {
    "builtin": lambda spec, limit: datasets.load_builtin(spec.name, limit=limit),
    "jsonl": lambda spec, limit: datasets.load_jsonl(spec.name, limit=limit),
    "hf": lambda spec, limit: datasets.load_hf(spec.name, spec.config, spec.split or "train",
                                               limit=limit),
    "kaggle": lambda spec, limit: datasets.load_kaggle(spec.name, str(spec.file), limit=limit),
    "rg": lambda spec, limit: reasoning_gym.load_spec(spec.name, limit),
}


def load_items(spec: str, limit: int | None = None) -> Items:
    """Load, map and validate the items named by ``spec`` (first ``limit`` items if given)."""
    if limit is not None and limit < 1:
        raise DataError(f"data spec {spec!r}: limit must be >= 1 or None, got {limit}")
    parsed = parse_spec(spec)
    return LOADERS[parsed.kind](parsed, limit)


def load_sources(specs: str | Sequence[str],
                 limit: int | None = None) -> tuple[Items, list[dict[str, Any]]]:
    """Items of a spec or of a list of specs in order, and each spec's ``{"spec", "items"}``
    count. ``limit`` applies to each spec (every source keeps a predictable share); ids must be
    unique across the sources: scorecards and predictions are keyed by id."""
    items, counts, first = [], [], {}
    for spec in spec_list(specs):
        loaded = load_items(spec, limit=limit)
        for item in loaded:
            if item["id"] in first:
                raise DataError(f"data spec {spec!r}: item id {item['id']!r} is also in "
                                f"{first[item['id']]!r}; ids must be unique across a list of specs")
            first[item["id"]] = spec
        items.extend(loaded)
        counts.append({"spec": spec, "items": len(loaded)})
    return items, counts


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


def pick_eval_items(specs: str | Sequence[str], limit: int | None
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The evaluation items of `specs` and each spec's counts (``[{"spec", "items",
    "evaluated"}]``, for the run record). A list of specs is one union: `limit`'s stratified
    pick covers every group of it."""
    items, sources = load_sources(specs)
    picked = stratified(items, limit)
    owners = [source["spec"] for source in sources for _ in range(source["items"])]
    spec_of = {item["id"]: spec for item, spec in zip(items, owners, strict=True)}
    counts = Counter(spec_of[item["id"]] for item in picked)
    return picked, [{**source, "evaluated": counts[source["spec"]]} for source in sources]
