"""Format and length rewards (pure string checks; no model, no sandbox).

* ``think_answer_format``: 1.0 when the completion is ``<think>...</think>`` followed by
  a non-empty ``<answer>...</answer>`` (iLLaDA / R1 style), else 0. The opening ``<think>`` may be missing: chat
  templates that open the thinking section in the prompt leave only ``...</think><answer>...</answer>``.
* ``reasoning_answer_format``: d1's layout, ``<reasoning>...</reasoning>`` then ``<answer>...</answer>``:
  1.0 for the strict layout (each tag on its own line), 0.5 for the tags in order anywhere, else 0.
* ``answer_tag_format``: 1.0 when the completion holds exactly one non-empty ``<answer>...</answer>`` and
  nothing after it, else 0 (the answer-only layout of short tasks such as the embedded tiny task).
* ``python_block_format``: 1.0 when the completion has a fenced block whose fences stand at the start of
  their own lines, whose language is python, py, python3 or empty, and whose body is at least one Python
  statement that parses; else 0 (a fence inside a comment or string, another language's block, an empty
  block or prose around no block score 0).
* ``length_penalty``: 0 up to ``soft_limit`` characters, falling linearly to -1 at ``hard_limit``,
  minus the fraction of repeated lines (iLLaDA's "Wait, let me check again" loops) beyond the first
  occurrence; always in [-2, 0].
"""

from __future__ import annotations

import re

from rewards import pyast
from rewards.math import completion_text

_THINK_ANSWER = re.compile(r"^\s*(?:<think>)?(?:(?!</?think>).)*</think>\s*<answer>(.*?)</answer>\s*$", re.S)
_SPACE = re.compile(r"\s*")
_ANSWER_ONLY = re.compile(r"^(?:(?!<answer>).)*<answer>(?:(?!</?answer>).)+</answer>\s*$", re.S)


def think_answer_format(prompts, completions, **_columns) -> list[float]:
    found = [_THINK_ANSWER.match(completion_text(c)) for c in completions]
    return [1.0 if m and m.group(1).strip() else 0.0 for m in found]  # an empty answer is no answer


def _reasoning_strict(text: str) -> bool:
    """``<reasoning>\\n...\\n</reasoning>\\n<answer>\\n...\\n</answer>`` exactly (text already stripped)."""
    if not (text.startswith("<reasoning>\n") and text.endswith("\n</answer>")):
        return False
    split = text.find("\n</reasoning>\n<answer>\n", len("<reasoning>\n"))
    return split >= 0 and split + len("\n</reasoning>\n<answer>\n") <= len(text) - len("\n</answer>")


def _reasoning_soft(text: str) -> bool:
    """``<reasoning>...</reasoning>``, blanks, ``<answer>...</answer>`` anywhere (linear, unlike a lazy regex)."""
    start, last_close = text.find("<reasoning>"), text.rfind("</answer>")
    if start < 0 or last_close < 0:
        return False
    end = text.find("</reasoning>", start + len("<reasoning>"))
    while end >= 0:
        after = _SPACE.match(text, end + len("</reasoning>")).end()
        if text.startswith("<answer>", after) and last_close >= after + len("<answer>"):
            return True
        end = text.find("</reasoning>", end + 1)
    return False


def reasoning_answer_format(prompts, completions, **_columns) -> list[float]:
    """1 for d1's strict layout, 0.5 for reasoning and answer tags in order, else 0."""
    scores = []
    for c in completions:
        text = completion_text(c).strip()
        scores.append(1.0 if _reasoning_strict(text) else 0.5 if _reasoning_soft(text) else 0.0)
    return scores


def answer_tag_format(prompts, completions, **_columns) -> list[float]:
    return [1.0 if _ANSWER_ONLY.match(completion_text(c)) else 0.0 for c in completions]


_LINE_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.S | re.M)
_PYTHON_TAGS = ("python", "py", "python3", "")


def _python_statements(body: str) -> bool:
    try:
        return bool(pyast.parse(body).body)
    except (SyntaxError, ValueError):
        return False


def python_block_format(prompts, completions, **_columns) -> list[float]:
    return [
        1.0
        if any(
            lang.lower() in _PYTHON_TAGS and _python_statements(body)
            for lang, body in _LINE_FENCE.findall(completion_text(c))
        )
        else 0.0
        for c in completions
    ]


def repeated_line_fraction(text: str) -> float:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def length_penalty(
    prompts, completions, soft_limit: int = 2000, hard_limit: int = 4000, **_columns
) -> list[float]:
    if hard_limit <= soft_limit:
        raise ValueError(f"length_penalty: hard_limit ({hard_limit}) must exceed soft_limit ({soft_limit}).")
    scores = []
    for c in completions:
        text = completion_text(c)
        over = min(max(len(text) - soft_limit, 0) / (hard_limit - soft_limit), 1.0)
        scores.append(-over - repeated_line_fraction(text))
    return scores
