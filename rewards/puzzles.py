"""Verifier rewards for puzzles with many valid answers: Countdown and Sudoku (1.0 valid, 0.0 otherwise).

Both read the completion's last ``<answer>...</answer>`` (no tags: 0) and check the answer against the
rules and the problem's own columns, never against one stored solution:

* ``countdown`` (columns ``numbers``, a list of ints or a string such as ``"3,7,5"``, and ``target``): the
  answer is an arithmetic expression over the given numbers with binary ``+ - * /`` and parentheses,
  each number used at most once (as a multiset: a number given twice may be used twice), whose exact
  rational value is the target. An optional trailing ``= N`` is allowed when N is the target. Unary
  signs, other operators (``**``, ``%``), decimals and numbers that were not given are invalid; division
  is exact (the value is a ``fractions.Fraction``: ``7/2*2`` is 7). Model output is read by a small
  recursive-descent parser, never by ``eval``; the answer is capped at ``MAX_EXPRESSION_CHARS``
  characters and a literal longer than every given number is refused before it is converted. Values stay bounded because every literal is one of the given numbers.
* ``sudoku`` (column ``puzzle``: the givens as a string of n*n digits, ``0`` or ``.`` for a blank, or a
  list of rows): the answer holds exactly n*n digits in 1..n (separators ``, | [ ] - +``, whitespace
  and newlines are ignored; any other character makes it invalid), every given is kept, and each row,
  column and box holds every digit once. n is 4 (2x2 boxes) or 9 (3x3 boxes). Any valid grid scores
  1.0, also when the puzzle has several solutions.

A row whose problem columns are unreadable gives ``None`` (not applicable, with a warning), never a
reward. Not covered: partial credit (the share of correct cells) and Countdown variants that require
every number to be used.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from fractions import Fraction

from rewards.math import completion_text, last_answer_tag

logger = logging.getLogger(__name__)

MAX_EXPRESSION_CHARS = 200
MAX_GRID_CHARS = 2000
_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()=]))")
_GRID_SEPARATORS = re.compile(r"[\s,|\[\]\-+]")


class InvalidAnswer(ValueError):
    """The answer breaks the puzzle's syntax or rules (scores 0)."""


def last_answer(text: str) -> str | None:
    tag = last_answer_tag(text)
    return tag.strip() if tag is not None else None


# ---- countdown ------------------------------------------------------------------------------------


def _tokens(expression: str) -> list[str]:
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise InvalidAnswer(f"longer than {MAX_EXPRESSION_CHARS} characters")
    out, pos = [], 0
    while pos < len(expression):
        if expression[pos:].strip() == "":
            break
        m = _TOKEN.match(expression, pos)
        if m is None:
            raise InvalidAnswer(f"unexpected character {expression[pos]!r}")
        out.append(m.group(1) or m.group(2))
        pos = m.end()
    return out


class _Parser:
    """expr := term (('+'|'-') term)*; term := atom (('*'|'/') atom)*; atom := NUMBER | '(' expr ')'."""

    def __init__(self, tokens: list[str], allowed: Counter):
        self.tokens, self.pos, self.unused = tokens, 0, Counter(allowed)
        self.longest = max((len(str(n)) for n in allowed), default=0)

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise InvalidAnswer("the expression ends early")
        self.pos += 1
        return token

    def expr(self, depth: int = 0) -> Fraction:
        value = self.term(depth)
        while self.peek() in ("+", "-"):
            op, right = self.take(), self.term(depth)
            value = value + right if op == "+" else value - right
        return value

    def term(self, depth: int) -> Fraction:
        value = self.atom(depth)
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.atom(depth)
            if op == "/" and right == 0:
                raise InvalidAnswer("division by zero")
            value = value * right if op == "*" else value / right
        return value

    def atom(self, depth: int) -> Fraction:
        token = self.take()
        if token == "(":
            if depth >= 32:
                raise InvalidAnswer("parentheses nested too deeply")
            value = self.expr(depth + 1)
            if self.take() != ")":
                raise InvalidAnswer("unbalanced parentheses")
            return value
        if not token.isdigit():
            raise InvalidAnswer(f"expected a number, got {token!r}")
        if len(token.lstrip("0") or "0") > self.longest:  # compared as text: no huge int is ever built
            raise InvalidAnswer(f"{token[:12]}... is not one of the given numbers")
        number = int(token)
        if self.unused[number] <= 0:
            raise InvalidAnswer(f"{number} is not available (not given, or used up)")
        self.unused[number] -= 1
        return Fraction(number)


