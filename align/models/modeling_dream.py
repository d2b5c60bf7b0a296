"""Native Dream-family model (Dream-v0-7B, DiffuCoder-7B): a Qwen2.5 decoder with bidirectional attention.

Parameter names match the official checkpoints (``model.embed_tokens.weight``,
``model.layers.{i}.self_attn.{q,k,v,o}_proj``, ``model.layers.{i}.mlp.{gate,up,down}_proj``,
``model.layers.{i}.{input,post_attention}_layernorm``, ``model.norm``, ``lm_head``), so
``DreamLM.from_pretrained("Dream-org/Dream-v0-Instruct-7B")`` loads the real weights with no remote code.
The arithmetic is the hub file's: q/k/v with biases, o_proj and the SwiGLU MLP without, head_dim =
hidden / heads, GQA, RoPE with cos/sin cast to the activations' dtype (Qwen2.5's convention), RMSNorm in
float32, no causal mask.

The model does **not** shift: ``logits[:, i]`` is the raw output at position i, which Dream trained to
predict token i + 1 (AR-style). Callers go through ``align.models.family`` (``DreamFamily.forward``),
which aligns the logits so that logit i predicts token i, as Dream's own sampler does.

Padding: with a [B, L] ``attention_mask`` (1 = real token) pad keys are excluded and position ids count
real tokens only (the official sampler builds the same [B, 1, L, L] mask and ``cumsum - 1`` positions);
pad queries see the real keys (the official mask gives them none), which changes only pad outputs. A 4-D
mask (bool or additive) is passed to attention as given.

Not covered: a KV cache (Fast-dLLM's caches are refused for this family), RoPE scaling, sliding windows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from align.models.configuration_dream import DreamConfig
from align.models.modeling_llada import LLaDAOutput, LLaDARMSNorm, _attention_bias, _position_ids


def rotary(position_ids: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos/sin [B, 1, S, D] for positions [B, S], computed in float32 and cast to ``dtype`` (Qwen2.5)."""
    inv_freq = 1.0 / (
        theta
        ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.int64).float() / head_dim)
    )
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def init_weights(module: nn.Module, std: float) -> None:
    """Qwen-style initialisation (normal(0, std) linears and embeddings, zero biases, unit norms)."""
    if isinstance(module, nn.Linear):
        module.weight.data.normal_(0.0, std)
        if module.bias is not None:
            module.bias.data.zero_()
    elif isinstance(module, nn.Embedding):
        module.weight.data.normal_(0.0, std)
    elif isinstance(module, LLaDARMSNorm):
        module.weight.data.fill_(1.0)


class TiedHead:
    """The embeddings and LM head of a model with ``self.model.embed_tokens`` and, unless
    ``tie_word_embeddings``, ``self.lm_head``."""

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module | None:
        return None if self.config.tie_word_embeddings else self.lm_head

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            return F.linear(hidden, self.model.embed_tokens.weight)
        return self.lm_head(hidden)


class DreamAttention(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            hd,
        )
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=True)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=True)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=True)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)

    def forward(self, h: torch.Tensor, cos, sin, mask: torch.Tensor | None) -> torch.Tensor:
        b, s, _ = h.shape
        q = self.q_proj(h).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class DreamMLP(nn.Module):
    def __init__(self, config: DreamConfig):
        super().__init__()
        d, h = config.hidden_size, config.intermediate_size
        self.gate_proj = nn.Linear(d, h, bias=False)
        self.up_proj = nn.Linear(d, h, bias=False)
        self.down_proj = nn.Linear(h, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DreamLayer(GradientCheckpointingLayer):
    """One pre-norm Qwen2.5 layer without the causal mask."""

    def __init__(self, config: DreamConfig):
        super().__init__()
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = DreamAttention(config)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)

    def forward(self, hidden: torch.Tensor, cos, sin, mask) -> torch.Tensor:
        hidden = hidden + self.self_attn(self.input_layernorm(hidden), cos, sin, mask)
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


class DreamPreTrainedModel(PreTrainedModel):
    config_class = DreamConfig
    config: DreamConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["DreamLayer"]
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb"]

    def _init_weights(self, module):
        init_weights(module, self.config.initializer_range)


class DreamBackbone(DreamPreTrainedModel):
    """The decoder under the official ``model.`` names (embed_tokens, layers, norm)."""

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DreamLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()


class DreamLM(TiedHead, DreamPreTrainedModel):
    """Dream masked-diffusion LM: ``forward(input_ids, attention_mask) -> LLaDAOutput(logits [B, L, V])``,
    logits *unshifted* (see the module docstring). With ``tie_word_embeddings`` there is no ``lm_head``
    parameter: the head is the embedding matrix (a checkpoint's ``lm_head.weight`` is then ignored)."""

    _keys_to_ignore_on_load_unexpected = [r"rotary_emb", r"^lm_head\.weight$"]

    def __init__(self, config: DreamConfig):
        super().__init__(config)
        self.model = DreamBackbone(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        logits_range: tuple[int, int] | None = None,
        **_unused,
    ) -> LLaDAOutput:
        """input_ids [B, L]; attention_mask [B, L] (1 = real) or a 4-D mask; ``logits_range=(start, end)``
        computes the raw logits of positions [start, end) only."""
        m = self.model
        hidden = m.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = hidden.shape[:2]
        if attention_mask is not None and attention_mask.dim() == 4:
            mask = attention_mask
            if position_ids is None:
                position_ids = _position_ids(None, b, s, hidden.device)
        else:
            if attention_mask is not None and attention_mask.shape[1] != s:
                raise ValueError(
                    f"attention_mask has length {attention_mask.shape[1]} but input_ids has {s}."
                )
            mask = _attention_bias(attention_mask, hidden.dtype)
            if position_ids is None:
                position_ids = _position_ids(attention_mask, b, s, hidden.device)
        cos, sin = rotary(position_ids, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        for layer in m.layers:
            hidden = layer(hidden, cos, sin, mask)
        if logits_range is not None:
            hidden = hidden[:, logits_range[0] : logits_range[1]]
        return LLaDAOutput(logits=self.head(m.norm(hidden)))
