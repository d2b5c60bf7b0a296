"""GPU smoke test: the sampler and a few GRPO steps on a random-init LLaDA config in bf16.

    python benchmarks/gpu_smoke.py --out $OUT/gpu_1b.json                        # 1B, full fine-tuning
    python benchmarks/gpu_smoke.py --preset 8b --lora --out $OUT/gpu_8b.json     # LLaDA-8B's shape, LoRA
    python benchmarks/gpu_smoke.py --batches 16,64 --gen-lengths 512,2048 ...    # the sampler sweep
    python benchmarks/gpu_smoke.py --preset tiny --device cpu --out x.json       # the same code path on CPU

Records, in one JSON file: the config and parameter count; per sampler mode (reference, threshold 0.9,
dual cache), batch and length: rollout tokens/s and forward passes; per GRPO step the wall time, the
rollout / log-prob / update split the trainer logs, the peak GPU memory against ``align plan``'s predicted
peak for the same config (one process, no ZeRO), and the model FLOPs utilisation (the plan's FLOPs per step
over the step's wall time and the card's dense bf16 peak). Random weights: the figures are speed and memory,
not quality. The prompts are random ids; the reward is a string statistic (no sandbox, no math).
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
    # LLaDA-8B-Instruct's shape (8.02B): on one card only with LoRA (full fine-tuning needs ZeRO over several)
    "8b": dict(
        d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288, vocab_size=126464
    ),
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


# dense bf16 peak FLOP/s by card name (for MFU)
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def time_sampler(model, device: str, gen_length: int, batch: int) -> dict:
    from align.sampling import SamplerSettings, generate

    prompt = torch.randint(10, 1000, (batch, 64), device=device)  # below every preset's mask id
    modes = {"reference": {}, "threshold_0.9": {"threshold": 0.9}, "dual_cache": {"cache": "dual"}}
    out = {}
    for name, extra in modes.items():
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            settings = SamplerSettings(
                gen_length=gen_length, steps=gen_length, block_length=32, temperature=1.0, **extra
            )
            result = generate(model, prompt, None, settings, generator=torch.Generator(device).manual_seed(0))
        _sync(device)
        seconds = time.perf_counter() - start
        out[name] = {
            "seconds": seconds,
            "tokens_per_s": batch * gen_length / seconds,
            "forward_passes": result.nfe,
        }
        if device.startswith("cuda"):
            out[name]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def time_grpo(model, device: str, gen_length: int, steps: int, lora: bool = False) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback

    from align.config import load_config
    from align.trainer import DiffusionGRPOTrainer
    from demos.tiny import build_tokenizer

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
            "--activation_checkpointing", "true", "--mc_backward", "chunked",
        ] + (["--bf16", "true"] if device.startswith("cuda") else ["--use_cpu", "true"])  # fmt: skip
        config = load_config(None, args + (["--use_peft", "true", "--lora_r", "16"] if lora else []))
        if lora:
            from align.runner import add_lora

            model = add_lora(model, config)
        from align.plan import GIB, ModelShape, make_plan

        plan = make_plan(ModelShape.from_config(model.config), config)
        trainer = DiffusionGRPOTrainer(
            model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer
        )
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
        peak = peak_flops(device)
        measured = torch.cuda.max_memory_allocated() / GIB if device.startswith("cuda") else None
        return {
            "steps": [
                {"step": i + 1, "wall_s": w, "mfu": plan.flops / w / peak if peak else None,
                 **{k: log.get(k) for k in keys}}
                for i, (w, log) in enumerate(zip(walls, logs))
            ],
            "plan_peak_gib": {phase: plan.peak(phase) / GIB for phase in plan.phases},
            "plan_flops_per_step": plan.flops,
            "measured_peak_gib": measured,
        }  # fmt: skip


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="1b", choices=sorted(PRESETS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gen-length", type=int, default=256, help="GRPO completion length")
    parser.add_argument(
        "--gen-lengths", default=None, help="sampler sweep lengths, e.g. 512,2048 (default --gen-length)"
    )
    parser.add_argument("--batches", default="8", help="sampler sweep batch sizes, e.g. 16,64")
    parser.add_argument(
        "--batch", type=int, default=None, help="one sampler batch size (same as --batches N)"
    )
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--lora", action="store_true", help="train a LoRA adapter (the 8b preset on one card)"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    model, params = build(args.preset, args.device)
    result = {"preset": args.preset, "parameters": params, "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "torch": torch.__version__}  # fmt: skip
    batches = [args.batch] if args.batch else [int(b) for b in args.batches.split(",")]
    lengths = [int(n) for n in args.gen_lengths.split(",")] if args.gen_lengths else [args.gen_length]
    sweep = {f"batch{b}_len{n}": time_sampler(model, args.device, n, b) for b in batches for n in lengths}
    result["sampler"] = next(iter(sweep.values())) if len(sweep) == 1 else sweep
    result["grpo"] = time_grpo(model, args.device, args.gen_length, args.steps, lora=args.lora)
    result["grpo_steps"] = result["grpo"]["steps"]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
