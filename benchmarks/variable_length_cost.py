"""Fixed-canvas against variable-length GRPO rollouts on the mixed-length tiny model, in one run.

The model (recipes/tiny-mixed, ``make tiny-mixed-model``) answers 3-digit questions in 6 tokens and 4-digit
ones worked in 39, on one 48-token canvas, and was trained on whole and growing canvases, so it decodes both
ways. At a budget of ``--budget`` tokens (blocks of ``--block``, one token per step), for each mode: held-out
greedy accuracy (the 500 questions, short and long apart; Wilson 95 % intervals), the sampler's forward calls
and the canvas positions those calls encoded (rows x keys, counted by a hook on the model: what the compute
scales with), then ``--steps`` GRPO steps of recipes/tiny/grpo.yaml on this model through ``align train``
(fixed: estimator coupled on the whole canvas; variable: estimator growing, 2 samples), read from the run's
log: sampler calls, rollout and update seconds per step (the first step, warm-up, left out). Ratios are
variable / fixed, one run. Usage:

    python benchmarks/variable_length_cost.py [--budget 48 --block 8 --steps 4]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile

import torch

from align.cli import main as align
from align.models import family_spec, load_model, load_tokenizer
from align.sampling import SamplerSettings, generate

FOLDER = "recipes/tiny-mixed"
MODEL, TEST, TRAIN = f"{FOLDER}/model", f"{FOLDER}/data/test.jsonl", f"{FOLDER}/data/train.jsonl"


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p, d = k / n, 1 + z * z / n
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (p + z * z / (2 * n)) / d - half, (p + z * z / (2 * n)) / d + half


def decode(budget: int, block: int, variable: bool) -> dict:
    model, tok = load_model(MODEL, dtype="float32").eval(), load_tokenizer(MODEL)
    tok.padding_side = "left"
    rows = [json.loads(line) for line in open(TEST)]
    enc = tok([r["question"] for r in rows], return_tensors="pt", padding=True)
    positions = []

    def count(module, args, kwargs):
        positions.append((kwargs["input_ids"] if "input_ids" in kwargs else args[0]).numel())

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    with torch.no_grad():
        settings = SamplerSettings(
            gen_length=budget, steps=budget, block_length=block, variable_length=variable
        )
        out = generate(model, enc["input_ids"], enc["attention_mask"], settings, spec=family_spec(model, tok))
    hook.remove()
    texts = tok.batch_decode(out.completion_ids, skip_special_tokens=True)
    right = [f"<answer>{r['answer']}</answer>" in t for r, t in zip(rows, texts, strict=True)]
    result = {"sampler_calls": out.nfe, "encoded_positions": sum(positions)}
    for kind, keep in (("all", lambda r: True), ("short", lambda r: len(r["question"].split("+")[0]) == 3),
                       ("long", lambda r: len(r["question"].split("+")[0]) == 4)):  # fmt: skip
        hits = [ok for r, ok in zip(rows, right, strict=True) if keep(r)]
        low, high = wilson(sum(hits), len(hits))
        result[f"accuracy_{kind}"] = {"value": sum(hits) / len(hits), "n": len(hits), "wilson95": [low, high]}
    return result


def train_step_costs(budget: int, block: int, variable: bool, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        extra = (
            ["--variable_length", "true", "--estimator", "growing", "--num_mc_samples", "2"]
            if variable
            else []
        )
        argv = ["train", "--config", "recipes/tiny/grpo.yaml", "--model_name_or_path", MODEL,
                "--dataset_files", TRAIN, "--max_completion_length", str(budget), "--diffusion_steps", str(budget),
                "--block_length", str(block), "--max_steps", str(steps), "--logging_steps", "1",
                "--output_dir", out, "--report_to", "none", "--log_completions", "false", *extra]  # fmt: skip
        if align(argv) != 0:
            raise SystemExit("align train failed")
        logs = [
            h for h in json.load(open(os.path.join(out, "trainer_state.json")))["log_history"] if "loss" in h
        ]
    later = logs[1:] or logs  # the first step includes warm-up
    return {k: statistics.mean(h[key] for h in later) for k, key in
            (("sampler_calls", "rollout/forward_passes"), ("rollout_s", "time/rollout_s"),
             ("update_s", "time/update_s"), ("accuracy_reward", "rewards/math_accuracy/mean"))}  # fmt: skip


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python benchmarks/variable_length_cost.py")
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    if not os.path.exists(MODEL):
        raise SystemExit(f"{MODEL} is missing: run `make tiny-mixed-model`.")
    if not os.path.exists(
        TRAIN
    ):  # the RL prompts (not committed): the seeded split make tiny-mixed-model writes
        from demos.tiny import write_task

        write_task(os.path.dirname(TRAIN), num_train=50000, task="mixed")
    result = {}
    for name, variable in (("fixed", False), ("variable", True)):
        result[name] = {"held_out": decode(args.budget, args.block, variable),
                        "grpo_step": train_step_costs(args.budget, args.block, variable, args.steps)}  # fmt: skip
    fixed, var = result["fixed"], result["variable"]
    result["ratios_variable_over_fixed"] = {
        "held_out_sampler_calls": var["held_out"]["sampler_calls"] / fixed["held_out"]["sampler_calls"],
        "held_out_encoded_positions": var["held_out"]["encoded_positions"]
        / fixed["held_out"]["encoded_positions"],
        **{
            f"grpo_{k}": var["grpo_step"][k] / fixed["grpo_step"][k]
            for k in ("sampler_calls", "rollout_s", "update_s")
        },
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
