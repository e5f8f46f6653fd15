"""GRPO rewards: format and answer scores, in the signature Tunix's reward manager calls."""

from __future__ import annotations

import numpy as np
import pytest

from kaggle_lib.training.rewards import (
    answer_reward,
    default_reward_fns,
    format_reward,
    format_score,
    make_answer_reward,
)

EXACT = "<reasoning>3 + 5 = 8</reasoning><answer>8</answer>"


@pytest.mark.parametrize(("text", "score"), [
    (EXACT, 1.0),
    (EXACT + "<end_of_turn>", 1.0),  # stop markers are stripped, as in evaluation
    ("Sure! <Reasoning>3+5</Reasoning> so <ANSWER>8</ANSWER> done", 0.5),  # approximate
    ("<reasoning></reasoning><answer>8</answer>", 0.5),  # empty reasoning is not exact
    ("<reasoning>3 + 5 = 8</reasoning> the answer is 8", 0.2),  # two tags
    ("<answer>8", 0.1),
    ("8", 0.0),
])
def test_format_score(text: str, score: float) -> None:
    assert format_score(text) == pytest.approx(score)
    assert format_reward(prompts=["q"], completions=[text]) == [pytest.approx(score)]


def test_answer_reward_exact_numeric_and_missing() -> None:
    completions = [EXACT, "<reasoning>x</reasoning><answer>8.00001</answer>",
                   "<reasoning>x</reasoning><answer>$1,234</answer>",
                   "<reasoning>x</reasoning><answer> Paris. </answer>",
                   "<reasoning>x</reasoning><answer>9</answer>", "the answer is 8",
                   "<answer>8"]  # unclosed tag: not scored
    answers = ["8", "8", "1234", "paris", "8", "8", "8"]
    got = answer_reward(prompts=["q"] * 7, completions=completions, answer=np.array(answers))
    assert got == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    strict = make_answer_reward(rel_tol=0.0)
    assert strict(prompts=["q"], completions=[completions[1]], answer=["8"]) == [0.0]


def test_rewards_reject_bad_columns() -> None:
    with pytest.raises(KeyError, match="'answer' column"):
        answer_reward(prompts=["q"], completions=[EXACT])
    with pytest.raises(ValueError, match="2 completions but 1 values in column 'answer'"):
        answer_reward(prompts=["q", "q"], completions=[EXACT, EXACT], answer=["8"])
    with pytest.raises(ValueError, match="rel_tol"):
        make_answer_reward(rel_tol=-1)


def test_tunix_reward_manager_sums_our_rewards() -> None:
    """Called exactly as GRPO calls them: repeated columns plus Tunix's own extras."""
    from tunix.rl.grpo.grpo_learner import GRPOConfig
    from tunix.rl.reward_manager import SequenceRewardManager

    manager = SequenceRewardManager(reward_fns=default_reward_fns(),
                                    algo_config=GRPOConfig(num_generations=2))
    completions = [EXACT, "<reasoning>3+5</reasoning><answer>7</answer>", "8", "<answer>8</answer>"]
    out = manager(prompts=["p1", "p1", "p2", "p2"], completions=completions,
                  answer=np.repeat(np.array(["8", "8"], dtype=object), 2),
                  mode="train", trajectory_ids=["0_0", "0_1", "1_0", "1_1"])
    assert out["rewards"].tolist() == pytest.approx([2.0, 1.0, 0.0, 1.2])
    assert out["log_metrics"]["rewards/format_reward"][0].tolist() == pytest.approx(
        [1.0, 1.0, 0.0, 0.2])
    assert out["log_metrics"]["rewards/answer_reward"][0].tolist() == [1.0, 0.0, 0.0, 1.0]
