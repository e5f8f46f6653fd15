"""GRPO through the notebook's stages: SFT, then 3 GRPO steps with rewards in the run record."""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from tunix.rl.rollout.base_rollout import RolloutConfig

from kaggle_lib import evidence, pipeline
from kaggle_lib.config import GrpoSection
from kaggle_lib.mesh import make_mesh
from kaggle_lib.training.grpo import (
    Prompt,
    PromptBatches,
    _rollout_stream,
    run_grpo,
    select_prompts,
)
from tests.training_helpers import tiny_tokenizer

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "cpu_tiny.yaml")


def test_sft_then_grpo_logs_rewards_and_checkpoints(tmp_path: Path) -> None:
    overrides = {"train.stages": ["sft", "grpo"], "train.sft.max_steps": 2,
                 "train.grpo.max_steps": 3, "train.grpo.max_new_tokens": 16,
                 "data.train_limit": 64, "data.max_seq_len": 256, "evidence.tensorboard": False}
    run = pipeline.start_run(CONFIG, overrides=overrides, run_dir=str(tmp_path / "runs" / "grpo"))
    pipeline.load_model(run)
    pipeline.train(run)

    records = [r for r in run.record.read_metrics() if r.get("stage") == "grpo"]
    rewards = [r for r in records if "reward_mean" in r]
    losses = [r for r in records if "loss" in r]
    for r in rewards:
        print(f"grpo step {r['step']}: reward mean {r['reward_mean']:.4f} (format "
              f"{r['reward_format_reward']:.4f}, answer {r['reward_answer_reward']:.4f}; min "
              f"{r['reward_min']}, max {r['reward_max']}), {r['completion_mean_tokens']} tokens")
    assert [r["step"] for r in rewards] == [1, 2, 3]
    assert [r["step"] for r in losses] == [1, 2, 3]
    for r in rewards:
        values = [r["reward_mean"], r["reward_min"], r["reward_max"], r["reward_format_reward"],
                  r["reward_answer_reward"], r["completion_mean_tokens"]]
        assert all(math.isfinite(v) for v in values), r
        assert 0.0 <= r["reward_min"] <= r["reward_mean"] <= r["reward_max"] <= 2.0
        # the total is the sum of the two reward functions
        total = r["reward_format_reward"] + r["reward_answer_reward"]
        assert abs(r["reward_mean"] - total) < 1e-9
        assert 0 < r["completion_mean_tokens"] <= 16
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["learning_rate"]) for r in losses)

    manifest = json.loads((run.run_dir / evidence.MANIFEST).read_text())
    summary = manifest["training"]["grpo"]
    assert summary["steps"] == 3 and summary["stopped_reason"] == "max_steps"
    assert summary["reward_last"] == rewards[-1]["reward_mean"]
    actor_ckpt = run.run_dir / "checkpoints" / "grpo" / "actor"
    assert (actor_ckpt / "3" / "commit_success.txt").is_file()
    assert run.last_checkpoint == str(actor_ckpt / "3")

    # GRPO changed the SFT result: the final LoRA weights differ from SFT's last checkpoint,
    # and equal GRPO's own last checkpoint.
    from tunix.sft.checkpoint_manager import CheckpointManager

    def restored(root: Path) -> list[np.ndarray]:
        model = nnx.clone(run.loaded.model)
        manager = CheckpointManager(str(root))
        manager.maybe_restore(model, restore_only_lora_params=True)
        manager.close()
        return [np.asarray(x) for x in jax.tree.leaves(nnx.state(model, nnx.LoRAParam))]

    final = [np.asarray(x) for x in jax.tree.leaves(nnx.state(run.loaded.model, nnx.LoRAParam))]
    after_sft = restored(run.run_dir / "checkpoints" / "sft")
    after_grpo = restored(actor_ckpt)
    assert any(not np.array_equal(a, b) for a, b in zip(final, after_sft, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(final, after_grpo, strict=True))

    # The one checkpoint rule (issue 11) holds for GRPO's actor too: its steps are complete
    # (LoRA params and optimizer state) and restore; a damaged newest step is set aside and
    # the one before is what the actor trainer will restore.
    from kaggle_lib.training import checkpoints
    from kaggle_lib.training.common import make_optimizer

    assert checkpoints.complete_steps(actor_ckpt)[-2:] == [2, 3]
    grpo = run.cfg.train.grpo
    tx = make_optimizer(learning_rate=grpo.learning_rate,
                        max_steps=grpo.max_steps * grpo.num_iterations,
                        max_grad_norm=grpo.max_grad_norm)
    copy = tmp_path / "actor_copy"
    shutil.copytree(actor_ckpt, copy)
    for f in (copy / "3" / "model_params").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[:10])  # truncated, as a cut copy leaves it
    with run.mesh:
        step, set_aside = checkpoints.resume_from_newest_restorable(
            copy, checkpoints.restore_probe(copy, nnx.clone(run.loaded.model), tx))
    assert step == 2 and [e.step for e in set_aside] == [3]
    assert set_aside[0].reason.startswith("does not restore:")
    assert (copy / "corrupt" / "3").is_dir() and checkpoints.latest_complete_step(copy) == 2


