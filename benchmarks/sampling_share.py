"""The sampler's CPU outside the model at T > 0: the inverse-CDF draw against ``torch.multinomial``, in one run.

Runs reference mode (``generate``) on sampler_speed.py's T = 1 setting (a random-init LLaDA-shaped model with a
126,464-token vocabulary) and splits each run's process CPU time into the model's forward passes and the rest
(proposals, confidences, commits). The two draws alternate round by round, so a busy machine slows both alike;
the figures are the medians over rounds. ``multinomial`` is the draw this project used before (one exponential
per vocabulary entry, a softmax and a full finite check); ``inverse CDF`` is ``draw_categorical`` (one uniform
per position, one pass over the weights); ``greedy (T = 0)`` is the same decoding without a draw, the floor of
the work outside the model (gathering the masked rows, a softmax for the confidence, the commits). Usage:

    python benchmarks/sampling_share.py [--rounds 5 --vocab 126464 --gen_length 64 --prompt_length 32 --batch 2]

What it does not show: a GPU, where the per-entry exponentials run in parallel and the model dominates anyway.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch

import align.sampling.diffusion as diffusion
from align.models import LLaDAConfig, LLaDAModelLM
from align.sampling import SamplerSettings, generate


def multinomial_draw(probs: torch.Tensor, generator=None):
    """The earlier draw: a finite check over every entry, then ``torch.multinomial`` (an exponential per entry)."""
    if not torch.isfinite(probs).all():
        raise ValueError("non-finite probabilities")
    picked = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return picked, torch.ones(len(probs), dtype=torch.float64)  # (softmax rows: totals of 1)


class Timed(torch.nn.Module):
    """The model with the process CPU time of its forward passes counted."""

    def __init__(self, model):
        super().__init__()
        self.model, self.cpu_s = model, 0.0
        self.config = model.config

    def forward(self, *args, **kwargs):
        start = time.process_time()
        out = self.model(*args, **kwargs)
        self.cpu_s += time.process_time() - start
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("rounds", 5), ("vocab", 126464), ("gen_length", 64), ("prompt_length", 32),
                          ("batch", 2), ("block_length", 32), ("d_model", 256), ("n_layers", 4)):  # fmt: skip
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args()
    config = LLaDAConfig(d_model=args.d_model, n_heads=4, n_kv_heads=4, n_layers=args.n_layers,
                         mlp_hidden_size=args.d_model * 3, vocab_size=args.vocab, mask_token_id=args.vocab - 1,
                         eos_token_id=1, pad_token_id=1, bos_token_id=0, max_sequence_length=4096)  # fmt: skip
    torch.manual_seed(0)
    model = Timed(LLaDAModelLM(config).eval())
    prompt = torch.randint(2, args.vocab - 1, (args.batch, args.prompt_length))
    settings = SamplerSettings(gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length,
                               temperature=args.temperature)  # fmt: skip
    draws = {
        "multinomial": multinomial_draw,
        "inverse CDF": diffusion.draw_categorical,
        "greedy (T = 0)": None,
    }
    kept = diffusion.draw_categorical
    shares = {name: [] for name in draws}
    outside = {name: [] for name in draws}
    totals = {name: [] for name in draws}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vocab {args.vocab}, batch {args.batch}, "
          f"prompt {args.prompt_length}, gen {args.gen_length}, block {args.block_length}, T {args.temperature}, "
          f"d_model {args.d_model}, {args.n_layers} layers, {args.rounds} rounds")  # fmt: skip
    try:
        with torch.no_grad():
            for r in range(args.rounds + 1):  # round 0 warms up
                for name, draw in draws.items():
                    diffusion.draw_categorical = draw or kept
                    model.cpu_s = 0.0
                    start = time.process_time()
                    run = settings if draw else dataclasses.replace(settings, temperature=0.0)
                    generate(model, prompt, None, run, generator=torch.Generator().manual_seed(r))
                    total = time.process_time() - start
                    if r:
                        shares[name].append((total - model.cpu_s) / total)
                        outside[name].append(total - model.cpu_s)
                        totals[name].append(total)
    finally:
        diffusion.draw_categorical = kept
    print("| draw | sampler CPU s | outside the model, CPU s | share outside the model |")
    print("|---|---|---|---|")
    for name in draws:
        print(f"| {name} | {statistics.median(totals[name]):.2f} | {statistics.median(outside[name]):.2f} | "
              f"{statistics.median(shares[name]):.1%} |")  # fmt: skip
    ratio = statistics.median(o / n for o, n in zip(outside["multinomial"], outside["inverse CDF"]))
    print(f"outside-the-model CPU, multinomial / inverse CDF (median of per-round ratios): {ratio:.1f}x")


if __name__ == "__main__":
    main()
