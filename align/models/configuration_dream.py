"""Configuration of the Dream family (Dream-v0-Instruct-7B, DiffuCoder-7B) under the hub's own field names.

An official ``config.json`` (Dream-org/Dream-v0-Instruct-7B, apple/DiffuCoder-7B-Instruct) loads unchanged
and without remote code: ``model_type`` is "Dream" (capital D, as the checkpoints spell it), the fields
are Qwen2.5's, and ``mask_token_id`` (151666 on the hub) is read from here, never assumed. Settings the
native implementation does not compute (RoPE scaling, sliding-window attention, another activation) are
rejected here rather than silently ignored; ``auto_map`` / ``attn_implementation`` are kept and unused.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from align.models.configuration_llada import refuse_pad_as_mask, refuse_uncomputed


class DreamConfig(PretrainedConfig):
    model_type = "Dream"

    def __init__(
        self,
        vocab_size: int = 152064,
        hidden_size: int = 3584,
        intermediate_size: int = 18944,
        num_hidden_layers: int = 28,
        num_attention_heads: int = 28,
        num_key_value_heads: int | None = 4,
        hidden_act: str = "silu",
        max_position_embeddings: int = 131072,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = False,
        rope_theta: float = 1000000.0,
        rope_scaling: dict | None = None,
        use_sliding_window: bool = False,
        attention_dropout: float = 0.0,
        mask_token_id: int = 151666,
        pad_token_id: int | None = 151643,
        bos_token_id: int | None = 151643,
        eos_token_id: int | None = 151643,
        **kwargs,
    ):
        num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        if hidden_size % num_attention_heads or num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"DreamConfig: hidden_size {hidden_size} must be divisible by num_attention_heads "
                f"{num_attention_heads}, and num_attention_heads by num_key_value_heads {num_key_value_heads}."
            )
        refuse_uncomputed("DreamConfig", rope_scaling, use_sliding_window, hidden_act)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.use_sliding_window = use_sliding_window
        self.attention_dropout = attention_dropout
        self.mask_token_id = mask_token_id
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        refuse_pad_as_mask("DreamConfig", self.pad_token_id, mask_token_id)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads
