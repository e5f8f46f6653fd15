"""The one prompt/target format of training, sampling and evaluation, so that a model is always
asked in exactly the way it was trained.

Instruction-tuned Gemma (``instruct=True``) gets Gemma's turn format; Gemma has no system role,
so the instruction opens the user turn (as Google's chat template does). Base models get plain
text, ``{SYSTEM_INSTRUCTION}\n\nQuestion: {question}\nAnswer:\n``, whose last line invites the
``<reasoning>...</reasoning><answer>...</answer>`` continuation. Neither prompt contains
``<bos>``: the tokenizer (or `data.batching`) adds it.
"""

from __future__ import annotations

from kaggle_lib.answer_format import ANSWER_END, ANSWER_START, REASONING_END, REASONING_START

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"

# Short on purpose (24 tokens with Gemma 3's tokenizer, 44 before issue 14): it is repeated in
# every training row and every evaluation prompt.
SYSTEM_INSTRUCTION = (f"Think step by step in {REASONING_START}{REASONING_END}, then give only "
                      f"the final answer in {ANSWER_START}{ANSWER_END}.")


def format_prompt(question: str, *, instruct: bool) -> str:
    """Return the prompt for ``question``: Gemma turn format if ``instruct``, else plain text."""
    question = question.strip()
    if not question:
        raise ValueError("format_prompt: the question is empty")
    if instruct:
        return (f"{START_OF_TURN}user\n{SYSTEM_INSTRUCTION}\n\n{question}{END_OF_TURN}\n"
                f"{START_OF_TURN}model\n")
    return f"{SYSTEM_INSTRUCTION}\n\nQuestion: {question}\nAnswer:\n"


def format_target(reasoning: str, answer: str, *, instruct: bool) -> str:
    """Return the supervised response: reasoning and answer in tags (+ ``<end_of_turn>``)."""
    target = (f"{REASONING_START}{reasoning.strip()}{REASONING_END}"
              f"{ANSWER_START}{answer.strip()}{ANSWER_END}")
    # Instruction-tuned Gemma ends its turn with <end_of_turn> (id 106 in Gemma 3), which
    # sampling also treats as a stop token; base models just stop at <eos>.
    return target + END_OF_TURN if instruct else target
