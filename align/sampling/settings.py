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

REMASKING = ("low_confidence", "random")  # LLaDA's schedule (align.sampling.diffusion)
DREAM_ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")  # Dream's schedules (align.sampling.dream)
# SDAR's block-diffusion schedules (align.sampling.block): block-causal models only
BLOCK_SCHEDULES = ("low_confidence_static", "low_confidence_dynamic", "sequential")


@dataclass(frozen=True)
class SamplerSettings:
    gen_length: int  # canvas tokens (the budget with variable_length)
    steps: int  # denoising steps over gen_length
    block_length: int  # semi-autoregressive block
    temperature: float = 0.0  # 0: greedy
    remasking: str = "low_confidence"  # or "random"; Dream's schedules (DREAM_ALGS); SDAR's (BLOCK_SCHEDULES)
    cfg_scale: float = 0.0  # classifier-free guidance
    threshold: float | None = None  # Fast-dLLM parallel decoding: commit every token above it
    cache: str | None = None  # None, "prefix" or "dual" (Fast-dLLM's KV caches)
    cache_refresh: int | None = None  # full passes every this many steps inside a block
    variable_length: bool = False  # grow the canvas block by block until EOS
    top_p: float | None = None  # Dream's and SDAR's schedules: nucleus cut of the proposals
    top_k: int | None = None  # Dream's and SDAR's schedules: top-k cut of the proposals
    alg_temp: float | None = None  # Dream's schedules: draw the committed positions at this temperature
    eps: float = 1e-3  # Dream's schedules: the last timestep

    @classmethod
    def from_rollout_fields(cls, c) -> SamplerSettings:
        """The GRPO recipe's rollout fields (``max_completion_length``, ``diffusion_steps``, ...)."""
        return cls(
            gen_length=c.max_completion_length,
            steps=c.diffusion_steps,
            block_length=c.block_length,
            temperature=c.temperature,
            remasking=c.remasking,
            cfg_scale=c.cfg_scale,
            threshold=c.threshold,
            cache=c.cache,
            cache_refresh=c.cache_refresh,
            top_p=c.top_p,
            top_k=c.top_k,
            alg_temp=c.alg_temp,
            eps=c.diffusion_eps,
            variable_length=c.variable_length,
        )

    def check(self, names: tuple[str, str, str] = ("gen_length", "steps", "block_length")) -> None:
        """The schedule's arithmetic and the modes that go with it (``check_decoding``), one line each; ``names``:
        the caller's names for gen_length, steps and block_length (a recipe's, a CLI's)."""
        check_decoding(
            self.remasking,
            self.gen_length,
            self.steps,
            self.block_length,
            names,
            top_p=self.top_p,
            top_k=self.top_k,
            alg_temp=self.alg_temp,
            threshold=self.threshold,
            cache=self.cache,
            cache_refresh=self.cache_refresh,
            cfg_scale=self.cfg_scale,
            variable_length=self.variable_length,
        )

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
        if self.remasking in BLOCK_SCHEDULES:
            cuts = "".join(
                f", {n} {v:g}"
                for n, v in (("top_p", self.top_p), ("top_k", self.top_k), ("threshold", self.threshold))
                if v is not None
            )
            return (
                f"block diffusion {self.remasking}{cuts} + exact block cache, up to {self.gen_length} tokens in "
                f"blocks of {self.block_length}, at most {self.steps} steps"
            )
        if self.remasking in DREAM_ALGS:
            cuts = "".join(
                f", {n} {v:g}"
                for n, v in (("top_p", self.top_p), ("top_k", self.top_k), ("alg_temp", self.alg_temp))
                if v is not None
            )
            return f"Dream {self.remasking}{cuts}, {self.gen_length} tokens in {self.steps} steps"
        name = " + ".join(parts) or "reference"
        bound = "at most " if self.threshold is not None or self.variable_length else ""
        grow = "variable length up to " if self.variable_length else ""
        return f"{name}, {grow}{self.gen_length} tokens in blocks of {self.block_length}, {bound}{self.steps} passes"


