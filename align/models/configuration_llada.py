"""Configuration of the LLaDA family (LLaDA, LLaDA-1.5, iLLaDA) under the official OLMo-style field names.

An official ``config.json`` (GSAI-ML/LLaDA-8B-Instruct, GSAI-ML/iLLaDA-8B-Instruct) loads unchanged:
fields this implementation does not use (``alibi``, ``init_fn``, ``flash_attention``, ...) are kept as
attributes and written back on save. Fields that would change the architecture into something this
implementation does not compute (ALiBi, LayerNorm instead of RMSNorm, no RoPE, norm biases, scaled logits or
embeddings, QK norms, another activation or block layout, grouped blocks) are rejected here rather than
silently ignored.
"""

from __future__ import annotations

from transformers import PretrainedConfig


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
    keys_to_ignore_at_inference = ["kv_cache"]

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_kv_heads: int | None = None,
        n_layers: int = 32,
        mlp_hidden_size: int = 12288,
        vocab_size: int = 126464,
        embedding_size: int | None = None,
        max_sequence_length: int = 4096,
        rope_theta: float = 500000.0,
        rms_norm_eps: float = 1e-5,
        weight_tying: bool = False,
        include_bias: bool = False,
        include_qkv_bias: bool = False,
        init_std: float = 0.02,
        mask_token_id: int = 126336,
        eos_token_id: int | None = 126081,
        pad_token_id: int | None = 126081,
        bos_token_id: int | None = 126080,
        eot_token_id: int | None = None,
        **kwargs,
    ):
        for field, allowed in (("alibi", (False, None)), ("rope", (True, None))):
            if kwargs.get(field, allowed[0]) not in allowed:
                raise ValueError(
                    f"LLaDAConfig: {field}={kwargs[field]!r} is not supported by the native implementation "
                    f"(it computes RoPE attention without ALiBi); use trust_remote_code for this checkpoint."
                )
        if kwargs.get("layer_norm_type", "rms") not in ("rms", "default_rms", None):
            raise ValueError(
                f"LLaDAConfig: layer_norm_type={kwargs['layer_norm_type']!r} is not supported (only 'rms')."
            )
        _reject_uncomputed(include_bias, kwargs)
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads or n_heads % n_kv_heads:
            raise ValueError(
                f"LLaDAConfig: d_model {d_model} must be divisible by n_heads {n_heads}, and n_heads by "
                f"n_kv_heads {n_kv_heads}."
            )
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.n_layers = n_layers
        self.mlp_hidden_size = mlp_hidden_size
        self.vocab_size = vocab_size
        self.embedding_size = embedding_size or vocab_size
        self.max_sequence_length = max_sequence_length
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.weight_tying = weight_tying
        self.include_bias = include_bias
        self.include_qkv_bias = include_qkv_bias
        self.init_std = init_std
        self.mask_token_id = mask_token_id
        self.eot_token_id = eot_token_id
        kwargs.pop("tie_word_embeddings", None)
        super().__init__(
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            tie_word_embeddings=weight_tying,
            **kwargs,
        )
        refuse_pad_as_mask("LLaDAConfig", self.pad_token_id, mask_token_id)

    # Standard transformers names, so generic tooling (peft, accelerate, DeepSpeed auto-config) works.
    @property
    def hidden_size(self) -> int:
        return self.d_model

    @property
    def num_attention_heads(self) -> int:
        return self.n_heads

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layers

    @property
    def num_key_value_heads(self) -> int:
        return self.n_kv_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


def refuse_uncomputed(name: str, rope_scaling, use_sliding_window: bool, hidden_act: str) -> None:
    """One line for the Qwen-style settings the native Dream / SDAR models do not compute."""
    if rope_scaling not in (None, {}) and (rope_scaling or {}).get("rope_type", "default") != "default":
        raise ValueError(
            f"{name}: rope_scaling={rope_scaling!r} is not computed by the native implementation "
            "(plain RoPE only); use trust_remote_code for this checkpoint."
        )
    for field, value, allowed in (
        ("use_sliding_window", use_sliding_window, (False,)),
        ("hidden_act", hidden_act, ("silu",)),
    ):
        if value not in allowed:
            raise ValueError(
                f"{name}: {field}={value!r} is not computed by the native implementation (it has "
                f"{allowed[0]!r}); use trust_remote_code for this checkpoint."
            )


def refuse_pad_as_mask(name: str, pad_token_id: int | None, mask_token_id: int) -> None:
    if pad_token_id is not None and pad_token_id == mask_token_id:
        raise ValueError(
            f"{name}: pad_token_id equals mask_token_id ({mask_token_id}); padding would be read as masked "
            "positions. Set pad_token_id to the EOS id or another non-mask id."
        )


# OLMo-style fields that would change what the network computes; the LLaDA checkpoints use the first value.
_COMPUTED = {
    "bias_for_layer_norm": ((False,), "biases in the RMS norms"),
    "scale_logits": ((False, None), "logits scaled by 1/sqrt(d_model)"),
    "input_emb_norm": ((False, None), "embeddings scaled by sqrt(d_model)"),
    "attention_layer_norm": ((False, None), "query/key layer norms"),
    "activation_type": (("silu", None), "an MLP activation other than silu(ff_proj(x)) * up_proj(x)"),
    "block_type": (("llama", None), "a block layout other than LLaDA's llama block (separate q/k/v, ff/up)"),
    "block_group_size": ((1, None), "grouped blocks (their weights are named block_groups.*)"),
}


def _reject_uncomputed(include_bias: bool, kwargs: dict) -> None:
    """Refuse a config whose fields this implementation would load and then silently not compute."""
    values = dict(kwargs)
    if values.get("bias_for_layer_norm") is None:  # OLMo: None inherits include_bias
        values["bias_for_layer_norm"] = include_bias
    for name, (allowed, meaning) in _COMPUTED.items():
        if name in values and values[name] not in allowed:
            raise ValueError(
                f"LLaDAConfig: {name}={values[name]!r} means {meaning}, which the native implementation does not "
                f"compute (it supports {name}={allowed[0]!r}); load this checkpoint with trust_remote_code."
            )
