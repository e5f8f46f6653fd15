"""Tokenization, loss masks, and deterministic, resumable, length-bucketed SFT batches."""

from __future__ import annotations

import numpy as np
import pytest

from kaggle_lib.data.batching import (
    SFTBatches,
    TokenizedSet,
    padded_length,
    padding_stats,
    plan_epoch,
    tokenize_example,
    tokenize_items,
)
from kaggle_lib.data.datasets import load_builtin
from kaggle_lib.data.template import format_prompt, format_target
from tests.fakes.byte_tokenizer import ByteTokenizer

TOK = ByteTokenizer()
TRAIN = load_builtin("train")


def test_tokenize_example_layout_and_mask() -> None:
    tokens, mask = tokenize_example(TOK, "Q?", "AB", max_len=64)
    off = ByteTokenizer.OFFSET
    assert tokens.tolist() == [2, ord("Q") + off, ord("?") + off, ord("A") + off, ord("B") + off, 1]
    assert mask.tolist() == [0, 0, 0, 1, 1, 1]  # bos + prompt: 0; target + eos: 1
    assert tokens.dtype == np.int32 and mask.dtype == np.int32


def test_tokenize_example_truncates_to_max_len() -> None:
    tokens, mask = tokenize_example(TOK, "Q?", "ABCDEF", max_len=5)
    assert len(tokens) == len(mask) == 5
    assert tokens[-1] != 1  # the eos was cut with the end of the target
    assert mask.tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match="max_len must be >= 2"):
        tokenize_example(TOK, "Q", "A", max_len=1)


def test_tokenize_items_uses_the_template_and_counts_overlong() -> None:
    items = TRAIN[:30]
    full = tokenize_items(TOK, items, 4096, instruct=True)
    assert (full.n_truncated, full.n_dropped, len(full.tokens)) == (0, 0, 30)
    item, tokens, mask = items[0], full.tokens[0], full.loss_masks[0]
    prompt = format_prompt(item["prompt"], instruct=True)
    target = format_target(item["reasoning"], item["answer"], instruct=True)
    assert TOK.decode(tokens[mask == 0]) == prompt  # bos is dropped by decode
    assert TOK.decode(tokens[mask == 1]) == target  # eos is dropped by decode
    assert tokens[mask == 1][-1] == TOK.eos_id()
    lengths = np.asarray(full.full_lengths)
    cut = int(np.median(lengths))
    short = tokenize_items(TOK, items, cut, instruct=True)
    assert short.n_truncated == int((lengths > cut).sum()) > 0
    # Dropped: those whose bos + prompt already fill max_len, leaving no loss token.
    prompt_lens = [1 + len(TOK.encode(format_prompt(it["prompt"], instruct=True))) for it in items]
    assert short.n_dropped == sum(n >= cut for n in prompt_lens)
    assert len(short.tokens) == 30 - short.n_dropped
    assert all(len(t) <= cut and t_mask.any() for t, t_mask in zip(short.tokens, short.loss_masks,
                                                                  strict=True))
    dropped = tokenize_items(TOK, items, cut, instruct=True, drop_truncated=True)
    assert len(dropped.tokens) == 30 - dropped.n_truncated
    # A max_len inside the prompt leaves no target token: such examples are dropped.
    tiny = tokenize_items(TOK, items, 40, instruct=False)
    assert (tiny.n_truncated, tiny.n_dropped, len(tiny.tokens)) == (30, 30, 0)
    with pytest.raises(ValueError, match="item 0 .*missing reasoning"):
        tokenize_items(TOK, [{"id": "x", "prompt": "p", "answer": "a"}], 64, instruct=False)


def _data(n: int = 100, max_len: int = 2048, seed: int = 0) -> TokenizedSet:
    return tokenize_items(TOK, TRAIN[seed:seed + n], max_len, instruct=False)


