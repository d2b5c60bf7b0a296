"""iLLaDA's end-of-thinking boost, as its authors' evaluation computes it (``apply_end_think_logit_boost`` in
the ``generate.py`` that ships with iLLaDA's evaluation code), handed to the sampler as a logits hook.

At every denoising step, for each row whose completion does not yet hold the whole end-of-thinking sequence
(``</think>``'s token ids) and whose current block still has a masked position:

* the position is the block's leftmost still-masked one;
* the token is the next piece of the sequence: ``sequence[j]`` for the longest ``j`` (from ``len - 1`` down to
  1) such that the ``j`` tokens just left of the position are ``sequence[:j]`` and lie in the completion, else
  ``sequence[0]``;
* ``boost * progress ** power`` is added to that one logit, with ``progress = (offset + 1) / budget`` clamped
  to [0, 1]: ``offset`` the position's 0-based offset in the completion, ``budget`` the row's generation budget.
  The increment is cast to the logits' dtype first, as theirs is.

The boost is added before the token is chosen and its confidence computed, so both see it. The authors use
boost 100 with power 3 (power 1 for HumanEval). Not covered: rows of Dream's schedules get the boost with
the whole canvas as their budget (their decoders pass no per-row budget).
"""

from __future__ import annotations


def holds_sequence(tokens, sequence):
    """[R] bool: whether each row of ``tokens`` [R, n] holds ``sequence`` [k] contiguously."""
    import torch

    k = len(sequence)
    if tokens.shape[1] < k:
        return torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
    return (tokens.unfold(1, k, 1) == sequence).all(-1).any(-1)


class EndOfThinkingBoost:
    """``align.sampling.generate``'s ``logits_hook`` (its docstring gives the call). ``budget``: the budget
    used when the sampler passes none (Dream's schedules)."""

    def __init__(self, token_ids: list[int], boost: float, power: float, budget: int):
        self.token_ids, self.boost, self.power, self.budget = list(token_ids), boost, power, budget
        self._ids = (
            None  # the sequence as a tensor on the canvas's device, made once (the hook runs every step)
        )

    def __call__(
        self, logits, canvas, masked, completion_start: int, block_offset: int, budgets=None
    ) -> None:
        import torch

        if not self.token_ids or self.boost <= 0.0:
            return
        if self._ids is None or self._ids.device != canvas.device:
            self._ids = torch.tensor(self.token_ids, dtype=torch.long, device=canvas.device)
        seq, k = self._ids, len(self.token_ids)
        completion = canvas[:, completion_start:]
        rows = (masked.any(-1) & ~holds_sequence(completion, seq)).nonzero()[:, 0]
        if not len(rows):
            return
        first = masked.long().argmax(-1)[rows]  # the leftmost masked position of the block, per row
        offset = block_offset + first  # its 0-based offset in the completion
        piece = torch.zeros_like(rows)
        for j in range(k - 1, 0, -1):  # the longest prefix of the sequence just left of the position wins
            cols = (offset[:, None] - j + torch.arange(j, device=canvas.device)).clamp(min=0)
            left = completion[rows[:, None], cols]
            found = (offset >= j) & (left == seq[:j]).all(-1) & (piece == 0)
            piece = torch.where(found, torch.full_like(piece, j), piece)
        token = seq[piece]
        if budgets is None:
            budgets = torch.full((canvas.shape[0],), self.budget, device=canvas.device)
        progress = ((offset + 1).double() / budgets[rows].double()).clamp_(0.0, 1.0)
        increment = (self.boost * progress.pow(self.power)).to(logits.dtype)
        logits[rows, first, token] += increment


def writes(tokenizer, ids: list[int], text: str) -> bool:
    """Whether ``ids`` (the tokenizer's encoding of ``text``) decode back to ``text``: a vocabulary without
    its pieces maps them to an unknown or other token."""
    return bool(ids) and tokenizer.decode(ids, skip_special_tokens=False).strip() == text.strip()


def end_of_thinking_boost(tokenizer, text, boost: float, power: float, budget: int, *, unwritable: Exception):
    """The one builder of the boost hook (GRPO rollouts, ``align eval`` / ``align generate``): None when off (no
    text, or boost 0); ``unwritable`` raised when this tokenizer cannot write ``text``."""
    if not text or boost == 0.0:
        return None
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not writes(tokenizer, ids, text):
        raise unwritable
    return EndOfThinkingBoost(ids, boost, power, budget)
