"""Configuration of the SDAR block-diffusion family (JetLM/SDAR-*-Chat, Gen-Verse/TraDo-*), hub field names.

An official ``config.json`` (``model_type`` "sdar", Qwen3 fields: explicit ``head_dim``, per-head q/k
RMSNorm, GQA) loads unchanged and without remote code. Two values the model needs are not in the hub
config, and the authors' callers pass them by hand:

* the mask id: the tokenizer's ``mask_token`` (``<|MASK|>``, 151669 on the hub), read by
  ``align.models.family.family_spec`` like every family's; ``mask_token_id`` here overrides it;
* the block size: ``block_size`` here when a config sets it, else the trained block size
  (``TRAINED_BLOCK_SIZE``, 4: SDAR and TraDo were trained with blocks of 4), the one place the number is
  written.

``attn_implementation`` ("flex_attention" on the hub) is kept as ``hub_attn_implementation`` and not
passed on (transformers would refuse it for this class): the native model computes the same block-causal
attention with SDPA. RoPE scaling, sliding windows and another activation are refused.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from align.models.configuration_llada import refuse_pad_as_mask, refuse_uncomputed

TRAINED_BLOCK_SIZE = 4  # SDAR's and TraDo's training block (the hub configs do not carry it)


class SDARConfig(PretrainedConfig):
    model_type = "sdar"

    def __init__(
        self,
        vocab_size: int = 151936,
        hidden_size: int = 4096,
        intermediate_size: int = 12288,
        num_hidden_layers: int = 36,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = 8,
        head_dim: int = 128,
        hidden_act: str = "silu",
        max_position_embeddings: int = 32768,
        initializer_range: float = 0.02,
        rms_norm_eps: float = 1e-6,
        tie_word_embeddings: bool = False,
        rope_theta: float = 1000000.0,
        rope_scaling: dict | None = None,
        attention_bias: bool = False,
        use_sliding_window: bool = False,
        attention_dropout: float = 0.0,
        block_size: int | None = None,
        mask_token_id: int | None = None,
        pad_token_id: int | None = 151643,
        bos_token_id: int | None = 151643,
        eos_token_id: int | None = 151643,
        **kwargs,
    ):
        num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        if num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"SDARConfig: num_attention_heads {num_attention_heads} must be divisible by "
                f"num_key_value_heads {num_key_value_heads}."
            )
        refuse_uncomputed("SDARConfig", rope_scaling, use_sliding_window, hidden_act)
        if block_size is not None and block_size < 1:
            raise ValueError(f"SDARConfig: block_size {block_size} must be a positive number of tokens.")
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.hidden_act = hidden_act
        self.max_position_embeddings = max_position_embeddings
        self.initializer_range = initializer_range
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.attention_bias = attention_bias
        self.use_sliding_window = use_sliding_window
        self.attention_dropout = attention_dropout
        self.block_size = block_size
        self.mask_token_id = mask_token_id
        # The hub configs ask for flex_attention, which transformers refuses for a class that does not declare it:
        # the family decides (the native model computes the same block-causal attention with SDPA).
        self.hub_attn_implementation = kwargs.pop("attn_implementation", None)
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            **kwargs,
        )
        if mask_token_id is not None:
            refuse_pad_as_mask("SDARConfig", self.pad_token_id, mask_token_id)
