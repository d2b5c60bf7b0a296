"""Math answer extraction and equivalence checking (math-verify) in killable worker processes.

``math_accuracy`` extracts the model's final answer (the last ``<answer>...</answer>``, else the last
``\\boxed{...}``, else ``#### N``, else "the answer is ...") and checks it against the gold answer with
math-verify (fractions vs decimals, thousands separators, currency, LaTeX forms, sets/intervals, simple
expressions). Gold comes from the column ``answer`` (GSM8K's "... #### 72" is cut at ``####``; MATH's
solutions are read through their last ``\\boxed{}``) or ``solution``. Gold that cannot be parsed gives
``None`` (with a warning), never a reward; a completion with no extractable answer scores 0.

Grading runs in warm worker processes of our own (``GradingPool``): math-verify's own timeouts are
wall-clock ``signal.alarm`` calls (wrong on a busy machine, unusable off the main thread) and a C-level
big-integer computation (``\\boxed{9^{9^{9^{9^9}}}}``) ignores them. Workers never import the caller's
program, start-up never counts against an answer, an answer is bounded by its worker's CPU time, and a
stuck or crashed answer costs one retry on a fresh worker before it scores 0 (counted, logged). A
grader that cannot start raises ``GraderStartError``: a batch of zeros is never returned for it.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from collections import deque

logger = logging.getLogger(__name__)

_HASHES = re.compile(r"####[ \t]*([^\n]+)")
MAX_ANSWER_CHARS = 1000  # a longer "final answer" is wrong without being parsed (no real one is this long)
_CONTRADICTIONS = re.compile(
    r"\\approx|\u2248|\\neq|\\pm|\\lor|(?<![A-Za-z])or(?![A-Za-z])|\\text\{\s*or\s*\}"
)
_DIGITS = None


def completion_text(completion) -> str:
    """A completion as text: a string, or the last message's content of a chat-format list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    raise TypeError(
        f"completion must be a string or a list of chat messages, got {type(completion).__name__}."
    )


def boxed_contents(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces, in order (one linear pass)."""
    starts, i = [], text.find("\\")
    while i >= 0:
        for macro in ("\\boxed{", "\\fbox{"):
            if text.startswith(macro, i):
                starts.append(i + len(macro) - 1)
        i = text.find("\\", i + 1)
    if not starts:
        return []
    closing, stack = {}, []
    for m in re.finditer(r"[{}]", text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            closing[stack.pop()] = m.start()
    return [text[j + 1 : closing[j]] for j in starts if j in closing]


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces."""
    boxed = boxed_contents(text)
    return boxed[-1] if boxed else None


def _last(pattern: re.Pattern, text: str, end: int | None = None) -> re.Match | None:
    """The last match of a literal, case-insensitive ``pattern`` in ``text[:end]``, found on the text itself
    (``text.lower()`` can change lengths: a dotted İ lowers to two characters and shifts every index)."""
    found = None
    for found in pattern.finditer(text, 0, len(text) if end is None else end):  # noqa: B007 - the last one
        pass
    return found


_OPEN_TAG, _CLOSE_TAG = re.compile("<answer>", re.I), re.compile("</answer>", re.I)
_ANSWER_IS = re.compile("answer is", re.I)


def last_answer_tag(text: str) -> str | None:
    """Content of the last ``<answer>...</answer>`` (case-insensitive; linear, unlike a lazy regex)."""
    end = _last(_CLOSE_TAG, text)
    start = _last(_OPEN_TAG, text, end.start()) if end else None
    return text[start.end() : end.start()] if start else None


def _said_answer(text: str) -> str | None:
    """What follows the last "answer is" on its line (linear, never a backtracking regex)."""
    found = _last(_ANSWER_IS, text)
    if found is None:
        return None
    at = found.start()
    line = text[at + len("answer is") :].split("\n", 1)[0].strip(" \t:")
    line = line.strip().rstrip(".").strip()
    if line.startswith("$") and line.endswith("$") and len(line) > 1:
        line = line[1:-1]
    return line.strip() or None


HEDGE = "\x1e"  # joins the different boxed values of one answer: every one of them must equal the gold


def _boxed_answer(boxed: list[str]) -> str:
    """One boxed value, or the different ones joined by ``HEDGE`` (in order, each once)."""
    distinct = list(dict.fromkeys(b.strip() for b in boxed))
    if len({_clean(b) for b in distinct}) == 1:
        return distinct[-1]
    return HEDGE.join(distinct)


def extract_answer(text: str) -> str | None:
    """The final answer string of a model's completion, or None when there is none.

    Several *different* boxed values (in the answer tag, or in the whole completion when it has no tag) are
    returned joined by ``HEDGE``: the answer is right only when every one of them equals the gold, so
    ``\boxed{15\frac{39}{40}} = \boxed{\frac{639}{40}}`` is right and a hedge (``\boxed{5} or \boxed{7}``)
    is wrong. A self-correction ("first \boxed{5}, that is wrong; correct is \boxed{7}") counts as a hedge:
    prose cannot be told from hedging reliably, and a policy rewarded for retracted boxes learns to box every
    candidate. Every step is linear in the length of the completion."""
    tag = last_answer_tag(text)
    if tag is not None:
        inner = tag.strip()
        boxed = boxed_contents(inner)
        return _boxed_answer(boxed) if boxed else inner
    boxed = boxed_contents(text)
    if boxed:
        return _boxed_answer(boxed)
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1].strip()
    return _said_answer(text)


