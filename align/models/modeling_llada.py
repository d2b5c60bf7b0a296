"""Native LLaDA-family model: a Llama-style transformer block without a causal mask.

Parameter names match the official checkpoints (``model.transformer.blocks.{i}.q_proj.weight``, ...), so
``LLaDAModelLM.from_pretrained("GSAI-ML/LLaDA-8B-Instruct")`` loads the real weights with no remote code.
GQA (``n_kv_heads``) and tied embeddings (``weight_tying``) cover iLLaDA.

Logits are *not* shifted: ``logits[:, i]`` predicts token ``i``. Attention is bidirectional; with an
``attention_mask`` ([B, L], 1 = real token) padded keys are excluded and position ids count real tokens
only, so the logits of real tokens do not depend on how much left padding a row has.

KV cache (for Fast-dLLM-style block decoding): ``forward(..., use_cache=True)`` returns the per-layer
rotated keys/values of every input position. A later call may pass ``kv_cache`` together with
``cache_start``: the input ids are then the segment that begins at absolute position ``cache_start``, and
each layer attends to ``cached[:cache_start] + new + cached[cache_start + segment_len:]``. A cache that
holds only the prefix gives the *prefix cache*; a cache of the whole canvas gives the *dual cache*.
``attention_mask`` and ``position_ids`` always describe the full sequence.

Not covered: ALiBi, LayerNorm variants, dropout (all unused by the LLaDA checkpoints), sliding windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from align.models.configuration_llada import LLaDAConfig

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LLaDAOutput(ModelOutput):
    """``logits`` [B, S, V] for the S input positions; ``kv_cache`` per layer ([B, Hkv, L, D] each)."""

    logits: torch.Tensor | None = None
    kv_cache: KVCache | None = None


class LLaDARMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(
    position_ids: torch.Tensor, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, 1, S, D] in float32 for positions [B, S] (half-split "rotate_half" convention)."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    )
    freqs = position_ids.float()[..., None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]
    return emb.cos(), emb.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return (xf * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class LLaDABlock(GradientCheckpointingLayer):
    """One pre-norm block: attention (q/k/v/attn_out) and SwiGLU MLP (ff_proj, up_proj, ff_out)."""

    def __init__(self, config: LLaDAConfig):
        super().__init__()
        d, hd = config.d_model, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, hd
        qkv_bias = config.include_bias or config.include_qkv_bias
        self.attn_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.ff_norm = LLaDARMSNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, config.n_heads * hd, bias=qkv_bias)
        self.k_proj = nn.Linear(d, config.n_kv_heads * hd, bias=qkv_bias)
        self.v_proj = nn.Linear(d, config.n_kv_heads * hd, bias=qkv_bias)
        self.attn_out = nn.Linear(config.n_heads * hd, d, bias=config.include_bias)
        self.ff_proj = nn.Linear(d, config.mlp_hidden_size, bias=config.include_bias)
        self.up_proj = nn.Linear(d, config.mlp_hidden_size, bias=config.include_bias)
        self.ff_out = nn.Linear(config.mlp_hidden_size, d, bias=config.include_bias)

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attn_bias: torch.Tensor | None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache_start: int = 0,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        b, s, _ = hidden.shape
        h = self.attn_norm(hidden)
        q = self.q_proj(h).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        new_kv = (k, v)
        if past is not None:
            pk, pv = past
            end = cache_start + s
            k = torch.cat([pk[:, :, :cache_start], k, pk[:, :, end:]], dim=2)
            v = torch.cat([pv[:, :, :cache_start], v, pv[:, :, end:]], dim=2)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, enable_gqa=self.n_kv_heads != self.n_heads
        )
        hidden = hidden + self.attn_out(attn.transpose(1, 2).reshape(b, s, -1))
        h = self.ff_norm(hidden)
        hidden = hidden + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))
        return hidden, new_kv


class LLaDAPreTrainedModel(PreTrainedModel):
    config_class = LLaDAConfig
    config: LLaDAConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LLaDABlock"]
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb"]


class LLaDAModel(LLaDAPreTrainedModel):
    """The bare transformer under the official ``model.transformer`` names."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        modules = {
            "wte": nn.Embedding(config.embedding_size, config.d_model),
            "blocks": nn.ModuleList(LLaDABlock(config) for _ in range(config.n_layers)),
            "ln_f": LLaDARMSNorm(config.d_model, config.rms_norm_eps),
        }
        if not config.weight_tying:
            modules["ff_out"] = nn.Linear(config.d_model, config.embedding_size, bias=config.include_bias)
        self.transformer = nn.ModuleDict(modules)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.weight_tying:
            return F.linear(hidden, self.transformer.wte.weight)
        return self.transformer.ff_out(hidden)


def _position_ids(attention_mask: torch.Tensor | None, b: int, length: int, device) -> torch.Tensor:
    if attention_mask is None:
        return torch.arange(length, device=device).expand(b, length)
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _attention_bias(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive key bias [B, 1, 1, L]: 0 for real keys, -inf-ish for pad keys (all-pad rows see every key)."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    keep = attention_mask.bool()
    keep = keep | ~keep.any(-1, keepdim=True)
    bias = torch.zeros(keep.shape, dtype=dtype, device=keep.device)
    bias.masked_fill_(~keep, torch.finfo(dtype).min)
    return bias[:, None, None, :]


class LLaDAModelLM(LLaDAPreTrainedModel):
    """Masked diffusion LM: ``forward(input_ids, attention_mask) -> LLaDAOutput(logits [B, L, V])``."""

    def __init__(self, config: LLaDAConfig):
        super().__init__(config)
        self.model = LLaDAModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.transformer.wte = value

    def get_output_embeddings(self) -> nn.Module | None:
        return None if self.config.weight_tying else self.model.transformer.ff_out

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
        use_cache: bool = False,
        cache_start: int = 0,
        inputs_embeds: torch.Tensor | None = None,
        logits_range: tuple[int, int] | None = None,
        **_unused,
    ) -> LLaDAOutput:
        """input_ids [B, S]; attention_mask / position_ids over the full sequence [B, L] (L = S without cache).

        ``logits_range=(start, end)`` computes logits only for input positions [start, end) (the LM head is
        ~8% of an 8B forward at a 126k vocabulary, and its output the largest activation)."""
        t = self.model.transformer
        hidden = t.wte(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = hidden.shape[:2]
        full_len = attention_mask.shape[1] if attention_mask is not None else s
        if kv_cache is None and full_len != s:
            raise ValueError(f"attention_mask has length {full_len} but input_ids has {s} positions.")
        if position_ids is None:
            position_ids = _position_ids(attention_mask, b, max(full_len, cache_start + s), hidden.device)
        if position_ids.shape[1] != s:
            position_ids = position_ids[:, cache_start : cache_start + s]
        cos, sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        bias = _attention_bias(attention_mask, hidden.dtype)
        if bias is not None and kv_cache is not None:
            cached_len = kv_cache[0][0].shape[2]
            keys_len = min(cache_start, cached_len) + s + max(cached_len - cache_start - s, 0)
            bias = bias[..., :keys_len]
        new_cache: KVCache = []
        for i, block in enumerate(t.blocks):
            past = kv_cache[i] if kv_cache is not None else None
            hidden, kv = block(hidden, cos, sin, bias, past, cache_start)
            if use_cache:
                new_cache.append(kv)
        if logits_range is not None:
            hidden = hidden[:, logits_range[0] : logits_range[1]]
        logits = self.model.lm_head(t.ln_f(hidden))
        return LLaDAOutput(logits=logits, kv_cache=new_cache if use_cache else None)
