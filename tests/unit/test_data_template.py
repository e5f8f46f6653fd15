"""The one prompt/target format."""

from __future__ import annotations

import re

import pytest

from kaggle_lib.answer_format import ANSWER_END, ANSWER_START, REASONING_END, REASONING_START
from kaggle_lib.data.template import SYSTEM_INSTRUCTION, format_prompt, format_target


def test_system_instruction_names_both_tags() -> None:
    for tag in (REASONING_START, REASONING_END, ANSWER_START, ANSWER_END):
        assert tag in SYSTEM_INSTRUCTION
    assert "step by step" in SYSTEM_INSTRUCTION


def test_instruct_prompt_is_one_gemma_user_turn_then_the_model_turn() -> None:
    prompt = format_prompt("  What is 2 + 3?\n", instruct=True)
    assert prompt == (f"<start_of_turn>user\n{SYSTEM_INSTRUCTION}\n\nWhat is 2 + 3?<end_of_turn>\n"
                      "<start_of_turn>model\n")
    assert "<bos>" not in prompt


def test_base_prompt_ends_where_the_reasoning_starts() -> None:
    prompt = format_prompt("What is 2 + 3?", instruct=False)
    assert prompt == f"{SYSTEM_INSTRUCTION}\n\nQuestion: What is 2 + 3?\nAnswer:\n"
    assert "<bos>" not in prompt and "<start_of_turn>" not in prompt


@pytest.mark.parametrize("instruct", [True, False])
def test_target_format(instruct: bool) -> None:
    target = format_target(" 2 + 3 = 5.\n", " 5 ", instruct=instruct)
    body = "<reasoning>2 + 3 = 5.</reasoning><answer>5</answer>"
    assert target == (body + "<end_of_turn>" if instruct else body)
    # The continuation alone holds exactly one well-formed reasoning/answer pair.
    pairs = re.findall(r"<reasoning>(.*?)</reasoning><answer>(.*?)</answer>", target, re.S)
    assert pairs == [("2 + 3 = 5.", "5")]


def test_empty_question_is_refused() -> None:
    with pytest.raises(ValueError, match="question is empty"):
        format_prompt("   ", instruct=False)
