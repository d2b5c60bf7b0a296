"""Variance per forward pass of the log-likelihood estimators, as ratios to naive Monte Carlo.

On a tiny random-init LLaDA model and one fixed sequence, draws many independent estimates of the
sequence ELBO with each estimator and prints variance x forward passes (lower is better) relative to
the naive estimator (``elbo`` with one sample: one mask count, one pass), next to the exact ELBO by
enumeration of every mask subset (L <= 8) and each estimator's mean. Usage:

    python benchmarks/estimator_variance.py [--completion_length 6 --draws 4000]
"""

from __future__ import annotations

import argparse
import itertools

import torch

from align.logprob import sequence_logprob
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
    exact = exact_elbo(model, ids, list(range(p, p + length)))
    rows = [
        ("elbo", 1, 1),
        ("elbo", 2, 2),
        ("elbo", 4, 4),
        ("coupled", 1, 2),
        ("coupled", 2, 4),
        ("one_step", 1, 1),
    ]
    print(f"exact ELBO {exact:.4f} (L = {length}, {args.draws} draws each)")
    print(
        "| estimator | MC samples | passes | mean - exact | standard error | variance x passes | vs naive |"
    )
    print("|---|---|---|---|---|---|---|")
    naive = None
    for i, (name, k, passes) in enumerate(rows):
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            est = sequence_logprob(model, ids.expand(args.draws, -1), cm.expand(args.draws, -1), estimator=name,
                                   num_samples=k, mask_token_id=MASK, generator=g, chunk_size=4)  # fmt: skip
        var_pass = est.var().item() * passes
        naive = var_pass if naive is None else naive
        se = est.std().item() / args.draws**0.5
        bias = est.mean().item() - exact
        print(
            f"| {name} | {k} | {passes} | {bias:+.4f} | {se:.4f} | {var_pass:.4f} | {var_pass / naive:.2f} |"
        )


if __name__ == "__main__":
    main()
