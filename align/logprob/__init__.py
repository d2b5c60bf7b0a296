"""Monte Carlo masking estimators of diffusion-LM log-likelihoods (one module: estimators.py). Names resolve
lazily."""

from align import lazy_face

_HOMES = {
    name: "estimators"
    for name in (
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
    )
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_face(__name__, _HOMES)
