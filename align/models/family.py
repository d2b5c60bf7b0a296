"""Per-family facts the sampler and estimators need: mask id, stop ids, whether logits are shifted.

Nothing model-specific is a literal anywhere else: LLaDA's mask is 126336, iLLaDA's is 5, Dream's is
151666, and each comes from the model config or the tokenizer. Dream-style models predict token i from
position i-1 (AR-style shift); ``model_logits`` undoes that so every caller sees "logit i predicts
token i".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# model_type -> logits shifted like an AR model?
_SHIFTED_FAMILIES = {"dream": True, "llada": False, "llada_moe": False, "lladamoe": False}
_EOT_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class FamilySpec:
    """Token ids and conventions of one diffusion-LM family (read from config/tokenizer, never literals)."""

    model_type: str
    mask_token_id: int
    eos_token_id: int | None = None
    eot_token_id: int | None = None
    pad_token_id: int | None = None
    shift_logits: bool = False

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(i for i in (self.eos_token_id, self.eot_token_id) if i is not None)


def _first_id(value) -> int | None:
    if isinstance(value, (list, tuple)):
        return int(value[0]) if value else None
    return None if value is None else int(value)


def family_spec(model_or_config, tokenizer=None, mask_token_id: int | None = None) -> FamilySpec:
    """Build the spec from a model (or its config) and optionally its tokenizer; explicit ids win."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = str(getattr(config, "model_type", "")).lower()
    mask = mask_token_id if mask_token_id is not None else getattr(config, "mask_token_id", None)
    if mask is None and tokenizer is not None:
        mask = getattr(tokenizer, "mask_token_id", None)
    if mask is None:
        raise ValueError(
            f"No mask token id for model_type {model_type!r}: the config has no mask_token_id and the "
            "tokenizer no mask token. Pass mask_token_id explicitly (e.g. --mask_token_id)."
        )
    eos = _first_id(getattr(config, "eos_token_id", None))
    pad = _first_id(getattr(config, "pad_token_id", None))
    eot = _first_id(getattr(config, "eot_token_id", None))
    if tokenizer is not None:
        eos = eos if eos is not None else tokenizer.eos_token_id
        pad = pad if pad is not None else tokenizer.pad_token_id
        if eot is None:
            vocab = tokenizer.get_vocab()
            eot = next((vocab[t] for t in _EOT_TOKENS if t in vocab and vocab[t] != eos), None)
    return FamilySpec(
        model_type=model_type,
        mask_token_id=int(mask),
        eos_token_id=eos,
        eot_token_id=eot,
        pad_token_id=pad,
        shift_logits=_SHIFTED_FAMILIES.get(model_type, False),
    )


def model_logits(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    spec: FamilySpec | None = None,
    **kwargs,
):
    """Run the model and return its output with ``logits`` [B, L, V] aligned so logit i predicts token i.

    ``logits_range=(start, end)`` returns logits [B, end - start, V] of those positions only; the native
    LLaDA class (also under DDP / DeepSpeed / PEFT wrappers) then skips the LM head elsewhere, other models
    compute everything and are sliced.
    """
    window = kwargs.pop("logits_range", None)
    shifted = spec is not None and spec.shift_logits
    if window is not None and not shifted and _is_native(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, logits_range=window, **kwargs)
    out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
    if shifted:
        logits = out.logits
        out.logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    if window is not None:
        out.logits = out.logits[:, window[0] : window[1]]
    return out


def _is_native(model) -> bool:
    """Whether the (possibly DDP / DeepSpeed / PEFT-wrapped) model is the native LLaDA class."""
    from align.models.modeling_llada import LLaDAModelLM

    for _ in range(5):
        if isinstance(model, LLaDAModelLM):
            return True
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
            continue
        inner = getattr(model, "_modules", {}).get("module")  # DDP, DeepSpeed engine
        if inner is None:
            return False
        model = inner
    return False
