"""The Dream family against independent references written from the official hub files (Dream-org's
``modeling_dream.py`` and ``generation_utils.py`` as shipped with Dream-v0-Instruct-7B): the native model's
logits, its parameter names, the aligned (shifted) logits every estimator reads, and Dream's own sampler.

The references below are this file's own arithmetic, read from those files, not copies of them."""

import json

import pytest
import torch
import torch.nn.functional as F

from align.models.family import family_for, family_spec, model_logits, new_model

MASK, PAD = 39, 1

# The parameter names of the official checkpoint (Dream-v0-Instruct-7B's model.safetensors.index.json: 339
# names = these three + 12 per layer x 28 layers).
OFFICIAL_GLOBAL = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
OFFICIAL_LAYER = {
    "input_layernorm.weight", "post_attention_layernorm.weight", "mlp.down_proj.weight", "mlp.gate_proj.weight",
    "mlp.up_proj.weight", "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
    "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
}  # fmt: skip


def dream_config(**over):
    cfg = {"model_type": "Dream", "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
           "num_hidden_layers": 2, "intermediate_size": 64, "vocab_size": 40, "max_position_embeddings": 64,
           "mask_token_id": MASK, "eos_token_id": PAD, "pad_token_id": PAD, "bos_token_id": PAD,
           "tie_word_embeddings": False, "rope_theta": 10000.0, "rms_norm_eps": 1e-6}  # fmt: skip
    cfg.update(over)
    return cfg


def build(tmp_path, seed=0, **over):
    path = tmp_path / f"dream_{seed}_{len(over)}.json"
    path.write_text(json.dumps(dream_config(**over)))
    torch.manual_seed(seed)
    model = new_model(str(path)).eval()
    with torch.no_grad():  # biases and norms away from their init, so that every term is exercised
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


# ---- an independent reference of the official forward --------------------------------------------------


def _rms(x, w, eps):
    """DreamRMSNorm: variance in float32, ``weight * x.to(input_dtype)``."""
    xf = x.float()
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


