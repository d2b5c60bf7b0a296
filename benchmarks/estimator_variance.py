"""Variance per forward pass of the log-likelihood estimators, as ratios to naive Monte Carlo.

On a tiny random-init LLaDA model and one fixed sequence, draws many independent estimates with each
estimator and prints variance x forward passes (lower is better) relative to the naive estimator
(``elbo`` with one sample: one mask count, one pass), and each estimator's mean against the exact value
of what it estimates, by enumeration of every mask subset (L <= 8): the ELBO for elbo / coupled /
one_step (one_step is biased for it), the sum of each block's ELBO given the earlier blocks for
``blockwise`` (blocks of 3), and SPG's EUBO (beta 1.5) for ``eubo``, whose estimate from K samples is a
log of a mean and so biased for small K. Usage:

    python benchmarks/estimator_variance.py [--completion_length 6 --draws 4000]
"""

from __future__ import annotations

import argparse
import itertools
import math

import torch

from align.logprob import eubo_token_values, make_plan, pass_logprobs, sequence_logprob
from align.models import LLaDAConfig, LLaDAModelLM

MASK = 63


@torch.no_grad()
def exact_elbo(model, ids, positions) -> float:
    total = 0.0
    for k in range(1, len(positions) + 1):
        subsets = list(itertools.combinations(positions, k))
        batch = ids.repeat(len(subsets), 1)
        for row, subset in enumerate(subsets):
            batch[row, list(subset)] = MASK
        logp = model(batch).logits.log_softmax(-1)
        values = [sum(logp[row, i, ids[0, i]].item() for i in subset) for row, subset in enumerate(subsets)]
        total += sum(values) / len(values) / k
    return total


@torch.no_grad()
def exact_block_elbo(model, ids, positions, block_length) -> float:
    """sum over blocks b of the ELBO of block b with the earlier blocks shown and the later ones masked."""
    blocks = [positions[i : i + block_length] for i in range(0, len(positions), block_length)]
    total = 0.0
    for b, block in enumerate(blocks):
        later = [i for blk in blocks[b + 1 :] for i in blk]
        for k in range(1, len(block) + 1):
            values = []
            for subset in itertools.combinations(block, k):
                noisy = ids.clone()
                noisy[0, list(subset) + later] = MASK
                logp = model(noisy).logits[0].log_softmax(-1)
                values.append(sum(logp[i, ids[0, i]].item() for i in subset))
            total += sum(values) / len(values) / k
    return total


@torch.no_grad()
def exact_eubo(model, ids, positions, beta) -> float:
    """sum_i (1/beta) log E_{l, S}[1[i in S] (L / l) p(y_i | S masked)^beta] over the exact-count masks."""
    n = len(positions)
    means = dict.fromkeys(positions, 0.0)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(positions, k))
        for subset in subsets:
            noisy = ids.clone()
            noisy[0, list(subset)] = MASK
            logp = model(noisy).logits[0].log_softmax(-1)
            for i in subset:
                means[i] += (n / k) * math.exp(beta * logp[i, ids[0, i]].item()) / len(subsets) / n
    return sum(math.log(m) / beta for m in means.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt_length", type=int, default=4)
    ap.add_argument("--completion_length", type=int, default=6)
    ap.add_argument("--draws", type=int, default=4000)
    args = ap.parse_args()
    torch.manual_seed(0)
    config = LLaDAConfig(d_model=64, n_heads=4, n_layers=2, mlp_hidden_size=128, vocab_size=64, mask_token_id=MASK,
                         eos_token_id=1, pad_token_id=1, bos_token_id=0)  # fmt: skip
    model = LLaDAModelLM(config).eval()
    with torch.no_grad():
        model.model.transformer.ff_out.weight.mul_(5.0)
    p, length = args.prompt_length, args.completion_length
    ids = torch.randint(2, MASK, (1, p + length))
    cm = torch.zeros(1, p + length, dtype=torch.bool)
    cm[:, p:] = True
    positions = list(range(p, p + length))
    exact = exact_elbo(model, ids, positions)
    targets = {"ELBO": exact, "block ELBO": exact_block_elbo(model, ids, positions, 3),
               "EUBO": exact_eubo(model, ids, positions, 1.5)}  # fmt: skip
    rows = [
        ("elbo", 1, 1, "ELBO"),
        ("elbo", 2, 2, "ELBO"),
        ("elbo", 4, 4, "ELBO"),
        ("coupled", 1, 2, "ELBO"),
        ("coupled", 2, 4, "ELBO"),
        ("one_step", 1, 1, "ELBO"),
        ("blockwise", 1, 1, "block ELBO"),
        ("blockwise", 2, 2, "block ELBO"),
        ("eubo", 2, 2, "EUBO"),
        ("eubo", 8, 8, "EUBO"),
    ]
    exact_text = ", ".join(f"{name} {value:.4f}" for name, value in targets.items())
    print(f"exact: {exact_text} (L = {length}, {args.draws} draws each)")
    print(
        "| estimator | MC samples | passes | target | mean - exact | standard error | variance x passes | vs naive |"
    )
    print("|---|---|---|---|---|---|---|---|")
    naive = None
    batch, canvas = ids.expand(args.draws, -1), cm.expand(args.draws, -1)
    for i, (name, k, passes, target) in enumerate(rows):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            if name == "eubo":  # SPG's upper bound from K elbo masks
                plan = make_plan("elbo", canvas, num_samples=k, generator=g)
                values = pass_logprobs(model, batch, plan, mask_token_id=MASK, chunk_size=4)
                est = eubo_token_values(plan, values, 1.5).sum(-1)
            else:
                est = sequence_logprob(model, batch, canvas, estimator=name, num_samples=k, mask_token_id=MASK,
                                       generator=g, chunk_size=4, block_length=3)  # fmt: skip
        var_pass = est.var().item() * passes
        naive = var_pass if naive is None else naive
        se = est.std().item() / args.draws**0.5
        bias = est.mean().item() - targets[target]
        print(
            f"| {name} | {k} | {passes} | {target} | {bias:+.4f} | {se:.4f} | {var_pass:.4f} | {var_pass / naive:.2f} |"
        )


if __name__ == "__main__":
    main()
