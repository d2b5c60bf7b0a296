"""Monte Carlo masking estimators of diffusion-LM log-likelihoods (one module: estimators.py)."""

from align.logprob.estimators import (
    ESTIMATORS,
    MaskPlan,
    gather_logprobs,
    make_plan,
    register_estimator,
    sequence_logprob,
    token_logprobs,
)

__all__ = [
    "ESTIMATORS",
    "MaskPlan",
    "gather_logprobs",
    "make_plan",
    "register_estimator",
    "sequence_logprob",
    "token_logprobs",
]
