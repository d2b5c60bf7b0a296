"""Native SDAR-family model (SDAR-*-Chat, TraDo-*): a Qwen3 decoder with block-causal attention.

Parameter names match the official checkpoints (``model.embed_tokens``, ``model.layers.{i}.self_attn.
{q,k,v,o}_proj``, ``model.layers.{i}.self_attn.{q,k}_norm``, ``model.layers.{i}.mlp.{gate,up,down}_proj``,
``model.layers.{i}.{input,post_attention}_layernorm``, ``model.norm``, ``lm_head``), so
``SDARLM.from_pretrained("JetLM/SDAR-8B-Chat")`` loads the real weights without remote code. The
arithmetic is the hub file's: explicit ``head_dim``, RMSNorm over each head of q and k before RoPE (float32
normalisation, as the file's eager form), GQA, RoPE with cos/sin cast to the activations' dtype, biases on
q/k/v/o only with ``attention_bias``, SwiGLU MLP, logits **not** shifted (logit i predicts token i).

Attention is block-causal: a token sees every token of its own block and of the blocks before it, none
after. The model accepts

* the caller's mask as the official code is called: [B|1, Lq, Lk] or [B|1, 1, Lq, Lk] (bool, or additive)
  with ``arange`` positions by default, used as given (e.g. the two-stream training layout);
* a [B, T + L] padding mask (1 = real) or none: the block-causal mask is built here from the positions
  (``cumsum - 1`` of the real tokens; block = position // block_size, block_size from the config or the
  family's default), pad keys excluded.

``kv_cache`` (a :class:`BlockKVCache`) holds the keys/values of committed blocks: a forward over the
current block attends to them and, with ``store_kv=True``, appends its own (the official ``store_kv``
protocol). This is exact because earlier blocks never attend to later ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_layers import GradientCheckpointingLayer

from align.models.configuration_sdar import TRAINED_BLOCK_SIZE, SDARConfig
from align.models.modeling_dream import DreamMLP, TiedHead, _rotate, init_weights, rotary
from align.models.modeling_llada import LLaDAOutput, LLaDARMSNorm


class BlockKVCache:
    """Per-layer keys and values [B, Hkv, T, D] (after q/k norm and RoPE) of the committed positions."""

    def __init__(self):
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def length(self) -> int:
        return self.layers[0][0].shape[2] if self.layers else 0

    def select(self, rows: torch.Tensor) -> None:
        """Keep only the batch ``rows`` (rows whose decoding stopped are dropped)."""
        self.layers = [(k[rows], v[rows]) for k, v in self.layers]


def block_causal_mask(
    key_positions: torch.Tensor, key_real: torch.Tensor, query_positions: torch.Tensor, block_size: int
) -> torch.Tensor:
    """Bool mask [B, 1, Lq, Lk]: query q sees key k iff k is real and block(k) <= block(q); a query that
    would see nothing (a pad) sees every key, which changes only pad outputs."""
    kb = torch.div(key_positions, block_size, rounding_mode="floor")
    qb = torch.div(query_positions, block_size, rounding_mode="floor")
    keep = key_real.bool()[:, None, :] & (kb[:, None, :] <= qb[:, :, None])
    keep = keep | ~keep.any(-1, keepdim=True)
    return keep[:, None]


def two_stream_inputs(clean_ids, noisy_ids, attention_mask, first: int, block_size: int):
    """(ids [B, T + N], bool mask [B, 1, T + N, T + N], positions [B, T + N], N) of the block-diffusion layout:
    the clean canvas [B, T], then the noised canvas from the start of the block holding column ``first`` (the
    first noised one; the earliest such block start over the rows). Clean queries are block-causal; a noised
    query of block j sees clean keys of blocks < j and noised-stream keys of block j (a prompt's partial
    block included, so its prompt tokens attend to the noised block, as in the sampler, never to the clean
    answer). Pad keys are excluded; positions count real tokens."""
    b, t = clean_ids.shape
    dev = clean_ids.device
    real = torch.ones(b, t, dtype=torch.long, device=dev) if attention_mask is None else attention_mask.long()
    pos = (real.cumsum(-1) - 1).clamp(min=0)
    if first < t:
        first = max(0, int((first - pos[:, first] % block_size).min()))
    ids = torch.cat([clean_ids, noisy_ids[:, first:]], 1)
    positions = torch.cat([pos, pos[:, first:]], 1)
    key_real = torch.cat([real, real[:, first:]], 1).bool()
    blk = torch.div(positions, block_size, rounding_mode="floor")
    n = t - first
    noisy = torch.cat(
        [torch.zeros(t, dtype=torch.bool, device=dev), torch.ones(n, dtype=torch.bool, device=dev)]
    )
    qb, kb = blk[:, :, None], blk[:, None, :]
    qn, kn = noisy[None, :, None], noisy[None, None, :]
    clean_q = ~qn & ~kn & (kb <= qb)
    noisy_q = qn & ((~kn & (kb < qb)) | (kn & (kb == qb)))
    keep = (clean_q | noisy_q) & key_real[:, None, :]
    keep = keep | ~keep.any(-1, keepdim=True)
    return ids, keep[:, None], positions, n


class SDARAttention(nn.Module):
    def __init__(self, config: SDARConfig):
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = (
            config.num_attention_heads,
            config.num_key_value_heads,
            hd,
        )
        bias = config.attention_bias
        self.q_proj = nn.Linear(d, self.n_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=bias)
        self.q_norm = LLaDARMSNorm(hd, config.rms_norm_eps)
        self.k_norm = LLaDARMSNorm(hd, config.rms_norm_eps)

    def forward(self, h, cos, sin, mask, past: tuple | None):
        b, s, _ = h.shape
        q = self.q_norm(self.q_proj(h).view(b, s, self.n_heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(h).view(b, s, self.n_kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(h).view(b, s, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        new = (k, v)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, enable_gqa=self.n_kv_heads != self.n_heads
        )
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1)), new


class SDARLayer(GradientCheckpointingLayer):
    """One pre-norm Qwen3 layer; the mask decides what each query sees."""

    def __init__(self, config: SDARConfig):
        super().__init__()
        self.input_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SDARAttention(config)
        self.post_attention_layernorm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = DreamMLP(config)  # the same SwiGLU under the same names

    def forward(self, hidden, cos, sin, mask, past=None):
        attn, new = self.self_attn(self.input_layernorm(hidden), cos, sin, mask, past)
        hidden = hidden + attn
        return hidden + self.mlp(self.post_attention_layernorm(hidden)), new


class SDARPreTrainedModel(PreTrainedModel):
    config_class = SDARConfig
    config: SDARConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SDARLayer"]
    _supports_sdpa = True
    _keys_to_ignore_on_load_unexpected = [r"rotary_emb"]

    def _init_weights(self, module):
        init_weights(module, self.config.initializer_range)


class SDARBackbone(SDARPreTrainedModel):
    """The decoder under the official ``model.`` names (embed_tokens, layers, norm)."""

    def __init__(self, config: SDARConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(SDARLayer(config) for _ in range(config.num_hidden_layers))
        self.norm = LLaDARMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()


class SDARLM(TiedHead, SDARPreTrainedModel):
    """SDAR block-diffusion LM: ``forward(input_ids, attention_mask) -> LLaDAOutput(logits [B, L, V])``.
    With ``tie_word_embeddings`` there is no ``lm_head`` parameter (the head is the embedding matrix)."""

    _keys_to_ignore_on_load_unexpected = [r"rotary_emb", r"^lm_head\.weight$"]

    def __init__(self, config: SDARConfig):
        super().__init__(config)
        self.model = SDARBackbone(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @property
    def block_size(self) -> int:
        return self.config.block_size or TRAINED_BLOCK_SIZE

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        kv_cache: BlockKVCache | None = None,
        store_kv: bool = False,
        logits_range: tuple[int, int] | None = None,
        **_unused,
    ) -> LLaDAOutput:
        """input_ids [B, L]; attention_mask [B, T + L] (padding, T = cached positions) or an explicit 3-D /
        4-D mask over the cache and the input; ``logits_range=(start, end)`` computes the logits of input
        positions [start, end) only; ``store_kv`` appends this input's keys/values to ``kv_cache``."""
        m = self.model
        hidden = m.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s = hidden.shape[:2]
        past = kv_cache.length if kv_cache is not None else 0
        if attention_mask is not None and attention_mask.dim() in (3, 4):
            mask = attention_mask[:, None] if attention_mask.dim() == 3 else attention_mask
            if position_ids is None:
                position_ids = torch.arange(past, past + s, device=hidden.device).expand(b, s)
        else:
            if attention_mask is None:
                attention_mask = torch.ones(b, past + s, dtype=torch.long, device=hidden.device)
            if attention_mask.shape[1] != past + s:
                raise ValueError(
                    f"attention_mask has length {attention_mask.shape[1]} but the cache and input_ids have "
                    f"{past} + {s}."
                )
            positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
            if position_ids is None:
                position_ids = positions[:, past:]
            mask = block_causal_mask(positions, attention_mask, position_ids, self.block_size)
        cos, sin = rotary(position_ids, self.config.head_dim, self.config.rope_theta, hidden.dtype)
        new_layers = []
        for i, layer in enumerate(m.layers):
            layer_past = kv_cache.layers[i] if kv_cache is not None and kv_cache.layers else None
            hidden, new = layer(hidden, cos, sin, mask, layer_past)
            new_layers.append(new)
        if store_kv and kv_cache is not None:
            if kv_cache.layers:
                kv_cache.layers = [
                    (torch.cat([pk, k], 2), torch.cat([pv, v], 2))
                    for (pk, pv), (k, v) in zip(kv_cache.layers, new_layers)
                ]
            else:
                kv_cache.layers = new_layers
        if logits_range is not None:
            hidden = hidden[:, logits_range[0] : logits_range[1]]
        return LLaDAOutput(logits=self.head(m.norm(hidden)), kv_cache=kv_cache)
