"""Math answer extraction and equivalence checking (math-verify) in killable worker processes.

``math_accuracy`` extracts the model's final answer (the last ``<answer>...</answer>``, else the last
``\\boxed{...}``, else ``#### N``, else "the answer is ...") and checks it against the gold answer with
math-verify (fractions vs decimals, thousands separators, currency, LaTeX forms, sets/intervals, simple
expressions). Gold comes from the column ``answer`` (GSM8K's "... #### 72" is cut at ``####``; MATH's
solutions are read through their last ``\\boxed{}``) or ``solution``. Gold that cannot be parsed gives
``None`` (with a warning), never a reward; a completion with no extractable answer scores 0.

math-verify's timeouts use ``signal.alarm``, which only works in a process's main thread, and a C-level
big-integer computation (``\\boxed{9^{9^{9^{9^9}}}}``) ignores it. So grading runs in worker processes
with a hard per-batch deadline: workers still busy at the deadline are killed (and replaced) and their
items score 0.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import re
import time
from concurrent.futures import ProcessPoolExecutor, wait

logger = logging.getLogger(__name__)

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.S | re.I)
_HASHES = re.compile(r"####\s*([^\n]+)")
_THE_ANSWER_IS = re.compile(r"answer is[:\s]*\$?([^\n$]+?)\$?\s*(?:\.\s*)?$", re.I | re.M)


def completion_text(completion) -> str:
    """A completion as text: a string, or the last message's content of a chat-format list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(
        f"completion must be a string or a list of chat messages, got {type(completion).__name__}."
    )


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def extract_answer(text: str) -> str | None:
    """The final answer string of a model's completion, or None when there is none."""
    tags = _ANSWER_TAG.findall(text)
    if tags:
        inner = tags[-1].strip()
        return last_boxed(inner) or inner
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    said = _THE_ANSWER_IS.findall(text)
    if said:
        return said[-1].strip()
    return None


def gold_answer(gold: str) -> str:
    """The answer part of a gold column: after GSM8K's ``####``, inside MATH's last ``\\boxed{}``."""
    gold = str(gold)
    if "####" in gold:
        return gold.split("####")[-1].strip()
    boxed = last_boxed(gold)
    return boxed if boxed is not None else gold.strip()


def _clean(answer: str) -> str:
    answer = answer.strip().rstrip(".").strip()
    answer = re.sub(r"(?<=\d),(?=\d{3}\b)", "", answer)  # 1,000 -> 1000
    answer = answer.replace("\\$", "").replace("\\%", "").replace("%", "")
    return answer.strip().lstrip("$").rstrip("$").strip()


def _parse(answer: str):
    from math_verify import parse

    cleaned = _clean(answer)
    parsed = parse(f"${cleaned}$", parsing_timeout=3) if cleaned else []
    return parsed or (parse(cleaned, parsing_timeout=3) if cleaned else [])


def grade(gold: str, prediction: str | None) -> float | None:
    """1.0 / 0.0 for a prediction against gold; None when the gold cannot be parsed. Worker-safe."""
    from math_verify import verify

    gold_parsed = _parse(gold_answer(gold))
    if not gold_parsed:
        return None
    if prediction is None:
        return 0.0
    pred_parsed = _parse(prediction)
    if not pred_parsed:
        return 0.0
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=3) else 0.0


class GradingPool:
    """Process pool for ``grade`` with a hard deadline; stuck workers are killed and the pool rebuilt."""

    def __init__(self, workers: int = 2, deadline_s: float = 10.0):
        self.workers, self.deadline_s = workers, deadline_s
        self._pool: ProcessPoolExecutor | None = None

    def _get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"))
        return self._pool

    def _kill(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def grade_many(self, pairs: list[tuple[str, str | None]]) -> list[float | None]:
        if not pairs:
            return []
        pool = self._get()
        futures = [pool.submit(grade, g, p) for g, p in pairs]
        done, pending = wait(futures, timeout=self.deadline_s + 0.5 * len(pairs) / self.workers)
        results: list[float | None] = []
        for (_gold, p), fut in zip(pairs, futures):
            if fut in done and fut.exception() is None:
                results.append(fut.result())
            else:
                if fut in done:
                    logger.warning("math grading failed for answer %r: %s", (p or "")[:80], fut.exception())
                results.append(0.0)
        if pending or any(f.exception() is not None for f in done):
            logger.warning(
                "math grading: %d answers exceeded the deadline or crashed a worker and scored 0; restarting workers",
                len(pending) + sum(f.exception() is not None for f in done),
            )
            self._kill()
        return results


_POOL: GradingPool | None = None


def _pool() -> GradingPool:
    global _POOL
    if _POOL is None:
        _POOL = GradingPool()
    return _POOL


def math_accuracy(prompts, completions, answer=None, solution=None, **_columns) -> list[float | None]:
    """1.0 when the completion's final answer equals the gold (column ``answer`` or ``solution``)."""
    gold = answer if answer is not None else solution
    if gold is None:
        raise KeyError("math_accuracy needs a gold column named 'answer' or 'solution' in the dataset.")
    start = time.monotonic()
    preds = [extract_answer(completion_text(c)) for c in completions]
    scores = _pool().grade_many([(str(g), p) for g, p in zip(gold, preds)])
    for g, s in zip(gold, scores):
        if s is None:
            logger.warning(
                "math_accuracy: gold answer %r cannot be parsed; the sample gets no reward (None).",
                str(g)[:80],
            )
    logger.debug("math_accuracy graded %d in %.2fs", len(scores), time.monotonic() - start)
    return scores
