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
import json
import math
import re
import time

import torch

from align.models import LLaDAConfig, LLaDAModelLM
from align.sampling import SamplerSettings, generate


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


def random_setup(args):
    """A random-init model and random prompts: one batch, no answers to score."""
    model = build_model(args)
    prompt = torch.randint(2, args.vocab - 1, (args.batch, args.prompt_length), device=args.device)
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {n_params:.1f}M params (random init), d_model {args.d_model}, {args.n_layers} layers, vocab "
          f"{args.vocab}, {args.device} {args.dtype}; batch {args.batch}, prompt {args.prompt_length}, "
          f"gen {args.gen_length}, block {args.block_length}, T {args.temperature}")  # fmt: skip
    return model, [prompt], None, None


def trained_setup(args):
    """A trained checkpoint and the first ``limit`` rows of a question/answer JSONL, in batches."""
    from align.data import encode_prompts
    from align.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(args.model)
    model = load_model(args.model, dtype=args.dtype).to(args.device).eval()
    rows = [json.loads(line) for line in open(args.data)][: args.limit]
    enc = encode_prompts(tokenizer, [r["question"] for r in rows], max_length=64, use_chat_template=False)
    if not enc["attention_mask"].all():
        raise SystemExit("the official algorithm takes unpadded prompts: use questions of one token length.")
    ids = enc["input_ids"].to(args.device)
    batches = [ids[i : i + args.batch] for i in range(0, len(ids), args.batch)]
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {args.model} ({n_params:.2f}M params), {args.device} {args.dtype}; {len(rows)} questions of "
          f"{args.data} in batches of {args.batch}, prompt {ids.shape[1]}, gen {args.gen_length}, "
          f"block {args.block_length}, steps {args.gen_length}, T {args.temperature}")  # fmt: skip
    return model, batches, rows, tokenizer


def accuracy(tokenizer, completions: torch.Tensor, rows: list[dict]) -> float:
    """Share of correct completions: ``<answer>...</answer>`` equal to the row's ``answer``, or accepted by
    the ``sudoku`` / ``countdown`` verifier for rows with their columns."""
    texts = tokenizer.batch_decode(completions, skip_special_tokens=False)
    if "puzzle" in rows[0] or "target" in rows[0]:
        from rewards.puzzles import countdown, sudoku

        verifier, columns = (
            (sudoku, ["puzzle"]) if "puzzle" in rows[0] else (countdown, ["numbers", "target"])
        )
        return sum(verifier(None, texts, **{c: [r[c] for r in rows] for c in columns})) / len(rows)
    found = [re.search(r"<answer>(\d+)</answer>", t) for t in texts]
    return sum(m is not None and m.group(1) == r["answer"] for m, r in zip(found, rows, strict=True)) / len(
        rows
    )


def parse_modes(text: str) -> dict[str, dict]:
    """``"reference;threshold=0.9;cache=dual,threshold=0.9"`` -> {name: generate() keyword arguments}."""
    modes = {}
    for spec in filter(None, (part.strip() for part in text.split(";"))):
        extra = {}
        for item in filter(None, spec.split(",")):
            if item == "reference":
                continue
            key, value = item.split("=")
            extra[key] = value if key == "cache" else (int(value) if key == "cache_refresh" else float(value))
        modes[spec] = extra
    return modes


DEFAULT_MODES = "reference;threshold=0.9;cache=prefix;cache=dual;threshold=0.9,cache=dual"


