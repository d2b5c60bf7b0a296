"""``make demo-code``: code RL on the tiny code model, learning only from tests run in the sandbox.

    held-out pass@1 of recipes/tiny-code/model (align eval: 500 problems, greedy, custom code task)
    per seed: (a) GRPO with code_execution + python_block_format   (recipes/tiny-code/grpo.yaml)
              (b) control: (a) with code_execution's scores shuffled within each batch
    -> held-out pass@1 after each run with its Wilson 95% interval
    -> the reward's share of a step and the programs judged per second, from the run's own step timings
    -> every completion sampled in the last steps of each GRPO run, and every held-out answer, judged again by
       a plain-subprocess harness written here (the program and its tests in a fresh interpreter, exit status 0
       = pass); any disagreement with the sandboxed judge fails the demo (exit status 1)

The plain harness runs the policy's programs without a sandbox. That is safe here only because the tiny code
model's vocabulary (demos/tiny.py CODE_VOCAB) spells no name but ``f g h p q x`` and the task's keywords; do not
point it at another model's output. Every step is a public command; this file chains them and checks them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from align.cli import main as align
from demos.runs import finish, start_align

CONFIG = "recipes/tiny-code/grpo.yaml"
MODEL = "recipes/tiny-code/model"
TEST = "recipes/tiny-code/data/test.jsonl"
TRAIN = "recipes/tiny-code/data/train.jsonl"
PROMPT_TOKENS, CANVAS_TOKENS = 28, 20  # the recipes' max_prompt_length / max_completion_length
CONTROL_REWARD = "benchmarks/shuffled_reward.py:shuffled_code_execution"


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% at z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def evaluate(model: str, output: str, limit: int | None) -> tuple[float, list[dict]]:
    """Greedy held-out pass@1 of ``model`` through ``align eval`` and its per-answer samples."""
    size = ["--gen-length", str(CANVAS_TOKENS), "--block-length", str(CANVAS_TOKENS)]
    argv = ["eval", "--model", model, "--tasks", f"code={TEST}", "--protocol", "tiny", *size, "--prompt-template", "{question}", "--max-prompt-length",
            str(PROMPT_TOKENS), "--output", output, "--dtype", "float32", "--device", "cpu", "--batch-size", "500",
            "--overwrite"]  # fmt: skip
    if align(argv + (["--limit", str(limit)] if limit else [])) != 0:
        raise SystemExit(f"align eval failed for {model}")
    with open(os.path.join(output, "results.json")) as f:
        score = json.load(f)["tasks"]["code"]["pass@1"]
    with open(os.path.join(output, "code", "samples.jsonl")) as f:
        return score, [json.loads(line) for line in f]


def plain_program(completion: str) -> str:
    """The code a completion holds, found independently of rewards.code: the last fenced block tagged python,
    py or nothing, else the whole text."""
    blocks = re.findall(r"```(?:python3?|py)?[ \t]*\n(.*?)```", completion, re.S)
    return blocks[-1] if blocks else completion


def _exits_cleanly(source: str) -> bool:
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", source], capture_output=True, timeout=20)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def plain_score(program: str, row: dict) -> float:
    """The row's score as a plain interpreter gives it: the fraction of asserts that pass, each after the
    program in its own process, or 1 / 0 for a check(candidate) program called on the entry point."""
    tests = json.loads(row["tests"]) if row["tests"].lstrip().startswith("[") else row["tests"]
    if isinstance(tests, list):
        return sum(_exits_cleanly(f"{program}\n{test}\n") for test in tests) / len(tests)
    return float(_exits_cleanly(f"{program}\n{tests}\ncheck({row['entry_point']})\n"))


def rejudge(pairs: list[tuple[str, dict, float]]) -> tuple[int, list[dict]]:
    """(distinct programs judged, disagreements) for (completion, row, the sandboxed judge's score) triples."""
    distinct = {(plain_program(c), row["question"]): row for c, row, _ in pairs}
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        plain = dict(zip(distinct, pool.map(lambda key: plain_score(key[0], distinct[key]), distinct)))
    bad = [
        {"question": row["question"], "completion": c, "sandboxed": s, "plain": plain[(plain_program(c), row["question"])]}
        for c, row, s in pairs
        if abs(plain[(plain_program(c), row["question"])] - s) > 1e-6  # logged rewards went through float32
    ]  # fmt: skip
    return len(distinct), bad


def last_step_samples(run: str, steps: int) -> list[dict]:
    """The logged completions (every sample: num_completions_to_print is the batch) of the run's last steps."""
    with open(os.path.join(run, "completions.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    last = sorted({r["step"] for r in rows})[-steps:]
    return [r for r in rows if r["step"] in last]


def step_costs(run: str) -> dict:
    """Mean seconds per phase of a GRPO step from the run's log, and the reward's share of the step."""
    with open(os.path.join(run, "trainer_state.json")) as f:
        history = [h for h in json.load(f)["log_history"] if "time/reward_s" in h]
    phases = ("rollout", "reward", "logprob", "update")
    mean = {p: sum(h[f"time/{p}_s"] for h in history) / len(history) for p in phases}
    return {
        **{f"{p}_s": round(v, 4) for p, v in mean.items()},
        "reward_share": mean["reward"] / sum(mean.values()),
    }


def start_training(arm: str, seed: int, run: str, overrides: list[str]) -> subprocess.Popen | None:
    """``align train`` for one arm in its own process (demos.runs.start_align); None when the run already
    finished."""
    command = ["train", "--config", CONFIG, "--output_dir", run, "--report_to", "none", "--seed", str(seed),
               "--overwrite_output_dir", "true", *overrides]  # fmt: skip
    if arm == "control":
        command += ["--reward_funcs", CONTROL_REWARD, "python_block_format"]
    return start_align(command, run, "demo-code")  # every step's samples go to its console: a table per step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demos.code")
    parser.add_argument("--output", default="runs/demo-code")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--arms", default="grpo,control", help="grpo, control or both")
    parser.add_argument("--limit", type=int, default=None, help="held-out problems (default: all 500)")
    parser.add_argument(
        "--last-steps", type=int, default=10, help="training steps whose samples are re-judged"
    )
    args, overrides = parser.parse_known_args(argv)  # the rest: --field value pairs for both arms' recipe
    if not set(args.arms.split(",")) <= {"grpo", "control"}:
        parser.error(f"--arms {args.arms!r}: a comma list of grpo and control")
    start = time.monotonic()
    with open(TRAIN) as f:
        train_rows = {r["question"]: r for r in map(json.loads, f)}
    with open(TEST) as f:
        test_rows = [json.loads(line) for line in f]
    results, checks = [], {"programs": 0, "disagreements": []}

    def held_out(label: str, model: str) -> float:
        score, samples = evaluate(model, os.path.join(args.output, "eval", label), args.limit)
        n, bad = rejudge([(s["completion"], test_rows[s["index"]], s["score"]) for s in samples])
        checks["programs"] += n
        checks["disagreements"] += bad
        passed = sum(s["score"] >= 1.0 for s in samples)
        low, high = wilson(passed, len(samples))
        results.append({"arm": label, "pass@1": score, "wilson95": [low, high], "n": len(samples)})
        return score

    torch.set_num_threads(1)
    before = held_out("start", MODEL)
    costs = {}
    for seed in map(int, args.seeds.split(",")):
        arms = {arm: os.path.join(args.output, f"{arm}-seed{seed}") for arm in args.arms.split(",")}
        finish({run: start_training(arm, seed, run, overrides) for arm, run in arms.items()})
        for arm, run in arms.items():  # the seed's arms trained side by side, one core each
            held_out(f"{arm}-seed{seed}", run)
            if arm == "grpo":  # the control's logged scores are shuffled: only the real judge's are compared
                samples = last_step_samples(run, args.last_steps)
                n, bad = rejudge(
                    [(s["completion"], train_rows[s["prompt"]], s["code_execution"]) for s in samples]
                )
                checks["programs"] += n
                checks["disagreements"] += bad
                steps = len({s["step"] for s in samples})
                distinct = len({(s["step"], s["completion"], s["prompt"]) for s in samples}) / steps
                costs[seed] = {**step_costs(run), "programs_per_step": len(samples) / steps,
                               "distinct_programs_per_step": distinct}  # fmt: skip
    print("\n| tiny code, 500 held-out, greedy | pass@1 | Wilson 95% | change |\n|---|---|---|---|")
    for r in results:
        low, high = r["wilson95"]
        change = "" if r["arm"] == "start" else f"{100 * (r['pass@1'] - before):+.1f}"
        print(f"| {r['arm']} | {100 * r['pass@1']:.1f}% | {100 * low:.1f}-{100 * high:.1f} | {change} |")
    for seed, c in costs.items():
        print(f"seed {seed}: step {sum(c[f'{p}_s'] for p in ('rollout', 'reward', 'logprob', 'update')):.2f} s, "
              f"reward {c['reward_s']:.2f} s ({100 * c['reward_share']:.0f}%), "
              f"{c['distinct_programs_per_step']:.0f} distinct of {c['programs_per_step']:.0f} programs judged per step, "
              f"{c['distinct_programs_per_step'] / c['reward_s']:.0f} distinct programs/s")  # fmt: skip
    bad = checks["disagreements"]
    print(f"re-judged {checks['programs']} distinct (program, problem) pairs in a plain interpreter: "
          f"{len(bad)} disagreements; {(time.monotonic() - start) / 60:.1f} min")  # fmt: skip
    for b in bad[:5]:
        print(f"  DISAGREE {b}")
    summary = {"start": before, **{r["arm"]: r["pass@1"] for r in results[1:]}, "costs": costs,
               "rejudged": checks["programs"], "disagreements": len(bad)}  # fmt: skip
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump({**summary, "results": results, "disagreement_rows": bad}, f, indent=1)
    print(json.dumps(summary))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
