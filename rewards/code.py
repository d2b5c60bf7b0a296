"""Code-execution reward: run the completion's code against the row's tests in the sandbox.

Column ``tests`` may hold
* a list of assert statements (MBPP style): the score is the fraction that pass (column
  ``test_setup_code``, when present, runs before each);
* a test program defining ``check(candidate)`` (HumanEval style) with column ``entry_point``: 1 or 0;
* a list of ``{"input": ..., "output": ...}`` stdin/stdout cases: the fraction whose stripped stdout
  matches.
The code is the last fenced code block of the completion (```python or bare ```), else the raw text.
A program that does not compile scores 0 without being run; tests that do not compile are the row's
error (ValueError naming the test). The candidate runs in the sandbox and the tests run in a judge
process outside it (``rewards.judge``): test source, expected values and expected stdout never enter
the sandbox, and only plain data crosses between them.
"""

from __future__ import annotations

import ast
import json
import logging
import re
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from rewards import pyast
from rewards.math import completion_text
from rewards.sandbox import default_sandbox

logger = logging.getLogger(__name__)

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.S)


def extract_code(text: str) -> str:
    """The last fenced code block (python preferred over other languages), else the whole text."""
    blocks = _FENCE.findall(text)
    python = [body for lang, body in blocks if lang.lower() in ("python", "py", "python3", "")]
    if python:
        return python[-1]
    return blocks[-1][1] if blocks else text