def test_batches_layout_masks_and_shapes() -> None:
    data = _data()
    batches = SFTBatches(data, 8, seed=3)
    lengths = data.lengths
    for step in range(batches.steps_per_epoch):
        b = batches.batch_at(step)
        assert set(b) == {"input_tokens", "input_mask", "segment_mask"}
        tokens, loss, seg = b["input_tokens"], b["input_mask"], b["segment_mask"]
        assert tokens.shape == loss.shape == seg.shape and tokens.shape[0] == 8
        assert tokens.dtype == loss.dtype == seg.dtype == np.int32
        width = tokens.shape[1]
        idx = batches.indices_at(step)
        assert width % 16 == 0 and lengths[idx].max() <= width < lengths[idx].max() + 16
        np.testing.assert_array_equal(seg, tokens != 0)  # padding mask = real tokens
        assert not (loss & (1 - seg)).any()  # no loss on padding
        for row, i in enumerate(idx):
            n = len(data.tokens[i])
            np.testing.assert_array_equal(tokens[row, :n], data.tokens[i])
            np.testing.assert_array_equal(loss[row, :n], data.loss_masks[i])
        # Tunix's default loss predicts tokens[:, 1:] where input_mask[:, 1:] is 1: exactly the
        # target and its eos, never a prompt token.
        targets = tokens[:, 1:][loss[:, 1:] == 1]
        expected = np.concatenate([data.tokens[i][data.loss_masks[i] == 1] for i in idx])
        np.testing.assert_array_equal(targets, expected)


