"""Code-execution reward: run the completion's code against the row's tests in the sandbox.

Column ``tests`` may hold
* a list of assert statements (MBPP style): the score is the fraction that pass (column
  ``test_setup_code``, when present, runs before each);
* a test program defining ``check(candidate)`` (HumanEval style) with column ``entry_point``: 1 or 0;
* a list of ``{"input": ..., "output": ...}`` stdin/stdout cases: the fraction whose stripped stdout
  matches.
The code is the last fenced code block of the completion (```python or bare ```), else the raw text.
A program that does not compile scores 0 without being run. Every form runs under ``rewards.harness``,
which signs each test it sees finish: the exit status proves nothing (see that module for the reward
hacks it stops and the ones it does not). Expected stdout never enters the sandbox.
"""

from __future__ import annotations

import functools
import json
import marshal
import os
import re
import secrets
import warnings
from concurrent.futures import ThreadPoolExecutor

from rewards.math import completion_text
from rewards.sandbox import default_sandbox

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)


def extract_code(text: str) -> str:
    """The last fenced code block (python preferred over other languages), else the whole text."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3", "")]
    if python:
        return python[-1]
    return blocks[-1][1] if blocks else text


def _compiles(code: str) -> bool:
    try:
        with warnings.catch_warnings():  # "invalid escape sequence" and the like are the program's business
            warnings.simplefilter("ignore")
            compile(code, "<completion>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


_HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness.py")


@functools.cache
def _harness_source() -> str:
    with open(_HARNESS) as f:
        return f.read()


def _signed(result, nonce: str, n: int) -> list[bool]:
    """Per test: did the harness sign it as finished and passed with this run's nonce?"""
    seen = set()
    for line in result.signal.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == nonce and parts[1].isdigit() and parts[2] == "pass":
            seen.add(int(parts[1]))
    return [i in seen for i in range(n)]


def run_tests(code: str, form: str, tests, entry_point=None, stdins=("",), sandbox=None, setup=None):
    """Run ``code`` under ``rewards.harness`` in the sandbox, once per stdin (in parallel).

    Returns [(ExecResult, passed flag per test)] per stdin; ``form`` is asserts / check / stdio.
    """
    sandbox = sandbox or default_sandbox()
    nonce = secrets.token_hex(16)
    job = {"form": form, "code": code, "tests": tests, "entry_point": entry_point, "setup": setup}
    files = {"job.marshal": marshal.dumps(job, 4), ".nonce": nonce}
    results = sandbox.run_many([(_harness_source(), stdin, files) for stdin in stdins])
    n = len(tests) if form == "asserts" else 1
    return [(result, _signed(result, nonce, n)) for result in results]


def score_program(
    code: str, tests, entry_point: str | None = None, sandbox=None, setup: str | None = None
) -> float:
    """Fraction of ``tests`` that ``code`` passes (see the module docstring for the test formats).

    ``setup`` is dataset code run before each assert (MBPP's ``test_setup_code``).
    A test counts only when the harness signs it (``rewards.harness``): exiting early, crashing, printing
    success-looking text or returning an "always equal" object passes nothing.
    """
    if isinstance(tests, str) and tests.strip().startswith("["):
        tests = json.loads(tests)
    if not _compiles(code):
        return 0.0
    if isinstance(tests, str):  # HumanEval-style check(candidate) program
        if not entry_point:
            raise KeyError(
                "code_execution: a test program needs the column 'entry_point' (the function to check)."
            )
        [(_, passed)] = run_tests(code, "check", tests, entry_point, sandbox=sandbox)
        return float(passed[0])
    tests = list(tests)
    if not tests:
        raise ValueError("code_execution: the row's 'tests' list is empty; nothing to score against.")
    if isinstance(tests[0], dict):  # stdin/stdout cases: the program must finish and print the output
        runs = run_tests(code, "stdio", [], stdins=[str(case["input"]) for case in tests], sandbox=sandbox)
        ok = [
            signed[0] and result.stdout.strip() == str(case["output"]).strip()
            for (result, signed), case in zip(runs, tests)
        ]
        return sum(ok) / len(tests)
    [(_, passed)] = run_tests(code, "asserts", [str(t) for t in tests], sandbox=sandbox, setup=setup)
    return sum(passed) / len(tests)


def code_execution(prompts, completions, tests=None, entry_point=None, test_setup_code=None, **_columns):
    """Fraction of the row's tests passed by the completion's code (column ``tests``; optional columns
    ``entry_point`` for a check() program and ``test_setup_code`` run before each assert)."""
    if tests is None:
        raise KeyError(
            "code_execution needs a column named 'tests' (asserts, a check() program, or io cases)."
        )
    n = len(completions)
    entry_points = entry_point if entry_point is not None else [None] * n
    setups = test_setup_code if test_setup_code is not None else [None] * n
    codes = [extract_code(completion_text(c)) for c in completions]
    sandbox = default_sandbox()

    def score(code, test, entry, setup):
        return score_program(code, test, entry, sandbox=sandbox, setup=setup)

    with ThreadPoolExecutor(sandbox.workers) as pool:  # each program still waits for a free sandbox slot
        return list(pool.map(score, codes, tests, entry_points, setups))