def gold_answer(gold: str) -> str:
    """The answer part of a gold column: after GSM8K's ``####``, inside MATH's last ``\\boxed{}``."""
    gold = str(gold)
    if "####" in gold:
        return gold.split("####")[-1].strip()
    boxed = last_boxed(gold)
    return boxed if boxed is not None else gold.strip()


def _ascii_digits(text: str) -> str:
    """Full-width and other Unicode forms as ASCII (NFKC), and every Unicode decimal digit as 0-9."""
    global _DIGITS
    if text.isascii():
        return text
    if _DIGITS is None:
        _DIGITS = {
            cp: ord("0") + unicodedata.decimal(chr(cp))
            for cp in range(0x110000)
            if unicodedata.category(chr(cp)) == "Nd"
        }
    return unicodedata.normalize("NFKC", text).translate(_DIGITS)


_GROUPED = re.compile(r"(?<=\d)(?:,[ \t]*(?:\\[!,;: ][ \t]*)?|\\[!,;: ][ \t]*)(?=\d{3}(?!\d))")


def _clean(answer: str) -> str:
    answer = _ascii_digits(answer).strip().rstrip(".").strip()
    # digit groups: 1,000  1\,000  11,\! 111,\! 100  (LaTeX thin / negative spaces between groups of three)
    answer = _GROUPED.sub("", answer).replace("\\!", "")
    answer = answer.replace("\\$", "").replace("\\%", "").replace("%", "")
    return answer.strip().lstrip("$").rstrip("$").strip()


def _parse(answer: str):
    from math_verify import parse

    cleaned = _clean(answer)
    # No math-verify timeouts: they are wall-clock alarms that a busy machine trips on correct answers.
    # The pool bounds each answer by its worker's CPU time instead.
    parsed = parse(f"${cleaned}$", parsing_timeout=None) if cleaned else []
    return parsed or (parse(cleaned, parsing_timeout=None) if cleaned else [])


_INTEGER = re.compile(r"-?[0-9]+")


def _same_integer(a: str, b: str) -> bool:
    """Equal values of two integer strings of any length (no ``int()``: 4,300-digit limit, quadratic)."""
    sign_a, sign_b = a.startswith("-"), b.startswith("-")
    a, b = a.lstrip("-").lstrip("0") or "0", b.lstrip("-").lstrip("0") or "0"
    return a == b and (sign_a == sign_b or a == "0")


