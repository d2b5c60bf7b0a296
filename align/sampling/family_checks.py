"""Whether decoding and estimation settings suit a model's family, checked before any work is done (one line
each): the sampler's schedules declare the attention they need (``BLOCK_SCHEDULES``: block-causal models), the
family declares the attention it has (``Family.block_causal``) and its cache support."""

from __future__ import annotations

from typing import TYPE_CHECKING

from align.logprob.kinds import KINDS
from align.sampling.settings import BLOCK_SCHEDULES

if TYPE_CHECKING:
    from align.models.family import FamilySpec


def check_family_settings(
    spec: FamilySpec,
    *,
    cache: str | None = None,
    remasking: str | None = None,
    block_length: int | None = None,
    estimator: str | None = None,
) -> None:
    """One line when a setting needs what the model's family lacks or contradicts the model (before any
    work is done): a cache mode it cannot run, a schedule for the other kind of attention, a block length
    that is not a block model's block size, an estimator of the other kind."""
    from align.errors import UsageError

    family = spec.family
    what = f"the {family.name} family (model_type {spec.model_type!r})"
    if family.block_causal:
        if cache is not None:
            raise UsageError(
                f"cache {cache!r} is Fast-dLLM's approximate cache for full attention; {what} decodes block by "
                "block with its own exact cache: set cache to None."
            )
        if remasking is not None and remasking not in BLOCK_SCHEDULES:
            raise UsageError(
                f"remasking {remasking!r} denoises the whole canvas at once, which {what} (block-causal attention) "
                f"was not trained for: use one of {', '.join(BLOCK_SCHEDULES)}."
            )
        size = spec.block_size or family.default_block_size
        if block_length is not None and block_length != size:
            raise UsageError(
                f"block_length {block_length} contradicts the model's block size {size} ({what}): set block_length "
                f"{size}."
            )
        kind = KINDS.get(estimator)
        if kind is not None and kind.attention == "full":  # its declaration (align.logprob.kinds)
            raise UsageError(
                f"estimator {estimator} replays one pass per sampler step over the whole canvas; for {what} use "
                "estimator block_trace (TraceRL's block rows: every block's next step in one pass)."
                if kind.replays
                else f"estimator {estimator} cuts a full-attention canvas at each block; {what} is block-causal, so "
                "every estimator already conditions each block on clean earlier blocks only: use elbo, coupled or "
                "block_trace."
            )
        return
    if remasking in BLOCK_SCHEDULES:
        raise UsageError(
            f"remasking {remasking!r} is a block-diffusion schedule; {what} has full attention (no block-causal "
            "model): use low_confidence."
        )
    if estimator in KINDS and KINDS[estimator].attention == "block":
        raise UsageError(
            f"estimator {estimator} is for block-diffusion models; {what} has full attention: use trace."
        )
    if cache is not None and not family.supports_cache:
        raise UsageError(
            f"cache {cache!r} needs a KV-cache forward, which the {family.name} family (model_type "
            f"{spec.model_type!r}) does not have: set cache to None (threshold decoding works without it)."
        )


def check_checkpoint_settings(name_or_path: str, *, trust_remote_code: bool = False, **settings) -> None:
    """``check_family_settings`` from a checkpoint's config alone (before its weights are loaded); a config
    that cannot be read here is left to the loader's own message."""
    from transformers import AutoConfig

    from align.models.family import FamilySpec, check_mask_token, family_for

    try:
        config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return
    model_type = str(getattr(config, "model_type", "")).lower()
    family = family_for(model_type)
    check_mask_token(name_or_path, config, trust_remote_code)
    spec = FamilySpec(
        model_type=model_type,
        mask_token_id=-1,
        block_size=family.block_size(config) if family.block_causal else None,
    )
    check_family_settings(spec, **settings)
