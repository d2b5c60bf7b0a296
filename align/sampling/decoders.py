"""The decoders, registered by schedule kind (torch-free until one runs).

Each decoder module registers one :class:`Decoder` at import: the schedules (``remasking`` values) it runs, the
attention its models must have, and the hooks (``align.sampling.hooks``) it honours. ``decoder_for`` imports the
modules named in ``DECODER_MODULES`` and finds the one that runs a schedule; ``align.sampling.generate``
dispatches through it. Adding a family's decoder touches its own module and this list only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DECODER_MODULES = ("align.sampling.diffusion", "align.sampling.dream", "align.sampling.block")


@dataclass(frozen=True)
class Decoder:
    kind: str  # e.g. "llada_blocks"
    schedules: tuple[str, ...]  # the remasking values it runs
    attention: str  # "full" (bidirectional over the canvas) or "block_causal"
    hooks: frozenset[str]  # the SamplerHooks fields it honours
    # run(model, input_ids, attention_mask, settings, *, spec, generator, hooks, on_block) -> GenerationOutput
    run: Callable


_REGISTRY: dict[str, Decoder] = {}


def register(decoder: Decoder) -> Decoder:
    taken = {s: d.kind for d in _REGISTRY.values() if d.kind != decoder.kind for s in d.schedules}
    clash = sorted(s for s in decoder.schedules if s in taken)
    if clash:
        raise ValueError(
            f"decoder {decoder.kind!r}: schedules {clash} are already run by {taken[clash[0]]!r}."
        )
    _REGISTRY[decoder.kind] = decoder
    return decoder


def decoders() -> dict[str, Decoder]:
    """Every registered decoder by kind (importing the decoder modules)."""
    import importlib

    for module in DECODER_MODULES:
        importlib.import_module(module)
    return dict(_REGISTRY)


def decoder_for(schedule: str) -> Decoder:
    for decoder in decoders().values():
        if schedule in decoder.schedules:
            return decoder
    known = [s for d in _REGISTRY.values() for s in d.schedules]
    raise ValueError(f"remasking {schedule!r} is not one of {tuple(known)}.")


def check_hooks(decoder: Decoder, schedule: str, hooks) -> None:
    """One line for a hook the decoder would not honour (instead of ignoring it)."""
    refused = [name for name in hooks.given() if name not in decoder.hooks]
    if refused:
        raise ValueError(
            f"remasking {schedule!r} ({decoder.kind} decoder) takes no {', '.join(refused)}; it honours "
            f"{', '.join(sorted(decoder.hooks)) or 'no hooks'}: unset {refused[0]}."
        )
