"""The SDAR family against the official modeling file and generation code, rewritten here from reading them.

References (read, not copied; the functions below are this test's own): the hub's ``modeling_sdar.py``
(verbatim copies in yjyddq/DARE @ f4999da ``models/SDAR-4B-Chat/``; SDAR-8B identical) and
``block_diffusion_generate`` in JetAstra/SDAR ``generate.py``. The reference forward is written eagerly
(explicit softmax over masked scores; the file's flash / SDPA paths compute the same), with the hub's
calling convention: a [1, Lq, Lk] bool mask, ``arange`` positions, keys/values of committed blocks kept
with ``store_kv=True`` and only read with ``store_kv=False``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from align.models import SDARLM, SDARConfig
from align.models.family import FamilySpec, family_for, family_spec, model_logits
from align.models.modeling_sdar import BlockKVCache
from align.sampling.block import block_generate

MASK, PAD, EOS = 63, 0, 1


def tiny_config(**over) -> SDARConfig:
    fields = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, rope_theta=10000.0, initializer_range=0.2, pad_token_id=PAD,
                  eos_token_id=EOS, bos_token_id=EOS, mask_token_id=MASK)  # fmt: skip
    fields.update(over)
    return SDARConfig(**fields)


def tiny_model(seed=0, **over) -> SDARLM:
    torch.manual_seed(seed)
    return SDARLM(tiny_config(**over)).eval()


SPEC = FamilySpec(model_type="sdar", mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD)


# ---------------------------------------------------------------- the reference forward (hub file's arithmetic)


def _rms(x, w, eps):
    dtype = x.dtype
    x32 = x.float()
    return w * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def ref_forward(sd, cfg, ids, mask, pos, past=None, store=False):
    """Logits [1, L, V] of the hub forward; ``past`` (a list per layer of (k, v)) is read, and extended with
    this input when ``store``."""
    hd, nh, nkv, eps = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.rms_norm_eps
    h = sd["model.embed_tokens.weight"][ids]
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    freqs = (inv_freq[None, :, None].float() @ pos[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(h.dtype)[:, None], emb.sin().to(h.dtype)[:, None]
    b, L = ids.shape
    for i in range(cfg.num_hidden_layers):
        pre = f"model.layers.{i}."
        x = _rms(h, sd[pre + "input_layernorm.weight"], eps)
        q = x @ sd[pre + "self_attn.q_proj.weight"].T
        k = x @ sd[pre + "self_attn.k_proj.weight"].T
        v = x @ sd[pre + "self_attn.v_proj.weight"].T
        q = _rms(q.view(b, L, -1, hd), sd[pre + "self_attn.q_norm.weight"], eps).transpose(1, 2)
        k = _rms(k.view(b, L, -1, hd), sd[pre + "self_attn.k_norm.weight"], eps).transpose(1, 2)
        v = v.view(b, L, -1, hd).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if past is not None and store:
            if len(past) > i:
                past[i] = (torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2))
            else:
                past.append((k, v))
            k, v = past[i]
        elif past is not None and len(past) > i:
            k, v = torch.cat([past[i][0], k], 2), torch.cat([past[i][1], v], 2)
        k = k.repeat_interleave(nh // nkv, dim=1)
        v = v.repeat_interleave(nh // nkv, dim=1)
        scores = (q @ k.transpose(2, 3)) / math.sqrt(hd)
        scores = scores.masked_fill(~mask.bool()[:, None], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        h = h + out.transpose(1, 2).reshape(b, L, -1) @ sd[pre + "self_attn.o_proj.weight"].T
        x = _rms(h, sd[pre + "post_attention_layernorm.weight"], eps)
        gate = torch.nn.functional.silu(x @ sd[pre + "mlp.gate_proj.weight"].T)
        h = h + (gate * (x @ sd[pre + "mlp.up_proj.weight"].T)) @ sd[pre + "mlp.down_proj.weight"].T
    h = _rms(h, sd["model.norm.weight"], eps)
    head = sd.get("lm_head.weight", sd["model.embed_tokens.weight"])
    return h @ head.T


def official_block_mask(num_blocks, block):
    """generate.py's [1, N, N] mask: tril over blocks, repeated to tokens."""
    m = torch.tril(torch.ones(num_blocks, num_blocks))
    return m.repeat_interleave(block, 0).repeat_interleave(block, 1).unsqueeze(0).bool()


# ---------------------------------------------------------------- the reference generation (generate.py's loop)


