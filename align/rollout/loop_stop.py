"""Early stop of looping rollouts (``loop_stop_blocks``): a variable-length row whose completion has ended in
a loop for K consecutive blocks leaves the batch, as a row that wrote a stop token does.

The loop is ``rewards.loops``' definition (one module for the metrics, the rewards and this rule) read on
the row's token ids: after each block the row is done when it wrote a stop token, or when its ids end in a
repeated stretch that was already a loop K - 1 blocks earlier (``trailing_loop(ids, since=(K - 1) *
block_length)``). What it wrote stays its completion (``GenerationOutput.decoded`` cuts the EOS filler
after it), is rewarded as written, and counts as truncated (no stop token): ``mask_truncated_completions``
drops it from the loss like any row that ran out of budget. The likelihood estimator ``growing`` then
scores the blocks the row decoded, on the canvases cut as they were decoded.
"""

from __future__ import annotations

import torch

from rewards.loops import trailing_loop


class LoopStop:
    """The sampler's ``stop_check`` (``align.sampling.generate``): [R, n] completions so far -> [R] done."""

    def __init__(self, stop_token_ids, blocks: int, block_length: int):
        if blocks < 1:
            raise ValueError(f"loop_stop_blocks must be >= 1 to stop looping rows, got {blocks}.")
        self.stop_ids = torch.tensor(list(stop_token_ids), dtype=torch.long)
        self.since = (blocks - 1) * block_length

    def __call__(self, completions: torch.Tensor) -> torch.Tensor:
        done = torch.isin(completions, self.stop_ids.to(completions.device)).any(-1)
        rows = completions.cpu().numpy()
        looping = [
            not stopped and trailing_loop(row, since=self.since) is not None
            for row, stopped in zip(rows, done.tolist(), strict=True)
        ]
        return done | torch.tensor(looping, dtype=torch.bool, device=done.device)
