"""Monte Carlo masking estimators of diffusion-LM log-likelihoods (one module: estimators.py)."""

from align.logprob.estimators import (
    ESTIMATORS,
    MaskPlan,
    combine,
    eubo_token_values,
    gather_logprobs,
    make_plan,
    pass_logprobs,
    register_estimator,
    sample_sums,
    sequence_logprob,
    token_logprobs,
)

__all__ = [
    "ESTIMATORS",
    "MaskPlan",
    "combine",
    "eubo_token_values",
    "gather_logprobs",
    "make_plan",
    "pass_logprobs",
    "register_estimator",
    "sample_sums",
    "sequence_logprob",
    "token_logprobs",
]
