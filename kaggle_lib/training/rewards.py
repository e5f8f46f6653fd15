"""GRPO reward functions in Tunix's signature, scored with the same rules as evaluation.

Tunix calls each as ``fn(prompts=..., completions=..., **columns)`` (the batch's other fields,
here ``answer`` and ``rg_item``: a reasoning-gym item's JSON, else empty; plus Tunix's extras),
one value per generation, and sums the lists. Answers are read with `answer_format`, so a
completion earns the answer reward exactly when evaluation counts it correct; reasoning-gym
items are scored by its own scorer, partial credit included (knights_knaves: 0.3-0.65).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from kaggle_lib.answer_format import TAG_PATTERNS, answers_match, parse_output
from kaggle_lib.data.reasoning_gym import score_answer

RewardFn = Callable[..., list[float]]



def _check_lengths(name: str, completions: Sequence[str], **columns: Sequence[Any]) -> None:
    for key, values in columns.items():
        if len(values) != len(completions):
            raise ValueError(f"{name}: {len(completions)} completions but {len(values)} values "
                             f"in column {key!r}; every completion needs its own {key}")


def format_score(completion: str) -> float:
    """1.0 for the exact format, 0.5 for the approximate one, else 0.1 per tag present."""
    parsed = parse_output(completion)
    if parsed.format_exact:
        return 1.0
    if parsed.format_approx:
        return 0.5
    # Per distinct tag present: at most 0.4, always below the approximate format's 0.5.
    return 0.1 * sum(1 for tag in TAG_PATTERNS if tag.search(completion))


def format_reward(prompts: Sequence[str], completions: Sequence[str], **kwargs: Any) -> list[float]:
    """Reward for `<reasoning>...</reasoning><answer>...</answer>` (see `format_score`)."""
    _check_lengths("format_reward", completions, prompts=prompts)
    return [format_score(str(c)) for c in completions]


def make_answer_reward(rel_tol: float = 1e-4, column: str = "answer",
                       item_column: str = "rg_item") -> RewardFn:
    """Reward 1.0 when the parsed answer equals the item's `column` (after normalisation) or
    agrees numerically within `rel_tol`, else 0.0. An output without a closed answer tag gets 0.
    Where the batch's `item_column` holds a reasoning-gym item (its JSON), the reward is at
    least reasoning-gym's score of the answer for that item (0..1)."""
    if rel_tol < 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")

    def answer_reward(prompts: Sequence[str], completions: Sequence[str],
                      **kwargs: Any) -> list[float]:
        if column not in kwargs:
            raise KeyError(
                f"answer_reward needs the {column!r} column of the GRPO batch (got columns "
                f"{sorted(kwargs)}); the prompt dataset must yield {{'prompts', '{column}'}}")
        expected = kwargs[column]
        items = kwargs.get(item_column)
        items = [""] * len(completions) if items is None else items
        _check_lengths("answer_reward", completions, prompts=prompts,
                       **{column: expected, item_column: items})
        scores = []
        for completion, truth, item in zip(completions, expected, items, strict=True):
            answer = parse_output(str(completion)).answer
            exact, numeric = answers_match(answer, str(truth), rel_tol=rel_tol)
            score = 1.0 if exact or numeric else 0.0
            if item and score < 1.0:
                score = max(score, score_answer(answer, json.loads(str(item))))
            scores.append(score)
        return scores

    return answer_reward


answer_reward = make_answer_reward()


def default_reward_fns() -> list[RewardFn]:
    """Format (max 1.0) plus answer (max 1.0): a perfect completion scores 2.0."""
    return [format_reward, answer_reward]