def ref_generate(sd, cfg, prompt, gen_length, block, steps, temperature=1.0, top_k=0, top_p=1.0,
                 strategy="low_confidence_static", threshold=0.85, stop=None, generator=None):  # fmt: skip
    """block_diffusion_generate for one prompt [1, p]; returns (canvas [1, N], NFE, picked-unmasked flag)."""
    p = prompt.shape[1]
    past = []
    nb = (p + gen_length + block - 1) // block
    total = nb * block
    mask = official_block_mask(nb, block)
    pos = torch.arange(total)[None]
    x = torch.full((1, total), MASK, dtype=torch.long)
    x[:, :p] = prompt
    pre_blocks = p // block
    nfe, overwrote = 0, False
    if pre_blocks:
        n = pre_blocks * block
        ref_forward(sd, cfg, x[:, :n], mask[:, :n, :n], pos[:, :n], past, store=True)
        nfe += 1
    base, rem = divmod(block, steps)
    ntt = [base + (1 if s < rem else 0) for s in range(steps)]
    for nbk in range(pre_blocks, nb):
        lo, hi = nbk * block, (nbk + 1) * block
        cur = x[:, lo:hi].clone()
        cmask, cpos = mask[:, lo:hi, :hi], pos[:, lo:hi]
        for step in range(steps + 1):
            mi = cur == MASK
            if mi.sum() == 0:
                ref_forward(sd, cfg, cur, cmask, cpos, past, store=True)
                nfe += 1
                break
            logits = ref_forward(sd, cfg, cur, cmask, cpos, past, store=False)
            nfe += 1
            flat = logits.reshape(-1, logits.shape[-1])
            flat[:, MASK] = float(
                "-inf"
            )  # the sampler's documented difference: the mask token is never drawn
            if temperature != 1.0:
                flat = flat / temperature
            if top_k > 0:
                kth = torch.topk(flat, top_k)[0][..., -1, None]
                flat = torch.where(flat < kth, torch.full_like(flat, float("-inf")), flat)
            if top_p < 1.0:
                sl, si = torch.sort(flat, descending=True)
                sm = torch.cumsum(torch.softmax(sl, -1), -1) > top_p
                sm[..., 1:] = sm[..., :-1].clone()
                sm[..., 0] = False
                flat = flat.masked_fill(
                    torch.scatter(torch.zeros_like(flat, dtype=torch.bool), -1, si, sm), float("-inf")
                )
            probs = torch.softmax(flat, -1)
            tok = torch.multinomial(probs, 1, generator=generator)
            x0, x0_p = tok.view(cur.shape), torch.gather(probs, -1, tok).view(cur.shape)
            transfer = torch.zeros_like(x0, dtype=torch.bool)
            conf = torch.where(mi, x0_p, -torch.inf)
            if strategy == "sequential":
                first = mi[0].nonzero()[:, 0].min().item()
                transfer[0, first : first + ntt[step]] = True
            elif strategy == "low_confidence_static":
                transfer[0, torch.topk(conf[0], ntt[step])[1]] = True
            else:
                high = conf[0] > threshold
                if high.sum() >= ntt[step]:
                    transfer[0] = high
                else:
                    transfer[0, torch.topk(conf[0], ntt[step])[1]] = True
            overwrote |= bool((transfer & ~mi).any())
            cur[transfer] = x0[transfer]
        x[:, lo:hi] = cur
        if stop is not None and any(s in x[:, p:] for s in stop):
            break
    return x, nfe, overwrote


# ---------------------------------------------------------------- conformance of the forward


@pytest.mark.parametrize("over", [{}, {"tie_word_embeddings": True, "num_key_value_heads": 4},
                                  {"num_key_value_heads": 1, "num_hidden_layers": 3, "attention_bias": True}])  # fmt: skip
def test_full_canvas_matches_hub_forward(over):
    model = tiny_model(1, **over)
    sd = model.state_dict()
    cfg = model.config
    torch.manual_seed(2)
    ids = torch.randint(2, 60, (1, 12))
    mask = official_block_mask(3, 4)
    pos = torch.arange(12)[None]
    ref = ref_forward(sd, cfg, ids, mask, pos)
    given = model(input_ids=ids, attention_mask=mask).logits  # the caller's mask, as the hub code is called
    built = model(input_ids=ids).logits  # the block-causal mask built from the config's block size
    assert torch.allclose(given, ref, atol=1e-5), (given - ref).abs().max()
    assert torch.allclose(built, ref, atol=1e-5), (built - ref).abs().max()
    # the family's forward (what estimators call) is the same, also on a window
    assert torch.allclose(model_logits(model, ids, spec=SPEC).logits, ref, atol=1e-5)
    window = model_logits(model, ids, spec=SPEC, logits_range=(4, 9)).logits
    assert torch.allclose(window, ref[:, 4:9], atol=1e-5)