def integer_verdict(gold: str, prediction: str | None) -> float | None:
    """1.0 / 0.0 at once when the gold is a plain integer and the prediction is missing or a plain integer
    (after the same clean-up as ``grade``: "1,000" and "$18$" count); None when the symbolic check is needed.
    Exact: two integers are equal iff their values are (math-verify compares large ones as floats)."""
    g = _clean(gold_answer(gold))
    if not _INTEGER.fullmatch(g):
        return None
    if prediction is None:
        return 0.0
    parts = [_clean(p) for p in prediction.split(HEDGE)]
    if all(_INTEGER.fullmatch(p) for p in parts):
        return float(all(_same_integer(g, p) for p in parts))
    return 0.0 if unacceptable(prediction, gold) else None


def unacceptable(prediction: str, gold: str) -> bool:
    """Wrong without parsing: a hedge, or longer than any final answer (``MAX_ANSWER_CHARS``)."""
    return len(prediction) > MAX_ANSWER_CHARS or self_contradicting(prediction, gold)


def self_contradicting(prediction: str, gold: str) -> bool:
    """An answer that hedges (``\\approx``, "or", ``\\pm``, ``\\neq``) where the gold does not."""
    return bool(_CONTRADICTIONS.search(prediction)) and not _CONTRADICTIONS.search(gold_answer(gold))


_RATIONAL = re.compile(r"(-?)(?:(\d+)(?:\.(\d*))?|\.(\d+)|\\[dt]?frac\{(-?\d+)\}\{(\d+)\}|(\d+)/(\d+))")
_UNIT = re.compile(r"^(.*?\d)\s*(?:\\(?:text|mbox|mathrm)\{\s*([^{}]*?)\s*\}|([A-Za-z]{1,12}))\s*$", re.S)
_BASE = re.compile(r"^(.*?\d)\s*_\s*\{?\s*(\d+)\s*\}?$")


def _rational(text: str):
    """The exact value of a plain number (integer, decimal, a/b, \\frac{a}{b}) as a Fraction, else None."""
    from fractions import Fraction

    m = _RATIONAL.fullmatch(_clean(text).replace(" ", ""))
    if m is None:
        return None
    sign, whole, decimals, bare, num, den, a, b = m.groups()
    if num is not None:
        value = Fraction(int(num), int(den)) if int(den) else None
    elif a is not None:
        value = Fraction(int(a), int(b)) if int(b) else None
    else:
        value = Fraction(f"{whole or 0}.{decimals or bare or 0}")
    return None if value is None else (-value if sign else value)


_ARITHMETIC = re.compile(r"[\d\s+\-*/().]{1,200}")


def _side_value(text: str):
    """The exact value of one side of an equation: a plain number, or +, -, *, / of numbers (\\times,
    \\cdot, \\div included) evaluated on Fractions; None for anything else."""
    import ast
    from fractions import Fraction

    value = _rational(text)
    if value is not None:
        return value
    text = _clean(text).replace("\\times", "*").replace("\\cdot", "*").replace("\\div", "/")
    if not _ARITHMETIC.fullmatch(text):
        return None
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return None

    def value_of(node):
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            inner = value_of(node.operand)
            return -inner if isinstance(node.op, ast.USub) else inner
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
            left, right = value_of(node.left), value_of(node.right)
            if isinstance(node.op, ast.Div):
                return left / right if right else None
            return {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right}[type(node.op)]
        raise ValueError

    try:
        return value_of(tree)
    except (ValueError, TypeError, ZeroDivisionError):
        return None


def _decimal_places(text: str) -> int | None:
    m = _RATIONAL.fullmatch(_clean(text).replace(" ", ""))
    if m is None or (m.group(3) is None and m.group(4) is None):
        return None
    return len(m.group(3) or m.group(4) or "")


