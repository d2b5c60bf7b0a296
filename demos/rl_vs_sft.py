"""``make demo-rl-vs-sft``: from one SFT checkpoint, equal wall-clock spent on more SFT vs GRPO with a verifier.

    held-out accuracy of recipes/tiny-<task>/model (align eval)
    (a) more SFT on the limited solutions      align sft   --max_time_s B   (recipes/tiny-<task>/sft.yaml)
    (b) GRPO with only the verifier            align train --max_time_s B   (recipes/tiny-<task>/grpo.yaml)
    (c) control: (b) with the verifier's scores shuffled within each batch (benchmarks/shuffled_reward.py)
    -> every saved checkpoint evaluated on the held-out split -> accuracy vs wall-clock table + plot

The arms run one after another with the same budget counted from each run's first training step (model
loading and the evaluations are outside it); checkpoints are scored afterwards, so evaluation never
eats into an arm's budget. The SFT arm sees the 2,000 problems that have a solution; the GRPO arms see
10,000 other problems without one. Every step is a public command; this file chains them.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

from align.cli import main as align

TASK_SHAPES = {"countdown": 16, "sudoku": 20}  # prompt / canvas tokens of the tiny puzzle tasks
SAVE_STEPS = {"sft": 100, "grpo": 10, "control": 10}  # checkpoints along each arm (tiny models: ~3 MB each)


def evaluate(model: str, task: str, output: str, limit: int | None) -> float:
    size = str(TASK_SHAPES[task])
    argv = ["eval", "--model", model, "--tasks", f"{task}=recipes/tiny-{task}/data/test.jsonl", "--protocol",
            "tiny", "--gen-length", size, "--block-length", size, "--max-prompt-length", size, "--output", output,
            "--dtype", "float32", "--device", "cpu", "--batch-size", "500", "--overwrite"]  # fmt: skip
    if align(argv + (["--limit", str(limit)] if limit else [])) != 0:
        raise SystemExit(f"align eval failed for {model}")
    with open(os.path.join(output, "results.json")) as f:
        return json.load(f)["tasks"][task]["accuracy"]


def arm_command(arm: str, task: str, output: str, budget_s: float) -> list[str]:
    common = ["--output_dir", output, "--max_time_s", str(budget_s), "--max_steps", "1000000", "--report_to",
              "none", "--save_strategy", "steps", "--save_steps", str(SAVE_STEPS[arm]), "--logging_steps", "5"]  # fmt: skip
    if arm == "sft":
        return ["sft", "--config", f"recipes/tiny-{task}/sft.yaml", "--model_name_or_path",
                f"recipes/tiny-{task}/model", "--init_config", "None", *common]  # fmt: skip
    command = ["train", "--config", f"recipes/tiny-{task}/grpo.yaml", *common]
    if arm == "control":
        command += ["--reward_funcs", f"benchmarks/shuffled_reward.py:shuffled_{task}", "answer_tag_format"]
    return command


def checkpoints(output: str) -> list[tuple[int, float, str]]:
    """(step, wall_s, folder) of every checkpoint and of the final model of a finished run."""
    with open(os.path.join(output, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    wall = {h["step"]: h["wall_s"] for h in history if "wall_s" in h}  # the last entry of a step wins
    found = [(int(p.rsplit("-", 1)[1]), p) for p in glob.glob(os.path.join(output, "checkpoint-*"))]
    points = [(step, wall.get(step), path) for step, path in sorted(found)]
    final = max(wall)
    if not points or points[-1][0] != final:
        points.append((final, wall[final], output))
    return [p for p in points if p[1] is not None]


def budget_stop(output: str) -> dict:
    """The arm's stop by its budget: the training seconds at the step that stopped it and at the step before."""
    with open(os.path.join(output, "trainer_state.json")) as f:
        stops = [h for h in json.load(f)["log_history"] if "max_time/elapsed_s" in h]
    if not stops:
        return {}
    return {"stop_elapsed_s": stops[-1]["max_time/elapsed_s"],
            "previous_step_elapsed_s": stops[-1]["max_time/previous_step_elapsed_s"]}  # fmt: skip


def plot(curves: dict[str, list[tuple[float, float]]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for label, points in curves.items():
        ax.plot([x for x, _ in points], [100 * y for _, y in points], marker="o", label=label)
    ax.set_xlabel("training wall-clock (s)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


LABELS = {"sft": "(a) more SFT", "grpo": "(b) GRPO + verifier", "control": "(c) GRPO + shuffled verifier"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demos.rl_vs_sft")
    parser.add_argument("--task", default="sudoku", choices=sorted(TASK_SHAPES))
    parser.add_argument("--budget-s", type=float, default=600.0, help="training seconds per arm")
    parser.add_argument("--output", default="runs/rl-vs-sft")
    parser.add_argument("--limit", type=int, default=None, help="held-out problems scored (default: all 500)")
    parser.add_argument("--arms", default="sft,grpo,control")
    args = parser.parse_args(argv)
    start = time.monotonic()
    task, out = args.task, os.path.join(args.output, args.task)
    start_accuracy = evaluate(
        f"recipes/tiny-{task}/model", task, os.path.join(out, "eval", "start"), args.limit
    )
    curves, rows = {}, []
    for arm in args.arms.split(","):
        run = os.path.join(out, arm)
        if align(arm_command(arm, task, run, args.budget_s)) != 0:
            raise SystemExit(f"the {arm} arm failed (its command's error is above)")
        curve, saved = [(0.0, start_accuracy)], checkpoints(run)
        for step, wall_s, folder in saved:
            curve.append(
                (wall_s, evaluate(folder, task, os.path.join(out, "eval", f"{arm}-{step}"), args.limit))
            )
        curves[LABELS[arm]] = curve
        rows.append({"arm": arm, "steps": saved[-1][0], "wall_s": curve[-1][0], "accuracy": curve[-1][1],
                     **budget_stop(run)})  # fmt: skip
    plot(curves, os.path.join(out, "accuracy_vs_wall_clock.png"),
         f"tiny {task}: {args.budget_s:.0f} s per arm from the same SFT checkpoint")  # fmt: skip
    with open(os.path.join(out, "curves.json"), "w") as f:
        json.dump(
            {"start": start_accuracy, "budget_s": args.budget_s, "curves": curves, "arms": rows}, f, indent=1
        )
    print(
        f"\n| tiny {task}, {args.budget_s:.0f} s per arm | steps | held-out accuracy | change |\n|---|---|---|---|"
    )
    print(f"| start: recipes/tiny-{task}/model (SFT) | - | {100 * start_accuracy:.1f}% | |")
    for r in rows:
        change = 100 * (r["accuracy"] - start_accuracy)
        print(f"| {LABELS[r['arm']]} | {r['steps']} | {100 * r['accuracy']:.1f}% | {change:+.1f} |")
    print(f"{(time.monotonic() - start) / 60:.1f} min; plot: {out}/accuracy_vs_wall_clock.png")
    print(json.dumps({"task": task, "start": start_accuracy, **{r["arm"]: r["accuracy"] for r in rows}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
