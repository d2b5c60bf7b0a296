"""GPU smoke test: the sampler and a few GRPO steps on a random-init ~1B-parameter LLaDA config in bf16.

    python benchmarks/gpu_smoke.py --out $OUT/gpu_smoke.json            # on a GPU (the 1b preset)
    python benchmarks/gpu_smoke.py --preset tiny --device cpu --out x.json  # the same code path on CPU

Records, in one JSON file: the config and parameter count; per sampler mode (reference, threshold 0.9,
dual cache) rollout tokens/s and forward passes; per GRPO step the wall time, the rollout / log-prob /
update split the trainer logs, and the peak GPU memory. Random weights: the figures are speed and
memory, not quality. The prompts are random ids; the reward is a string statistic (no sandbox, no math).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

PRESETS = {
    # ~1.03B parameters: LLaDA-8B's vocabulary and block design at a smaller width and depth.
    "1b": dict(d_model=2048, n_heads=16, n_kv_heads=16, n_layers=10, mlp_hidden_size=5632, vocab_size=126464),
    # the same code path in seconds on a CPU (a small vocabulary: float64 Gumbel noise over 126k ids is slow there)
    "tiny": dict(d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=1024),
}


def digit_fraction(prompts, completions, **columns):
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


def build(preset: str, device: str):
    from align.models import LLaDAConfig, LLaDAModelLM

    fields = PRESETS[preset]
    mask = min(126336, fields["vocab_size"] - 1)  # LLaDA's mask id where the vocabulary has it
    config = LLaDAConfig(**fields, max_sequence_length=4096, mask_token_id=mask, eos_token_id=1, pad_token_id=1,
                         bos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = LLaDAModelLM(config).to(device=device, dtype=dtype)
    return model, sum(p.numel() for p in model.parameters())


def time_sampler(model, device: str, gen_length: int, batch: int) -> dict:
    from align.sampling import generate

    prompt = torch.randint(10, 1000, (batch, 64), device=device)  # below every preset's mask id
    modes = {"reference": {}, "threshold_0.9": {"threshold": 0.9}, "dual_cache": {"cache": "dual"}}
    out = {}
    for name, extra in modes.items():
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            result = generate(model, prompt, gen_length=gen_length, steps=gen_length, block_length=32,
                              temperature=1.0, generator=torch.Generator(device).manual_seed(0), **extra)  # fmt: skip
        _sync(device)
        seconds = time.perf_counter() - start
        out[name] = {
            "seconds": seconds,
            "tokens_per_s": batch * gen_length / seconds,
            "forward_passes": result.nfe,
        }
    return out


def time_grpo(model, device: str, gen_length: int, steps: int) -> list[dict]:
    from datasets import Dataset
    from transformers import TrainerCallback

    from align.config import load_config
    from align.tiny import build_tokenizer
    from align.trainer import DiffusionGRPOTrainer

    tokenizer = build_tokenizer()
    rows = [{"question": "".join(str((7 * i + j) % 10) for j in range(40)), "answer": "0"} for i in range(64)]
    with tempfile.TemporaryDirectory() as out:
        args = [
            "--dataset_files", "unused.jsonl", "--output_dir", out, "--use_chat_template", "false",
            "--max_completion_length", str(gen_length), "--block_length", "32", "--diffusion_steps", str(gen_length),
            "--num_generations", "8", "--per_device_train_batch_size", "8", "--max_steps", str(steps),
            "--logging_steps", "1", "--estimator", "coupled", "--num_mc_samples", "1", "--beta", "0.0",
            "--learning_rate", "1e-6", "--report_to", "none", "--save_strategy", "no",
            "--reward_funcs", f"{os.path.abspath(__file__)}:digit_fraction",
            "--dtype", "bfloat16" if device.startswith("cuda") else "float32",
            "--activation_checkpointing", "true",
        ] + (["--bf16", "true"] if device.startswith("cuda") else ["--use_cpu", "true"])  # fmt: skip
        config = load_config(None, args)
        trainer = DiffusionGRPOTrainer(model, config, Dataset.from_list(rows), tokenizer)
        starts = []

        class Clock(TrainerCallback):
            def on_step_begin(self, *a, **k):
                starts.append(time.perf_counter())

        trainer.add_callback(Clock())
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        trainer.train()
        end = time.perf_counter()
        logs = [h for h in trainer.state.log_history if "time/rollout_s" in h]
        walls = [b - a for a, b in zip(starts, starts[1:] + [end])]
        keys = (
            "time/rollout_s",
            "time/logprob_s",
            "time/update_s",
            "rollout/tokens_per_s",
            "rollout/forward_passes",
        )
        return [
            {"step": i + 1, "wall_s": w, **{k: log.get(k) for k in keys}}
            for i, (w, log) in enumerate(zip(walls, logs))
        ]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="1b", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gen-length", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, params = build(args.preset, args.device)
    result = {"preset": args.preset, "parameters": params, "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__}  # fmt: skip
    result["sampler"] = time_sampler(model, args.device, args.gen_length, args.batch)
    if args.device.startswith("cuda"):
        result["sampler_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["grpo_steps"] = time_grpo(model, args.device, args.gen_length, args.steps)
    if args.device.startswith("cuda"):
        result["grpo_peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