def _rope(positions, dim, base, dtype):
    """DreamRotaryEmbedding (rope_type default): inv_freq from int64 arange, freqs as a matmul, cos/sin cast."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    freqs = (
        inv_freq[None, :, None].expand(positions.shape[0], -1, 1) @ positions[:, None, :].float()
    ).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def official_forward(model, input_ids, mask4d=None, positions=None):
    """The hub file's DreamModel forward (SDPA path) on ``model``'s weights read by their official names:
    ``mask4d`` [B, 1, L, L] bool (what the sampler passes; None = "full"), ``positions`` [B, L] (None: arange).
    Attention is written out (scores, -inf where the mask is False, float32 softmax, rows with no allowed key
    give 0 as torch's SDPA does); logits are the model's raw ones (not shifted)."""
    cfg, sd = model.config, dict(model.state_dict())
    b, length = input_ids.shape
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = cfg.hidden_size // heads
    h = F.embedding(input_ids, sd["model.embed_tokens.weight"])
    if positions is None:
        positions = torch.arange(length)[None]
    cos, sin = _rope(positions, hd, cfg.rope_theta, h.dtype)
    cos, sin = cos[:, None], sin[:, None]
    for i in range(cfg.num_hidden_layers):
        p = lambda n, i=i: sd[f"model.layers.{i}.{n}"]  # noqa: E731
        x = _rms(h, p("input_layernorm.weight"), cfg.rms_norm_eps)
        q = (
            F.linear(x, p("self_attn.q_proj.weight"), p("self_attn.q_proj.bias"))
            .view(b, length, heads, hd)
            .transpose(1, 2)
        )
        k = (
            F.linear(x, p("self_attn.k_proj.weight"), p("self_attn.k_proj.bias"))
            .view(b, length, kv_heads, hd)
            .transpose(1, 2)
        )
        v = (
            F.linear(x, p("self_attn.v_proj.weight"), p("self_attn.v_proj.bias"))
            .view(b, length, kv_heads, hd)
            .transpose(1, 2)
        )
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        k = k[:, :, None].expand(b, kv_heads, heads // kv_heads, length, hd).reshape(b, heads, length, hd)
        v = v[:, :, None].expand(b, kv_heads, heads // kv_heads, length, hd).reshape(b, heads, length, hd)
        scores = q @ k.transpose(2, 3) / hd**0.5
        if mask4d is not None:
            scores = scores.masked_fill(~mask4d, float("-inf"))
        probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        probs = torch.nan_to_num(probs, nan=0.0)
        attn = (probs @ v).transpose(1, 2).reshape(b, length, heads * hd)
        h = h + F.linear(attn, p("self_attn.o_proj.weight"))
        x = _rms(h, p("post_attention_layernorm.weight"), cfg.rms_norm_eps)
        mlp = F.linear(F.silu(F.linear(x, p("mlp.gate_proj.weight"))) * F.linear(x, p("mlp.up_proj.weight")),
                       p("mlp.down_proj.weight"))  # fmt: skip
        h = h + mlp
    h = _rms(h, sd["model.norm.weight"], cfg.rms_norm_eps)
    head = sd["model.embed_tokens.weight"] if cfg.tie_word_embeddings else sd["lm_head.weight"]
    return F.linear(h, head)


def sampler_mask(attention_mask):
    """generation_utils.py ``_sample``: the [B, 1, N, N] mask and ``tok_idx`` (cumsum - 1, pads 1)."""
    tok_idx = attention_mask.long().cumsum(-1) - 1
    tok_idx.masked_fill_(attention_mask == 0, 1)
    am = attention_mask.bool()
    return am[:, None, None, :] & am[:, None, :, None], tok_idx


SHAPES = [
    dict(),  # GQA 4 / 2, untied
    dict(num_key_value_heads=4, tie_word_embeddings=True),  # MHA, tied
    dict(hidden_size=48, num_attention_heads=6, num_key_value_heads=1, num_hidden_layers=3),  # MQA
]


@pytest.mark.parametrize("over", SHAPES, ids=["gqa-untied", "mha-tied", "mqa-3-layers"])
def test_logits_equal_the_official_forward_with_and_without_padding(tmp_path, over):
    model = build(tmp_path, **over)
    ids = torch.randint(2, MASK, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            model(input_ids=ids).logits, official_forward(model, ids), rtol=1e-5, atol=1e-5
        )
        attn = torch.ones_like(ids)
        attn[0, :4], attn[1, :1] = 0, 0  # left padding of 4 and 1, row 2 unpadded
        padded = torch.where(attn.bool(), ids, PAD)
        mask4d, tok_idx = sampler_mask(attn)
        ours = model(input_ids=padded, attention_mask=attn).logits
        theirs = official_forward(model, padded, mask4d, tok_idx)
        real = attn.bool()
        torch.testing.assert_close(ours[real], theirs[real], rtol=1e-5, atol=1e-5)
        # a real token's logits do not depend on how much padding its row has
        torch.testing.assert_close(ours[0, 4:], model(input_ids=ids[:1, 4:]).logits[0], rtol=1e-5, atol=1e-5)
        # the sampler's own 4-D mask and positions, passed through as the official file takes them
        four = model(input_ids=padded, attention_mask=mask4d, position_ids=tok_idx).logits
        torch.testing.assert_close(four[real], theirs[real], rtol=1e-5, atol=1e-5)


def test_parameter_names_are_the_official_checkpoints(tmp_path):
    untied = set(build(tmp_path).state_dict())
    layers = {f"model.layers.{i}.{n}" for i in range(2) for n in OFFICIAL_LAYER}
    assert untied == OFFICIAL_GLOBAL | layers
    tied = set(build(tmp_path, tie_word_embeddings=True).state_dict())
    assert tied == (OFFICIAL_GLOBAL - {"lm_head.weight"}) | layers


def test_a_hub_config_loads_natively_and_its_weights_round_trip(tmp_path):
    """The hub's config.json (model_type "Dream", auto_map to remote code) resolves to the native classes
    without trust_remote_code; saved weights load back bit-identical."""
    from transformers import AutoConfig

    from align.models import load_model
    from align.models.modeling_dream import DreamLM

    hub = dict(dream_config(), architectures=["DreamModel"], attn_implementation="flash_attention_2",
               auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
               use_sliding_window=False, sliding_window=None, max_window_layers=28, torch_dtype="bfloat16")  # fmt: skip
    (tmp_path / "hub").mkdir()
    (tmp_path / "hub" / "config.json").write_text(json.dumps(hub))
    assert AutoConfig.from_pretrained(str(tmp_path / "hub")).mask_token_id == MASK
    model = build(tmp_path)
    model.save_pretrained(tmp_path / "saved")
    loaded = load_model(str(tmp_path / "saved"), dtype="float32")
    assert isinstance(loaded, DreamLM)
    ids = torch.randint(2, MASK, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_settings_it_does_not_compute_are_refused_in_one_line(tmp_path):
    from align.models.configuration_dream import DreamConfig

    for bad, match in ((dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}), "rope_scaling"),
                       (dict(use_sliding_window=True), "use_sliding_window"),
                       (dict(pad_token_id=MASK), "pad_token_id equals mask_token_id")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            DreamConfig(**dict(dream_config(), **bad))


def test_aligned_logits_are_the_samplers_shift_and_windows_agree(tmp_path):
    """What every estimator reads: logit i predicts token i (``cat([l[:, :1], l[:, :-1]])``, the official
    sampler's line), also through a ``logits_range`` window at either edge, with or without a spec."""
    model = build(tmp_path)
    spec = family_spec(model)
    assert spec.model_type == "dream" and spec.mask_token_id == MASK and family_for("Dream").shift_logits
    ids = torch.randint(2, MASK, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        raw = official_forward(model, ids)
        aligned = torch.cat([raw[:, :1], raw[:, :-1]], 1)
        torch.testing.assert_close(model_logits(model, ids, None, spec).logits, aligned, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model_logits(model, ids).logits, aligned, rtol=1e-5, atol=1e-5)
        for lo, hi in ((0, 1), (0, 4), (1, 5), (4, 9), (8, 9)):
            window = model_logits(model, ids, None, spec, logits_range=(lo, hi)).logits
            torch.testing.assert_close(window, aligned[:, lo:hi], rtol=1e-5, atol=1e-5)


# ---- Dream's sampler against an independent reference of the hub's ``_sample`` ------------------------


def _hub_top_p(logits, top_p):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
    remove[..., 1:] = remove[..., :-1].clone()
    remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, sorted_indices, remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def _hub_sample_tokens(logits, temperature, top_p, top_k, margin=False, neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = _hub_top_p(logits, top_p)
    if top_k is not None:
        logits = logits.masked_fill(logits < torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None],
                                    torch.finfo(logits.dtype).min)  # fmt: skip
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        x0 = torch.distributions.Categorical(probs=probs).sample()
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def hub_sample(model, input_ids, attention_mask, max_new, steps, alg, temperature=0.0, top_p=None, top_k=None,
               alg_temp=None, eps=1e-3):  # fmt: skip
    """generation_utils.py ``DreamGenerationMixin._sample`` (global RNG), the model called as the hub calls
    it: ``model(x, mask_or_full, tok_idx)`` and the sampler's shift ``cat([l[:, :1], l[:, :-1]])``."""
    x = F.pad(input_ids, (0, max_new), value=MASK)
    if attention_mask is not None and torch.any(attention_mask == 0.0):
        attention_mask = F.pad(attention_mask, (0, max_new), value=1.0)
        tok_idx = attention_mask.long().cumsum(-1) - 1
        tok_idx.masked_fill_(attention_mask == 0, 1)
        attention_mask = torch.logical_and(attention_mask.unsqueeze(1).unsqueeze(-2),
                                           attention_mask.unsqueeze(1).unsqueeze(-1))  # fmt: skip
    else:
        tok_idx, attention_mask = None, None  # "full": SDPA without a mask
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == MASK
        logits = model(input_ids=x, attention_mask=attention_mask, position_ids=tok_idx).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index], dtype=torch.long) + MASK
            transfer_index_t_s = torch.rand(*x0.shape) < p_transfer
            _, x0[transfer_index_t_s] = _hub_sample_tokens(
                mask_logits[transfer_index_t_s], temperature, top_p, top_k
            )
            x[mask_index] = x0.clone()
        else:
            confidence, x0 = _hub_sample_tokens(mask_logits, temperature, top_p, top_k,
                                                margin=alg == "topk_margin", neg_entropy=alg == "entropy")  # fmt: skip
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            number_transfer_tokens = (
                int(num_mask_token * (1 - s / t)) if i < steps - 1 else int(num_mask_token)
            )
            full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
            full_confidence[mask_index] = confidence
            if number_transfer_tokens > 0:
                if alg_temp is None or alg_temp == 0:
                    _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
                else:
                    full_confidence = F.softmax(full_confidence / alg_temp, dim=-1)
                    transfer_index = torch.multinomial(full_confidence, num_samples=number_transfer_tokens)
                x_ = torch.zeros_like(x, dtype=torch.long) + MASK
                x_[mask_index] = x0.clone()
                row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
                x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x


@pytest.fixture(scope="module")
def sampler_model(tmp_path_factory):
    return build(tmp_path_factory.mktemp("dream"), seed=4)


CASES = [
    dict(alg="origin"),
    dict(alg="maskgit_plus"),
    dict(alg="topk_margin", top_k=5),
    dict(alg="entropy", top_p=0.9),
    dict(alg="maskgit_plus", alg_temp=0.5),
]


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_greedy_decoding_is_token_for_token_the_hub_sampler(sampler_model, case, padded):
    from conftest import kw_generate as generate

    ids = torch.randint(2, MASK, (3, 5), generator=torch.Generator().manual_seed(7))
    attn = torch.ones_like(ids)
    if padded:
        attn[0, :2] = 0
        ids = torch.where(attn.bool(), ids, PAD)
    seed, steps, gen = 11, 6, 12
    torch.manual_seed(seed)
    with torch.no_grad():
        expected = hub_sample(sampler_model, ids, attn if padded else None, gen, steps, **case)
    out = generate(sampler_model, ids, attn, gen_length=gen, steps=steps, block_length=gen,
                   remasking=case["alg"], **{k: v for k, v in case.items() if k != "alg"},
                   generator=torch.Generator().manual_seed(seed))  # fmt: skip
    assert torch.equal(out.sequences, expected)
    committed = out.commit_step[out.completion_ids != MASK]
    assert (committed >= 0).all() and committed.max() < steps and out.nfe <= steps


@pytest.mark.parametrize("alg", ["maskgit_plus", "origin"])
def test_sampled_tokens_follow_the_filtered_tempered_softmax(sampler_model, alg):
    """At T = 0.7 with top_k 6: one step on one masked position, 30,000 rows: chi-square against the softmax of
    the cut, tempered aligned logits (what the hub's Categorical draws from)."""
    from conftest import kw_generate as generate

    rows = 30000
    prompt = torch.randint(2, MASK, (1, 4), generator=torch.Generator().manual_seed(8))
    out = generate(sampler_model, prompt.expand(rows, -1), None, gen_length=1, steps=1, block_length=1,
                   remasking=alg, temperature=0.7, top_k=6, generator=torch.Generator().manual_seed(0))  # fmt: skip
    with torch.no_grad():
        canvas = torch.cat([prompt, torch.tensor([[MASK]])], 1)
        logits = model_logits(sampler_model, canvas).logits[0, -1] / 0.7
    top = torch.topk(logits, 6)
    expected = torch.softmax(top.values, -1).double() * rows
    observed = torch.bincount(out.completion_ids[:, 0], minlength=40).double()
    assert observed.sum() == observed[top.indices].sum()  # nothing outside the top 6
    chi2 = (((observed[top.indices] - expected) ** 2) / expected).sum().item()
    assert chi2 < 20.52, chi2  # the 0.999 quantile of chi-square with 5 degrees of freedom


def test_what_dreams_schedules_do_not_do_is_refused_in_one_line(sampler_model):
    from conftest import kw_generate as generate

    ids = torch.randint(2, MASK, (1, 3))
    for extra, match in ((dict(block_length=4), "set block_length to gen_length"),
                         (dict(threshold=0.9), "threshold=0.9 is not available"),
                         (dict(cfg_scale=1.0), "cfg_scale=1.0 is not available"),
                         (dict(variable_length=True), "variable_length=True is not available")):  # fmt: skip
        kwargs = {"gen_length": 8, "steps": 4, "block_length": 8, "remasking": "entropy", **extra}
        with pytest.raises(ValueError, match=match):
            generate(sampler_model, ids, **kwargs)
    with pytest.raises(
        ValueError, match="needs a KV-cache forward"
    ):  # LLaDA's schedule with a cache on Dream
        generate(sampler_model, ids, gen_length=8, steps=4, block_length=4, cache="prefix")
    with pytest.raises(ValueError, match="top_p / top_k / alg_temp apply to Dream's schedules"):
        generate(sampler_model, ids, gen_length=8, steps=4, block_length=4, top_p=0.9)


# ---- estimators on shifted logits -----------------------------------------------------------------------


def _hub_logps(model, noisy, ids):
    """log p(ids | noisy) per position [B, L] from the official forward and the sampler's shift."""
    raw = official_forward(model, noisy)
    aligned = torch.cat([raw[:, :1], raw[:, :-1]], 1)
    return aligned.log_softmax(-1).gather(-1, ids[..., None])[..., 0]


@pytest.fixture(scope="module")
def scoring(tmp_path_factory):
    model = build(tmp_path_factory.mktemp("dream-est"), seed=5)
    with torch.no_grad():  # soften the logits so log-probs differ across tokens but stay moderate
        model.lm_head.weight.mul_(0.25)
    prompt, length = 3, 4
    ids = torch.randint(3, MASK, (2, prompt + length), generator=torch.Generator().manual_seed(2))
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, prompt:] = True
    return model, ids, completion, prompt


