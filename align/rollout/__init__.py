"""The rollout wing: engines that generate (``engine``), the dense-diffusion rollout server (``server``), the
typed rollout batch (``batch``), the reward set (``rewards``), the completions log (``completions``), the
prompts each process rolls out (``prompts``), every rollout rule once (``stages``) and one rollout phase of the
GRPO trainer (``phase``).
Names resolve lazily (importing the package loads no torch)."""

from align import lazy_face

_HOMES = {
    "RolloutEngine": "engine",
    "InProcessEngine": "engine",
    "ENGINES": "engine",
    "register_engine": "engine",
    "build_engine": "engine",
    "RolloutBatch": "batch",
    "MicroBatch": "batch",
    "RewardSet": "rewards",
    "RewardError": "rewards",
    "RolloutPhase": "phase",
    "RolloutBatchSampler": "prompts",
    "RolloutLoader": "prompts",
    "DiffusionServer": "server",
    "ServerEngine": "server",
    "TokenOutput": "server",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_face(__name__, _HOMES)
