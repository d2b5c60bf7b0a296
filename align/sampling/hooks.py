"""What a caller adds around the sampler's settings for one call (torch-free): protocol behaviour and token
rules that are not a recipe's rollout fields, so they never enter a run's fingerprint.

A decoder declares which of these it honours (``align.sampling.decoders``); ``generate`` refuses the others in
one line instead of ignoring them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplerHooks:
    # logits_hook(logits [B, block, V], canvas, masked [B, block], completion_start, block_offset, budgets=[B])
    # may change a block's logits in place before a step samples (iLLaDA's end-of-thinking boost)
    logits_hook: Callable | None = None
    # stop_check(completions [R, n]) -> [R] bool: variable-length rows done after a block (default: a stop id)
    stop_check: Callable | None = None
    max_length: int | None = None  # the model's context: variable-length budgets shrink to fit each prompt
    suppress_token_ids: tuple[int, ...] = ()  # logit -inf: never emitted
    deprioritize_token_ids: tuple[int, ...] = ()  # confidence 0: committed last
    # LLaDA's confidence_eos_eot_inf (its generate.py, used by its OpenCompass evaluation): the token is chosen
    # from the logits as they are, then these ids get logit -inf in the confidence softmax, so a chosen one has
    # confidence 0 and every other token's confidence is renormalised without them (not deprioritize_token_ids,
    # which leaves the other confidences as they are)
    confidence_excluded_ids: tuple[int, ...] = ()

    @classmethod
    def of(cls, **hooks) -> SamplerHooks:
        """From keywords, None values left at their defaults (an engine's ``**hooks``)."""
        unknown = set(hooks) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown sampler hooks {sorted(unknown)}; the sampler takes {cls.names()}.")
        ids = ("suppress_token_ids", "deprioritize_token_ids", "confidence_excluded_ids")
        given = {k: tuple(v) if k in ids else v for k, v in hooks.items() if v is not None}
        return cls(**given)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def given(self) -> list[str]:
        """The hooks this call sets (not at their defaults)."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]


NO_HOOKS = SamplerHooks()
