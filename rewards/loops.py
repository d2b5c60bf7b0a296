"""Reasoning loops: one definition, used by the training metrics, ``align eval`` and the loop rewards.

A sequence **loops** when a stretch of it repeats one segment back to back: for some period ``p`` (1 to
``max_period`` tokens), at least ``min_copies`` copies of a segment of at least ``min_segment`` tokens (the
smallest multiple of ``p`` that is ``>= min_segment``), every token of the stretch equal to the one ``p``
before it. ``find_loop`` returns the earliest such stretch (its start, the period, how many copies it
holds) or None. A completion's tokens are the words of its decoded text (``completion_loop``:
whitespace-separated), whatever the model's tokenizer, so a diffusion model and its autoregressive baseline
are measured alike. A model that writes "Wait, let me check: 12 + 34 = 46." until its budget runs out
loops; a list, a table or code whose lines repeat a few words does not (a repeated 4-word line needs 4
identical lines in a row for one 16-word segment, and 3 such segments in a row).

Defaults (``MIN_SEGMENT`` 16 words, ``MIN_COPIES`` 3, ``MAX_PERIOD`` 512): chosen on the constructed loops,
near-loops and long reasoning of ``tests/test_loops.py`` (its checking step is 26 words; 2 copies are a
restatement, not a loop). Not yet checked against iLLaDA's own long reasoning (that needs its GPU rollouts).

``unclosed_think`` flags a thinking section opened (by the completion, or by its prompt) and never
closed. Cost: ``max_period`` vectorised comparisons over the sequence, linear in its length for the fixed
``max_period`` (9 ms of CPU for 4,096 tokens here).

Not covered: loops whose copies differ (a counter that increments each time, paraphrases); they are caught
only where a long enough stretch stays identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rewards.math import completion_text

MIN_SEGMENT = 16  # tokens in the repeated segment (at least)
MIN_COPIES = 3  # back-to-back copies of it (at least)
MAX_PERIOD = 512  # longest period searched, tokens


@dataclass(frozen=True)
class Loop:
    start: int  # index of the loop's first token
    period: int  # tokens per repetition
    copies: float  # the repeated stretch's length / period


def find_loop(
    tokens: Sequence,
    min_segment: int = MIN_SEGMENT,
    min_copies: int = MIN_COPIES,
    max_period: int = MAX_PERIOD,
) -> Loop | None:
    """The earliest loop of ``tokens`` (ids, or any hashable items such as words), or None (module
    docstring). Ties at one start go to the shorter period."""
    if min_segment < 1 or min_copies < 2 or max_period < 1:
        raise ValueError(
            f"find_loop needs min_segment >= 1, min_copies >= 2 and max_period >= 1; got {min_segment}, "
            f"{min_copies}, {max_period}."
        )
    items = _as_array(tokens)
    n = len(items)
    best: Loop | None = None
    for period in range(1, min(max_period, n // min_copies) + 1):
        segment = period * -(-min_segment // period)  # the smallest multiple of the period >= min_segment
        needed = min_copies * segment - period  # equal pairs (token, token p later) in a row
        if needed + period > n:
            continue
        equal = np.concatenate(([0], (items[period:] == items[:-period]).view(np.int8), [0]))
        edges = np.diff(equal)
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        long_enough = np.flatnonzero(ends - starts >= needed)
        if len(long_enough) == 0:
            continue
        i = long_enough[0]
        start = int(starts[i])
        if best is None or start < best.start:
            best = Loop(start=start, period=period, copies=(int(ends[i] - starts[i]) + period) / period)
    return best


def trailing_loop(
    tokens: Sequence,
    since: int = 0,
    min_segment: int = MIN_SEGMENT,
    min_copies: int = MIN_COPIES,
    max_period: int = MAX_PERIOD,
) -> Loop | None:
    """The loop ``tokens`` end in (its repeated stretch reaches their last token) if it was already a loop
    ``since`` tokens before the end (``find_loop``'s definition on ``tokens[:-since]`` with the stretch going
    on to the end), or None. Ties go to the shorter period. A rollout row that has looped for K blocks of
    ``b`` tokens: ``trailing_loop(ids, since=(K - 1) * b)``. Reads only the last ``since`` +
    ``min_copies * (min_segment + max_period)`` tokens (the loop's start and copies count within them)."""
    if since < 0:
        raise ValueError(f"trailing_loop needs since >= 0, got {since}.")
    items = _as_array(tokens)
    offset = max(len(items) - (since + min_copies * (min_segment + max_period)), 0)
    items = items[offset:]
    n = len(items)
    for period in range(1, min(max_period, n // min_copies) + 1):
        segment = period * -(-min_segment // period)
        needed = min_copies * segment - period + since  # equal pairs in a row, counted back from the end
        if needed + period > n:
            continue
        unequal = np.flatnonzero(items[n - needed :] != items[n - needed - period : n - period])
        if len(unequal) == 0:
            run = needed  # at least; count the rest of the run for the loop's extent
            differ = np.flatnonzero(items[period : n - needed] != items[: n - needed - period])
            run += n - needed - period - (int(differ[-1]) + 1 if len(differ) else 0)
            return Loop(start=offset + n - run - period, period=period, copies=(run + period) / period)
    return None


def loops(tokens: Sequence, **settings) -> bool:
    """Whether ``tokens`` loop (``find_loop`` is not None)."""
    return find_loop(tokens, **settings) is not None


UNITS = ("words", "chars")


def completion_loop(text: str, unit: str = "words", **settings) -> Loop | None:
    """The loop of a decoded completion, in its whitespace-separated words: the unit the training metrics,
    ``align eval`` and ``loop_penalty`` share (independent of the tokenizer, so a diffusion model and its
    autoregressive baseline are measured alike). ``unit="chars"`` reads characters instead, for text without
    spaces (the character-level tiny tasks)."""
    return find_loop(_units(text, unit), **settings)


def _units(text: str, unit: str) -> list[str]:
    if unit not in UNITS:
        raise ValueError(f"loop unit {unit!r} is not one of {', '.join(UNITS)}.")
    return text.split() if unit == "words" else list(text)


def unclosed_think(
    text: str, opened: bool = False, open_tag: str = "<think>", close_tag: str = "</think>"
) -> bool:
    """True when the completion's last thinking section (opened in it, or by its prompt: ``opened``) has no
    closing tag after it."""
    start = text.rfind(open_tag)
    if start < 0 and not opened:
        return False
    return close_tag not in text[max(start, 0) :]


def _as_array(tokens: Sequence) -> np.ndarray:
    if isinstance(tokens, np.ndarray):
        return tokens
    if isinstance(tokens, str):
        raise TypeError(
            "find_loop takes a sequence of tokens; split a text first (its token ids, or text.split())."
        )
    items = list(tokens)
    if items and not all(isinstance(t, (int, np.integer)) for t in items):
        index: dict = {}
        items = [index.setdefault(t, len(index)) for t in items]  # words -> ids, equal words equal ids
    return np.asarray(items, dtype=np.int64)


# ---- rewards ----------------------------------------------------------------------------------------------
def repetition_penalty(
    prompts, completions, ngram_size: int = 3, max_penalty: float = -1.0, **_columns
) -> list[float]:
    """open-r1's ``repetition_penalty`` (``get_repetition_penalty_reward``; its recipes' defaults n-gram size 3,
    max penalty -1): the completion's lower-cased words cut into ``ngram_size``-grams, reward
    ``(1 - unique / total) * max_penalty``; 0 for an empty completion or one with fewer words than
    ``ngram_size``."""
    check_repetition_penalty(ngram_size=ngram_size, max_penalty=max_penalty)
    scores = []
    for completion in completions:
        words = completion_text(completion).lower().split()
        if len(words) < ngram_size:
            scores.append(0.0)
            continue
        grams = list(zip(*[words[i:] for i in range(ngram_size)]))
        scores.append((1 - len(set(grams)) / len(grams)) * max_penalty)
    return scores


def check_repetition_penalty(ngram_size=3, max_penalty=-1.0, **_other) -> None:
    if not isinstance(ngram_size, int) or isinstance(ngram_size, bool) or ngram_size < 1:
        raise ValueError(f"repetition_penalty: ngram_size must be a whole number >= 1, got {ngram_size!r}.")
    if max_penalty > 0:
        raise ValueError(
            f"repetition_penalty: max_penalty {max_penalty} should not be positive (it is a penalty)."
        )


def loop_penalty(
    prompts,
    completions,
    penalty: float = -1.0,
    min_segment: int = MIN_SEGMENT,
    min_copies: int = MIN_COPIES,
    unit: str = "words",
    **_columns,
) -> list[float]:
    """``penalty`` times the share of the completion inside its loop (``completion_loop``: the repeated
    stretch's words / all words; 0 without a loop). ``unit="chars"``: in characters (text without spaces)."""
    check_loop_penalty(penalty=penalty, min_segment=min_segment, min_copies=min_copies, unit=unit)
    scores = []
    for completion in completions:
        tokens = _units(completion_text(completion), unit)
        found = find_loop(tokens, min_segment=min_segment, min_copies=min_copies)
        scores.append(0.0 if found is None else penalty * min(found.copies * found.period / len(tokens), 1.0))
    return scores


def check_loop_penalty(
    penalty=-1.0, min_segment=MIN_SEGMENT, min_copies=MIN_COPIES, unit="words", **_other
) -> None:
    if unit not in UNITS:
        raise ValueError(f"loop_penalty: unit {unit!r} is not one of {', '.join(UNITS)}.")
    if penalty > 0:
        raise ValueError(f"loop_penalty: penalty {penalty} should not be positive (it is a penalty).")
    if (
        not isinstance(min_segment, int)
        or min_segment < 1
        or not isinstance(min_copies, int)
        or min_copies < 2
    ):
        raise ValueError(
            f"loop_penalty: min_segment must be >= 1 and min_copies >= 2, got {min_segment!r} and "
            f"{min_copies!r}."
        )


repetition_penalty.check = check_repetition_penalty
loop_penalty.check = check_loop_penalty