def _compile_error(source: str, name: str) -> Exception | None:
    """The error compiling ``source`` raises, or None ("invalid escape sequence" and the like are warnings, the
    program's business). Any error counts, not only SyntaxError / ValueError: deeply nested source makes the
    compiler raise RecursionError or MemoryError, which must cost that program its score, not the batch."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compile(source, name, "exec")
    except Exception as exc:  # noqa: BLE001 - whatever the compiler raises, the program does not compile
        return exc
    return None


_WARNED_HELPERS: set[tuple[str, ...]] = set()


def _warn_missing_helpers(test: str, entry_point: str, context: str | None) -> None:
    """A check() program that calls a function it does not define, that is no builtin, stdlib module or the
    entry point, and that no ``test_helpers`` code defines (HumanEval/38 calls the prompt's
    ``encode_cyclic``): one warning naming it, since every program would score 0 on that row."""
    import ast
    import builtins
    import sys

    from rewards.judge import _bound_by

    nodes = list(ast.walk(pyast.parse(test)))
    called = {n.func.id for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    bound = {n.name for n in nodes if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    bound |= {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {
        n.arg for n in nodes if isinstance(n, ast.arg)
    }  # check(candidate) and nested helpers' parameters
    bound |= {
        (n.asname or n.name).split(".")[0] for n in nodes if isinstance(n, ast.alias)
    }  # imports anywhere
    known = bound | _bound_by(context or "") | set(sys.stdlib_module_names) | {entry_point}
    missing = tuple(sorted(n for n in called - known if not hasattr(builtins, n)))
    if missing and missing not in _WARNED_HELPERS:
        _WARNED_HELPERS.add(missing)
        logger.warning(
            "code_execution: the row's check() program calls %s, which neither it nor a test_helpers column "
            "defines; every program scores 0 on such rows until the dataset carries the prompt's helpers in "
            "test_helpers (rewards.code.prompt_context builds them from a HumanEval prompt).",
            ", ".join(missing),
        )


def prompt_context(prompt: str, entry_point: str) -> str:
    """The prompt's top-level code except ``entry_point``'s own definition: imports, helper functions,
    constants. A prompt that does not parse contributes its import lines."""
    try:
        tree = pyast.parse(prompt)  # (threads score in parallel: one parse at a time)
    except SyntaxError:
        return "\n".join(line for line in prompt.splitlines() if re.match(r"(from\s+\S+\s+)?import\s", line))
    lines = prompt.splitlines(keepends=True)
    keep = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == entry_point:
            continue
        first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        keep.append("".join(lines[first - 1 : node.end_lineno]).rstrip())
    return "\n".join(keep)


def check_row_tests(tests, entry_point=None) -> None:
    """A dataset row's code tests before anything is scored (one line saying what is wrong): asserts (a list
    of strings or its JSON), a ``check(candidate)`` program (a string, with ``entry_point``) or stdin/stdout
    cases (a list of {input, output}), non-empty and compiling."""
    if isinstance(tests, str) and tests.strip().startswith("["):
        try:
            tests = json.loads(tests)
        except json.JSONDecodeError as exc:
            raise ValueError(f"code tests: the JSON list does not parse ({exc.msg}).") from None
    if isinstance(tests, str):
        if not entry_point:
            raise ValueError("code tests: a check(candidate) program needs the column 'entry_point'.")
        _check_tests(tests, "check")
        return
    if not isinstance(tests, (list, tuple)) or not tests:
        raise ValueError(
            f"code tests: expected asserts (a list of strings), a check(candidate) program (a string) or "
            f"stdin/stdout cases (a list of {{input, output}}); got {type(tests).__name__} {str(tests)[:60]!r}."
        )
    if all(isinstance(t, dict) and {"input", "output"} <= set(t) for t in tests):
        return
    if not all(isinstance(t, str) for t in tests):
        raise ValueError("code tests: a list must hold assert strings or {input, output} cases, not a mix.")
    _check_tests(tests, "asserts")


def _check_tests(tests, form: str) -> None:
    """A row whose tests do not compile is the dataset's error, not the candidate's: say which test."""
    for index, test in enumerate(tests if form == "asserts" else [tests]):
        if (exc := _compile_error(test, f"<test {index}>")) is not None:
            raise ValueError(
                f"code_execution: the row's test {index} does not compile ({exc}); fix the dataset's tests."
            )


def _judged(sandbox, job: dict, n: int, runs: int = 1) -> list[bool]:
    """Passed flag per test from the judge (``rewards.judge``); a judge that does not answer fails all n."""
    reply = (sandbox or default_sandbox()).judge(job, runs)
    if "error" in reply:
        logger.warning("code_execution: %s; the program scores 0.", reply["error"])
        return [False] * n
    return list(reply["passed"])


def run_tests(code, form, tests, entry_point=None, sandbox=None, setup=None, context=None) -> list[bool]:
    """Passed flag per test of ``code`` (asserts / check forms), judged outside the sandbox."""
    job = {
        "form": form,
        "code": code,
        "tests": tests,
        "entry_point": entry_point,
        "setup": setup,
        "context": context,
    }
    return _judged(sandbox, job, len(tests) if form == "asserts" else 1)


def score_program(
    code: str,
    tests,
    entry_point: str | None = None,
    sandbox=None,
    setup: str | None = None,
    context: str | None = None,
) -> float:
    """Fraction of ``tests`` that ``code`` passes (see the module docstring for the test formats).

    ``setup`` is dataset code run in the sandbox after the candidate (MBPP's ``test_setup_code``: the
    objects, built from the candidate's classes, that the tests hand to it); ``context`` is dataset code run in the judge before each
    test (HumanEval's prompt helpers that the tests call, such as ``encode_cyclic``).
    """
    if isinstance(tests, str) and tests.strip().startswith("["):
        tests = json.loads(tests)
    if isinstance(tests, str):  # HumanEval-style check(candidate) program
        if not entry_point:
            raise KeyError(
                "code_execution: a test program needs the column 'entry_point' (the function to check)."
            )
        _check_tests(tests, "check")
        _warn_missing_helpers(tests, entry_point, context)
        if _compile_error(code, "<completion>"):
            return 0.0
        return float(run_tests(code, "check", tests, entry_point, sandbox, setup, context)[0])
    tests = list(tests)
    if not tests:
        raise ValueError("code_execution: the row's 'tests' list is empty; nothing to score against.")
    if isinstance(tests[0], dict):  # stdin/stdout cases: the program must finish and print the output
        if _compile_error(code, "<completion>"):
            return 0.0
        cases = [(str(case["input"]), str(case["output"])) for case in tests]
        return sum(
            _judged(sandbox, {"form": "stdio", "code": code, "cases": cases}, len(cases), len(cases))
        ) / len(tests)
    tests = [str(t) for t in tests]
    _check_tests(tests, "asserts")
    if _compile_error(code, "<completion>"):
        return 0.0
    return sum(run_tests(code, "asserts", tests, None, sandbox, setup, context)) / len(tests)


def code_execution(
    prompts, completions, tests=None, entry_point=None, test_setup_code=None, test_helpers=None, **_columns
):
    """Fraction of the row's tests passed by the completion's code (column ``tests``; optional columns
    ``entry_point`` for a check() program, ``test_setup_code`` run in the sandbox after the candidate and
    ``test_helpers``, trusted code the tests call, run in the judge: HumanEval's prompt helpers). After each
    call ``code_execution.last_metrics`` counts why programs scored 0 (see ``_reasons``)."""
    if tests is None:
        raise KeyError(
            "code_execution needs a column named 'tests' (asserts, a check() program, or io cases)."
        )
    n = len(completions)
    entry_points = entry_point if entry_point is not None else [None] * n
    setups = test_setup_code if test_setup_code is not None else [None] * n
    helpers = test_helpers if test_helpers is not None else [None] * n
    texts = [completion_text(c) for c in completions]
    codes = [extract_code(t) for t in texts]
    sandbox = default_sandbox()

    def score(row, code, test, entry, setup, context):
        try:
            return score_program(
                code, test, entry, sandbox=sandbox, setup=setup or None, context=context or None
            )
        except (KeyError, ValueError) as exc:  # the dataset's error: say which row
            raise type(exc)(f"row {row} of the batch: {exc.args[0] if exc.args else exc}") from None

    # A batch of samples repeats programs (GRPO's groups, a confident policy): each distinct program and row is
    # judged once and its score given to every copy (a program that draws random numbers gets one draw).
    jobs = list(zip(range(n), codes, tests, entry_points, setups, helpers))
    keys = [json.dumps(job[1:], sort_keys=True, default=str) for job in jobs]
    first: dict[str, int] = {}
    for row, key in enumerate(keys):
        first.setdefault(key, row)
    distinct = list(first.values())
    with ThreadPoolExecutor(sandbox.workers) as pool:  # each program still waits for a free sandbox slot
        judged = dict(zip(distinct, pool.map(score, *zip(*(jobs[row] for row in distinct)))))
    copies = Counter(keys)
    code_execution.last_metrics = _reasons(texts, [(jobs[r], copies[keys[r]]) for r in distinct])
    return [judged[first[key]] for key in keys]


def _reasons(texts: list[str], distinct: list[tuple[tuple, int]]) -> dict[str, float]:
    """The call's counters, logged as ``rewards/code_execution/<key>``: completions without a fenced block (their
    raw text was run), programs that do not compile (0 without a run), check() rows whose program does not
    define the entry point (0), and the distinct programs the sandbox ran. ``distinct``: (job, its copies), each
    distinct job read once."""
    from rewards.judge import _bound_by

    broken = missing = run = 0
    for (_, code, test, entry, _, _), count in distinct:
        if _compile_error(code, "<completion>") is not None:
            broken += count
            continue
        run += 1
        check_form = isinstance(test, str) and not test.lstrip().startswith("[")
        missing += count * bool(entry and check_form and entry not in _bound_by(code))
    return {
        "no_code_block": float(sum(_FENCE.search(t) is None for t in texts)),
        "compile_errors": float(broken),
        "entry_point_missing": float(missing),
        "programs_run": float(run),
    }


code_execution.gold_columns = (("tests",),)  # read by the trainer's column check
