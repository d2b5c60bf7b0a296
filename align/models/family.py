"""Model families: what the sampler, the estimators, the planner, SFT and LoRA need to know about a model.

A ``Family`` (registered by ``model_type`` with ``register_family``) states its logits convention, how it
is called (attention inputs, the window of positions whose logits are wanted), its KV-cache forward, the
names of its linear layers for LoRA and their shapes for the planner, and how a model of it is built from
a config file; the rest of the library asks the family, never a family literal. ``FamilySpec`` adds the
token ids read from the config and tokenizer (LLaDA's mask is 126336, iLLaDA's is 5, Dream's is 151666:
none is a literal anywhere). Dream-style models predict token i from position i-1 (AR-style shift);
``model_logits`` undoes that so every caller sees "logit i predicts token i".

Three families are native: LLaDA (and iLLaDA, LLaDA-1.5, through their configs), Dream (Dream-v0,
DiffuCoder; ``model_type`` "Dream") and SDAR (SDAR, TraDo: block diffusion, block-causal attention). A model type without a registered family gets the generic one (the
usual transformers names, full forward, no cache, no shift). A new family is one registered class plus
``tests/test_families.py``'s conformance checks passing for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EOT_TOKENS = ("<|eot_id|>", "<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class FamilySpec:
    """Token ids and conventions of one diffusion-LM family (read from config/tokenizer, never literals)."""

    model_type: str
    mask_token_id: int
    eos_token_id: int | None = None
    eot_token_id: int | None = None
    pad_token_id: int | None = None
    block_size: int | None = None  # block-diffusion families: the model's block size (else None)

    @property
    def stop_token_ids(self) -> tuple[int, ...]:
        return tuple(i for i in (self.eos_token_id, self.eot_token_id) if i is not None)

    @property
    def family(self) -> Family:
        return family_for(self.model_type)

    @property
    def shift_logits(self) -> bool:
        return self.family.shift_logits


class Family:
    """The generic family (any transformers masked-diffusion model); subclasses override what differs."""

    name = "generic"
    model_types: tuple[str, ...] = ()
    shift_logits = False
    supports_cache = False
    native = False  # an implementation in align.models (else the checkpoint's own code, trust_remote_code)
    block_causal = False  # attention causal across blocks (block diffusion): decoded by align.sampling.block
    # LoRA targets and their (in, out) shapes from (d_model, kv_dim, mlp_hidden): the usual transformers names
    lora_targets: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )

    def lora_shapes(self, d: int, kv: int, h: int, q: int | None = None) -> dict[str, tuple[int, int]]:
        """(in, out) per LoRA target from d_model, the k/v width, the MLP width and the q / attention-output width
        (heads x head_dim; d_model unless the config has an explicit head_dim, e.g. SDAR-4B: 4096 vs 2560)."""
        q = d if q is None else q
        return {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "o_proj": (q, d),
            "gate_proj": (d, h),
            "up_proj": (d, h),
            "down_proj": (h, d),
        }

    def forward(self, model, input_ids, attention_mask=None, logits_range=None, **kwargs):
        """The model's output with ``logits`` [B, L, V] (or [B, end - start, V] for ``logits_range``), logit i
        predicting token i."""
        out = model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if self.shift_logits:
            logits = out.logits
            out.logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        if logits_range is not None:
            out.logits = out.logits[:, logits_range[0] : logits_range[1]]
        return out

    def noised_forward(self, model, clean_ids, noisy_ids, attention_mask=None, logits_range=None):
        """Logits of a noised canvas (logit i predicts token i) for the likelihood estimators and SFT;
        ``clean_ids`` is the same canvas unmasked. Full-attention families read the noised canvas alone."""
        return self.forward(model, noisy_ids, attention_mask, logits_range=logits_range)

    def cached_forward(self, model, segment_ids, attention_mask, kv_cache, cache_start: int, logits_range):
        """Logits of ``segment_ids`` (canvas positions from ``cache_start``) with ``kv_cache`` serving the
        positions outside it; ``attention_mask`` covers the whole canvas."""
        raise ValueError(f"model family {self.name!r} has no KV-cache forward; decode with cache None.")

    def shape(self, config) -> dict | None:
        """The planner's shape fields (d, layers, heads, kv_heads, h, v, tied, qkv_bias) from a config it knows,
        else None (the planner then reads the usual transformers names)."""
        return None

    def from_pretrained(self, name_or_path: str, **kwargs):
        """A checkpoint in the native implementation (only families with ``native``)."""
        raise ValueError(f"model family {self.name!r} has no native implementation here.")

    def new_model(self, config_file: str):
        """A randomly initialised model of this family from a config file (SFT from scratch)."""
        raise ValueError(
            f"{config_file}: model family {self.name!r} cannot be built from scratch here; init_config needs a "
            f"family with a native implementation ({', '.join(sorted(FAMILIES))})."
        )


FAMILIES: dict[str, Family] = {}


def register_family(cls: type[Family]) -> type[Family]:
    for model_type in cls.model_types:
        FAMILIES[model_type] = cls()
    return cls


def family_for(model_type: str) -> Family:
    """The registered family of ``model_type`` (case-insensitive: Dream's checkpoints say "Dream"), else the
    generic one."""
    return FAMILIES.get(str(model_type).lower()) or Family()


def new_model(config_file: str):
    """A randomly initialised model of the family named by the config file's ``model_type`` (default llada)."""
    import json

    with open(config_file) as f:
        model_type = json.load(f).get("model_type", "llada")
    return family_for(model_type).new_model(config_file)


@register_family
class LLaDAFamily(Family):
    """The native LLaDA implementation (``align.models.modeling_llada``): LLaDA-8B, LLaDA-1.5, iLLaDA."""

    name = "llada"
    model_types = ("llada",)
    supports_cache = True
    native = True
    lora_targets = ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out")

    def lora_shapes(self, d: int, kv: int, h: int, q: int | None = None) -> dict[str, tuple[int, int]]:
        q = d if q is None else q
        return {
            "q_proj": (d, q),
            "k_proj": (d, kv),
            "v_proj": (d, kv),
            "attn_out": (q, d),
            "ff_proj": (d, h),
            "up_proj": (d, h),
            "ff_out": (h, d),
        }

    def forward(self, model, input_ids, attention_mask=None, logits_range=None, **kwargs):
        if logits_range is not None and _is_native(model):  # the LM head runs on the window only
            return model(
                input_ids=input_ids, attention_mask=attention_mask, logits_range=logits_range, **kwargs
            )
        return super().forward(model, input_ids, attention_mask, logits_range, **kwargs)

    def cached_forward(self, model, segment_ids, attention_mask, kv_cache, cache_start: int, logits_range):
        return model(
            input_ids=segment_ids,
            attention_mask=attention_mask,
            kv_cache=kv_cache,
            cache_start=cache_start,
            logits_range=logits_range,
        )

    def shape(self, config) -> dict | None:
        if getattr(config, "model_type", None) != "llada" or not getattr(config, "d_model", None):
            return None
        return dict(
            d=config.d_model,
            layers=config.n_layers,
            heads=config.n_heads,
            kv_heads=config.n_kv_heads or config.n_heads,
            h=config.mlp_hidden_size,
            v=config.embedding_size or config.vocab_size,
            tied=config.weight_tying,
            qkv_bias=bool(getattr(config, "include_qkv_bias", False)),
        )

    def from_pretrained(self, name_or_path: str, **kwargs):
        from align.models.modeling_llada import LLaDAModelLM

        return LLaDAModelLM.from_pretrained(name_or_path, **kwargs)

    def new_model(self, config_file: str):
        from align.models.configuration_llada import LLaDAConfig
        from align.models.modeling_llada import LLaDAModelLM

        return LLaDAModelLM(LLaDAConfig.from_json_file(config_file))


@register_family
class DreamFamily(Family):
    """The native Dream implementation (``align.models.modeling_dream``): Dream-v0-7B, DiffuCoder-7B.

    The model's raw logit i predicts token i + 1; ``forward`` aligns them (logit i predicts token i, the
    first position repeating raw logit 0, as Dream's sampler does), also inside a ``logits_range`` window,
    where the head then runs on the window's shifted positions only."""

    name = "dream"
    model_types = ("dream",)
    shift_logits = True
    native = True

    def forward(self, model, input_ids, attention_mask=None, logits_range=None, **kwargs):
        kwargs.pop("use_cache", None)  # no KV cache for this family (the sampler refuses cache modes)
        if logits_range is None or not _is_native(model, "dream"):  # remote code: shift, then slice
            return super().forward(model, input_ids, attention_mask, logits_range, **kwargs)
        start, end = logits_range
        lo, hi = max(start - 1, 0), max(end - 1, 1)  # aligned logit i is raw logit max(i - 1, 0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, logits_range=(lo, hi), **kwargs)
        if start == 0 and end >= 2:
            out.logits = torch.cat([out.logits[:, :1], out.logits], 1)
        return out

    def shape(self, config) -> dict | None:
        if str(getattr(config, "model_type", "")).lower() != "dream":
            return None
        return dict(
            d=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads or config.num_attention_heads,
            h=config.intermediate_size,
            v=config.vocab_size,
            tied=bool(config.tie_word_embeddings),
            qkv_bias=True,
        )

    def from_pretrained(self, name_or_path: str, **kwargs):
        from align.models.modeling_dream import DreamLM

        return DreamLM.from_pretrained(name_or_path, **kwargs)

    def new_model(self, config_file: str):
        from align.models.configuration_dream import DreamConfig
        from align.models.modeling_dream import DreamLM

        return DreamLM(DreamConfig.from_json_file(config_file))


@register_family
class SDARFamily(Family):
    """The native SDAR implementation (``align.models.modeling_sdar``): SDAR-*-Chat, TraDo-* (block diffusion).

    Logits are not shifted; attention is block-causal, so these models decode block by block with an exact
    KV cache (``align.sampling.block``) and their likelihoods condition each block on clean earlier blocks.
    The hub configs carry no block size: ``default_block_size`` is the one the checkpoints were trained with
    (a config's ``block_size`` wins); the mask id comes from the tokenizer's mask token."""

    name = "sdar"
    model_types = ("sdar",)
    native = True
    block_causal = True

    @property
    def default_block_size(self) -> int:
        from align.models.configuration_sdar import TRAINED_BLOCK_SIZE

        return TRAINED_BLOCK_SIZE

    def block_size(self, config) -> int:
        return getattr(config, "block_size", None) or self.default_block_size

    def forward(self, model, input_ids, attention_mask=None, logits_range=None, **kwargs):
        kwargs.pop("use_cache", None)
        if logits_range is not None and _is_native(model, "sdar"):  # the LM head runs on the window only
            return model(
                input_ids=input_ids, attention_mask=attention_mask, logits_range=logits_range, **kwargs
            )
        return super().forward(model, input_ids, attention_mask, logits_range, **kwargs)

    def noised_forward(self, model, clean_ids, noisy_ids, attention_mask=None, logits_range=None):
        """The block-diffusion layout (SDAR's training layout, one forward): the clean canvas, then the noised
        canvas from the block holding the first noised column; a noised token sees the clean tokens of
        earlier blocks and the noised-stream tokens of its own block (a prompt's partial block as the sampler
        shows it). So each block's noise is scored given clean earlier blocks, and any masking plan becomes
        its block-conditional form (tests/test_sdar.py enumerates it)."""
        from align.models.modeling_sdar import two_stream_inputs

        differ = (clean_ids != noisy_ids).any(0).nonzero()
        first = int(differ[0]) if len(differ) else clean_ids.shape[1] - 1
        if logits_range is not None:
            first = min(first, logits_range[0])
        t = clean_ids.shape[1]
        ids, mask, positions, n = two_stream_inputs(
            clean_ids, noisy_ids, attention_mask, first, self.block_size(_unwrap(model).config)
        )
        start = t - n  # the canvas column of the noised stream's first column
        if logits_range is None:  # the whole canvas: the clean stream left of the noised one, then that
            out = model(input_ids=ids, attention_mask=mask, position_ids=positions)
            out.logits = torch.cat([out.logits[:, :start], out.logits[:, t:]], 1)
            return out
        lo, hi = logits_range
        return model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            logits_range=(t + lo - start, t + hi - start),
        )

    def shape(self, config) -> dict | None:
        if getattr(config, "model_type", None) != "sdar":
            return None
        return dict(
            d=config.hidden_size,
            layers=config.num_hidden_layers,
            heads=config.num_attention_heads,
            kv_heads=config.num_key_value_heads or config.num_attention_heads,
            h=config.intermediate_size,
            v=config.vocab_size,
            tied=bool(config.tie_word_embeddings),
            qkv_bias=bool(config.attention_bias),
            head_dim=config.head_dim,
        )

    def from_pretrained(self, name_or_path: str, **kwargs):
        from align.models.modeling_sdar import SDARLM

        return SDARLM.from_pretrained(name_or_path, **kwargs)

    def new_model(self, config_file: str):
        from align.models.configuration_sdar import SDARConfig
        from align.models.modeling_sdar import SDARLM

        return SDARLM(SDARConfig.from_json_file(config_file))


