"""``make demo``: RL visibly improving the embedded tiny diffusion LM, on CPU, in a few minutes.

    held-out accuracy (align eval) -> GRPO with recipes/tiny/grpo.yaml (align train) -> held-out accuracy
    -> report with both scores and the training curves (align report) -> table -> {"before": ..., "after": ...}

Every step is the public command a user would run; this file only chains them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from align.cli import main as align

TEST = "tiny=recipes/tiny/data/test.jsonl"


def reward_points(output_dir: str) -> list[tuple[int, float]]:
    """(step, mean reward) from a training run's trainer_state.json."""
    with open(os.path.join(output_dir, "trainer_state.json")) as f:
        return [(h["step"], h["reward"]) for h in json.load(f)["log_history"] if "reward" in h]


def recipe_model(config: str) -> str:
    """The recipe's starting checkpoint (its ``model_name_or_path``)."""
    import yaml

    with open(config) as f:
        return yaml.safe_load(f)["model_name_or_path"]


def evaluate(model: str, output: str, limit: int | None, protocol: str = "tiny") -> float:
    argv = ["eval", "--model", model, "--tasks", TEST, "--protocol", protocol, "--output", output, "--dtype", "float32",
            "--device", "cpu", "--batch-size", "500"]  # fmt: skip
    if align(argv + (["--limit", str(limit)] if limit else [])) != 0:
        raise SystemExit(f"align eval failed for {model}")
    with open(os.path.join(output, "results.json")) as f:
        return json.load(f)["tasks"]["tiny"]["accuracy"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demos.grpo")
    parser.add_argument("--output", default="runs/demo")
    parser.add_argument("--config", default="recipes/tiny/grpo.yaml")
    parser.add_argument("--limit", type=int, default=None, help="held-out questions (default: all 500)")
    parser.add_argument(
        "--protocol", default="tiny", help="the held-out decoding protocol (tiny-block for block models)"
    )
    args, overrides = parser.parse_known_args(argv)  # the rest: --field value pairs for the GRPO recipe
    start = time.monotonic()
    grpo = os.path.join(args.output, "grpo")
    model = recipe_model(args.config)
    before = evaluate(model, os.path.join(args.output, "before"), args.limit, args.protocol)
    if os.path.exists(os.path.join(grpo, "model.safetensors")):  # a finished run: evaluate it again
        print(f"demo: reusing the finished GRPO run in {grpo} (delete it to train again)", file=sys.stderr)
    else:  # after Ctrl-C (which saves a checkpoint) the same command goes on from it
        from align.checkpoints import checkpoints

        resume = ["--resume_from_checkpoint", "true"] if checkpoints(grpo)[0] else []
        command = ["train", "--config", args.config, "--output_dir", grpo, "--report_to", "none",
                   "--log_completions", "false", *resume, *overrides]  # fmt: skip
        if align(command) != 0:
            raise SystemExit(
                "align train failed (Ctrl-C keeps a checkpoint: the same command continues from it)"
            )
    after = evaluate(grpo, os.path.join(args.output, "after"), args.limit, args.protocol)
    report_dir = os.path.join(args.output, "report")
    align(["report", f"before={os.path.join(args.output, 'before')}", f"after={os.path.join(args.output, 'after')}",
           f"GRPO={grpo}", "--output", report_dir])  # fmt: skip
    points = reward_points(grpo)
    minutes = (time.monotonic() - start) / 60
    print("\n| model | held-out accuracy |\n|---|---|")
    print(
        f"| {model} (SFT) | {100 * before:.1f}% |\n| after GRPO ({points[-1][0]} steps) | {100 * after:.1f}% |"
    )
    print(
        f"reward {points[0][1]:.3f} -> {points[-1][1]:.3f}; {minutes:.1f} min; report: {report_dir}/report.md"
    )
    print(json.dumps({"before": before, "after": after}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
