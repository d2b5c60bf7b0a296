"""Fixed-canvas against variable-length GRPO rollouts on the committed tiny LLaDA model, in one run.

At a completion budget of ``--budget`` tokens (blocks of ``--block``, one step per token), for each mode:
held-out greedy accuracy of the decoding (500 questions, the sampler's own answers), then ``--steps`` GRPO
steps of recipes/tiny/grpo.yaml through ``align train`` (fixed: estimator coupled on the whole canvas;
variable: estimator growing), read from the run's log: sampler forward passes, rollout and update seconds
per step. Ratios are variable / fixed. The tiny model answers in 7 tokens and was trained on 8-token
canvases: this measures the cost of decoding and scoring a budget the answers do not need, not a model
trained on mixed lengths. Usage:

    python benchmarks/variable_length_cost.py [--budget 32 --block 8 --steps 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

import torch

from align.cli import main as align
from align.models import family_spec, load_model, load_tokenizer
from align.sampling import generate

MODEL, TEST = "recipes/tiny/model", "recipes/tiny/data/test.jsonl"


def accuracy(budget: int, block: int, variable: bool) -> tuple[float, int]:
    model, tok = load_model(MODEL, dtype="float32").eval(), load_tokenizer(MODEL)
    tok.padding_side = "left"
    rows = [json.loads(line) for line in open(TEST)]
    enc = tok([r["question"] for r in rows], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = generate(model, enc["input_ids"], enc["attention_mask"], gen_length=budget, steps=budget,
                       block_length=block, variable_length=variable, spec=family_spec(model, tok))  # fmt: skip
    texts = tok.batch_decode(out.completion_ids, skip_special_tokens=True)
    return sum(f"<answer>{r['answer']}</answer>" in t for r, t in zip(rows, texts, strict=True)) / len(rows), out.nfe


def train_step_costs(budget: int, block: int, variable: bool, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        extra = ["--variable_length", "true", "--estimator", "growing", "--num_mc_samples", "2"] if variable else []
        argv = ["train", "--config", "recipes/tiny/grpo.yaml", "--max_completion_length", str(budget),
                "--diffusion_steps", str(budget), "--block_length", str(block), "--max_steps", str(steps),
                "--logging_steps", "1", "--output_dir", out, "--report_to", "none", "--log_completions", "false",
                *extra]  # fmt: skip
        if align(argv) != 0:
            raise SystemExit("align train failed")
        logs = [h for h in json.load(open(os.path.join(out, "trainer_state.json")))["log_history"] if "loss" in h]
    later = logs[1:] or logs  # the first step includes warm-up
    return {k: statistics.mean(h[key] for h in later) for k, key in
            (("forward_passes", "rollout/forward_passes"), ("rollout_s", "time/rollout_s"), ("update_s", "time/update_s"))}  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/variable_length_cost.py")
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    result = {}
    for name, variable in (("fixed", False), ("variable", True)):
        acc, nfe = accuracy(args.budget, args.block, variable)
        result[name] = {"held_out_accuracy": acc, "sampler_passes_500_questions": nfe,
                        **train_step_costs(args.budget, args.block, variable, args.steps)}  # fmt: skip
    fixed, var = result["fixed"], result["variable"]
    result["ratios_variable_over_fixed"] = {k: var[k] / fixed[k] for k in ("forward_passes", "rollout_s", "update_s")}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
