"""A short few-shot prompt in the target format: the fair baseline for an untrained model.

A base model asked zero-shot (`data.template.format_prompt`) tends to repeat the question; two
worked examples in exactly the trained format (for instruction-tuned models, as earlier turns)
show it what to write. They are fixed, not drawn from any split, so no eval item can leak in.
"""

from __future__ import annotations

from kaggle_lib.data.template import END_OF_TURN, START_OF_TURN, SYSTEM_INSTRUCTION, format_target

# (question, reasoning in our line format, answer): one arithmetic, one logic problem.
EXAMPLES: tuple[tuple[str, str, str], ...] = (
    ("Sam has 12 apples. He buys 3 bags with 4 apples in each. How many apples does Sam have "
     "now?", "The bags hold 3 * 4 = 12 apples.\nSam has 12 + 12 = 24 apples.", "24"),
    ("Anna is taller than Ben. Ben is taller than Carl. Who is the shortest?",
     "Anna is taller than Ben and Ben is taller than Carl, so Carl is shorter than both.",
     "Carl"),
)


def format_fewshot_prompt(question: str, *, instruct: bool) -> str:
    """The prompt for ``question`` preceded by :data:`EXAMPLES` in the target format."""
    question = question.strip()
    if not question:
        raise ValueError("format_fewshot_prompt: the question is empty")
    if instruct:
        turns = []
        for i, (q, reasoning, answer) in enumerate(EXAMPLES):
            text = f"{SYSTEM_INSTRUCTION}\n\n{q}" if i == 0 else q
            turns.append(f"{START_OF_TURN}user\n{text}{END_OF_TURN}\n{START_OF_TURN}model\n"
                         f"{format_target(reasoning, answer, instruct=True)}\n")
        return "".join(turns) + (f"{START_OF_TURN}user\n{question}{END_OF_TURN}\n"
                                 f"{START_OF_TURN}model\n")
    shots = "".join(f"Question: {q}\nAnswer:\n{format_target(r, a, instruct=False)}\n\n"
                    for q, r, a in EXAMPLES)
    return f"{SYSTEM_INSTRUCTION}\n\n{shots}Question: {question}\nAnswer:\n"
