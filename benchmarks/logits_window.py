"""Forward+backward time of one estimator pass with logits for every position vs the completion only.

    python benchmarks/logits_window.py

A random-init LLaDA config with LLaDA's 126,464-token vocabulary (d_model 512, 4 layers), batch 4,
prompt 256 + completion 256, float32 on CPU: the ratio is what computing the LM head (and the
cross-entropy) only where tokens are scored buys in this setting; at 8B the LM head is a smaller share.
"""

import time

import torch

from align.logprob.estimators import gather_logprobs
from align.models import LLaDAConfig, LLaDAModelLM


def one_pass(model, ids, masked, window):
    start = time.perf_counter()
    noisy = torch.where(masked, 126336, ids)
    logits = model(noisy, logits_range=window).logits
    lo = window[0] if window else 0
    scored = masked[:, lo:]
    loss = -gather_logprobs(logits[scored], ids[:, lo:][scored]).sum()
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    torch.manual_seed(0)
    config = LLaDAConfig(d_model=512, n_heads=8, n_layers=4, mlp_hidden_size=1536, vocab_size=126464,
                         max_sequence_length=1024)  # fmt: skip
    model = LLaDAModelLM(config)
    ids = torch.randint(0, 126000, (4, 512))
    masked = torch.zeros_like(ids, dtype=torch.bool)
    masked[:, 256:] = torch.rand(4, 256) < 0.5
    timings = {"all positions": [], "completion only": []}
    for _ in range(4):
        timings["all positions"].append(one_pass(model, ids, masked, None))
        timings["completion only"].append(one_pass(model, ids, masked, (256, 512)))
    best = {k: min(v[1:]) for k, v in timings.items()}
    for k, v in best.items():
        print(f"{k:16s} {v * 1000:8.1f} ms per pass (best of 3 after a warm-up)")
    print(f"speed-up {best['all positions'] / best['completion only']:.2f}x")


if __name__ == "__main__":
    main()