@torch.no_grad()
def fidelity(model, batches, common: dict, modes: dict[str, dict]) -> None:
    """Per cache mode: how far the cached logits are from the exact forward on the same canvas, by passes
    since the last full pass (top-1 agreement and total variation on the still-masked positions)."""
    from align.models import model_logits
    from align.sampling import diffusion

    original = diffusion._Denoiser.block_logits
    for name, extra in modes.items():
        if not extra.get("cache"):
            continue
        stats: dict[int, list] = {}
        step = {"i": 0}

        def probed(self, x, attn, prompt_real, start, end, full, stats=stats, step=step):
            logits = original(self, x, attn, prompt_real, start, end, full)
            step["i"] = 0 if full else step["i"] + 1
            exact = model_logits(self.model, x, attn, self.spec, logits_range=(start, end)).logits
            masked = x[:, start:end] == self.spec.mask_token_id
            a, b = logits[masked].float().softmax(-1), exact[masked].float().softmax(-1)
            row = stats.setdefault(step["i"], [0, 0.0, 0])
            row[0] += int((a.argmax(-1) == b.argmax(-1)).sum())
            row[1] += float(0.5 * (a - b).abs().sum(-1).sum())
            row[2] += int(masked.sum())
            return logits

        diffusion._Denoiser.block_logits = probed
        try:
            for batch in batches:
                generate(model, batch, None, SamplerSettings(**common, **extra))
        finally:
            diffusion._Denoiser.block_logits = original
        cells = [f"{i}: {s[0] / s[2]:.1%} / {s[1] / s[2]:.3f}" for i, s in sorted(stats.items()) if s[2]]
        print(
            f"{name}: passes since the last full pass: top-1 agreement / total variation vs the exact forward"
        )
        print("    " + "; ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a trained checkpoint (default: a random-init model)")
    ap.add_argument(
        "--data", default=None, help="JSONL for --model: question + answer, or a puzzle's columns"
    )
    ap.add_argument("--limit", type=int, default=128, help="questions of --data")
    ap.add_argument("--d_model", type=int, default=256)
    ap.add_argument("--n_heads", type=int, default=4)
    ap.add_argument("--n_layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt_length", type=int, default=64)
    ap.add_argument("--gen_length", type=int, default=256)
    ap.add_argument("--block_length", type=int, default=32)
    ap.add_argument(
        "--modes", default=DEFAULT_MODES, help="';'-separated generate() settings, e.g. " + DEFAULT_MODES
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument(
        "--fidelity", action="store_true", help="also compare cached logits with the exact forward"
    )
    args = ap.parse_args()
    model, batches, scored_rows, tokenizer = (trained_setup if args.model else random_setup)(args)
    mask_id = model.config.mask_token_id
    common = dict(gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length,
                  temperature=args.temperature)  # fmt: skip
    seeded = lambda: torch.Generator(args.device).manual_seed(0)  # noqa: E731
    generate(
        model, batches[0], None, SamplerSettings(**{**common, "gen_length": args.block_length, "steps": 2})
    )
    tokens = sum(len(b) for b in batches) * args.gen_length

    def run(fn):
        outs, secs = [], 0.0
        for batch in batches:
            out, s = timed(lambda batch=batch: fn(batch), args.device)
            outs.append(out)
            secs += s
        return outs, secs

    official, official_s = run(lambda batch: official_generate(model, batch, args.gen_length, args.gen_length,
                                                               args.block_length, args.temperature, mask_id, seeded()))  # fmt: skip
    official = torch.cat(official)
    base_tps = tokens / official_s
    score = (
        (lambda ids: f" {accuracy(tokenizer, ids, scored_rows):.1%} |") if scored_rows else (lambda ids: "")
    )
    print(
        "| mode | tokens/s | speed-up | forward passes | agreement with official |"
        + (" accuracy |" if scored_rows else "")
    )
    print("|---|---|---|---|---|" + ("---|" if scored_rows else ""))
    print(
        f"| official (generate.py as written) | {base_tps:.0f} | 1.0x | {args.gen_length} | 100.0% |"
        + score(official)
    )
    for name, extra in parse_modes(args.modes).items():
        outs, secs = run(
            lambda batch, extra=extra: generate(
                model, batch, None, SamplerSettings(**common, **extra), generator=seeded()
            )
        )
        ids = torch.cat([o.completion_ids for o in outs])
        tps = tokens / secs
        agree = (ids == official).float().mean().item()
        passes = sum(o.nfe for o in outs) / len(outs)
        print(f"| {name} | {tps:.0f} | {tps / base_tps:.2f}x | {passes:.1f} | {agree:.1%} |" + score(ids))
    if args.fidelity:
        fidelity(model, batches, common, parse_modes(args.modes))


if __name__ == "__main__":
    main()
