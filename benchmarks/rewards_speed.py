"""Reward throughput: sandboxed benign programs per second and the latency of a batch of 64 math rewards.

python benchmarks/rewards_speed.py [--programs 128 --workers 2]
"""

from __future__ import annotations

import argparse
import time

from rewards.math import math_accuracy
from rewards.sandbox import Sandbox


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--programs", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    box = Sandbox(workers=args.workers)
    program = "def f(n):\n    return sum(i * i for i in range(n))\nassert f(100) == 328350\nprint('ok')\n"
    box.run_many([(program, "")] * args.workers)  # warm-up
    start = time.perf_counter()
    results = box.run_many([(program, "")] * args.programs)
    secs = time.perf_counter() - start
    ok = sum(r.status == "ok" for r in results)
    print(
        f"sandbox backend {box.backend}, {args.workers} slots: {args.programs / secs:.1f} benign programs/s ({ok}/{args.programs} ok)"
    )
    golds = [str(i * 7) for i in range(64)]
    completions = [
        f"Reasoning...\n#### {int(g):,}" if i % 2 else f"so the answer is \\boxed{{{g}}}"
        for i, g in enumerate(golds)
    ]
    math_accuracy(None, completions[:2], answer=golds[:2])  # start the grading workers
    start = time.perf_counter()
    scores = math_accuracy(None, completions, answer=golds)
    print(
        f"math_accuracy: batch of 64 in {1000 * (time.perf_counter() - start):.0f} ms (mean score {sum(scores) / 64:.2f})"
    )


if __name__ == "__main__":
    main()