def test_every_estimators_passes_read_the_shifted_logits(scoring):
    """Each registered estimator's per-pass log-probs on a Dream model equal the official forward + shift
    applied to the same noised inputs (the plans themselves are family-independent)."""
    from align.logprob import ESTIMATORS, make_plan, pass_logprobs

    model, ids, completion, prompt = scoring
    commit = torch.cat([torch.full((2, prompt), -1), torch.tensor([[0, 2, 1, 3]] * 2)], 1)
    context = {"commit_step": commit, "num_steps": 4, "block_length": 2}
    for name in sorted(ESTIMATORS):
        plan = make_plan(
            name, completion, num_samples=2, generator=torch.Generator().manual_seed(1), **context
        )
        with torch.no_grad():
            ours = pass_logprobs(model, ids, plan, mask_token_id=MASK)
            for p in range(plan.num_passes):
                noisy = torch.where(plan.masked[p], MASK, ids)
                if plan.visible is None:
                    expected = _hub_logps(model, noisy, ids)
                else:  # growing's cut canvas: the official forward on each row's visible prefix alone
                    expected = torch.zeros(ids.shape)
                    for r in range(ids.shape[0]):
                        n = int(plan.visible[p, r].sum())
                        assert plan.visible[p, r, :n].all()  # a prefix
                        expected[r, :n] = _hub_logps(model, noisy[r : r + 1, :n], ids[r : r + 1, :n])[0]
                expected = expected * (plan.weights[p] != 0)
                torch.testing.assert_close(ours[p], expected, rtol=1e-5, atol=1e-5, msg=f"{name} pass {p}")


