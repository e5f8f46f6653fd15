"""Tokenization with response-only loss masks, and length-bucketed, resumable SFT batches.

Batch layout (numpy, right-padded with the pad id)::

    input_tokens  int32[B, T]  [bos] prompt target [eos] pad...
    input_mask    int32[B, T]  1 on target tokens and the final eos: the LOSS mask (Tunix's
                               default loss masks targets with input_mask[:, 1:]).
    segment_mask  int32[B, T]  1 on every real token: the padding mask positions and the causal
                               mask must be built from (from input_mask they would hide the prompt).
    segment_ids   int32[B, T]  packing only: 1, 2, 3 ... per example in its row, 0 on padding.
Bucketing (default): sorting by length inside shuffled windows keeps padding low. ``packing``
fills every ``max_len`` row with whole examples (first-fit decreasing); `training.sft.model_inputs`
keeps each example's loss its unpacked loss (tests/unit/test_training_packing.py); one shape.
Determinism: epoch ``e``'s batches are a pure function of ``(seed, e)``; step ``s`` is batch
``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``. Tunix 0.1.7's PeftTrainer skips the
first K batches itself on resume: hand it ``iter_from(0)``, not ``iter_from(K)``. Each padded
length T is one more XLA compilation: ``pad_multiple`` bounds them at ``max_len / pad_multiple``,
``length_buckets`` (e.g. ``(128, 256, 512)``) to a few, at the price of some padding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Protocol

import numpy as np

from kaggle_lib.data.template import format_prompt, format_target


class TokenizerLike(Protocol):
    """What batching needs from a tokenizer (Gemma: pad 0, eos 1, bos 2)."""

    def encode(self, text: str) -> list[int]: ...
    def bos_id(self) -> int: ...
    def eos_id(self) -> int: ...
    def pad_id(self) -> int: ...


def tokenize_example(tok: TokenizerLike, prompt: str, target: str,
                     max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``[bos] prompt target [eos]`` and its loss mask, cut to ``max_len``. Encoded separately:
    the mask boundary is exact and the prompt tokens are those the sampler will see."""
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    prompt_ids = list(tok.encode(prompt))
    target_ids = list(tok.encode(target))
    tokens = [tok.bos_id(), *prompt_ids, *target_ids, tok.eos_id()]
    mask = [0] * (1 + len(prompt_ids)) + [1] * (len(target_ids) + 1)
    return (np.asarray(tokens[:max_len], dtype=np.int32),
            np.asarray(mask[:max_len], dtype=np.int32))