def check_mask_token(name_or_path: str, config, trust_remote_code: bool = False) -> None:
    """One line before any weights are read for a checkpoint that is not a masked diffusion model: one of
    transformers' own causal LM types with no code of its own (an autoregressive model: Qwen2, Llama, ...),
    or a config without ``mask_token_id`` whose tokenizer has no mask token."""
    from align.errors import UsageError

    model_type = str(getattr(config, "model_type", "")).lower()
    architectures = ", ".join(getattr(config, "architectures", None) or [model_type])
    baseline = (
        "an autoregressive baseline is evaluated through its server: align eval --endpoint URL "
        "--served-model NAME"
    )
    if model_type not in FAMILIES and not getattr(config, "auto_map", None):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise UsageError(
                f"{name_or_path} ({architectures}) is an autoregressive model (transformers' "
                f"{model_type}, causal attention), not a masked diffusion model; give a diffusion "
                f"checkpoint (LLaDA, Dream, SDAR, ...); {baseline}."
            )
    if getattr(config, "mask_token_id", None) is not None:
        return
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError):
        return  # no readable tokenizer: the loader says so
    if getattr(tokenizer, "mask_token_id", None) is not None:
        return
    raise UsageError(
        f"{name_or_path} ({architectures}) is not a masked diffusion model: its config has no mask_token_id and "
        f"its tokenizer no mask token. Give a diffusion checkpoint (LLaDA, Dream, SDAR, ...); {baseline}."
    )


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
    family = family_for(model_type)
    return FamilySpec(
        model_type=model_type,
        mask_token_id=int(mask),
        eos_token_id=eos,
        eot_token_id=eot,
        pad_token_id=pad,
        block_size=family.block_size(config) if family.block_causal else None,
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
    if spec is not None:
        family = spec.family
    else:  # no spec: the family of the (unwrapped) model's config
        family = family_for(getattr(getattr(_unwrap(model), "config", None), "model_type", ""))
    return family.forward(model, input_ids, attention_mask, **kwargs)


def noised_logits(model, clean_ids, noisy_ids, attention_mask=None, spec: FamilySpec | None = None, **kwargs):
    """``model_logits`` for a noised canvas whose clean version is ``clean_ids``: the family decides how the
    model reads it (block-diffusion families condition each block on the clean earlier blocks)."""
    if spec is not None:
        family = spec.family
    else:
        family = family_for(getattr(getattr(_unwrap(model), "config", None), "model_type", ""))
    return family.noised_forward(model, clean_ids, noisy_ids, attention_mask, **kwargs)


def _unwrap(model):
    """The model under DDP / DeepSpeed / PEFT wrappers (at most five deep)."""
    for _ in range(5):
        if hasattr(model, "get_base_model"):  # PEFT
            model = model.get_base_model()
            continue
        inner = getattr(model, "_modules", {}).get("module")  # DDP, DeepSpeed engine
        if inner is None:
            return model
        model = inner
    return model


def _is_native(model, family: str = "llada") -> bool:
    """Whether the (possibly DDP / DeepSpeed / PEFT-wrapped) model is the native class of ``family``."""
    if family == "dream":
        from align.models.modeling_dream import DreamLM as native
    elif family == "sdar":
        from align.models.modeling_sdar import SDARLM as native
    else:
        from align.models.modeling_llada import LLaDAModelLM as native
    return isinstance(_unwrap(model), native)
