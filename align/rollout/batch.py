"""The rollout phase's data, typed: what one process generated, scored and estimated, rows shuffled.

Shapes: N rows (prompts x num_generations on this process), L = prompt + completion positions, I inner
iterations (``num_iterations``), P forward passes of one estimate, K Monte Carlo samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align.logprob.estimators import MaskPlan


@dataclass
class MicroBatch:
    """One micro-step's slice of the buffer under one inner iteration's mask plan."""

    ids: torch.Tensor  # [n, L] prompt + completion tokens
    attn: torch.Tensor  # [n, L]
    mask: torch.Tensor  # [n, L] scored positions (the answer up to its first EOS, or the whole canvas)
    advantages: torch.Tensor  # [n]
    plan: MaskPlan  # masked / weights [P, n, L]
    old: torch.Tensor | None  # [n, L] old-policy estimates (bgpo: per-sample sums [n, K]); None on-policy
    ref: torch.Tensor | None  # [n, L] reference estimates; None without a KL term
    normalizer: torch.Tensor  # scalar: the objective's divisor of one generation batch per process
    group_weights: torch.Tensor | None = None  # [n] weights computed over each completion's group (wd1)
    longest: torch.Tensor | None = None  # scalar: the generation batch's longest scored answer, all processes


@dataclass
class RolloutBatch:
    """The shuffled buffer of one rollout phase (``steps_per_generation`` micro-batches)."""

    ids: torch.Tensor  # [N, L]
    attn: torch.Tensor  # [N, L]
    mask: torch.Tensor  # [N, L]
    advantages: torch.Tensor  # [N]
    masked: torch.Tensor  # [I, P, N, L] one mask plan per inner iteration
    weights: torch.Tensor  # [I, P, N, L]
    num_samples: int  # K of the plans
    old: torch.Tensor | None  # [I, N, L] or [I, N, K]
    ref: torch.Tensor | None  # [I, N, L]
    normalizer: torch.Tensor  # scalar
    group_weights: torch.Tensor | None = None  # [N]
    longest: torch.Tensor | None = None  # scalar
    visible: torch.Tensor | None = None  # [I, P, N, L] the plans' cut canvases (estimator growing)

    def micro_batch(self, part: int, iteration: int, parts: int) -> MicroBatch:
        """Rows ``part`` of ``parts`` equal slices, under inner iteration ``iteration``'s plan."""
        n = self.ids.shape[0] // parts
        rows = slice(part * n, (part + 1) * n)
        pick = lambda t: None if t is None else t[iteration][rows]  # noqa: E731
        return MicroBatch(
            ids=self.ids[rows],
            attn=self.attn[rows],
            mask=self.mask[rows],
            advantages=self.advantages[rows],
            plan=MaskPlan(
                self.masked[iteration][:, rows],
                self.weights[iteration][:, rows],
                self.num_samples,
                None if self.visible is None else self.visible[iteration][:, rows],
            ),
            old=pick(self.old),
            ref=pick(self.ref),
            normalizer=self.normalizer,
            group_weights=None if self.group_weights is None else self.group_weights[rows],
            longest=self.longest,
        )

    # ---- the buffer file of a mid-phase checkpoint (its keys are those of the files written before) -------
    def state(self) -> dict:
        keys = (
            "ids",
            "attn",
            "mask",
            "advantages",
            "masked",
            "weights",
            "num_samples",
            "old",
            "ref",
            "normalizer",
        )
        out = {k: getattr(self, k) for k in keys}
        for key in ("group_weights", "longest", "visible"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_state(cls, state: dict, group_weighted: bool) -> RolloutBatch:
        """A saved buffer. Files written before ``group_weights`` had a name of their own carried wd1's weights
        under ``advantages``: ``group_weighted`` (the objective uses them) reads them from there."""
        fields = dict(state)
        if group_weighted and fields.get("group_weights") is None:
            fields["group_weights"] = fields["advantages"]
        return cls(**fields)
