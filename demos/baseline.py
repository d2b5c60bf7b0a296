"""``make demo-baseline``: the tiny diffusion model before and after GRPO beside the tiny AR baseline served
by a real vLLM server, on the same held-out task, in one report.

    held-out accuracy of recipes/tiny/model, GRPO, accuracy again (the demo's own commands, demos.grpo)
    -> vLLM's OpenAI server on recipes/tiny-ar/model (make vllm-env's environment, demos.vllm_server)
    -> align eval --endpoint on the same 500 questions with the same protocol -> server stopped
    -> align report before / after / AR baseline (one bar chart) -> table

Every step is a public command; this file only chains them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from align.cli import main as align
from demos.grpo import TEST
from demos.grpo import main as grpo_demo
from demos.vllm_server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demos.baseline")
    parser.add_argument("--output", default="runs/demo-baseline")
    parser.add_argument("--ar-model", default="recipes/tiny-ar/model")
    args = parser.parse_args(argv)
    if grpo_demo(["--output", args.output]) != 0:
        raise SystemExit("the GRPO demo failed")
    os.makedirs(args.output, exist_ok=True)
    ar = os.path.join(args.output, "ar")
    with serve(args.ar_model, "tiny-ar", os.path.join(args.output, "vllm.log")) as (url, startup_s):
        start = time.monotonic()
        status = align(["eval", "--endpoint", url + "/v1", "--served-model", "tiny-ar", "--tasks", TEST,
                        "--protocol", "tiny", "--output", ar, "--concurrency", "8"])  # fmt: skip
        eval_s = time.monotonic() - start
    if status != 0:
        raise SystemExit("align eval against the vLLM server failed")
    report = os.path.join(args.output, "report-baseline")
    runs = {name: os.path.join(args.output, name) for name in ("before", "after")}
    align(["report", f"diffusion-SFT={runs['before']}", f"diffusion-GRPO={runs['after']}", f"AR-vLLM={ar}",
           "--output", report])  # fmt: skip
    scores = {}
    for name, folder in (*runs.items(), ("ar", ar)):
        with open(os.path.join(folder, "results.json")) as f:
            scores[name] = json.load(f)["tasks"]["tiny"]["accuracy"]
    print("\n| model | held-out accuracy |\n|---|---|")
    print(f"| recipes/tiny/model (diffusion, SFT) | {100 * scores['before']:.1f}% |")
    print(f"| after GRPO | {100 * scores['after']:.1f}% |")
    print(f"| {args.ar_model} (AR, vLLM) | {100 * scores['ar']:.1f}% |")
    print(f"vLLM start-up {startup_s:.0f} s; 500 questions in {eval_s:.1f} s ({500 / eval_s:.0f} req/s); "
          f"report: {report}/report.md")  # fmt: skip
    print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