def _sides(text: str) -> list[str]:
    """``text`` split at every top-level ``=`` (not inside braces or brackets)."""
    sides, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{([":
            depth += 1
        elif ch in "})]":
            depth = max(0, depth - 1)
        elif ch == "=" and depth == 0 and text[i - 1 : i] not in ("<", ">", "!", "\\"):
            sides.append(text[start:i])
            start = i + 1
    return sides + [text[start:]]


def _one_verdict(gold_text: str, gold_parsed, prediction: str) -> float:
    """1.0 / 0.0 for one answer against the gold: units and bases must agree where both carry them, an
    equation chain counts only when its numeric sides agree (then its last side is the answer), two plain
    numbers compare exactly (a decimal gold with k decimals accepts a value that rounds to it)."""
    from math_verify import verify

    gold_unit, pred_unit = _UNIT.match(gold_text.strip()), _UNIT.match(prediction.strip())
    if gold_unit and pred_unit:
        g, p = (" ".join((u.group(2) or u.group(3)).split()).lower() for u in (gold_unit, pred_unit))
        if g != p:  # 72 m is not 72 cm
            return 0.0
    gold_base, pred_base = _BASE.match(gold_text.strip()), _BASE.match(prediction.strip())
    if gold_base and pred_base and gold_base.group(2) != pred_base.group(2):  # 52_9 is not 52_8
        return 0.0
    sides = _sides(prediction)
    if (
        len(sides) > 1 and len(_sides(gold_text)) == 1
    ):  # an equation as the gold (a plane, a line) is math-verify's
        values = {v for v in (_side_value(side) for side in sides) if v is not None}
        if len(values) > 1:  # 73 = 72
            return 0.0
        prediction = sides[-1]
    exact_gold, exact_pred = _rational(gold_text), _rational(prediction)
    if exact_gold is not None and exact_pred is not None:
        if exact_gold == exact_pred:
            return 1.0
        places = _decimal_places(gold_text)
        return float(places is not None and abs(exact_pred - exact_gold) * 10**places * 2 < 1)
    pred_parsed = _parse(prediction)
    if not pred_parsed:
        return 0.0
    return 1.0 if verify(gold_parsed, pred_parsed, timeout_seconds=None) else 0.0


def grade(gold: str, prediction: str | None) -> float | None:
    """1.0 / 0.0 for a prediction against gold; None when the gold cannot be parsed. A prediction of several
    boxed values (joined by ``HEDGE``) is right only when each of them is. Unbounded in time: call it through
    ``GradingPool`` (which kills a worker whose answer runs too long)."""
    gold_text = gold_answer(gold)
    gold_parsed = _parse(gold_text)
    if not gold_parsed:
        return None
    if prediction is None or unacceptable(prediction, gold):
        return 0.0
    return min(_one_verdict(gold_text, gold_parsed, p) for p in prediction.split(HEDGE))


class GraderStartError(RuntimeError):
    """The grading workers could not start: every answer would be unscorable, so nothing is scored."""


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), None where that cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class _Worker:
    """One grading process started from our own entry point (``rewards._grader``), with a line protocol."""

    def __init__(self, python: str, start_timeout_s: float):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen(
                [
                    python,
                    "-c",
                    f"import sys; sys.path.insert(0, {root!r}); from rewards._grader import main; main()",
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.stderr,
                cwd=root,
            )
        except OSError as exc:
            raise GraderStartError(f"math grading: cannot start a worker with {python!r}: {exc}") from exc
        reply = self.read(start_timeout_s)
        if reply != {"ready": True}:
            tail = self.stderr_tail()
            self.kill()
            why = (
                "did not become ready"
                if self.proc.poll() is None
                else f"exited with status {self.proc.poll()}"
            )
            raise GraderStartError(
                f"math grading: a worker ({python} -c 'from rewards._grader import main') {why} within "
                f"{start_timeout_s:.0f} s; its stderr ends with: {tail!r}. Check that math-verify is "
                "installed for that interpreter (pip install math-verify)."
            )

    def send(self, gold: str, pred: str | None, mode: str = "grade") -> bool:
        try:
            self.proc.stdin.write((json.dumps({"gold": gold, "pred": pred, "mode": mode}) + "\n").encode())
            self.proc.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def read(self, timeout_s: float) -> dict | None:
        """The next reply, or None when the worker died or said nothing within ``timeout_s``."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else b""
        try:
            return json.loads(line) if line else None
        except json.JSONDecodeError:
            return None

    def cpu_s(self) -> float | None:
        return _cpu_seconds(self.proc.pid)

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-600:].decode(errors="replace").strip()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()
        self.stderr.close()


class GradingPool:
    """Warm grading workers; each answer is bounded by its worker's CPU time, never by start-up or load.

    * Workers start once (on first use) from our own entry point and stay up between calls; their
      start-up never counts against an answer. A worker that cannot start raises ``GraderStartError``.
    * An answer may use ``cpu_timeout_s`` of its worker's CPU (a busy machine slows the wall clock, not
      the CPU count) or ``wall_timeout_s`` of wall time (a backstop for a worker that hangs without
      computing). Past either, only that worker is killed and replaced, and the answer is retried once
      on a fresh worker; a second failure scores it 0 and counts it in ``last_stats["timeouts"]``.
    * A worker that dies mid-answer (killed from outside, out of memory) costs the same: one retry.
    """

    def __init__(
        self,
        workers: int | None = None,
        cpu_timeout_s: float = 5.0,
        wall_timeout_s: float = 120.0,
        start_timeout_s: float = 300.0,
        python: str | None = None,
    ):
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)  # training processes sharing this node
        self.size = workers or max(1, min(4, (os.cpu_count() or 1) // local))
        self.cpu_timeout_s = cpu_timeout_s
        self.wall_timeout_s = wall_timeout_s
        self.start_timeout_s = start_timeout_s
        self.python = python or sys.executable
        if not self.python:
            raise GraderStartError("math grading: sys.executable is empty; pass GradingPool(python=...).")
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self.last_stats: dict[str, int] = {}

    def _ensure_started(self) -> None:
        if self._pid != os.getpid():  # a forked child must not share its parent's pipes
            self._workers, self._pid = [], os.getpid()
        while len(self._workers) < self.size:
            self._workers.append(_Worker(self.python, self.start_timeout_s))

    def close(self) -> None:
        with self._lock:
            for worker in self._workers:
                worker.kill()
            self._workers = []

    def grade_many(self, pairs: list[tuple[str, str | None]], mode: str = "grade") -> list[float | None]:
        """Scores (1.0 / 0.0 / None for unparseable gold) for (gold, prediction) pairs, in order. ``mode``
        "grade": this module's ``grade``; "math_verify": math-verify's own ``verify(parse(gold),
        parse(prediction))`` on the raw texts, as lm-eval's minerva_math scores them."""
        with self._lock:
            self._ensure_started()
            return self._run([(g, p, mode) for g, p in pairs])

    def _run(self, pairs: list[tuple[str, str | None, str]]) -> list[float | None]:
        todo = deque(range(len(pairs)))
        failures = [0] * len(pairs)
        results: list[float | None] = [None] * len(pairs)
        stats = {"retries": 0, "timeouts": 0, "errors": 0}
        busy: dict[int, tuple[int, float, float | None]] = {}  # worker slot -> (item, wall start, cpu start)

        def fail(slot: int, item: int) -> None:  # kill only this worker, replace it, retry the item once
            self._workers[slot].kill()
            self._workers[slot] = _Worker(self.python, self.start_timeout_s)
            failures[item] += 1
            if failures[item] < 2:
                stats["retries"] += 1
                todo.appendleft(item)
            else:
                stats["timeouts"] += 1
                results[item] = 0.0
                logger.warning(
                    "math grading: answer %r timed out or crashed its worker twice; it scores 0.",
                    str(pairs[item][1])[:80],
                )

        while todo or busy:
            for slot in range(len(self._workers)):
                if slot not in busy and todo:
                    item = todo.popleft()
                    if self._workers[slot].send(*pairs[item]):
                        busy[slot] = (item, time.monotonic(), self._workers[slot].cpu_s())
                    else:
                        fail(slot, item)
            readable, _, _ = select.select([self._workers[s].proc.stdout for s in busy], [], [], 0.05)
            for slot in list(busy):
                item, wall0, cpu0 = busy[slot]
                worker = self._workers[slot]
                if worker.proc.stdout in readable:
                    del busy[slot]
                    reply = worker.read(0)
                    if reply is None or "score" not in reply and "error" not in reply:
                        fail(slot, item)  # died mid-answer
                    elif "error" in reply:
                        stats["errors"] += 1
                        results[item] = 0.0
                        logger.warning(
                            "math grading: answer %r raised %s; it scores 0.",
                            str(pairs[item][1])[:80],
                            reply["error"],
                        )
                    else:
                        results[item] = reply["score"]
                    continue
                cpu = worker.cpu_s()
                over_cpu = cpu is not None and cpu0 is not None and cpu - cpu0 > self.cpu_timeout_s
                if over_cpu or time.monotonic() - wall0 > self.wall_timeout_s:
                    del busy[slot]
                    fail(slot, item)
        self.last_stats = stats
        return results


def raw_math_verify(gold: str, prediction: str | None) -> float:
    """math-verify's ``verify(parse(gold), parse(prediction))`` with its defaults (no timeouts: the pool
    bounds the CPU), as lm-eval's minerva_math scores a whole response."""
    from math_verify import parse, verify

    if prediction is None:
        return 0.0
    return float(
        verify(
            parse(gold, parsing_timeout=None), parse(prediction, parsing_timeout=None), timeout_seconds=None
        )
    )


_POOL: GradingPool | None = None
_WARNED_GOLDS: set[str] = set()


def _pool() -> GradingPool:
    global _POOL
    if _POOL is None:
        _POOL = GradingPool()
        atexit.register(_POOL.close)
    return _POOL


def warm_up() -> None:
    """Start the grading workers now (the trainer calls this at start-up, before the first rollout)."""
    pool = _pool()
    with pool._lock:
        pool._ensure_started()


def math_accuracy(prompts, completions, answer=None, solution=None, **_columns) -> list[float | None]:
    """1.0 when the completion's final answer equals the gold (column ``answer`` or ``solution``).

    After each call ``math_accuracy.last_metrics`` holds the call's counters (``timeouts``, ``retries``,
    ``errors``, ``unparseable_golds``); the trainer logs them as ``rewards/math_accuracy/<counter>``.
    """
    gold = answer if answer is not None else solution
    if gold is None:
        raise KeyError("math_accuracy needs a gold column named 'answer' or 'solution' in the dataset.")
    start = time.monotonic()
    preds = [extract_answer(completion_text(c)) for c in completions]
    scores = [integer_verdict(str(g), p) for g, p in zip(gold, preds)]
    symbolic = [i for i, s in enumerate(scores) if s is None]  # the rest need math-verify, in the pool
    stats = {"retries": 0, "timeouts": 0, "errors": 0}
    if symbolic:
        pool = _pool()
        for i, score in zip(symbolic, pool.grade_many([(str(gold[i]), preds[i]) for i in symbolic])):
            scores[i] = score
        stats = dict(pool.last_stats)
    unparseable = {str(g) for g, s in zip(gold, scores) if s is None}
    for g in sorted(unparseable - _WARNED_GOLDS):
        logger.warning(
            "math_accuracy: gold answer %r cannot be parsed; its samples get no reward (None).", g[:80]
        )
    _WARNED_GOLDS.update(unparseable)
    math_accuracy.last_metrics = {
        **stats,
        "unparseable_golds": sum(s is None for s in scores),
        "integer_shortcuts": len(scores) - len(symbolic),
    }
    logger.debug("math_accuracy graded %d in %.2fs", len(scores), time.monotonic() - start)
    return scores


math_accuracy.warm_up = warm_up


math_accuracy.gold_columns = (("answer", "solution"),)  # one of them (read by the trainer's column check)
