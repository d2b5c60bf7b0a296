"""Sampler speed: reference mode vs Fast-dLLM modes, in one run, on one random-init LLaDA config.

Prints tokens/s, forward passes and token agreement with reference mode, as ratios to reference mode.
What it does not show: the threshold mode's saving. A random-init model's confidences stay far below
any useful threshold, so that mode runs the full step budget here (its pass count is shown; its
saving on a confident model is asserted in tests/test_sampling.py with a scripted model). Usage:

    python benchmarks/sampler_speed.py [--d_model 256 --n_layers 4 --gen_length 256 --device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch

from align.models import LLaDAConfig, LLaDAModelLM
from align.sampling import generate


def build_model(args) -> LLaDAModelLM:
    config = LLaDAConfig(
        d_model=args.d_model, n_heads=args.n_heads, n_kv_heads=args.n_heads, n_layers=args.n_layers,
        mlp_hidden_size=args.d_model * 3, vocab_size=args.vocab, mask_token_id=args.vocab - 1,
        eos_token_id=1, pad_token_id=1, bos_token_id=0, max_sequence_length=4096,
    )  # fmt: skip
    torch.manual_seed(0)
    return LLaDAModelLM(config).to(args.device, dtype=getattr(torch, args.dtype))


def timed(fn, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d_model", type=int, default=256)
    ap.add_argument("--n_heads", type=int, default=4)
    ap.add_argument("--n_layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt_length", type=int, default=64)
    ap.add_argument("--gen_length", type=int, default=256)
    ap.add_argument("--block_length", type=int, default=32)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    args = ap.parse_args()
    model = build_model(args)
    prompt = torch.randint(2, args.vocab - 1, (args.batch, args.prompt_length), device=args.device)
    common = dict(gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length)
    modes = {
        "reference": {},
        "threshold": {"threshold": args.threshold},
        "prefix cache": {"cache": "prefix"},
        "dual cache": {"cache": "dual"},
        "threshold + dual cache": {"threshold": args.threshold, "cache": "dual"},
    }
    generate(model, prompt, **{**common, "gen_length": args.block_length, "steps": 2})  # warm-up
    ref, ref_s = timed(lambda: generate(model, prompt, **common), args.device)
    ref_tps = args.batch * args.gen_length / ref_s
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {n_params:.1f}M params, d_model {args.d_model}, {args.n_layers} layers, {args.device} {args.dtype}; "
          f"batch {args.batch}, prompt {args.prompt_length}, gen {args.gen_length}, block {args.block_length}")  # fmt: skip
    print("| mode | tokens/s | speed-up | forward passes | agreement with reference |")
    print("|---|---|---|---|---|")
    for name, extra in modes.items():
        if name == "reference":
            out, secs = ref, ref_s
        else:
            out, secs = timed(lambda extra=extra: generate(model, prompt, **common, **extra), args.device)
        tps = args.batch * args.gen_length / secs
        agree = (out.completion_ids == ref.completion_ids).float().mean().item()
        print(f"| {name} | {tps:.0f} | {tps / ref_tps:.1f}x | {out.nfe} | {agree:.1%} |")


if __name__ == "__main__":
    main()