def countdown_value(expression: str, numbers: list[int]) -> Fraction:
    """The exact value of ``expression`` (``= N`` suffix allowed) under the rules; raises InvalidAnswer."""
    tokens = _tokens(expression)
    claimed = None
    if "=" in tokens:
        cut = tokens.index("=")
        rest = tokens[cut + 1 :]
        if len(rest) != 1 or not rest[0].isdigit() or len(rest[0]) > 12:
            raise InvalidAnswer("'=' must be followed by one number and nothing else")
        tokens, claimed = tokens[:cut], int(rest[0])
    parser = _Parser(tokens, Counter(numbers))
    value = parser.expr()
    if parser.peek() is not None:
        raise InvalidAnswer(f"unexpected {parser.peek()!r} after a complete expression")
    if claimed is not None and value != claimed:
        raise InvalidAnswer(f"the expression is {value}, not the claimed {claimed}")
    return value


def _int_list(value) -> list[int]:
    if isinstance(value, str):
        value = json.loads(value) if value.strip().startswith("[") else re.split(r"[,\s]+", value.strip())
    return [int(v) for v in value]


def countdown(prompts, completions, numbers, target, **_columns) -> list[float | None]:
    scores: list[float | None] = []
    for completion, given, goal in zip(completions, numbers, target, strict=True):
        try:
            allowed, goal = _int_list(given), int(goal)
        except (TypeError, ValueError) as exc:
            logger.warning("countdown: unreadable problem (numbers=%r, target=%r): %s", given, goal, exc)
            scores.append(None)
            continue
        answer = last_answer(completion_text(completion))
        try:
            scores.append(float(answer is not None and countdown_value(answer, allowed) == goal))
        except InvalidAnswer:
            scores.append(0.0)
    return scores


# ---- sudoku ---------------------------------------------------------------------------------------


def parse_puzzle(puzzle) -> list[int]:
    """Givens as n*n ints (0 = blank) from a digit string (``.`` also blank) or a list of rows."""
    if isinstance(puzzle, str) and puzzle.strip().startswith("["):
        puzzle = json.loads(puzzle)
    if isinstance(puzzle, list):
        cells = [int(v) for row in puzzle for v in (row if isinstance(row, list) else [row])]
    else:
        cells = [0 if ch == "." else int(ch) for ch in _GRID_SEPARATORS.sub("", str(puzzle))]
    if len(cells) not in (16, 81):
        raise ValueError(f"a puzzle has 16 (4x4) or 81 (9x9) cells, got {len(cells)}")
    n = math.isqrt(len(cells))
    if any(not 0 <= v <= n for v in cells):
        raise ValueError(f"givens must be 0..{n}")
    return cells


def sudoku_grid(answer: str, size: int) -> list[int]:
    """The n*n digits of an answer; raises InvalidAnswer for any other content or count."""
    if len(answer) > MAX_GRID_CHARS:
        raise InvalidAnswer(f"longer than {MAX_GRID_CHARS} characters")
    digits = _GRID_SEPARATORS.sub("", answer)
    if not digits.isdigit() or not digits.isascii():
        raise InvalidAnswer("the grid holds something other than digits and separators")
    if len(digits) != size:
        raise InvalidAnswer(f"{len(digits)} digits, expected {size}")
    return [int(ch) for ch in digits]


def sudoku_valid(grid: list[int], givens: list[int]) -> bool:
    n = math.isqrt(len(givens))
    box = math.isqrt(n)
    if any(g and g != v for g, v in zip(givens, grid)):
        return False
    full = set(range(1, n + 1))
    rows = [grid[r * n : (r + 1) * n] for r in range(n)]
    cols = [grid[c::n] for c in range(n)]
    boxes = [
        [grid[(br + i) * n + bc + j] for i in range(box) for j in range(box)]
        for br in range(0, n, box)
        for bc in range(0, n, box)
    ]
    return all(set(unit) == full for unit in rows + cols + boxes)


def sudoku(prompts, completions, puzzle, **_columns) -> list[float | None]:
    scores: list[float | None] = []
    for completion, given in zip(completions, puzzle, strict=True):
        try:
            givens = parse_puzzle(given)
        except (TypeError, ValueError) as exc:
            logger.warning("sudoku: unreadable puzzle %r: %s", str(given)[:100], exc)
            scores.append(None)
            continue
        answer = last_answer(completion_text(completion))
        try:
            scores.append(
                float(answer is not None and sudoku_valid(sudoku_grid(answer, len(givens)), givens))
            )
        except InvalidAnswer:
            scores.append(0.0)
    return scores
