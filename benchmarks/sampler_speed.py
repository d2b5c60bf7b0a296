"""Sampler speed: the official algorithm as written, reference mode and the Fast-dLLM modes, in one run.

Prints tokens/s, forward passes and token agreement, as ratios to ``official``: LLaDA's generate.py
algorithm written out here as that script computes it (logits for the whole canvas at every step, a
float64 Gumbel draw per vocabulary entry at T > 0, softmax over the whole canvas), on the same model and
prompts. At T = 0 reference mode must give the official tokens (100% agreement).
What it does not show: the threshold mode's saving. A random-init model's confidences stay far below
any useful threshold, so that mode runs the full step budget here (its pass count is shown; its
saving on a confident model is asserted in tests/test_sampling.py with a scripted model). Usage:

    python benchmarks/sampler_speed.py [--d_model 256 --n_layers 4 --gen_length 256 --device cpu]
    python benchmarks/sampler_speed.py --vocab 126464 --gen_length 64 --prompt_length 32 --batch 2 --temperature 1
"""

from __future__ import annotations

import argparse
import math
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


@torch.no_grad()
def official_generate(model, prompt, gen_length, steps, block_length, temperature, mask_id, generator):
    """generate.py's computation, batched: full-canvas logits, float64 Gumbel noise at T > 0 over the
    whole canvas and vocabulary, softmax over the whole canvas in the logits' dtype, top-k per row."""
    b, p = prompt.shape
    x = torch.cat([prompt, torch.full((b, gen_length), mask_id, device=prompt.device)], 1)
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    for nb in range(num_blocks):
        end = p + (nb + 1) * block_length
        block_mask = x[:, end - block_length : end] == mask_id
        counts = block_mask.sum(1, keepdim=True) // per_block + (
            torch.arange(per_block, device=x.device)[None] < block_mask.sum(1, keepdim=True) % per_block
        )
        for i in range(per_block):
            mask_index = x == mask_id
            logits = model(x).logits
            if temperature > 0:
                l64 = logits.to(torch.float64)
                u = torch.rand(l64.shape, generator=generator, device=x.device, dtype=torch.float64)
                noisy = l64.exp() / (-torch.log(u)) ** temperature
            else:
                noisy = logits
            x0 = noisy.argmax(-1)
            probs = torch.softmax(logits, dim=-1)
            conf = probs.gather(-1, x0[..., None])[..., 0]
            conf[:, end:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            conf = torch.where(mask_index, conf, torch.full_like(conf, -math.inf))
            for row in range(b):
                _, picked = torch.topk(conf[row], int(counts[row, i]))
                x[row, picked] = x0[row, picked]
    return x[:, p:]


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
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--skip_fast_modes", action="store_true", help="only official vs reference")
    args = ap.parse_args()
    model = build_model(args)
    prompt = torch.randint(2, args.vocab - 1, (args.batch, args.prompt_length), device=args.device)
    common = dict(gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length,
                  temperature=args.temperature)  # fmt: skip
    modes = {
        "reference": {},
        "threshold": {"threshold": args.threshold},
        "prefix cache": {"cache": "prefix"},
        "dual cache": {"cache": "dual"},
        "threshold + dual cache": {"threshold": args.threshold, "cache": "dual"},
    }
    if args.skip_fast_modes:
        modes = {"reference": {}}
    seeded = lambda: torch.Generator(args.device).manual_seed(0)  # noqa: E731
    generate(model, prompt, **{**common, "gen_length": args.block_length, "steps": 2})  # warm-up
    official, official_s = timed(lambda: official_generate(model, prompt, args.gen_length, args.gen_length, args.block_length,
                                                           args.temperature, args.vocab - 1, seeded()), args.device)  # fmt: skip
    base_tps = args.batch * args.gen_length / official_s
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {n_params:.1f}M params, d_model {args.d_model}, {args.n_layers} layers, vocab {args.vocab}, "
          f"{args.device} {args.dtype}; batch {args.batch}, prompt {args.prompt_length}, gen {args.gen_length}, "
          f"block {args.block_length}, T {args.temperature}")  # fmt: skip
    print("| mode | tokens/s | speed-up | forward passes | agreement with official |")
    print("|---|---|---|---|---|")
    print(f"| official (generate.py as written) | {base_tps:.0f} | 1.0x | {args.gen_length} | 100.0% |")
    for name, extra in modes.items():
        out, secs = timed(
            lambda extra=extra: generate(model, prompt, **common, **extra, generator=seeded()), args.device
        )
        tps = args.batch * args.gen_length / secs
        agree = (out.completion_ids == official).float().mean().item()
        print(f"| {name} | {tps:.0f} | {tps / base_tps:.2f}x | {out.nfe} | {agree:.1%} |")


if __name__ == "__main__":
    main()
