"""Reward throughput on real benchmark data, idle and with the CPU saturated by other processes.

Code: every HumanEval canonical solution and every MBPP reference solution through ``code_execution``
(programs/s, each program in the sandbox, its tests in the judge outside it). Math: every GSM8K test gold
and every MATH-500 gold written as a model would (``#### N`` / ``\\boxed{}``) through ``math_accuracy``
(answers/s, warm workers). ``--busy N`` starts N spinning processes first: scores must not change.

python benchmarks/rewards_speed.py [--busy 4]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from align.eval.tasks import prompt_context
from rewards import benchdata
from rewards.code import code_execution
from rewards.math import last_boxed, math_accuracy
from rewards.sandbox import default_sandbox


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=0, help="spinning processes to start before measuring")
    args = ap.parse_args()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        he, mbpp = benchdata.load("humaneval"), benchdata.load("mbpp")
        programs = [r["prompt"] + r["canonical_solution"] for r in he] + [r["code"] for r in mbpp]
        tests = [r["test"] for r in he] + [r["test_list"] for r in mbpp]
        entry = [r["entry_point"] for r in he] + [None] * len(mbpp)
        setup = [None] * len(he) + [r["test_setup_code"] or None for r in mbpp]
        helpers = [prompt_context(r["prompt"], r["entry_point"]) for r in he] + [None] * len(mbpp)
        scores, secs = _timed(code_execution, None, programs, tests=tests, entry_point=entry,
                              test_setup_code=setup, test_helpers=helpers)  # fmt: skip
        box = default_sandbox()
        print(f"code_execution ({box.backend}, {box.workers} slots, busy={args.busy}): {len(programs)} reference "
              f"programs in {secs:.1f} s = {len(programs) / secs:.1f} programs/s; {sum(s == 1.0 for s in scores)} "
              "scored 1.0")  # fmt: skip

        gsm, m5 = benchdata.load("gsm8k"), benchdata.load("math500")
        completions = [f"Reasoning...\n#### {r['answer'].split('####')[-1].strip()}" for r in gsm]
        completions += [f"So the answer is $\\boxed{{{last_boxed(r['solution'])}}}$." for r in m5]
        golds = [r["answer"] for r in gsm] + [r["solution"] for r in m5]
        math_accuracy(None, completions[:4], answer=golds[:4])  # start the workers (not counted)
        scores, secs = _timed(math_accuracy, None, completions, answer=golds)
        print(f"math_accuracy (busy={args.busy}): {len(golds)} gold answers in {secs:.1f} s = "
              f"{len(golds) / secs:.0f} answers/s; {sum(s == 1.0 for s in scores)} scored 1.0; "
              f"counters {math_accuracy.last_metrics}")  # fmt: skip
    finally:
        for proc in spinners:
            proc.kill()


if __name__ == "__main__":
    main()
