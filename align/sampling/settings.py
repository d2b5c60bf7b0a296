"""The sampler's settings as one torch-free value: what a rollout engine is asked to decode with.

Built by the GRPO config (``SamplerSettings.from_rollout_fields``), by the evaluation protocols
(``Protocol.sampler``) and by ``align generate`` (through its protocol); ``align.sampling.generate`` takes
it as ``settings=``. Protocol-only behaviour (iLLaDA's end-of-thinking boost) is not a sampler setting:
the protocol hands the sampler a logits hook instead.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerSettings:
    gen_length: int  # canvas tokens (the budget with variable_length)
    steps: int  # denoising steps over gen_length
    block_length: int  # semi-autoregressive block
    temperature: float = 0.0  # 0: greedy
    remasking: str = "low_confidence"  # or "random"
    cfg_scale: float = 0.0  # classifier-free guidance
    threshold: float | None = None  # Fast-dLLM parallel decoding: commit every token above it
    cache: str | None = None  # None, "prefix" or "dual" (Fast-dLLM's KV caches)
    cache_refresh: int | None = None  # full passes every this many steps inside a block
    variable_length: bool = False  # grow the canvas block by block until EOS

    @classmethod
    def from_rollout_fields(cls, c) -> SamplerSettings:
        """The GRPO recipe's rollout fields (``max_completion_length``, ``diffusion_steps``, ...)."""
        return cls(gen_length=c.max_completion_length, steps=c.diffusion_steps, block_length=c.block_length,
                   temperature=c.temperature, remasking=c.remasking, cfg_scale=c.cfg_scale, threshold=c.threshold,
                   cache=c.cache, cache_refresh=c.cache_refresh)  # fmt: skip

    def replace(self, **fields) -> SamplerSettings:
        return dataclasses.replace(self, **fields)

    def as_kwargs(self) -> dict:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        """One line: the mode, e.g. 'fixed-step reference (8 steps, block 8)' or the fast mode's settings."""
        from align.sampling.diffusion import describe_mode

        return describe_mode(self.gen_length, self.steps, self.block_length, self.threshold, self.cache,
                             self.cache_refresh)  # fmt: skip