def test_attention_is_block_causal_not_full():
    """Changing a later block never changes an earlier block's logits; changing a token inside a block does
    change that block's other positions (full attention within the block)."""
    model = tiny_model(3)
    torch.manual_seed(4)
    ids = torch.randint(2, 60, (1, 12))
    base = model(input_ids=ids).logits
    later = ids.clone()
    later[0, 9] = (later[0, 9] + 1) % 60 + 2
    out = model(input_ids=later).logits
    assert torch.equal(out[:, :8], base[:, :8])
    assert not torch.allclose(out[:, 8:], base[:, 8:])
    inside = ids.clone()
    inside[0, 7] = (inside[0, 7] + 1) % 60 + 2
    out = model(input_ids=inside).logits
    assert torch.equal(out[:, :4], base[:, :4]) and not torch.allclose(out[:, 4:7], base[:, 4:7])


def test_kv_cache_layout_matches_hub_protocol():
    """Prefill of whole blocks with store_kv, then one block read against the cache (store_kv False) and
    stored: logits equal the reference's cache protocol and the full canvas."""
    model = tiny_model(5)
    sd, cfg = model.state_dict(), model.config
    torch.manual_seed(6)
    ids = torch.randint(2, 60, (1, 16))
    mask, pos = official_block_mask(4, 4), torch.arange(16)[None]
    full = ref_forward(sd, cfg, ids, mask, pos)
    past, cache = [], BlockKVCache()
    ref_forward(sd, cfg, ids[:, :8], mask[:, :8, :8], pos[:, :8], past, store=True)
    model(input_ids=ids[:, :8], kv_cache=cache, store_kv=True)
    assert cache.length == 8
    for lo in (8, 12):
        hi = lo + 4
        ref = ref_forward(sd, cfg, ids[:, lo:hi], mask[:, lo:hi, :hi], pos[:, lo:hi], past, store=False)
        ours = model(input_ids=ids[:, lo:hi], kv_cache=cache).logits
        assert cache.length == lo  # reading does not store
        assert torch.allclose(ours, ref, atol=1e-5) and torch.allclose(ours, full[:, lo:hi], atol=1e-5)
        ref_forward(sd, cfg, ids[:, lo:hi], mask[:, lo:hi, :hi], pos[:, lo:hi], past, store=True)
        model(input_ids=ids[:, lo:hi], kv_cache=cache, store_kv=True)
        assert cache.length == hi
        for (k, v), (rk, rv) in zip(cache.layers, past):
            assert torch.allclose(k, rk, atol=1e-5) and torch.allclose(v, rv, atol=1e-5)


def test_left_padding_is_a_batch_of_one():
    """A row left-padded by pads the mask excludes (positions counting real tokens) has the logits of the
    same tokens alone."""
    model = tiny_model(7)
    torch.manual_seed(8)
    ids = torch.randint(2, 60, (1, 9))
    alone = model(input_ids=ids).logits
    padded = torch.cat([torch.full((1, 3), PAD), ids], 1)
    attn = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 9, dtype=torch.long)], 1)
    batch = torch.cat([padded, torch.randint(2, 60, (1, 12))])
    out = model(input_ids=batch, attention_mask=torch.cat([attn, torch.ones(1, 12, dtype=torch.long)])).logits
    assert torch.allclose(out[:1, 3:], alone, atol=1e-5)


def test_state_dict_names_are_the_hub_names():
    model = tiny_model(0, num_hidden_layers=2)
    per_layer = {
        "input_layernorm.weight",
        "post_attention_layernorm.weight",
        "mlp.down_proj.weight",
        "mlp.gate_proj.weight",
        "mlp.up_proj.weight",
        "self_attn.k_norm.weight",
        "self_attn.k_proj.weight",
        "self_attn.o_proj.weight",
        "self_attn.q_norm.weight",
        "self_attn.q_proj.weight",
        "self_attn.v_proj.weight",
    }  # fmt: skip (the SDAR-4B index's names for layer 0)
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    expected |= {f"model.layers.{i}.{n}" for i in range(2) for n in per_layer}
    assert set(model.state_dict()) == expected
    sd = model.state_dict()
    assert sd["model.layers.0.self_attn.q_proj.weight"].shape == (4 * 16, 32)  # heads x explicit head_dim
    assert sd["model.layers.0.self_attn.q_norm.weight"].shape == (16,)