@dataclass
class TokenizedSet:
    """Tokenized examples plus what happened to overlong ones."""

    tokens: list[np.ndarray]
    loss_masks: list[np.ndarray]
    ids: list[str]
    max_len: int
    n_truncated: int = 0  # longer than max_len; kept with the end of the target cut
    n_dropped: int = 0  # nothing of the target left after truncation, or drop_truncated
    full_lengths: list[int] = field(default_factory=list)  # untruncated lengths of all input items

    @property
    def lengths(self) -> np.ndarray:
        return np.asarray([len(t) for t in self.tokens], dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        lengths = self.lengths
        empty = len(lengths) == 0
        return {
            "examples": len(self.tokens), "truncated": self.n_truncated,
            "dropped": self.n_dropped, "max_len": self.max_len,
            "mean_len": 0.0 if empty else float(lengths.mean()),
            "p95_len": 0.0 if empty else float(np.percentile(lengths, 95)),
            "longest_untruncated": max(self.full_lengths, default=0),
            "loss_token_fraction": 0.0 if empty else float(
                sum(int(m.sum()) for m in self.loss_masks) / lengths.sum()),
        }


def tokenize_items(tok: TokenizerLike, items: Sequence[Mapping[str, Any]], max_len: int, *,
                   instruct: bool, drop_truncated: bool = False) -> TokenizedSet:
    """Tokenize training items with the shared template. Overlong ones are truncated; those with
    no target token left (all with ``drop_truncated``) are dropped: compute but no loss."""
    out = TokenizedSet(tokens=[], loss_masks=[], ids=[], max_len=max_len)
    for i, item in enumerate(items):
        missing = [k for k in ("prompt", "reasoning", "answer") if not item.get(k)]
        if missing:
            raise ValueError(f"item {i} (id {item.get('id')!r}): missing {', '.join(missing)}; "
                             "SFT items need prompt, reasoning and answer")
        prompt = format_prompt(item["prompt"], instruct=instruct)
        target = format_target(item["reasoning"], item["answer"], instruct=instruct)
        full = len(tok.encode(prompt)) + len(tok.encode(target)) + 2
        out.full_lengths.append(full)
        tokens, mask = tokenize_example(tok, prompt, target, max_len)
        if full > max_len:
            out.n_truncated += 1
            if drop_truncated or not mask.any():
                out.n_dropped += 1
                continue
        out.tokens.append(tokens)
        out.loss_masks.append(mask)
        out.ids.append(str(item.get("id", i)))
    return out


def padded_length(longest: int, max_len: int, *, pad_multiple: int = 16,
                  length_buckets: Sequence[int] | None = None) -> int:
    """Row length for a batch whose longest example has ``longest`` tokens."""
    if length_buckets:
        for bucket in sorted(length_buckets):
            if bucket >= longest:
                return int(bucket)
        raise ValueError(f"no length bucket >= {longest} in {sorted(length_buckets)}")
    return min(max_len, pad_multiple * math.ceil(longest / pad_multiple))


def plan_epoch(lengths: np.ndarray, batch_size: int, *, seed: int, epoch: int,
               bucketing: bool = True, window_batches: int = 32,
               drop_remainder: bool = True) -> list[np.ndarray]:
    """Example indices of every batch of one epoch, a pure function of its arguments. With
    ``bucketing`` each window of ``window_batches * batch_size`` shuffled examples is sorted by
    length: windows, not one global sort, keep batches random and epochs different."""
    n = len(lengths)
    rng = np.random.default_rng([seed, epoch])
    usable = (n // batch_size) * batch_size if drop_remainder else n
    order = rng.permutation(n)[:usable]
    if not bucketing:
        return [order[i:i + batch_size] for i in range(0, usable, batch_size)]
    window = max(1, window_batches) * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, usable, window):
        chunk = order[start:start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    if not drop_remainder:  # keep the one short batch last so all others are full
        full = [b for b in batches if len(b) == batch_size]
        short = [b for b in batches if len(b) < batch_size]
        return [full[i] for i in rng.permutation(len(full))] + short
    return [batches[i] for i in rng.permutation(len(batches))]


def pack_rows(lengths: np.ndarray, order: np.ndarray, row_len: int) -> list[np.ndarray]:
    """First-fit decreasing of examples `order` into rows of <= `row_len` tokens (stable ties)."""
    by_length = order[np.argsort(-lengths[order], kind="stable")]
    rows: list[list[int]] = []
    room: list[int] = []
    for index in by_length:
        length = int(lengths[index])
        if length > row_len:
            raise ValueError(f"example {int(index)} has {length} tokens, more than a packed row "
                             f"of {row_len}")
        row = next((r for r, free in enumerate(room) if free >= length), None)
        if row is None:
            rows.append([])
            room.append(row_len)
            row = len(rows) - 1
        rows[row].append(int(index))
        room[row] -= length
    return [np.asarray(r, dtype=np.int64) for r in rows]


def plan_packed_epoch(lengths: np.ndarray, batch_size: int, row_len: int, *, seed: int,
                      epoch: int) -> list[list[np.ndarray]]:
    """Rows of example indices for every batch of one packed epoch, a pure function of its
    arguments; a last partial batch's rows wait for another epoch's shuffle."""
    rng = np.random.default_rng([seed, epoch])
    rows = pack_rows(lengths, rng.permutation(len(lengths)), row_len)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    usable = (len(rows) // batch_size) * batch_size
    return [rows[i:i + batch_size] for i in range(0, usable, batch_size)]


@dataclass(eq=False, repr=False)
class SFTBatches:
    """Deterministic, re-iterable SFT batches (module docstring); endless if ``num_epochs=None``."""

    data: TokenizedSet
    batch_size: int
    _: KW_ONLY
    seed: int = 0
    num_epochs: int | None = None
    bucketing: bool = True
    window_batches: int = 32
    pad_multiple: int = 16
    length_buckets: Sequence[int] | None = None
    fixed_length: bool = False
    drop_remainder: bool = True
    pad_id: int = 0
    # Multi-process runs: only these rows of every global batch (this process's share); the
    # padded width still comes from the whole batch, so every process agrees on it.
    rows: slice | None = None
    packing: bool = False

    def __post_init__(self) -> None:
        data, batch_size, length_buckets = self.data, self.batch_size, self.length_buckets
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(data.tokens) < batch_size and self.drop_remainder:
            raise ValueError(f"{len(data.tokens)} examples cannot fill one batch of {batch_size}; "
                             "lower batch_size or set drop_remainder=False")
        if not data.tokens:
            raise ValueError("no examples to batch")
        if length_buckets and max(length_buckets) < data.max_len:
            raise ValueError(f"length_buckets {sorted(length_buckets)} must include a bucket >= "
                             f"max_len {data.max_len}")
        self.length_buckets = tuple(length_buckets) if length_buckets else None
        self._lengths = data.lengths
        self._plan_cache: tuple[int, list[Any]] | None = None
        if self.packing and len(self._plan(0)) == 0:
            raise ValueError(f"{len(data.tokens)} examples packed into rows of {data.max_len} "
                             f"tokens fill no batch of {batch_size} rows; lower batch_size")

    @property
    def steps_per_epoch(self) -> int:
        if self.packing:
            # First-fit decreasing decides on lengths only: every epoch packs the same row shapes
            # (epochs differ by which examples fill them and by the row shuffle into batches).
            return len(self._plan(0))
        n = len(self._lengths)
        return n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)

    @property
    def total_steps(self) -> int | None:
        return None if self.num_epochs is None else self.num_epochs * self.steps_per_epoch

    def __len__(self) -> int:
        if self.total_steps is None:
            raise TypeError("SFTBatches with num_epochs=None is infinite; use steps_per_epoch")
        return self.total_steps

    def _plan(self, epoch: int) -> list[Any]:
        # One epoch's plan is reused for all its steps (sequential reads hit the cache).
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            if self.packing:
                plan = plan_packed_epoch(self._lengths, self.batch_size, self.data.max_len,
                                         seed=self.seed, epoch=epoch)
            else:
                plan = plan_epoch(self._lengths, self.batch_size, seed=self.seed, epoch=epoch,
                                  bucketing=self.bucketing, window_batches=self.window_batches,
                                  drop_remainder=self.drop_remainder)
            self._plan_cache = (epoch, plan)
        return self._plan_cache[1]

    def indices_at(self, step: int) -> np.ndarray:
        """Example indices of global step ``step``."""
        if step < 0 or (self.total_steps is not None and step >= self.total_steps):
            raise IndexError(f"step {step} out of range (total_steps={self.total_steps})")
        epoch, k = divmod(step, self.steps_per_epoch)
        if self.packing:
            return np.concatenate(self._plan(epoch)[k])
        return self._plan(epoch)[k]

    def row_length(self, indices: np.ndarray) -> int:
        if self.fixed_length:
            return self.data.max_len
        longest = int(self._lengths[indices].max())
        return padded_length(longest, self.data.max_len, pad_multiple=self.pad_multiple,
                             length_buckets=self.length_buckets)

    def batch_at(self, step: int) -> dict[str, np.ndarray]:
        """The batch of global step ``step`` (same result however it is reached)."""
        indices = self.indices_at(step)
        if self.packing:
            rows = self._plan(step // self.steps_per_epoch)[step % self.steps_per_epoch]
            width = self.data.max_len
        else:  # one example per row; a short last batch is padded with empty rows
            rows, width = [[i] for i in indices], self.row_length(indices)
        n_rows = self.batch_size
        if self.rows is not None:
            rows, n_rows = rows[self.rows], len(range(self.batch_size)[self.rows])
        tokens = np.full((n_rows, width), self.pad_id, dtype=np.int32)
        loss, segment, ids = (np.zeros((n_rows, width), dtype=np.int32) for _ in range(3))
        for row, members in enumerate(rows):
            start = 0
            for number, i in enumerate(members, start=1):
                t, m = self.data.tokens[i], self.data.loss_masks[i]
                end = start + len(t)
                tokens[row, start:end], loss[row, start:end] = t, m
                segment[row, start:end], ids[row, start:end] = 1, number
                start = end
        batch = {"input_tokens": tokens, "input_mask": loss, "segment_mask": segment}
        return {**batch, "segment_ids": ids} if self.packing else batch

    def iter_from(self, step: int = 0) -> Iterator[dict[str, np.ndarray]]:
        """Batches from global step ``step`` on (forever when ``num_epochs`` is None)."""
        while self.total_steps is None or step < self.total_steps:
            yield self.batch_at(step)
            step += 1

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self.iter_from(0)


def packed_padding_fraction(batches: SFTBatches) -> float:
    """Fraction of padding in the first epoch of packed `batches` (rows of ``max_len``)."""
    rows = [row for batch in batches._plan(0) for row in batch]  # noqa: SLF001
    lengths = batches.data.lengths
    real = sum(int(lengths[row].sum()) for row in rows)
    return 1.0 - real / max(1, len(rows) * batches.data.max_len)


def padding_stats(lengths: Sequence[int] | np.ndarray, batch_size: int, max_len: int, *,
                  seed: int = 0, epochs: int = 1, window_batches: int = 32, pad_multiple: int = 16,
                  length_buckets: Sequence[int] | None = None) -> dict[str, Any]:
    """Fraction of padded tokens of ``fixed``, ``random_dynamic`` and ``bucketed`` batches;
    ``shapes_*``: distinct padded lengths (XLA compilations of the train step)."""
    lens = np.minimum(np.asarray(lengths, dtype=np.int64), max_len)
    out: dict[str, Any] = {"examples": len(lens), "batch_size": batch_size, "max_len": max_len}
    for name, bucketing, fixed in (("fixed", False, True), ("random_dynamic", False, False),
                                   ("bucketed", True, False)):
        real = padded = 0
        shapes: set[int] = set()
        for epoch in range(epochs):
            for idx in plan_epoch(lens, batch_size, seed=seed, epoch=epoch, bucketing=bucketing,
                                  window_batches=window_batches):
                width = max_len if fixed else padded_length(
                    int(lens[idx].max()), max_len, pad_multiple=pad_multiple,
                    length_buckets=length_buckets)
                shapes.add(width)
                real += int(lens[idx].sum())
                padded += width * len(idx)
        out[name] = 1.0 - real / padded if padded else 0.0
        out[f"shapes_{name}"] = len(shapes)
    return out