def check_schedule(
    gen_length: int,
    steps: int,
    block_length: int,
    names: tuple[str, str, str] = ("gen_length", "steps", "block_length"),
) -> None:
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


def check_decoding(
    remasking: str,
    gen_length: int,
    steps: int,
    block_length: int,
    names: tuple[str, str, str] = ("gen_length", "steps", "block_length"),
    *,
    top_p=None,
    top_k=None,
    alg_temp=None,
    **fast,
) -> None:
    """The schedule's arithmetic and which modes go with it: LLaDA's (``REMASKING``) blocks and steps,
    Dream's (``DREAM_ALGS``) one block without ``fast`` modes (threshold, cache, cfg_scale, variable_length,
    ... as the caller names them), or SDAR's (``BLOCK_SCHEDULES``) blocks with a threshold for the dynamic
    one; ``top_p`` / ``top_k`` belong to Dream's and SDAR's schedules, ``alg_temp`` to Dream's."""
    g, s, b = names
    if remasking not in REMASKING + DREAM_ALGS + BLOCK_SCHEDULES:
        raise ValueError(f"remasking {remasking!r} is not one of {REMASKING + DREAM_ALGS + BLOCK_SCHEDULES}.")
    if remasking in BLOCK_SCHEDULES:
        _check_block(remasking, gen_length, steps, block_length, names, top_p, top_k, alg_temp, fast)
        return
    if remasking in REMASKING:
        if (top_p, top_k, alg_temp) != (None, None, None):
            raise ValueError(
                f"top_p / top_k / alg_temp apply to Dream's schedules (remasking one of {DREAM_ALGS}), not to "
                f"remasking {remasking!r}: unset them or choose a Dream schedule."
            )
        check_schedule(gen_length, steps, block_length, names)
        return
    if gen_length <= 0 or steps <= 0:
        raise ValueError(f"{g} ({gen_length}) and {s} ({steps}) must be positive.")
    if block_length != gen_length:
        raise ValueError(
            f"remasking {remasking!r} (Dream's schedule) decodes the whole canvas as one block: set {b} to "
            f"{g} ({gen_length}), not {block_length}."
        )
    for name, value in fast.items():
        if value not in (None, False, 0, 0.0):
            raise ValueError(
                f"{name}={value!r} is not available with remasking {remasking!r} (Dream's schedule sets the tokens "
                f"per step from its timesteps): unset {name}, or use remasking low_confidence for it."
            )
    if top_k is not None and top_k < 1 or top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_k ({top_k}) must be >= 1 and top_p ({top_p}) in (0, 1], or None (off).")


def _check_block(remasking, gen_length, steps, block_length, names, top_p, top_k, alg_temp, fast) -> None:
    g, s, b = names
    check_schedule(gen_length, steps, block_length, names)
    threshold = fast.get("threshold")
    if remasking == "low_confidence_dynamic" and (threshold is None or not 0 < threshold < 1):
        raise ValueError(
            f"remasking low_confidence_dynamic commits every token above a threshold: set threshold in (0, 1) "
            f"(SDAR's and TraDo's configs use 0.9), not {threshold}."
        )
    if remasking != "low_confidence_dynamic" and threshold is not None:
        raise ValueError(
            f"threshold applies to remasking low_confidence_dynamic, not {remasking!r}: unset it."
        )
    if alg_temp is not None:
        raise ValueError(f"alg_temp applies to Dream's schedules, not to remasking {remasking!r}: unset it.")
    for name, value in fast.items():
        if name not in ("threshold", "variable_length") and value not in (None, False, 0, 0.0, []):
            raise ValueError(
                f"{name}={value!r} is not available with remasking {remasking!r} (block diffusion decodes with its "
                f"own exact block cache): unset {name}."
            )
    if top_k is not None and top_k < 1 or top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_k ({top_k}) must be >= 1 and top_p ({top_p}) in (0, 1], or None (off).")