HUB_CONFIG = {  # SDAR-4B-Chat's config.json fields (the auto_map, flex_attention and training flags included)
    "architectures": ["SDARForCausalLM"], "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig",
    "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"}, "attention_bias": False, "attention_dropout": 0.0,
    "attn_implementation": "flex_attention", "bos_token_id": 151643, "eos_token_id": 151643, "fuse_cross_entropy": True,
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 2560, "intermediate_size": 9728,
    "max_position_embeddings": 32768, "max_window_layers": 36, "model_type": "sdar", "num_attention_heads": 32,
    "num_hidden_layers": 36, "num_key_value_heads": 8, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": False, "use_sliding_window": False, "vocab_size": 151936,
}  # fmt: skip


def test_hub_config_loads_without_remote_code(tmp_path):
    from transformers import AutoConfig

    from align.plan import ModelShape, known_shape

    (tmp_path / "config.json").write_text(json.dumps(HUB_CONFIG))
    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, SDARConfig) and config.head_dim == 128 and config.mask_token_id is None
    family = family_for(config.model_type)
    assert family.name == "sdar" and family.block_causal and family.block_size(config) == 4
    # the mask id comes from the tokenizer's mask token (the hub config has none)
    tok = type("Tok", (), {"mask_token_id": 151669, "eos_token_id": 151643, "pad_token_id": 151643,
                           "get_vocab": lambda self: {"<|im_end|>": 151645}})()  # fmt: skip
    spec = family_spec(config, tok)
    assert (spec.mask_token_id, spec.stop_token_ids) == (151669, (151643, 151645))
    # planner: the hub's 8,822,848,512 bytes of bf16 weights are 4,411,424,256 parameters
    shape = ModelShape.from_config(config)
    assert shape.params == 4_411_424_256 == known_shape("JetLM/SDAR-4B-Chat").params
    assert (shape.kv_dim, shape.q_dim) == (1024, 4096)


