"""Code-execution reward: run the completion's code against the row's tests in the sandbox.

Column ``tests`` may hold
* a list of assert statements (MBPP style): the score is the fraction that pass;
* a test program defining ``check(candidate)`` (HumanEval style) with column ``entry_point``: 1 or 0;
* a list of ``{"input": ..., "output": ...}`` stdin/stdout cases: the fraction whose stripped stdout
  matches.
The code is the last fenced code block of the completion (```python or bare ```), else the raw text.
A program that does not compile scores 0 without being run.
"""

from __future__ import annotations

import json
import re
import secrets
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
        compile(code, "<completion>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def _assert_harness(code: str, asserts: list[str], nonce: str) -> str:
    """Runs the candidate, then each assert in isolation, printing one tagged result line per assert."""
    return (
        f"import sys as _s\n_src = {code!r}\n_ns = {{'__name__': '__main__'}}\n"
        "try:\n    exec(compile(_src, 'solution.py', 'exec'), _ns)\n"
        "except BaseException as _e:\n    print(repr(_e), file=_s.stderr)\n"
        f"for _i, _t in enumerate({asserts!r}):\n"
        "    try:\n        exec(_t, _ns)\n        _ok = 1\n"
        "    except BaseException:\n        _ok = 0\n"
        f"    print({nonce!r}, _i, _ok, flush=True)\n"
    )


def _parse_results(stdout: str, nonce: str, n: int) -> float:
    passed = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == nonce and parts[1].isdigit():
            passed[int(parts[1])] = parts[2] == "1"
    return sum(passed.get(i, False) for i in range(n)) / n


def score_program(code: str, tests, entry_point: str | None = None, sandbox=None) -> float:
    """Fraction of ``tests`` that ``code`` passes (see the module docstring for the test formats)."""
    sandbox = sandbox or default_sandbox()
    if isinstance(tests, str) and tests.strip().startswith("["):
        tests = json.loads(tests)
    if not _compiles(code):
        return 0.0
    if isinstance(tests, str):  # HumanEval-style check(candidate) program
        if not entry_point:
            raise KeyError(
                "code_execution: a test program needs the column 'entry_point' (the function to check)."
            )
        program = f"{code}\n\n{tests}\n\ncheck({entry_point})\n"
        return 1.0 if sandbox.run(program).status == "ok" else 0.0
    tests = list(tests)
    if not tests:
        raise ValueError("code_execution: the row's 'tests' list is empty; nothing to score against.")
    if isinstance(tests[0], dict):  # stdin/stdout cases
        results = sandbox.run_many([(code, str(case["input"])) for case in tests])
        ok = [
            r.status == "ok" and r.stdout.strip() == str(case["output"]).strip()
            for r, case in zip(results, tests)
        ]
        return sum(ok) / len(tests)
    nonce = secrets.token_hex(8)
    result = sandbox.run(_assert_harness(code, [str(t) for t in tests], nonce))
    return _parse_results(result.stdout, nonce, len(tests))


def code_execution(prompts, completions, tests=None, entry_point=None, **_columns) -> list[float | None]:
    """Fraction of the row's tests passed by the completion's code (column ``tests``)."""
    if tests is None:
        raise KeyError(
            "code_execution needs a column named 'tests' (asserts, a check() program, or io cases)."
        )
    entry_points = entry_point if entry_point is not None else [None] * len(completions)
    codes = [extract_code(completion_text(c)) for c in completions]
    sandbox = default_sandbox()
    with ThreadPoolExecutor(sandbox.workers) as pool:  # each program still waits for a free sandbox slot
        return list(
            pool.map(lambda job: score_program(*job, sandbox=sandbox), zip(codes, tests, entry_points))
        )