def test_one_epoch_covers_every_example_once_and_epochs_differ() -> None:
    data = _data(96)
    batches = SFTBatches(data, 8, seed=1)
    epoch0 = np.concatenate([batches.indices_at(s) for s in range(12)])
    epoch1 = np.concatenate([batches.indices_at(s) for s in range(12, 24)])
    assert sorted(epoch0.tolist()) == sorted(epoch1.tolist()) == list(range(96))
    assert epoch0.tolist() != epoch1.tolist()


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    data = _data()
    a = SFTBatches(data, 8, seed=5, num_epochs=3)
    b = SFTBatches(data, 8, seed=5, num_epochs=3)
    assert len(a) == 3 * a.steps_per_epoch == 36
    every = list(a)
    assert len(every) == 36
    # Resuming at step 17 (second epoch) on a fresh object gives the same batches.
    for got, want in zip(b.iter_from(17), every[17:], strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    # Random access in any order matches too (the epoch plan is rebuilt, not replayed).
    for step in (30, 2, 29, 0):
        np.testing.assert_array_equal(b.batch_at(step)["input_tokens"], every[step]["input_tokens"])
    other = SFTBatches(data, 8, seed=6)
    assert [other.indices_at(s).tolist() for s in range(4)] != [
        a.indices_at(s).tolist() for s in range(4)]
    with pytest.raises(IndexError, match="step 36 out of range"):
        a.batch_at(36)


def test_infinite_iteration_and_len() -> None:
    batches = SFTBatches(_data(40), 8)
    it = iter(batches)
    assert len([next(it) for _ in range(13)]) == 13  # runs past one epoch (5 steps)
    with pytest.raises(TypeError, match="infinite"):
        len(batches)


def test_remainder_rows_are_empty_padding() -> None:
    data = _data(20)
    batches = SFTBatches(data, 8, drop_remainder=False, num_epochs=1)
    assert batches.steps_per_epoch == 3
    last = batches.batch_at(2)
    assert last["input_tokens"].shape[0] == 8
    assert last["segment_mask"][4:].sum() == 0 and last["input_mask"][4:].sum() == 0
    seen = np.concatenate([batches.indices_at(s) for s in range(3)])
    assert sorted(seen.tolist()) == list(range(20))
    with pytest.raises(ValueError, match="cannot fill one batch"):
        SFTBatches(_data(5), 8)


def test_fixed_length_and_length_buckets() -> None:
    data = _data(64, max_len=1024)
    fixed = SFTBatches(data, 8, fixed_length=True).batch_at(0)
    assert fixed["input_tokens"].shape == (8, 1024)
    bucketed = SFTBatches(data, 8, length_buckets=(512, 768, 1024))
    widths = {bucketed.batch_at(s)["input_tokens"].shape[1] for s in range(8)}
    assert widths <= {512, 768, 1024} and len(widths) >= 2
    with pytest.raises(ValueError, match="must include a bucket >= max_len"):
        SFTBatches(data, 8, length_buckets=(256, 512))
    assert padded_length(100, 256) == 112
    assert padded_length(250, 256) == 256
    assert padded_length(100, 256, length_buckets=(128, 256)) == 128


def test_bucketing_groups_similar_lengths() -> None:
    lengths = np.random.default_rng(0).integers(10, 1000, size=512)
    spread = {}
    for bucketing in (False, True):
        plan = plan_epoch(lengths, 16, seed=0, epoch=0, bucketing=bucketing)
        spread[bucketing] = np.mean([np.ptp(lengths[idx]) for idx in plan])
    assert spread[True] < spread[False] / 5


def test_padding_stats_bucketing_beats_random_batching_on_shipped_data() -> None:
    data = tokenize_items(TOK, TRAIN, 2048, instruct=False)
    assert data.n_truncated == 0
    stats = padding_stats(data.lengths, 16, data.max_len, seed=0)
    assert stats["bucketed"] < stats["random_dynamic"] < stats["fixed"]
    assert stats["bucketed"] < 0.1 < stats["random_dynamic"]
    # The statistic is what SFTBatches really produces.
    batches = SFTBatches(data, 16, seed=0, window_batches=32)
    real = padded = 0
    for step in range(batches.steps_per_epoch):
        b = batches.batch_at(step)
        real += int(b["segment_mask"].sum())
        padded += b["segment_mask"].size
    assert abs((1 - real / padded) - stats["bucketed"]) < 1e-9


# ------------------------------------------------------------ training stages: too-long items


def _stage_inputs(tmp_path, loaded, reasonings: list[str], train: dict | None = None):  # type: ignore[no-untyped-def]
    from kaggle_lib import evidence
    from kaggle_lib.config import validate_config
    from kaggle_lib.data.datasets import write_jsonl
    from kaggle_lib.training.stages import StageInputs

    data = write_jsonl(tmp_path / "train.jsonl", [
        {"id": f"t{i}", "section": "math", "category": "arithmetic", "difficulty": "easy",
         "prompt": "What is 2 + 3?", "answer": "5", "reasoning": reasoning}
        for i, reasoning in enumerate(reasonings)])
    config = validate_config({"model": {"name": "gemma3-tiny", "source": "random"},
                              "data": {"train": f"jsonl:{data}", "max_seq_len": 64},
                              "train": train or {"sft": {"batch_size": 1}}})
    record = evidence.RunRecord(tmp_path / "run")
    record.start("run", "demo", "configs/cpu_tiny.yaml")
    return StageInputs(config, loaded, None, record.run_dir, record), data  # type: ignore[arg-type]


def test_sft_with_every_item_too_long_fails_naming_the_data(tmp_path, tiny_loaded) -> None:  # type: ignore[no-untyped-def]
    from kaggle_lib.data_spec import DataError
    from kaggle_lib.training.stages import run_sft_stage

    inputs, data = _stage_inputs(tmp_path, tiny_loaded, ["2 + 3 = 5. " * 40] * 2)
    with pytest.raises(DataError, match=rf"data.train 'jsonl:{data}': all 2 training items are "
                                        r"longer than data.max_seq_len \(64 tokens\)"):
        run_sft_stage(inputs)
    manifest_data = inputs.record.read_manifest()["data"]  # recorded although nothing is left
    assert manifest_data["train_items"] == 2 and manifest_data["dropped"] == 2


def test_sft_says_how_many_items_it_dropped(tmp_path, tiny_loaded, caplog,  # type: ignore[no-untyped-def]
                                            monkeypatch) -> None:
    from kaggle_lib.training import stages

    class Stop(Exception):
        pass

    def stop(self: object) -> None:  # the next step after the data is read: LoRA, then training
        raise Stop

    monkeypatch.setattr(stages.StageInputs, "add_lora", stop)
    inputs, _ = _stage_inputs(tmp_path, tiny_loaded, ["2 + 3 = 5."] * 3 + ["2 + 3 = 5. " * 40])
    with caplog.at_level("INFO"), pytest.raises(Stop):
        stages.run_sft_stage(inputs)
    assert "4 training items -> 3 examples (1 dropped: longer than data.max_seq_len 64 " \
        "tokens)" in caplog.text
    assert inputs.record.read_manifest()["data"]["dropped"] == 1


def test_grpo_with_every_prompt_too_long_fails_naming_the_data(tmp_path, tiny_loaded) -> None:  # type: ignore[no-untyped-def]
    from kaggle_lib.data_spec import DataError
    from kaggle_lib.training.stages import run_grpo_stage

    inputs, data = _stage_inputs(tmp_path, tiny_loaded, ["2 + 3 = 5."] * 2,
                                 {"stages": ["grpo"], "grpo": {"max_prompt_len": 8}})
    with pytest.raises(DataError, match=rf"data.train 'jsonl:{data}': all 2 prompts are longer "
                                        r"than train.grpo.max_prompt_len \(8 tokens\)"):
        run_grpo_stage(inputs)
