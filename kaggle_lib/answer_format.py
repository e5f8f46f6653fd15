"""The answer format: the tags, reading a model output (`parse_output`), matching an answer
(`answers_match`, `parse_number`) and the ``a op b = c`` equations of a reasoning (`EQUATION`,
`check_reasoning_lines`). Pure Python at the bottom of the package: data, evaluation and the
GRPO rewards import it, so a completion is read the same way wherever it is judged.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass
from fractions import Fraction

REASONING_START = "<reasoning>"
REASONING_END = "</reasoning>"
ANSWER_START = "<answer>"
ANSWER_END = "</answer>"
FORMAT_TAGS = (ANSWER_START, ANSWER_END, REASONING_START, REASONING_END)

# Stop markers the sampler may leave at the end of a decoded output.
_STOP_MARKERS = ("<end_of_turn>", "<eos>")


# --------------------------------------------------------------------------- parsing


@dataclass(frozen=True)
class ParsedOutput:
    """What `parse_output` found in one model output."""

    reasoning: str | None
    answer: str | None
    format_exact: bool
    format_approx: bool


def _tag_res(name: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    # Lenient tags: any case, whitespace inside the angle brackets.
    return (re.compile(rf"<\s*{name}\s*>", re.IGNORECASE),
            re.compile(rf"<\s*/\s*{name}\s*>", re.IGNORECASE))


_REASONING_OPEN, _REASONING_CLOSE = _tag_res("reasoning")
_ANSWER_OPEN, _ANSWER_CLOSE = _tag_res("answer")
_ANY_TAG = re.compile(r"<\s*/?\s*(?:reasoning|answer)\s*>", re.IGNORECASE)
_EXACT = re.compile(r"<reasoning>(.*?)</reasoning>\s*<answer>(.*?)</answer>", re.DOTALL)
# The four lenient tags (any case, whitespace inside the brackets): the format reward counts them.
TAG_PATTERNS = (_REASONING_OPEN, _REASONING_CLOSE, _ANSWER_OPEN, _ANSWER_CLOSE)
_APPROX = re.compile(".*?".join(tag.pattern for tag in TAG_PATTERNS), re.IGNORECASE | re.DOTALL)


def format_tag_in(text: str) -> str | None:
    """The first format tag in `text` (as written, in any case and spacing), or None: an answer
    or reasoning holding one could never be read back, as `parse_output` splits at it."""
    found = _ANY_TAG.search(text)
    return found.group() if found else None


def _strip_stop_markers(text: str) -> str:
    text = text.strip()
    while text.endswith(_STOP_MARKERS):  # e.g. "...</answer><end_of_turn>\n<eos>"
        marker = next(m for m in _STOP_MARKERS if text.endswith(m))
        text = text[: -len(marker)].rstrip()
    return text


def _last_pair(text: str, open_re: re.Pattern[str], close_re: re.Pattern[str]) -> str | None:
    """Content of the last opening tag that is closed later (innermost for nested tags): an
    unclosed final tag (a truncated output) is skipped, a half-written answer is not scored."""
    for opening in reversed(list(open_re.finditer(text))):
        closing = close_re.search(text, opening.end())
        if closing is not None:
            return text[opening.end() : closing.start()].strip()
    return None


def parse_output(text: str) -> ParsedOutput:
    """Split a model output into reasoning and answer (the last closed pairs, `_last_pair`) and
    judge its format. `format_exact`: without surrounding whitespace and trailing stop markers,
    exactly `<reasoning>R</reasoning>` `<answer>A</answer>` (lowercase, only whitespace between),
    R and A non-empty (a format reward must not pay for empty blocks) and free of further tags.
    `format_approx`: both pairs in order, tags in any case with inner whitespace, any text around.
    """
    if not isinstance(text, str):
        raise TypeError(f"parse_output expects the decoded output as str, got {type(text).__name__}")
    body = _strip_stop_markers(text)
    answer = _last_pair(body, _ANSWER_OPEN, _ANSWER_CLOSE)
    reasoning = _last_pair(body, _REASONING_OPEN, _REASONING_CLOSE)

    match = _EXACT.fullmatch(body)
    exact = match is not None and all(inner.strip() and not _ANY_TAG.search(inner)
                                      for inner in match.groups())
    approx = _APPROX.search(body) is not None
    return ParsedOutput(reasoning=reasoning, answer=answer, format_exact=exact, format_approx=approx)


def first_answer_only(text: str) -> str:
    """``text`` up to its first ``</answer>``: after a few-shot prompt the model goes on with an
    invented question, whose answer would otherwise be the last one and be scored."""
    closing = _ANSWER_CLOSE.search(text)
    return text if closing is None else text[: closing.end()]


# --------------------------------------------------------------------------- matching


def normalize_answer(text: str) -> str:
    """Strip, casefold, collapse whitespace and drop trailing periods."""
    text = " ".join(str(text).split()).casefold()
    return text.rstrip(".").rstrip()


_PLAIN_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?", re.IGNORECASE)
_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d*)?")
_FRACTION = re.compile(r"(?:(\d+)\s+)?(\d+)\s*/\s*(\d+)")


def parse_number(text: str) -> float | None:
    """Parse an answer that is a single number, or return None.

    Accepted: `12`, `-12.5`, `1e3`, `1,234` (thousands groups only), `$12` / `-$12` / `$-12`,
    `3/4`, `1 3/4` (mixed number), `50%` (read as 50: answers state percentages as the
    number of percent, so `50%` matches `50`, not `0.5`), a trailing period. Anything with
    extra words (`12 apples`, `x = 12`) is not a number; such answers can still match exactly.
    """
    s = str(text).strip().replace("\u2212", "-").rstrip(".").strip()
    sign = 1.0
    if s and s[0] in "+-":
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:].strip()
    if s and s[0] in "$£€¥":
        s = s[1:].strip()
        if s and s[0] in "+-" and sign == 1.0:  # "$-12"
            sign = -1.0 if s[0] == "-" else 1.0
            s = s[1:].strip()
    if s.endswith("%"):
        s = s[:-1].strip()
    if not s:
        return None
    if "," in s:
        if not _THOUSANDS.fullmatch(s):
            return None  # "1,2" or "1,23,456" is a list or a locale we do not guess
        s = s.replace(",", "")
    fraction = _FRACTION.fullmatch(s)
    if fraction is not None:
        whole, num, den = fraction.groups()
        if int(den) == 0:
            return None
        return sign * float(Fraction(int(num), int(den)) + (int(whole) if whole else 0))
    # The regex guard keeps float() from accepting "nan", "inf" or "1_000".
    return sign * float(s) if _PLAIN_NUMBER.fullmatch(s) else None


def answers_match(predicted: str | None, expected: str | int | float, rel_tol: float = 1e-4
                  ) -> tuple[bool, bool]:
    """Return `(exact, numeric)`; an answer is correct when either is True.

    exact: equal after `normalize_answer`. numeric: both parse with `parse_number` and
    agree within `rel_tol` (relative to the larger magnitude; 0 only matches 0).
    """
    if rel_tol < 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol}")
    if predicted is None:
        return False, False
    exact = normalize_answer(predicted) == normalize_answer(str(expected))
    a, b = parse_number(predicted), parse_number(str(expected))
    numeric = a is not None and b is not None and math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)
    return exact, numeric


# --------------------------------------------------------------------------- reasoning lines


_NUM = r"[$€£]?\d[\d,]*(?:\.\d+)?%?"
# "x" multiplies only between spaces ("75 x 80"); a unit word may follow a number on the left
# ("93 caterpillars + 186 ladybugs = 279"): it is ignored when the equation is checked.
_OP = r"(?:[-+*/×÷]|(?<=\s)x(?=\s))"
_UNIT = r"(?:\s+(?!x\s)[a-z]+)?"
_OPERAND = rf"\(*-?{_NUM}{_UNIT}\)*"
EQUATION = re.compile(
    rf"(?<![\w.])(?P<lhs>{_OPERAND}(?:\s*{_OP}\s*{_OPERAND})+)\s*=\s*(?P<rhs>-?{_NUM})"
    r"(?![\w])"
)
_ASCII_OPS = str.maketrans({"×": "*", "÷": "/", "\u2212": "-"})
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv}


def ascii_expression(expression: str) -> str:
    """ASCII operators, no unit words: "294 pages x 2/3" -> "294 * 2/3"."""
    expression = re.sub(r"(?<=\s)x(?=\s)", "*", expression.translate(_ASCII_OPS))
    return re.sub(r"(\d%?)\s+[a-z]+", r"\1", expression)


def _number(token: str) -> Fraction:
    token = re.sub(r"[$€£,]", "", token)
    if token.endswith("%"):
        return Fraction(token[:-1]) / 100
    return Fraction(token)


def evaluate_expression(expression: str) -> Fraction | None:
    """Value of `a op b op ...` (+ - * /, parentheses) as an exact fraction, or None."""
    expression = ascii_expression(expression)
    expression = re.sub(_NUM, lambda m: f"N({_number(m.group()).numerator},"
                                        f"{_number(m.group()).denominator})", expression)
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return None

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "N":  # made above
            num, den = (n.value for n in node.args)  # type: ignore[attr-defined]
            return Fraction(num, den)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            # A division by zero raises ZeroDivisionError: None below.
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError("unsupported")

    try:
        return walk(tree)
    except (ValueError, ZeroDivisionError, TypeError):
        return None


def equation_holds(lhs: str, rhs: str) -> bool:
    """True when ``lhs`` evaluates to ``rhs`` as written: exactly for a whole number, to the
    shown decimals for a decimal (``14 / 42 = 0.33`` holds, ``50 / 20 = 2`` does not)."""
    left = evaluate_expression(lhs)
    try:
        right = _number(rhs.lstrip("-\u2212")) * (-1 if rhs[:1] in "-\u2212" else 1)
    except (ValueError, ZeroDivisionError):
        return False
    if left is None:
        return False
    decimals = len(rhs.rstrip("%").partition(".")[2])
    return abs(left - right) <= Fraction(1, 2 * 10**decimals) if decimals else left == right


def check_reasoning_lines(text: str | None) -> tuple[int, int]:
    """(equations found, equations whose arithmetic holds) in ``text`` (the reasoning): every
    ``lhs = rhs`` with at least one operator."""
    found = [(m.group("lhs").strip(), m.group("rhs").strip())
             for m in EQUATION.finditer(text or "")]
    return len(found), sum(equation_holds(lhs, rhs) for lhs, rhs in found)