@torch.no_grad()
def _exact_elbo(model, ids, positions):
    """B = sum_k (1/k) mean_{|S|=k} sum_{i in S} log p(y_i | S masked), every subset, official forward + shift."""
    import itertools

    total = 0.0
    for k in range(1, len(positions) + 1):
        values = []
        for subset in itertools.combinations(positions, k):
            noisy = ids.clone()
            noisy[0, list(subset)] = MASK
            logp = _hub_logps(model, noisy, ids)[0]
            values.append(sum(logp[i].item() for i in subset))
        total += sum(values) / len(values) / k
    return total


@pytest.mark.parametrize("estimator", ["elbo", "coupled"])
def test_elbo_estimators_are_unbiased_on_a_dream_model(scoring, estimator):
    from align.logprob import sequence_logprob

    model, ids, completion, prompt = scoring
    one, cm = ids[:1], completion[:1]
    exact = _exact_elbo(model, one, list(range(prompt, one.shape[1])))
    n = 3000
    with torch.no_grad():
        est = sequence_logprob(model, one.expand(n, -1), cm.expand(n, -1), estimator=estimator, num_samples=1,
                               mask_token_id=MASK, generator=torch.Generator().manual_seed(0), chunk_size=4)  # fmt: skip
    se = est.std().item() / n**0.5
    assert abs(est.mean().item() - exact) < 4 * se and se < 0.05 * abs(exact), (est.mean().item(), exact, se)