@pytest.mark.parametrize("field,value", [("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
                                         ("use_sliding_window", True), ("hidden_act", "gelu"), ("block_size", 0)])  # fmt: skip
def test_config_refuses_what_it_does_not_compute(field, value):
    with pytest.raises(ValueError, match=field):
        tiny_config(**{field: value})


def test_config_refuses_pad_equal_to_mask():
    with pytest.raises(ValueError, match="pad_token_id equals mask_token_id"):
        tiny_config(pad_token_id=MASK)


def test_save_and_reload_round_trip(tmp_path):
    model = tiny_model(9, block_size=4)
    model.save_pretrained(tmp_path)
    again = SDARLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(2, 60, (2, 8))
    assert torch.equal(model(input_ids=ids).logits, again(input_ids=ids).logits)
    assert again.config.block_size == 4


# ---------------------------------------------------------------- the sampler against generate.py


def _ours(model, prompts, spec=SPEC, **kw):
    """block_generate on a list of 1-D prompts, left-padded into one batch."""
    p = max(len(x) for x in prompts)
    ids = torch.full((len(prompts), p), PAD)
    attn = torch.zeros(len(prompts), p, dtype=torch.long)
    for i, x in enumerate(prompts):
        ids[i, p - len(x) :] = x
        attn[i, p - len(x) :] = 1
    return block_generate(model, ids, attn, spec=spec, **kw)


@pytest.mark.parametrize("strategy,steps,plen", [("low_confidence_static", 4, 6), ("low_confidence_static", 2, 8),
                                                ("low_confidence_dynamic", 4, 5), ("sequential", 4, 7),
                                                ("low_confidence_dynamic", 2, 4)])  # fmt: skip
def test_greedy_is_token_identical_to_generate_py(strategy, steps, plen):
    """T = 0 here against generate.py's greedy setting (top_k = 1) on one prompt: same canvas, same NFE."""
    model = tiny_model(11)
    sd, cfg = model.state_dict(), model.config
    torch.manual_seed(12)
    prompt = torch.randint(2, 60, (1, plen))
    ref, ref_nfe, overwrote = ref_generate(
        sd, cfg, prompt, 12, 4, steps, top_k=1, strategy=strategy, threshold=0.9
    )
    assert not overwrote  # settings where the official code only picks masked positions
    out = _ours(model, [prompt[0]], gen_length=12, block_length=4, steps_per_block=steps, schedule=strategy,
                threshold=0.9)  # fmt: skip
    assert torch.equal(out.completion_ids, ref[:, plen : plen + 12])
    assert out.nfe == ref_nfe
    assert (out.commit_step > 0).all()


@pytest.mark.parametrize("strategy,top_k,top_p", [("low_confidence_static", 0, 1.0), ("low_confidence_dynamic", 5, 0.9),
                                                 ("sequential", 0, 0.8)])  # fmt: skip
def test_sampling_with_the_same_seed_is_token_identical(strategy, top_k, top_p):
    """T > 0, one prompt: the same draws in the same order as generate.py (multinomial per block position)."""
    model = tiny_model(13)
    sd, cfg = model.state_dict(), model.config
    for seed in range(4):
        prompt = torch.randint(2, 60, (1, 5), generator=torch.Generator().manual_seed(seed))
        ref, _, overwrote = ref_generate(sd, cfg, prompt, 12, 4, 4, temperature=0.8, top_k=top_k, top_p=top_p,
                                         strategy=strategy, threshold=0.5,
                                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
        assert not overwrote
        out = _ours(model, [prompt[0]], gen_length=12, block_length=4, steps_per_block=4, schedule=strategy,
                    temperature=0.8, top_k=top_k or None, top_p=top_p, threshold=0.5,
                    generator=torch.Generator().manual_seed(seed))  # fmt: skip
        assert torch.equal(out.completion_ids, ref[:, 5:17])


def test_batch_rows_equal_their_batch_of_one():
    """Prompts of different lengths (different block phases) in one batch: each row is its greedy batch of one."""
    model = tiny_model(15)
    prompts = [torch.randint(2, 60, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 8, 5, 10)]
    batch = _ours(
        model, prompts, gen_length=12, block_length=4, steps_per_block=4, schedule="low_confidence_static"
    )
    for i, pr in enumerate(prompts):
        alone = _ours(
            model, [pr], gen_length=12, block_length=4, steps_per_block=4, schedule="low_confidence_static"
        )
        assert torch.equal(batch.completion_ids[i], alone.completion_ids[0])
        # global step numbers differ (other rows' blocks step too); the order inside each block does not
        block_of = (len(pr) + torch.arange(12)) // 4
        for blk in block_of.unique():
            here = block_of == blk
            assert torch.equal(batch.commit_step[i][here].argsort(stable=True),
                               alone.commit_step[0][here].argsort(stable=True))  # fmt: skip
        assert torch.equal(
            batch.sequences[i, : batch.prompt_length], torch.cat([torch.full((10 - len(pr),), PAD), pr])
        )


def test_the_official_overwrite_is_not_reproduced():
    """Prompt of 7 with blocks of 4 in 2 steps: the partial block has 1 mask, step 0 asks for 2, and
    generate.py overwrites a prompt token with a draw; here the prompt is kept (the documented difference)."""
    model = tiny_model(17)
    sd, cfg = model.state_dict(), model.config
    prompt = torch.randint(2, 60, (1, 7), generator=torch.Generator().manual_seed(3))
    ref, _, overwrote = ref_generate(sd, cfg, prompt, 8, 4, 2, top_k=1)
    assert overwrote
    out = _ours(model, [prompt[0]], gen_length=8, block_length=4, steps_per_block=2)
    assert torch.equal(out.sequences[0, :7], prompt[0])


def test_rows_stop_after_the_block_with_a_stop_token():
    """variable_length: a row that emitted a stop token decodes no further block (EOS after it, commit step
    -1), as generate.py's stopping criterion does for one prompt; the others go on, and fewer passes run."""
    import dataclasses

    model = tiny_model(19)
    prompts = [torch.randint(2, 60, (n,), generator=torch.Generator().manual_seed(n)) for n in (4, 6, 9, 5)]
    full = _ours(model, prompts, gen_length=24, block_length=4, steps_per_block=4)
    # the stop token: one the greedy decode emits in some rows' middles (so those rows stop early)
    tokens, counts = full.completion_ids[:, :16].unique(return_counts=True)
    stop = int(tokens[counts.argmax()])
    spec = dataclasses.replace(SPEC, eos_token_id=stop)
    out = _ours(
        model, prompts, gen_length=24, block_length=4, steps_per_block=4, variable_length=True, spec=spec
    )
    stopped = 0
    for i, pr in enumerate(prompts):
        c, steps = out.completion_ids[i], out.commit_step[i]
        hits = (c == stop).nonzero()
        if not len(hits):
            assert (steps > 0).all() and torch.equal(c, full.completion_ids[i])
            continue
        first = int(hits[0, 0])
        end = min((len(pr) + first) // 4 * 4 + 4 - len(pr), 24)  # the end of the block holding the first stop
        assert torch.equal(c[:end], full.completion_ids[i, :end])  # greedy: the same tokens up to there
        assert (steps[:end] > 0).all() and (steps[end:] == -1).all() and (c[end:] == stop).all()
        if end < 24:
            stopped += 1
            alone = _ours(model, [pr], gen_length=24, block_length=4, steps_per_block=4, variable_length=True,
                          spec=spec)  # fmt: skip
            fixed = _ours(model, [pr], gen_length=24, block_length=4, steps_per_block=4, spec=spec)
            assert torch.equal(alone.completion_ids[0], c) and alone.nfe < fixed.nfe
    assert stopped >= 1


def test_chi_square_of_a_batched_first_draw():
    """T = 1 in a batch: the first committed token of a masked block follows the model's softmax (chi-square
    against the exact probabilities, 16 rows x 60 draws)."""
    model = tiny_model(21)
    prompt = torch.randint(2, 60, (8,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs = torch.softmax(
            model(input_ids=torch.cat([prompt, torch.full((4,), MASK)])[None]).logits[0, 8], -1
        )
    counts = torch.zeros(64)
    gen = torch.Generator().manual_seed(5)
    for _ in range(60):
        out = _ours(model, [prompt] * 16, gen_length=4, block_length=4, steps_per_block=4, schedule="sequential",
                    temperature=1.0, generator=gen)  # fmt: skip
        counts += torch.bincount(out.completion_ids[:, 0], minlength=64).float()
    expected = probs * counts.sum()
    keep = expected >= 5
    stat = (((counts - expected) ** 2) / expected)[keep].sum() + (
        (counts[~keep].sum() - expected[~keep].sum()) ** 2 / expected[~keep].sum().clamp(min=1e-9)
    )
    dof = int(keep.sum())  # kept bins plus the pooled one, minus one
    assert stat < dof + 5 * math.sqrt(2 * dof), (float(stat), dof)


# ---------------------------------------------------------------- block-diffusion likelihoods


def _block_canvas():
    """A prompt of 3 and a completion of 6 with blocks of 4: blocks hold 1 (after the prompt's 3), 4 and 1
    completion tokens (the last block cut at the canvas end)."""
    torch.manual_seed(31)
    ids = torch.randint(2, 60, (1, 9))
    completion = torch.zeros(1, 9, dtype=torch.bool)
    completion[0, 3:] = True
    return ids, completion


def _block_logp(model, ids, masked, i):
    """log p(y_i | the canvas up to i's block end, ``masked`` positions of i's block masked): a plain
    block-causal forward on the truncated canvas (earlier blocks clean), the hub code's layout."""
    end = min((i // 4 + 1) * 4, ids.shape[1])
    noisy = ids[:, :end].clone()
    here = masked.clone()
    here[(torch.arange(ids.shape[1]) // 4) != i // 4] = False
    noisy[0, here[:end]] = MASK
    with torch.no_grad():
        mask = official_block_mask((end + 3) // 4, 4)[:, :end, :end]
        logits = ref_forward(model.state_dict(), model.config, noisy, mask, torch.arange(end)[None])
    return torch.log_softmax(logits[0, i], -1)[ids[0, i]].double()


def _exact_block_elbo(model, ids, completion):
    """sum over blocks of each block's exact-count ELBO, enumerated: sum_k (1/k) mean_{|S|=k} sum_S log p."""
    import itertools

    total = torch.zeros((), dtype=torch.float64)
    cols = completion[0].nonzero()[:, 0].tolist()
    for blk in sorted({c // 4 for c in cols}):
        inside = [c for c in cols if c // 4 == blk]
        for k in range(1, len(inside) + 1):
            subsets = list(itertools.combinations(inside, k))
            acc = torch.zeros((), dtype=torch.float64)
            for subset in subsets:
                masked = torch.zeros(ids.shape[1], dtype=torch.bool)
                masked[list(subset)] = True
                acc += sum(_block_logp(model, ids, masked, i) for i in subset)
            total += acc / len(subsets) / k
    return total


def _enumerated(model, ids, completion, weight_fn):
    """The expectation of a plan over every mask of the completion: sum_S P-weight(S) * pass values, the
    passes run through the library's estimator path (pass_logprobs -> the family's noised forward)."""
    import itertools

    from align.logprob.estimators import MaskPlan, pass_logprobs

    cols = completion[0].nonzero()[:, 0].tolist()
    masks, weights = [], []
    for k in range(1, len(cols) + 1):
        for subset in itertools.combinations(cols, k):
            m = torch.zeros(1, ids.shape[1], dtype=torch.bool)
            m[0, list(subset)] = True
            for mask, w in weight_fn(m, len(cols)):
                masks.append(mask)
                weights.append(w)
    plan = MaskPlan(torch.stack(masks), torch.stack(weights), 1)
    with torch.no_grad():
        values = pass_logprobs(model, ids, plan, mask_token_id=MASK, spec=SPEC, chunk_size=8)
    return (plan.weights.double() * values.double()).sum()


def test_noised_forward_is_the_per_block_layout():
    """The family's one-forward layout (clean canvas + noised columns) gives each noised token the logits of
    a plain forward on the canvas cut at its block's end with only its own block noised."""
    from align.models.family import noised_logits

    model = tiny_model(33)
    ids, completion = _block_canvas()
    masked = torch.zeros(9, dtype=torch.bool)
    masked[[3, 5, 6, 8]] = True
    noisy = torch.where(masked[None], MASK, ids)
    with torch.no_grad():
        out = noised_logits(model, ids, noisy, None, SPEC, logits_range=(3, 9)).logits
    for i in (3, 5, 6, 8):
        ref = _block_logp(model, ids, masked, i)
        assert torch.allclose(torch.log_softmax(out[0, i - 3], -1)[ids[0, i]].double(), ref, atol=1e-5)


def test_elbo_plan_is_the_block_elbo_exactly():
    """LLaDA's exact-count ELBO weights (l ~ U{1..L}, S uniform of size l, weight L / l) over the whole
    completion, read through the block layout, equal the sum of the blocks' own ELBOs (enumerated)."""
    model = tiny_model(35)
    ids, completion = _block_canvas()
    exact = _exact_block_elbo(model, ids, completion)

    def elbo(mask, n):
        k = int(mask.sum())
        yield mask, mask.double() * (n / k) / (n * math.comb(n, k))  # P(l = k) P(S | k) * L / l

    assert torch.allclose(_enumerated(model, ids, completion, elbo), exact, atol=1e-6)


def test_coupled_plan_is_the_block_elbo_exactly():
    """The coupled pairs (S, S^c) with the library's weights give the same block ELBO in expectation."""
    model = tiny_model(37)
    ids, completion = _block_canvas()
    exact = _exact_block_elbo(model, ids, completion)
    cm = completion[0]

    def coupled(mask, n):
        k = int(mask.sum())
        p = 1 / (n * math.comb(n, k))
        comp = cm[None] & ~mask
        if k == n:
            yield mask, mask.double() * p  # weight 1 on S when l = L
        else:
            yield mask, mask.double() * p * n / (2 * k)
            yield comp, comp.double() * p * n / (2 * (n - k))

    assert torch.allclose(_enumerated(model, ids, completion, coupled), exact, atol=1e-6)


def test_trace_replay_is_the_sampler_log_probability():
    """TraceRL's replay on a block model: with the sequential schedule at T = 1 (the order does not depend on
    the draws) the trace estimate of a sampled completion is exactly its log-probability under the sampler,
    computed here step by step with the reference forward (each block given the clean earlier ones)."""
    from align.logprob import make_plan, pass_logprobs
    from align.logprob.estimators import combine

    model = tiny_model(39)
    prompt = torch.randint(2, 60, (1, 3), generator=torch.Generator().manual_seed(2))
    out = _ours(model, [prompt[0]], gen_length=9, block_length=4, steps_per_block=4, schedule="sequential",
                temperature=1.0, generator=torch.Generator().manual_seed(4))  # fmt: skip
    ids = out.sequences
    cm = torch.zeros_like(ids, dtype=torch.bool)
    cm[:, 3:] = True
    step = torch.full_like(ids, -1)
    step[:, 3:] = out.commit_step
    plan = make_plan("trace", cm, commit_step=step, num_steps=int(step.max()) + 1)
    with torch.no_grad():
        est = combine(
            plan, pass_logprobs(model, ids, plan, mask_token_id=MASK, spec=SPEC, exclude_ids=[MASK])
        )
    # the sampler's probability: token i drawn with the block's later positions still masked
    exact = torch.zeros((), dtype=torch.float64)
    sd, cfg = model.state_dict(), model.config
    for i in range(3, ids.shape[1]):
        end = (i // 4 + 1) * 4
        canvas = torch.full((1, end), MASK)
        canvas[0, : min(end, ids.shape[1])] = ids[0, :end]
        canvas[0, i:] = MASK  # sequential: the positions at and after i in the block are still masked
        canvas[0, : i // 4 * 4] = ids[0, : i // 4 * 4]
        with torch.no_grad():
            logits = ref_forward(sd, cfg, canvas, official_block_mask(end // 4, 4), torch.arange(end)[None])[
                0, i
            ]
        logits[MASK] = -torch.inf
        exact += torch.log_softmax(logits.double(), -1)[ids[0, i]]
    assert torch.allclose(est.sum().double(), exact, atol=1e-5)


# ---------------------------------------------------------------- the library's entry points and bad input


def test_generate_dispatches_block_schedules_and_stops_rows():
    from conftest import kw_generate as generate

    model = tiny_model(41)
    ids = torch.randint(2, 60, (2, 6), generator=torch.Generator().manual_seed(1))
    out = generate(
        model, ids, gen_length=8, steps=8, block_length=4, remasking="low_confidence_static", spec=SPEC
    )
    ref = block_generate(model, ids, None, spec=SPEC, gen_length=8, block_length=4, steps_per_block=4,
                         variable_length=True)  # fmt: skip
    assert torch.equal(out.sequences, ref.sequences) and out.nfe == ref.nfe


@pytest.mark.parametrize("kwargs,match", [
    (dict(remasking="low_confidence", block_length=4), "was not trained for: use one of low_confidence_static"),
    (dict(remasking="low_confidence_static", block_length=8), "block_length 8 contradicts the model's block size 4"),
    (dict(remasking="low_confidence_dynamic", block_length=4), "set threshold in"),
    (dict(remasking="low_confidence_static", block_length=4, threshold=0.9), "threshold applies to"),
    (dict(remasking="low_confidence_static", block_length=4, cfg_scale=1.0), "cfg_scale=1.0 is not available"),
    (dict(remasking="low_confidence_static", block_length=4, alg_temp=0.5), "alg_temp applies"),
])  # fmt: skip
def test_block_settings_that_contradict_the_model_are_one_line(kwargs, match):
    from conftest import kw_generate as generate

    model = tiny_model(43)
    ids = torch.randint(2, 60, (1, 4))
    spec = family_spec(model)
    assert spec.block_size == 4 and spec.mask_token_id == MASK
    with pytest.raises(ValueError, match=match):
        generate(model, ids, gen_length=8, steps=8, spec=spec, **kwargs)


def test_family_checks_name_both_values():
    from align.errors import UsageError
    from align.sampling.family_checks import check_family_settings

    model = tiny_model(45, block_size=8)
    spec = family_spec(model)
    assert spec.block_size == 8
    with pytest.raises(UsageError, match="block_length 4 contradicts the model's block size 8"):
        check_family_settings(spec, block_length=4)
    with pytest.raises(UsageError, match="cache 'prefix' is Fast-dLLM's approximate cache"):
        check_family_settings(spec, cache="prefix")
    with pytest.raises(UsageError, match="use estimator block_trace"):
        check_family_settings(spec, estimator="trace")
    llada = FamilySpec(model_type="llada", mask_token_id=5)
    with pytest.raises(UsageError, match="is a block-diffusion schedule"):
        check_family_settings(llada, remasking="sequential")
    with pytest.raises(UsageError, match="block_trace is for block-diffusion models"):
        check_family_settings(llada, estimator="block_trace")


def test_the_cache_is_exact():
    """Decoding with the block cache and re-encoding the canvas every pass give the same tokens (greedy, a
    batch of prompts in different block phases, rows stopping at different blocks) in fewer tokens encoded."""
    model = tiny_model(47)
    prompts = [torch.randint(2, 60, (n,), generator=torch.Generator().manual_seed(n)) for n in (3, 8, 5)]
    for schedule in ("low_confidence_static", "low_confidence_dynamic"):
        kw = dict(gen_length=16, block_length=4, steps_per_block=4, schedule=schedule, threshold=0.3)
        cached = _ours(model, prompts, variable_length=True, **kw)
        plain = _ours(model, prompts, variable_length=True, use_cache=False, **kw)
        assert torch.equal(cached.sequences, plain.sequences) and torch.equal(
            cached.commit_step, plain.commit_step
        )


def test_a_checkpoint_with_the_hub_config_as_published_loads_through_load_model(tmp_path):
    """SDAR-*-Chat and TraDo configs ask for flex_attention; the native class computes the same attention with
    SDPA, so load_model (what align train / eval / generate call) takes the checkpoint as published."""
    from align.models.loading import load_model

    model = tiny_model(1, block_size=4)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    shape = {k: config[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                    "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
                                    "pad_token_id", "eos_token_id", "bos_token_id", "mask_token_id", "block_size")}  # fmt: skip
    (tmp_path / "config.json").write_text(
        json.dumps({**HUB_CONFIG, **shape})
    )  # the hub's fields, tiny shapes
    loaded = load_model(str(tmp_path), dtype="float32").eval()
    assert type(loaded) is SDARLM and loaded.config.hub_attn_implementation == "flex_attention"
    ids = torch.randint(2, 60, (2, 8))
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
