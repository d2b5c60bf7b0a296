"""Answer extraction and scoring of iLLaDA's evaluation tasks, as its authors' lm-eval tasks do them
(``gsm8k_cot_reasoning``, ``humaneval_reasoning``, ``mbpp_reasoning`` of their lm-eval fork; MATH is lm-eval
0.4.10's ``minerva_math``): the ``illada`` protocol's ``scoring``.

* GSM8K: the text after the last ``</think>``; the last ``#### <number>``; the number normalised (``$`` and
  commas removed, a trailing point dropped, integral values without decimals); exact match with the gold's
  ``#### `` part after lm-eval's ``regexes_to_ignore`` and case folding.
* MATH: math-verify's ``verify(parse(solution), parse(response))`` on the whole response, as minerva_math's
  ``math_verify`` metric (its ``exact_match`` needs "Final Answer: The final answer is", which a zero-shot
  chat model rarely writes, and is not computed here).
* HumanEval: the text after the last ``</think>``; the last fenced block (```python, ```py or bare; an
  unclosed fence runs to the end), else the text from ``def <entry_point>(`` with the imports before it,
  else the whole text; run after the prompt (the prompt's helpers and imports first).
* MBPP: the text after the last ``</think>``; the last ``[BEGIN] ... [DONE]`` (an unclosed one runs to the
  end), else the fallbacks of their ``_extract_reasoning_code``; run with the row's asserts.
* Any other task (a custom JSONL task): the project's own scoring.

Not reproduced: their ``sanitize`` (the longest parsable window of the reply, then only the definitions the
entry point reaches); here the extracted code runs as written, so a reply whose extra top-level code fails
scores 0 where theirs might strip it. Their programs run under HF ``code_eval``; ours in the project's sandbox.
"""

from __future__ import annotations

import decimal
import re

_THINK_END = "</think>"
_FINAL_NUMBER = re.compile(r"####\s*(?P<answer>[-+]?\$?\d[\d,]*(?:\.\d+)?)")
_IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")  # gsm8k-cot.yaml's regexes_to_ignore, in order
_FENCED = re.compile(r"```(?:python|py)?\s*\n(?P<code>.*?)(?:```|$)", re.I | re.S)
_BEGIN_DONE = re.compile(r"\[BEGIN\]\s*(?P<code>.*?)(?:\[DONE\]|$)", re.I | re.S)
_ASSERTED = re.compile(r"\bassert\s+([A-Za-z_]\w*)\s*\(")
_CODE_START = re.compile(r"(?m)^(?:\s*(?:from\s+\S+\s+import\s+.*|import\s+.*|class\s+\w+\b|def\s+\w+\s*\())")


def after_thinking(text: str) -> str:
    return text.rsplit(_THINK_END, 1)[-1] if _THINK_END in text else text


def gsm8k_answer(text: str) -> str:
    """The final ``#### <number>`` after the thinking, normalised; ``[invalid]`` when there is none."""
    found = list(_FINAL_NUMBER.finditer(after_thinking(text)))
    if not found:
        return "[invalid]"
    raw = found[-1].group("answer").strip().replace("$", "").replace(",", "").rstrip(".")
    try:
        value = decimal.Decimal(raw)
    except decimal.InvalidOperation:
        return raw
    return str(int(value)) if value == value.to_integral_value() else format(value.normalize(), "f")


def gsm8k_exact_match(prediction: str, gold_answer: str) -> float:
    """lm-eval's exact_match with gsm8k-cot's settings (ignore_case, regexes_to_ignore) against the gold's
    ``answer.split('####')[-1].strip()``."""
    gold = gold_answer.split("####")[-1].strip()
    for pattern in _IGNORED:
        prediction, gold = re.sub(pattern, "", prediction), re.sub(pattern, "", gold)
    return float(prediction.lower() == gold.lower())


def _from_def(text: str, entry_point: str) -> str | None:
    start = re.search(
        rf"(?m)^(?:from\s+\S+\s+import\s+.*\n|import\s+.*\n|\s*)*def\s+{re.escape(entry_point)}\s*\(", text
    )
    return text[start.start() :] if start else None


def humaneval_code(text: str, entry_point: str) -> str:
    text = after_thinking(text)
    fenced = list(_FENCED.finditer(text))
    if fenced:
        return fenced[-1].group("code")
    found = _from_def(text, entry_point)
    return found if found is not None else text


def mbpp_entry_point(tests: list[str]) -> str | None:
    for test in tests:
        if m := _ASSERTED.search(test):
            return m.group(1)
    return None


def mbpp_code(text: str, entry_point: str | None) -> str:
    text = after_thinking(text)
    marked = list(_BEGIN_DONE.finditer(text))
    if marked:
        return marked[-1].group("code")
    fenced = list(_FENCED.finditer(text))
    defines = (
        (lambda code: re.search(rf"(?m)^def\s+{re.escape(entry_point)}\s*\(", code)) if entry_point else None
    )
    if "<think>" in text:
        if fenced and (defines is None or defines(fenced[-1].group("code"))):
            return fenced[-1].group("code")
        if defines is not None and (m := defines(text)):
            return text[m.start() :]
        return ""
    if fenced:
        return fenced[-1].group("code")
    start = _CODE_START.search(text)
    return text[start.start() :] if start else text


def score(task, rows: list[dict], completions: list[str]) -> tuple[list[float], list[str | None]]:
    """(scores, extracted answers or programs) of ``completions`` on ``task``'s rows, the authors' way."""
    if task.name == "gsm8k":
        answers = [gsm8k_answer(c) for c in completions]
        return [gsm8k_exact_match(a, str(r["answer"])) for a, r in zip(answers, rows)], answers
    if task.name == "math500":
        from rewards.math import _pool

        golds = [str(r.get("solution") or f"${r['answer']}$") for r in rows]  # minerva parses the solution
        scores = _pool().grade_many(list(zip(golds, completions)), mode="math_verify")
        return [float(s or 0.0) for s in scores], list(completions)
    if task.name in ("humaneval", "mbpp"):
        from concurrent.futures import ThreadPoolExecutor

        from align.eval.opencompass import runs_cleanly
        from rewards.code import prompt_context, score_program
        from rewards.sandbox import default_sandbox

        sandbox = default_sandbox()
        if task.name == "humaneval":
            programs = [
                f"{r['prompt']}\n{humaneval_code(c, r['entry_point'])}" for r, c in zip(rows, completions)
            ]
        else:
            programs = [mbpp_code(c, mbpp_entry_point(r["test_list"])) for r, c in zip(rows, completions)]

        def run(row: dict, program: str) -> float:
            if not runs_cleanly(program, sandbox):  # their code_eval runs program and tests as one
                return 0.0
            if task.name == "humaneval":
                context = prompt_context(row["prompt"], row["entry_point"])
                return score_program(
                    program, row["test"], row["entry_point"], sandbox=sandbox, context=context
                )
            return float(score_program(program, row["test_list"], sandbox=sandbox) == 1.0)

        with ThreadPoolExecutor(sandbox.workers) as pool:
            return list(pool.map(run, rows, programs)), programs
    return task.score(rows, completions)  # a task the authors do not evaluate: the project's own scoring
