"""Packed SFT batches (data.packing): whole examples per row, segment ids, deterministic plans,
and every example's loss in a packed row equal to its loss alone (within 1e-5)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kaggle_lib.config import DataSection
from kaggle_lib.data.batching import (
    SFTBatches,
    TokenizedSet,
    pack_rows,
    packed_padding_fraction,
    plan_packed_epoch,
)
from kaggle_lib.training.loss import sft_loss
from kaggle_lib.training.sft import model_inputs, packed_positions_and_mask
from tests import training_helpers as th

VOCAB = 256


def _dataset(lengths: list[int], max_len: int, seed: int = 0) -> TokenizedSet:
    rng = np.random.default_rng(seed)
    tokens, masks = [], []
    for n in lengths:
        t = rng.integers(4, VOCAB, size=n).astype(np.int32)
        t[0] = 2
        m = np.zeros(n, np.int32)
        m[n // 2:] = 1  # the second half is the target
        tokens.append(t)
        masks.append(m)
    return TokenizedSet(tokens=tokens, loss_masks=masks, ids=[str(i) for i in range(len(lengths))],
                        max_len=max_len)


def test_pack_rows_first_fit_decreasing() -> None:
    lengths = np.array([5, 9, 3, 7, 2, 6])
    rows = pack_rows(lengths, np.arange(6), row_len=10)
    assert [list(r) for r in rows] == [[1], [3, 2], [5, 4], [0]]
    with pytest.raises(ValueError, match="example 1 has 9 tokens, more than a packed row of 8"):
        pack_rows(lengths, np.arange(6), row_len=8)


def test_packed_batches_hold_whole_examples_once_with_segment_ids() -> None:
    rng = np.random.default_rng(1)
    data = _dataset([int(n) for n in rng.integers(8, 60, size=90)], max_len=64)
    batches = SFTBatches(data, 4, seed=3, packing=True)
    seen: list[int] = []
    for step in range(batches.steps_per_epoch):
        batch = batches.batch_at(step)
        assert batch["input_tokens"].shape == (4, 64)
        indices = list(batches.indices_at(step))
        seen += indices
        rebuilt = []
        for row in range(4):
            ids = batch["segment_ids"][row]
            n_segments = int(ids.max())
            assert n_segments >= 1
            # Segments are contiguous, numbered 1..k from the left, padding (0) only at the end.
            assert list(ids[ids > 0]) == sorted(ids[ids > 0])
            assert np.all(ids[int((ids > 0).sum()):] == 0)
            np.testing.assert_array_equal(batch["segment_mask"][row], ids > 0)
            for k in range(1, n_segments + 1):
                rebuilt.append((batch["input_tokens"][row][ids == k],
                                batch["input_mask"][row][ids == k]))
        assert len(rebuilt) == len(indices)
        for (tokens, mask), i in zip(rebuilt, indices, strict=True):
            np.testing.assert_array_equal(tokens, data.tokens[i])
            np.testing.assert_array_equal(mask, data.loss_masks[i])
    assert len(seen) == len(set(seen))  # an example at most once per epoch
    assert len(seen) > 0.8 * 90  # only the rows of a last partial batch wait
    # Same step, same batch however it is reached; another epoch, another order.
    again = SFTBatches(data, 4, seed=3, packing=True)
    for key, value in batches.batch_at(2).items():
        np.testing.assert_array_equal(again.batch_at(2)[key], value)
    assert not np.array_equal(batches.batch_at(batches.steps_per_epoch)["input_tokens"],
                              batches.batch_at(0)["input_tokens"])
    # A process's rows (several processes) are the same rows of the global batch.
    half = SFTBatches(data, 4, seed=3, packing=True, rows=slice(2, 4))
    np.testing.assert_array_equal(half.batch_at(1)["segment_ids"],
                                  batches.batch_at(1)["segment_ids"][2:4])
    padding = packed_padding_fraction(batches)
    bucketed = 1 - sum(data.lengths) / sum(
        4 * SFTBatches(data, 4, seed=3).row_length(SFTBatches(data, 4, seed=3).indices_at(s))
        for s in range(SFTBatches(data, 4, seed=3).steps_per_epoch))
    assert 0 <= padding < bucketed


def test_plan_is_a_pure_function_of_seed_and_epoch() -> None:
    lengths = np.random.default_rng(0).integers(5, 40, size=50)
    a = plan_packed_epoch(lengths, 3, 48, seed=1, epoch=2)
    b = plan_packed_epoch(lengths, 3, 48, seed=1, epoch=2)
    assert [[list(r) for r in batch] for batch in a] == [[list(r) for r in batch] for batch in b]
    assert all(lengths[r].sum() <= 48 for batch in a for r in batch)


def test_packed_positions_restart_and_mask_keeps_examples_apart() -> None:
    ids = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0]])
    positions, mask = packed_positions_and_mask(ids)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]  # padding: a run of its own
    m = np.asarray(mask[0])
    assert m[4].tolist() == [False, False, False, True, True, False, False, False]
    assert m[2].tolist() == [True, True, True, False, False, False, False, False]
    assert not m[6].any()  # padding attends to nothing


def _model() -> nnx.Module:
    return th.random_gemma3(VOCAB)


def _loss(model: nnx.Module, batch: dict[str, Any]) -> float:
    inputs = model_inputs({k: jnp.asarray(v) for k, v in batch.items()})
    return float(sft_loss(model, **inputs, chunk_size=16)[0])


def test_each_examples_loss_in_a_packed_row_equals_its_loss_alone() -> None:
    model = _model()
    data = _dataset([11, 7, 14, 9, 5], max_len=48)
    batches = SFTBatches(data, 1, seed=0, packing=True)
    batch = batches.batch_at(0)
    members = list(batches.indices_at(0))
    assert len(members) >= 3  # several examples share the row
    for number, i in enumerate(members, start=1):
        # The packed row with only this example's targets counted ...
        only = dict(batch)
        only["input_mask"] = batch["input_mask"] * (batch["segment_ids"] == number)
        packed = _loss(model, only)
        # ... against the example alone in an unpacked row.
        alone = SFTBatches(dataclasses.replace(data, tokens=[data.tokens[i]],
                                               loss_masks=[data.loss_masks[i]], ids=["x"]),
                           1, seed=0).batch_at(0)
        np.testing.assert_allclose(packed, _loss(model, alone), rtol=1e-5, atol=1e-6)
    # Without the segment ids (Tunix's mask: later examples see earlier ones) it differs.
    unsegmented = {k: v for k, v in batch.items() if k != "segment_ids"}
    last = len(members)
    unsegmented["input_mask"] = batch["input_mask"] * (batch["segment_ids"] == last)
    alone = SFTBatches(dataclasses.replace(data, tokens=[data.tokens[members[-1]]],
                                           loss_masks=[data.loss_masks[members[-1]]], ids=["x"]),
                       1, seed=0).batch_at(0)
    assert abs(_loss(model, unsegmented) - _loss(model, alone)) > 1e-3


def test_config_packing_is_a_boolean() -> None:
    assert DataSection().packing is False
    assert DataSection(packing=True).packing is True
