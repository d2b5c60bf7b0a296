"""What each likelihood estimator needs, declared once and torch-free (as ``align.objectives`` declares the
losses): the recipe checks (``align.checks``), the family checks (``align.sampling.family_checks``), the field
vocabularies (``align.fields``) and the planner (``align.plan``) read these declarations; the plans themselves
are ``align.logprob.estimators`` (registered under the same names; a test keeps the two sets equal).

* ``passes(c)``: forward passes of one estimate under a recipe ``c``;
* ``canvas``: ``fixed`` (the whole completion canvas) or ``growing`` (variable-length rollouts: the canvas cut
  at each block's end, as they were decoded);
* ``replays``: it replays the sampler's commit order (needs the rollout's ``commit_step``);
* ``attention``: the attention it assumes: ``full``, ``block`` (block-causal families) or ``any``;
* ``dpo``: a sequence likelihood of any completion, usable by DPO / VRPO (not a rollout's own replay, canvas
  or a method's own GRPO masks).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class EstimatorKind:
    name: str
    passes: Callable[[object], int]
    canvas: str = "fixed"
    replays: bool = False
    attention: str = "any"
    dpo: bool = True


def _samples(c) -> int:
    return c.num_mc_samples


def _steps_per_block(c) -> int:
    return max(1, c.diffusion_steps // max(1, c.max_completion_length // c.block_length))


KINDS: dict[str, EstimatorKind] = {
    kind.name: kind
    for kind in (
        EstimatorKind("one_step", _samples),
        EstimatorKind("elbo", _samples),
        EstimatorKind("blockwise", _samples),
        EstimatorKind("coupled", lambda c: 2 * c.num_mc_samples),
        EstimatorKind("espo", lambda c: 2 * c.num_mc_samples, dpo=False),  # ESPO's own coupled masks
        EstimatorKind("diffucoder", lambda c: 3 * c.num_mc_samples, dpo=False),  # coupled-GRPO's three passes
        EstimatorKind("spg", _samples, dpo=False),  # SPG's block masks for its bounds
        EstimatorKind("growing", _samples, canvas="growing", attention="full", dpo=False),
        EstimatorKind(
            "trace",
            lambda c: math.ceil(c.diffusion_steps / c.trace_merge),
            replays=True,
            attention="full",
            dpo=False,
        ),
        EstimatorKind(
            "block_trace",
            lambda c: math.ceil(_steps_per_block(c) / c.trace_merge),
            replays=True,
            attention="block",
            dpo=False,
        ),
    )
}
ESTIMATOR_NAMES = tuple(sorted(KINDS))
DPO_ESTIMATORS = tuple(n for n in ESTIMATOR_NAMES if KINDS[n].dpo)