def test_one_step_and_trace_are_exact_on_a_dream_model(scoring):
    from align.logprob import sequence_logprob

    model, ids, completion, prompt = scoring
    noisy = torch.where(completion, MASK, ids)
    with torch.no_grad():
        expected = (_hub_logps(model, noisy, ids) * completion).sum(-1)
        got = sequence_logprob(model, ids, completion, estimator="one_step", mask_token_id=MASK)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # trace: the tokens committed at step s scored on the canvas where they and everything later is masked
    order = torch.tensor([2, 0, 3, 1])
    commit = torch.cat([torch.full((2, prompt), -1), order.expand(2, -1)], 1)
    with torch.no_grad():
        expected = torch.zeros(2)
        for step in range(4):
            canvas = torch.where(completion & (commit >= step), MASK, ids)
            expected += (_hub_logps(model, canvas, ids) * (commit == step)).sum(-1)
        got = sequence_logprob(model, ids, completion, estimator="trace", mask_token_id=MASK, commit_step=commit,
                               num_steps=4)  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_coupled_grpo_on_a_dream_model_equals_diffucoders_released_trainer(scoring, tmp_path):
    """apple/ml-diffucoder @ f735e01 ``coupled_grpo.py``: ``get_logits`` takes the raw logits ``[:, :-1]`` and
    keeps the last K (position i - 1 predicts token i: its shift), ``forward_process`` never masks the prompt
    and builds three versions (completion fully masked; masked where u < t; the complement where u > t),
    ``selective_log_softmax`` weights them [1, 1/t, 1/(1 - t)] and halves, ``compute_loss`` is the clipped
    surrogate's token mean over the micro-batch. Same masks and t here; values and gradients within 1e-5."""
    from align.logprob import combine, make_plan, pass_logprobs
    from align.losses import compute_advantages, policy_loss

    model, ids, completion, prompt = scoring
    ids, completion = ids.repeat(2, 1), completion.repeat(2, 1)  # 4 rows: one group of 4
    ids[2:, prompt:] = torch.randint(
        3, MASK, (2, ids.shape[1] - prompt), generator=torch.Generator().manual_seed(9)
    )
    k = ids.shape[1] - prompt
    plan = make_plan("diffucoder", completion, generator=torch.Generator().manual_seed(0))
    t = 1 / (2 * plan.weights[1][plan.masked[1]][0])  # the plan's t (float32), to give the released code
    weights = torch.stack([torch.tensor(1.0), 1 / t, 1 / (1 - t)])
    first = plan.masked[1][:, prompt:]

    def released(m):
        noisy = torch.where(plan.masked, MASK, ids[None])  # the three versions, prompt never masked
        logits = torch.stack([m(input_ids=x).logits[:, :-1][:, -k:] for x in noisy])  # get_logits, then [-K:]
        logps = F.log_softmax(logits, -1).gather(-1, ids[None, :, prompt:, None].expand(3, -1, -1, 1))[..., 0]
        return (logps[0] + torch.where(first, logps[1] * weights[1], logps[2] * weights[2])) / 2

    ours = combine(plan, pass_logprobs(model, ids, plan, mask_token_id=MASK))[:, prompt:]
    reference = released(model)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    old_model = build(tmp_path, seed=6)
    with torch.no_grad():
        old_ours = combine(plan, pass_logprobs(old_model, ids, plan, mask_token_id=MASK))[:, prompt:]
        old_ref = released(old_model)
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    advantages, _ = compute_advantages(rewards, 4, "none", "leave_one_out")
    mask = torch.ones_like(ours)
    loss, _ = policy_loss(ours, old_ours, None, advantages, mask, loss_type="bnpo", epsilon=0.2)
    coef = torch.exp(reference - old_ref)
    adv = advantages[:, None]
    per_token = -torch.min(coef * adv, torch.clamp(coef, 0.8, 1.2) * adv)
    expected = (per_token * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    expected_grads = torch.autograd.grad(expected, list(model.parameters()))
    torch.testing.assert_close(torch.cat([g.flatten() for g in grads]),
                               torch.cat([g.flatten() for g in expected_grads]), rtol=1e-5, atol=1e-5)  # fmt: skip
