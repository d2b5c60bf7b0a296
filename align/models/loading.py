"""Loading models, tokenizers and LoRA adapters for diffusion LMs.

A family with a native implementation (``align.models.family``: LLaDA) loads into it without remote code;
any other family needs ``trust_remote_code=True`` explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from align.errors import UsageError
from align.models.family import family_for

logger = logging.getLogger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}


@contextlib.contextmanager
def quiet_checkpointing_renames():
    """Silence transformers' three FutureWarnings about the renamed gradient-checkpointing names, which
    TRL's generation helper and PEFT's wrapper still read (every rollout, every LoRA start); nothing else."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            category=FutureWarning,
            message="`(is_gradient_checkpointing|gradient_checkpointing_enable|gradient_checkpointing_disable)` "
            "is deprecated",
        )
        yield


def resolve_dtype(dtype: str | torch.dtype | None):
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {sorted(_DTYPES)}.")
    return _DTYPES[dtype]


def load_model(
    name_or_path: str,
    *,
    dtype: str | torch.dtype | None = "bfloat16",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    adapter: str | None = None,
    **kwargs,
):
    """Load a diffusion LM (native class for the LLaDA family) and optionally a PEFT adapter on top."""
    config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    torch_dtype = resolve_dtype(dtype)
    family = family_for(config.model_type)
    if family.native and not trust_remote_code:
        model = family.from_pretrained(name_or_path, dtype=torch_dtype, **kwargs)
    else:
        if not trust_remote_code:
            raise ValueError(
                f"{name_or_path} has model_type {config.model_type!r}, which has no native implementation "
                "here; pass trust_remote_code=True (--trust_remote_code) to run the checkpoint's own code."
            )
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModel.from_pretrained(
            name_or_path, dtype=torch_dtype, trust_remote_code=True, **extra, **kwargs
        )
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    return model


def load_tokenizer(name_or_path: str, *, trust_remote_code: bool = False, chat_off: str | None = None):
    """Load the tokenizer; left padding, since prompts are left-padded before the generation canvas.
    ``chat_off``: prompts will go through its chat template, and this is how the user turns that off (a
    tokenizer without a template is then refused in one line naming it)."""
    if os.path.isdir(name_or_path) and not any(
        os.path.exists(os.path.join(name_or_path, f))
        for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        raise UsageError(
            f"{name_or_path} has no tokenizer (no tokenizer.json / tokenizer_config.json): copy the base model's "
            "tokenizer files into it (a LoRA export or a checkpoint-N folder has them when saved by align)."
        )
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "left"
    if chat_off is not None and not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            f"{name_or_path} has no chat template (none in its tokenizer files), and prompts are formatted as chat; "
            f"give plain-text prompts ({chat_off}) or add the chat template (chat_template.jinja) of the model it "
            "was trained from."
        )
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