def test_prompt_batches_are_a_pure_function_of_seed_and_step() -> None:
    prompts = [Prompt(text=f"q{i}", answer=str(i)) for i in range(10)]
    a, b = PromptBatches(prompts, 3, seed=5), PromptBatches(prompts, 3, seed=5)
    for step in (0, 2, 7, 3, 0):  # any order, across epochs (3 batches per epoch)
        assert a.batch_at(step)["prompts"].tolist() == b.batch_at(step)["prompts"].tolist()
    epoch = [x for s in range(3) for x in a.batch_at(s)["prompts"].tolist()]
    assert len(set(epoch)) == 9  # no prompt twice within an epoch
    batch = a.batch_at(4)
    assert [f"q{v}" for v in batch["answer"].tolist()] == batch["prompts"].tolist()
    assert PromptBatches(prompts, 3, seed=6).batch_at(0)["prompts"].tolist() != \
        a.batch_at(0)["prompts"].tolist()
    with pytest.raises(ValueError, match="cannot fill one batch of 11"):
        PromptBatches(prompts, 11)


def test_rollout_stream_sets_step_seeds_and_stops_at_the_deadline() -> None:
    batches = PromptBatches([Prompt(text=f"q{i}", answer=str(i)) for i in range(4)], 2, seed=1)
    config = RolloutConfig()
    state = {"stopped_for_time": False}
    stream = _rollout_stream(batches, config, None, state)
    seeds = []
    for step in range(3):
        assert next(stream)["prompts"].tolist() == batches.batch_at(step)["prompts"].tolist()
        seeds.append(config.seed)  # set for this step before its batch was handed out
    assert len(set(seeds)) == 3 and not state["stopped_for_time"]
    # A deadline already past: the first batch still comes (Tunix reads it for the batch
    # size), then the stream ends and says why.
    ended = list(_rollout_stream(batches, config, time.monotonic() - 1, state))
    assert len(ended) == 1 and state["stopped_for_time"]


def test_select_prompts_drops_overlong_and_rejects_missing_answers() -> None:
    items = [{"id": "a", "prompt": "What is 2 + 2?", "answer": "4"},
             {"id": "b", "prompt": "word " * 400, "answer": "x"}]
    kept, dropped = select_prompts(items, tiny_tokenizer(), 200, instruct=False)
    assert dropped == 1 and [p.answer for p in kept] == ["4"]
    assert "Question: What is 2 + 2?" in kept[0].text
    with pytest.raises(ValueError, match="item 0 \\(id 'c'\\) needs 'prompt' and 'answer'"):
        select_prompts([{"id": "c", "prompt": "q", "answer": ""}], tiny_tokenizer(), 200,
                       instruct=False)


def test_no_time_left_skips_grpo() -> None:
    grpo = GrpoSection(max_steps=3, batch_size=2, num_generations=4)
    result = run_grpo(None, tiny_tokenizer().processor, [], grpo, mesh=make_mesh(), eos_ids=[1],
                      max_wall_time_s=0.0)
    assert result.steps_done == 0 and result.stopped_reason == "max_wall_time"


def test_reasoning_gym_items_carry_their_scoring_fields_into_the_batch() -> None:
    from kaggle_lib.data.datasets import load_builtin
    from kaggle_lib.training.rewards import answer_reward
    from tests.training_helpers import tiny_tokenizer

    rg_item = next(i for i in load_builtin("eval_rg") if i["category"] == "knights_knaves")
    ours = load_builtin("eval")[0]
    prompts, dropped = select_prompts([rg_item, ours], tiny_tokenizer(), 4096, instruct=False)
    assert dropped == 0
    assert json.loads(prompts[0].rg_item) == {k: rg_item[k] for k in (
        "id", "prompt", "answer", "rg_dataset", "rg_metadata")}
    assert prompts[1].rg_item == ""
    batch = PromptBatches(prompts, 2, seed=0).batch_at(0)
    assert sorted(batch) == ["answer", "prompts", "rg_item"]
    columns = {k: v for k, v in batch.items() if k != "prompts"}
    by_text = {p.text: p for p in prompts}
    half_right = [("<reasoning>r</reasoning><answer>"
                   + ("Liam is an altruist, and Isabella is an egoist" if by_text[t].rg_item
                      else "wrong") + "</answer>") for t in batch["prompts"]]
    scores = answer_reward(list(batch["prompts"]), half_right, **columns)
    assert sorted(scores) == [0.0, pytest.approx(0.65)]  # reasoning-gym's partial credit
