"""``make demo-loops``: a tiny model that loops, and what RL does about it, on CPU.

The looping tiny model (``recipes/tiny-loops/model``: 3-digit addition whose hard traces sometimes repeat a
check until the budget, demos/tiny.py) is decoded as iLLaDA is (variable length: block by block until it
answers, 128 tokens at most) on the 500 held-out questions, greedy, in four arms:

* **SFT**: the model as fine-tuned;
* **SFT + boost**: iLLaDA's decode-time remedy, the end-of-thinking boost on ``<answer>`` (100 x progress ** 3);
* **GRPO, correctness**: ``recipes/tiny-loops/grpo.yaml`` (math_accuracy only), per seed;
* **GRPO, correctness + loop penalty + early stop**: the same with ``loop_penalty(unit='chars')`` and
  ``loop_stop_blocks 1`` (a rollout leaves once it has looped for a block), per seed.

A completion loops by ``rewards.loops``' definition read in characters (the task's text has no spaces; a
character is a token here): 3 back-to-back copies of a segment of at least 16 characters. Each arm's accuracy
and loop rate come with 95% Wilson intervals over its answers (the seeds' answers pooled), beside the share of
answers with no closed ``</answer>`` in the budget (the boost can cut a loop into runs of fewer than 3 copies,
which the definition no longer calls a loop, without ever closing an answer); the GRPO arms also report the
tokens their rollouts decoded per step (``rollout/decoded_tokens``, the run's mean). Every step is a
public command (``align eval``, ``align train``); this file chains them and reads their outputs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from align.cli import main as align
from demos.runs import finish, start_align

MODEL = "recipes/tiny-loops/model"
RECIPE = "recipes/tiny-loops/grpo.yaml"
TEST = "tiny=recipes/tiny-loops/data/test.jsonl"
DECODE = [
    "--protocol",
    "tiny",
    "--gen-length",
    "128",
    "--block-length",
    "16",
    "--steps",
    "128",
    "--variable-length",
    "--loop-unit",  # results.json's loop_rate in characters, as this file's own count
    "chars",
]
BOOST = ["--boost-token", "<answer>", "--boost", "100", "--boost-power", "3"]
PENALTY = ["--reward_funcs", "math_accuracy", "loop_penalty(unit='chars')", "--loop_stop_blocks", "1"]


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = hits / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def evaluate(model: str, output: str, extra: list[str], limit: int | None) -> list[dict]:
    """The held-out samples (completion, score) of ``model`` under the demo's decoding (``align eval``)."""
    if not os.path.exists(os.path.join(output, "results.json")):
        argv = ["eval", "--model", model, "--tasks", TEST, *DECODE, *extra, "--output", output, "--dtype", "float32",
                "--device", "cpu", "--batch-size", "500"]  # fmt: skip
        if align(argv + (["--limit", str(limit)] if limit else [])) != 0:
            raise SystemExit(f"align eval failed for {model}")
    with open(os.path.join(output, "tiny", "samples.jsonl")) as f:
        return [json.loads(line) for line in f]


def start_arm(model: str, output: str, seed: int, extra: list[str], steps: int | None):
    """One GRPO run (``align train``) in its own process (demos.runs); None when it already finished."""
    argv = ["train", "--config", RECIPE, "--model_name_or_path", model, "--output_dir", output, "--seed", str(seed),
            "--report_to", "none", "--overwrite_output_dir", "true", *extra]  # fmt: skip
    return start_align(argv + (["--max_steps", str(steps)] if steps else []), output, "demo-loops")


def decoded_per_step(output: str) -> float:
    """The tokens a finished run's rollouts decoded per step, on average (``rollout/decoded_tokens``)."""
    with open(os.path.join(output, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    logged = [h["rollout/decoded_tokens"] for h in history if "rollout/decoded_tokens" in h]
    return sum(logged) / max(len(logged), 1)  # each logged value: the mean over its logging window


def summary(samples: list[dict]) -> dict:
    from rewards.loops import completion_loop

    n = len(samples)
    right = sum(s["score"] > 0 for s in samples)
    looping = sum(completion_loop(str(s["completion"]), unit="chars") is not None for s in samples)
    unanswered = sum(
        "</answer>" not in str(s["completion"]) for s in samples
    )  # no closed answer in the budget
    return {"n": n, "accuracy": right / n, "accuracy_ci": wilson(right, n), "loop_rate": looping / n,
            "loop_rate_ci": wilson(looping, n), "unanswered": unanswered / n}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demos.loops")
    parser.add_argument("--output", default="runs/demo-loops")
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[0, 1], help="none: the SFT and boost rows only"
    )
    parser.add_argument("--limit", type=int, default=None, help="held-out questions (default: all 500)")
    parser.add_argument("--max-steps", type=int, default=None, help="GRPO steps (default: the recipe's)")
    parser.add_argument("--model", default=MODEL, help="the SFT model the arms start from")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.model, "config.json")):
        raise SystemExit(
            f"{args.model} is not built: run `make tiny-loops-model` first (SFT, minutes on 2 cores)."
        )
    start = time.monotonic()
    torch.set_num_threads(1)  # the evaluations, like the training processes: one kernel thread
    out = args.output
    rows = {
        "SFT": (summary(evaluate(args.model, f"{out}/sft", [], args.limit)), None),
        "SFT + end-of-thinking boost": (
            summary(evaluate(args.model, f"{out}/boost", BOOST, args.limit)),
            None,
        ),
    }
    arms = {
        "GRPO, correctness": ("correct", []),
        "GRPO, correctness + loop penalty + early stop": ("penalty", PENALTY),
    }
    samples, decoded = {arm: [] for arm in arms}, {arm: 0.0 for arm in arms}
    for seed in args.seeds:  # a seed's two arms train side by side, one core each
        runs = {arm: f"{out}/{name}-seed{seed}" for arm, (name, _) in arms.items()}
        finish(
            {run: start_arm(args.model, run, seed, arms[arm][1], args.max_steps) for arm, run in runs.items()}
        )
        for arm, run in runs.items():
            decoded[arm] += decoded_per_step(run) / len(args.seeds)
            samples[arm] += evaluate(run, f"{run}-eval", [], args.limit)
    rows.update({arm: (summary(samples[arm]), decoded[arm]) for arm in arms if samples[arm]})
    print(
        "\n| arm | answers | accuracy (95% CI) | loop rate (95% CI) | no closed answer | rollout tokens per step |"
    )
    print("|---|---|---|---|---|---|")
    for arm, (s, per_step) in rows.items():
        acc, loop = s["accuracy_ci"], s["loop_rate_ci"]
        tokens = "-" if per_step is None else f"{per_step:,.0f}"
        print(f"| {arm} | {s['n']} | {100 * s['accuracy']:.1f}% ({100 * acc[0]:.1f}-{100 * acc[1]:.1f}) | "
              f"{100 * s['loop_rate']:.1f}% ({100 * loop[0]:.1f}-{100 * loop[1]:.1f}) | "
              f"{100 * s['unanswered']:.1f}% | {tokens} |")  # fmt: skip
    print(f"{(time.monotonic() - start) / 60:.1f} min; seeds {args.seeds}")
    print(json.dumps({arm: {**s, "decoded_tokens": d} for arm, (s, d) in rows.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
