"""The few-shot baseline prompt renders exactly, for base and instruction-tuned models."""

from __future__ import annotations

import pytest

from kaggle_lib.answer_format import check_reasoning_lines, parse_output
from kaggle_lib.data.fewshot import EXAMPLES, format_fewshot_prompt
from kaggle_lib.data.template import SYSTEM_INSTRUCTION, format_prompt


def test_base_prompt_renders_exactly() -> None:
    assert format_fewshot_prompt("  What is 6 * 7? ", instruct=False) == (
        f"{SYSTEM_INSTRUCTION}\n\n"
        "Question: Sam has 12 apples. He buys 3 bags with 4 apples in each. How many apples "
        "does Sam have now?\nAnswer:\n"
        "<reasoning>The bags hold 3 * 4 = 12 apples.\nSam has 12 + 12 = 24 apples.</reasoning>"
        "<answer>24</answer>\n\n"
        "Question: Anna is taller than Ben. Ben is taller than Carl. Who is the shortest?\n"
        "Answer:\n<reasoning>Anna is taller than Ben and Ben is taller than Carl, so Carl is "
        "shorter than both.</reasoning><answer>Carl</answer>\n\n"
        "Question: What is 6 * 7?\nAnswer:\n"
    )
    # It ends the way the zero-shot prompt does, so the model continues the same way.
    assert format_fewshot_prompt("Q?", instruct=False).endswith(
        format_prompt("Q?", instruct=False).removeprefix(f"{SYSTEM_INSTRUCTION}\n\n"))


def test_instruct_prompt_renders_exactly() -> None:
    assert format_fewshot_prompt("What is 6 * 7?", instruct=True) == (
        f"<start_of_turn>user\n{SYSTEM_INSTRUCTION}\n\n{EXAMPLES[0][0]}<end_of_turn>\n"
        "<start_of_turn>model\n<reasoning>The bags hold 3 * 4 = 12 apples.\nSam has 12 + 12 = "
        "24 apples.</reasoning><answer>24</answer><end_of_turn>\n"
        f"<start_of_turn>user\n{EXAMPLES[1][0]}<end_of_turn>\n<start_of_turn>model\n"
        f"<reasoning>{EXAMPLES[1][1]}</reasoning><answer>Carl</answer><end_of_turn>\n"
        "<start_of_turn>user\nWhat is 6 * 7?<end_of_turn>\n<start_of_turn>model\n"
    )


def test_examples_are_in_the_target_format_and_their_arithmetic_holds() -> None:
    for _question, reasoning, answer in EXAMPLES:
        parsed = parse_output(f"<reasoning>{reasoning}</reasoning><answer>{answer}</answer>")
        assert parsed.format_exact and parsed.answer == answer
    found, correct = check_reasoning_lines(EXAMPLES[0][1])
    assert found == correct == 2
    with pytest.raises(ValueError, match="empty"):
        format_fewshot_prompt("  ", instruct=False)
