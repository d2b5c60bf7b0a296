"""The sampler's settings as one torch-free value: what a rollout engine is asked to decode with.

Built by the GRPO config (``SamplerSettings.from_rollout_fields``), by the evaluation protocols
(``Protocol.sampler``) and by ``align generate`` (through its protocol); ``align.sampling.generate`` takes
it as ``settings=``. Protocol-only behaviour (iLLaDA's end-of-thinking boost) is not a sampler setting:
the protocol hands the sampler a logits hook instead.
"""

from __future__ import annotations

import dataclasses
import math
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
        """One line naming the decoding mode, e.g. ``threshold 0.9 + dual cache (refresh after 8 commits),
        256 tokens in blocks of 32, at most 128 passes``."""
        parts = []
        if self.threshold is not None:
            parts.append(f"threshold {self.threshold:g}")
        if self.cache is not None:
            refresh = f" (refresh after {self.cache_refresh} commits)" if self.cache_refresh else ""
            parts.append(f"{self.cache} cache{refresh}")
        name = " + ".join(parts) or "reference"
        bound = "at most " if self.threshold is not None or self.variable_length else ""
        grow = "variable length up to " if self.variable_length else ""
        return f"{name}, {grow}{self.gen_length} tokens in blocks of {self.block_length}, {bound}{self.steps} passes"


def check_schedule(gen_length: int, steps: int, block_length: int,
                   names: tuple[str, str, str] = ("gen_length", "steps", "block_length")) -> None:  # fmt: skip
    """Block/step arithmetic of the sampler; ``names`` are the caller's field names for the messages."""
    g, s, b = names
    if gen_length <= 0 or block_length <= 0 or steps <= 0:
        raise ValueError(f"{g} ({gen_length}), {b} ({block_length}) and {s} ({steps}) must be positive.")
    if gen_length % block_length:
        raise ValueError(
            f"{g} {gen_length} is not a multiple of {b} {block_length}; use e.g. "
            f"{g} {math.ceil(gen_length / block_length) * block_length}."
        )
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(
            f"{s} {steps} is not divisible by the number of blocks {num_blocks} "
            f"({g} {gen_length} / {b} {block_length}); use e.g. {s} {max(1, steps // num_blocks) * num_blocks}."
        )
