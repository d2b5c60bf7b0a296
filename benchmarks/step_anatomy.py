"""Where a GRPO step's time goes: rollout (sampler), reward, old/reference estimates, update, other.

Runs the tiny recipe (``recipes/tiny/grpo.yaml``, CPU) for ``--steps`` steps and averages the trainer's
own ``time/*`` metrics over the steps after ``--skip`` (steady state), against each step's wall time
measured by a callback. "other" is everything else: tokenizing, decoding text, advantages, packing the
buffer, the optimizer step, logging. Usage (from the repository root):

    python benchmarks/step_anatomy.py [--steps 40 --skip 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from transformers import TrainerCallback

from align.config import load_config
from align.train import build_trainer


class StepClock(TrainerCallback):
    def __init__(self):
        self.durations, self._start = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self._start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="recipes/tiny/grpo.yaml")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip", type=int, default=5, help="first steps left out (start-up, warm-up)")
    args, overrides = ap.parse_known_args()
    with tempfile.TemporaryDirectory() as out:
        config = load_config(args.config, ["--max_steps", str(args.steps), "--logging_steps", "1", "--output_dir", out,
                                           "--report_to", "none", "--log_completions", "false", *overrides])  # fmt: skip
        trainer = build_trainer(config)
        clock = StepClock()
        trainer.add_callback(clock)
        trainer.train()
    logs = [h for h in trainer.state.log_history if "time/update_s" in h][args.skip :]
    wall = sum(clock.durations[args.skip :]) / len(clock.durations[args.skip :])
    parts = {name: sum(h.get(f"time/{key}_s", 0.0) for h in logs) / len(logs)
             for name, key in (("rollout (sampler)", "rollout"), ("reward", "reward"),
                               ("old / reference estimates", "logprob"), ("update (estimate + backward + step)", "update"))}  # fmt: skip
    parts["other"] = wall - sum(parts.values())
    print(f"{args.config}: {len(logs)} steady-state steps, {wall:.3f} s per step")
    print("| part | s per step | share |\n|---|---|---|")
    for name, secs in parts.items():
        print(f"| {name} | {secs:.3f} | {100 * secs / wall:.1f}% |")


if __name__ == "__main__":
    main()
