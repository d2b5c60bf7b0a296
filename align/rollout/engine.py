"""Rollout engines: what turns prompt ids into completions for the trainer, evaluation and ``align generate``.

The seam (TRL keeps generation in a class of its own, verl puts rollouts behind a registered base
class): a ``RolloutEngine`` decodes ``prompt_ids`` [B, P] (left-padded, ``attention_mask`` [B, P]) under a
``SamplerSettings`` with a seeded generator and returns an ``align.sampling.GenerationOutput``
(``completion_ids`` [B, gen_length], ``commit_step`` [B, gen_length] for the trace estimator, forward-pass
counts). ``sync_weights(model)`` is called with the policy before each rollout phase: an engine in this
process reads the live weights and has nothing to do; an engine in a server receives them there.
``describe()`` says what it is (logged once).

Engines register by name (``@register_engine("name")``); ``build_engine(name, **options)`` makes one. A new
backend is one new module that registers itself; the trainer does not change.
"""

from __future__ import annotations

import contextlib
import importlib

from align.sampling.settings import SamplerSettings

ENGINES: dict[str, type] = {}


def register_engine(name: str):
    def wrap(cls):
        cls.name = name
        ENGINES[name] = cls
        return cls

    return wrap


_MODULES = {"server": "align.rollout.server"}  # engines whose module registers them when imported


def build_engine(name: str, **options):
    if name not in ENGINES and name in _MODULES:
        importlib.import_module(_MODULES[name])
    if name not in ENGINES:
        raise ValueError(f"rollout engine {name!r} is not one of {sorted(ENGINES)}.")
    return ENGINES[name](**options)


class RolloutEngine:
    """The interface (module docstring)."""

    name = "base"

    def generate(
        self, prompt_ids, attention_mask, settings: SamplerSettings, *, generator=None, on_block=None, **hooks
    ):
        """``GenerationOutput`` for the prompts; ``on_block(done, total)`` reports progress; ``hooks`` are
        protocol behaviour the sampler offers (e.g. the end-of-thinking boost's ids and size)."""
        raise NotImplementedError

    def sync_weights(self, model) -> None:
        """Make the next ``generate`` decode with ``model``'s current weights."""

    def describe(self) -> dict:
        return {"engine": self.name}


@register_engine("in_process")
class InProcessEngine(RolloutEngine):
    """``align.sampling`` on a model in this process. ``model_context()`` yields the module to decode with
    (under ZeRO-3 the gathered policy; default: ``model`` itself); ``rows_per_call`` bounds the rows of one
    sampler call (None: all at once). The same generator runs the chunks one after another."""

    def __init__(self, spec, *, model=None, model_context=None, rows_per_call: int | None = None):
        if model is None and model_context is None:
            raise ValueError("InProcessEngine needs a model or a model_context.")
        self.spec, self.model, self.rows_per_call = spec, model, rows_per_call
        self.model_context = model_context or (lambda: contextlib.nullcontext(self.model))

    def sync_weights(self, model) -> None:
        if self.model is not None:
            self.model = model

    def generate(
        self, prompt_ids, attention_mask, settings: SamplerSettings, *, generator=None, on_block=None, **hooks
    ):

        with self.model_context() as model:
            return self.decode(
                model, prompt_ids, attention_mask, settings, generator=generator, on_block=on_block, **hooks
            )

    def decode(
        self,
        model,
        prompt_ids,
        attention_mask,
        settings: SamplerSettings,
        *,
        generator=None,
        on_block=None,
        **hooks,
    ):
        """``generate`` with a model already entered (a caller that holds the context for several calls)."""
        from align.sampling import generate_in_chunks
        from align.sampling.hooks import SamplerHooks

        return generate_in_chunks(
            model,
            prompt_ids,
            attention_mask,
            settings,
            rows_per_call=self.rows_per_call,
            spec=self.spec,
            generator=generator,
            hooks=SamplerHooks.of(**hooks),
            on_block=on_block,
        )

    def describe(self) -> dict:
        return {"engine": self.name, "rows_per_call": self.rows_per_call}
