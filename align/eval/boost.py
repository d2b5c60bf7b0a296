"""iLLaDA's end-of-thinking boost, as a logits hook the ``illada`` protocol hands the sampler.

Our reading of what appears to be the authors' evaluation script (not verified against it): in blocks
starting at least ``after`` tokens into the completion, a row that has not written one of ``token_ids`` yet
gets ``boost`` added to their logits at the block's leftmost still-masked position, so a row still thinking
near the end of its budget closes its thinking at the next position it writes (100 forces it; the row
writes the id once, then the boost stops).
"""

from __future__ import annotations


class EndOfThinkingBoost:
    """``align.sampling.generate``'s ``logits_hook`` (its docstring gives the call)."""

    def __init__(self, token_ids: list[int], boost: float, after: int):
        self.token_ids, self.boost, self.after = list(token_ids), boost, after
        self._ids = None  # the ids as a tensor on the canvas's device, made once (the hook runs every step)

    def __call__(self, logits, canvas, masked, completion_start: int, block_offset: int) -> None:
        import torch

        if not self.token_ids or self.boost == 0.0 or block_offset < self.after:
            return
        if self._ids is None or self._ids.device != canvas.device:
            self._ids = torch.tensor(self.token_ids, dtype=torch.long, device=canvas.device)
        ids = self._ids
        pending = ~torch.isin(canvas[:, completion_start:], ids).any(-1) & masked.any(-1)
        if not pending.any():
            return
        rows = pending.nonzero()[:, 0]
        first = masked.long().argmax(-1)[rows]  # leftmost masked position of the block in each pending row
        grid = logits[rows, first]  # [R, V] (a copy)
        grid[:, ids] += self.boost
        logits[rows, first] = grid
