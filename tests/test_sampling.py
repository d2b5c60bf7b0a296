"""The sampler against an independent, literal implementation of LLaDA's generate.py."""

import math
from types import SimpleNamespace

import pytest
import torch
from conftest import EOS_ID, MASK_ID, VOCAB, tiny_model
from conftest import kw_generate as generate
from torch import nn

from align.sampling import num_transfer_tokens, sample_tokens


def reference_generate(
    model, prompt, gen_length, steps, block_length, temperature, cfg_scale, remasking, gen
):
    """LLaDA's generate.py written out plainly: one row, full canvas each step, a Python loop for top-k.

    At T = 0 the arithmetic is the official one (argmax and softmax in the logits' dtype). At T > 0 the
    proposals are drawn by inverse CDF from softmax(logits / T), one float64 uniform per masked position of
    the block in the sampler's order (the first token whose prefix sum of probabilities exceeds it), so that
    seeded runs compare token for token; that this draw has the distribution of LLaDA's float64 Gumbel-max is
    tested separately (chi-square below).
    """
    p = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), MASK_ID)], 1)
    num_blocks = gen_length // block_length
    spb = steps // num_blocks
    for nb in range(num_blocks):
        s, e = p + nb * block_length, p + (nb + 1) * block_length
        n = int((x[0, s:e] == MASK_ID).sum())
        counts = [n // spb + (1 if i < n % spb else 0) for i in range(spb)]
        for i in range(spb):
            if cfg_scale > 0:
                un = x.clone()
                un[0, :p] = MASK_ID
                cond_logits, un_logits = model(torch.cat([x, un])).logits
                logits = un_logits + (cfg_scale + 1) * (cond_logits - un_logits)
            else:
                logits = model(x).logits[0]
            logits = logits[s:e].clone()
            logits[:, MASK_ID] = -math.inf
            candidates = [j for j in range(e - s) if x[0, s + j] == MASK_ID]
            rows = logits[candidates]
            if temperature > 0:
                probs = (rows.float() / temperature).softmax(-1).double()
                u = torch.rand(len(probs), 1, generator=gen, dtype=torch.float64) * probs.sum(
                    -1, keepdim=True
                )
                x0 = (probs.cumsum(-1) <= u).sum(-1).clamp_max(probs.shape[1] - 1)
            else:
                x0 = rows.argmax(-1)
            if remasking == "low_confidence":
                conf = (rows.float() if temperature > 0 else rows).softmax(-1).gather(-1, x0[:, None])[:, 0]
            else:
                conf = torch.rand(len(candidates), generator=gen, dtype=torch.float64)
            order = sorted(range(len(candidates)), key=lambda k: -conf[k].item())
            for k in order[: counts[i]]:
                x[0, s + candidates[k]] = x0[k]
    return x


SETTINGS = [(8, 8, 8), (16, 4, 8), (16, 8, 16), (10, 10, 4), (15, 5, 6)]


@pytest.mark.parametrize("gen_length,block_length,steps", SETTINGS)
@pytest.mark.parametrize("temperature,cfg_scale,remasking", [
    (0.0, 0.0, "low_confidence"), (1.0, 0.0, "low_confidence"), (0.7, 0.0, "random"), (0.0, 1.5, "low_confidence"),
])  # fmt: skip
def test_reference_mode_equals_literal_llada(
    gen_length, block_length, steps, temperature, cfg_scale, remasking
):
    model = tiny_model(seed=gen_length + steps)
    prompt = torch.randint(2, 38, (1, 5), generator=torch.Generator().manual_seed(steps))
    ours = generate(
        model, prompt, gen_length=gen_length, steps=steps, block_length=block_length, temperature=temperature,
        cfg_scale=cfg_scale, remasking=remasking, generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    ref = reference_generate(
        model, prompt, gen_length, steps, block_length, temperature, cfg_scale, remasking,
        torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert torch.equal(ours.sequences, ref)
    assert ours.nfe == steps


def test_left_padded_batch_equals_single_prompt_runs(model):
    prompts = [torch.randint(2, 38, (1, n), generator=torch.Generator().manual_seed(n)) for n in (3, 6, 9)]
    width = 9
    ids = torch.cat([torch.cat([torch.full((1, width - p.shape[1]), EOS_ID), p], 1) for p in prompts])
    mask = torch.cat(
        [torch.cat([torch.zeros(1, width - p.shape[1]), torch.ones(1, p.shape[1])], 1) for p in prompts]
    )
    for extra in ({}, {"cfg_scale": 1.0}, {"cache": "prefix"}, {"threshold": 0.5}):
        batched = generate(model, ids, mask.long(), gen_length=16, steps=8, block_length=8, **extra)
        for row, p in enumerate(prompts):
            single = generate(model, p, gen_length=16, steps=8, block_length=8, **extra)
            assert torch.equal(batched.completion_ids[row], single.completion_ids[0]), (extra, row)


def test_seeded_sampling_is_reproducible_and_seed_dependent(model):
    prompt = torch.randint(2, 38, (2, 4))

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return generate(model, prompt, gen_length=16, steps=16, block_length=8, temperature=1.0, generator=g)

    assert torch.equal(run(3).sequences, run(3).sequences)
    assert not torch.equal(run(3).sequences, run(4).sequences)


def test_invariants_prompt_untouched_schedule_counts_no_masks(model):
    prompt = torch.randint(2, 38, (3, 5))
    out = generate(model, prompt, gen_length=12, steps=6, block_length=4, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert torch.equal(out.sequences[:, :5], prompt)
    assert not (out.sequences == MASK_ID).any()
    # 3 blocks x 2 steps; 4 tokens per block -> 2 committed at each step, all in the step's own block
    for step in range(6):
        committed = out.commit_step == step
        assert (committed.sum(-1) == 2).all()
        block = step // 2
        assert committed[:, block * 4 : (block + 1) * 4].sum() == committed.sum()


def test_num_transfer_tokens_schedule():
    mask = torch.tensor([[True] * 10 + [False] * 2, [True] * 3 + [False] * 9])
    assert num_transfer_tokens(mask, 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]


class ScriptedDenoiser(nn.Module):
    """Mock model: predicts target[i] at every position with probability ~conf[i]; no weights."""

    def __init__(self, target, conf):
        super().__init__()
        self.config = SimpleNamespace(
            model_type="llada", mask_token_id=MASK_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID
        )
        self.target, self.conf = target, conf
        self.calls = 0

    def forward(self, input_ids, attention_mask=None, **_):
        self.calls += 1
        b, length = input_ids.shape
        logits = torch.zeros(b, length, VOCAB)
        rest = (1 - self.conf[:length]) / (VOCAB - 2)  # spread over the others, mask excluded
        logits += torch.log(rest)[None, :, None]
        logits.scatter_(
            -1,
            self.target[:length].expand(b, -1)[..., None],
            torch.log(self.conf[:length])[None, :, None].expand(b, -1, -1),
        )
        return SimpleNamespace(logits=logits)


def test_threshold_mode_uses_fewer_passes_and_leaves_no_masks():
    p, g = 4, 32
    target = torch.randint(2, 38, (p + g,), generator=torch.Generator().manual_seed(0))
    conf = torch.full((p + g,), 0.99)
    conf[p + 5] = conf[p + 20] = 0.3  # two unsure positions: each costs an extra step in its block
    model = ScriptedDenoiser(target, conf)
    prompt = target[:p][None]
    ref = generate(model, prompt, gen_length=g, steps=32, block_length=16)
    fast = generate(model, prompt, gen_length=g, steps=32, block_length=16, threshold=0.9)
    assert ref.nfe == 32 and fast.nfe == 4
    assert torch.equal(fast.sequences, ref.sequences) and torch.equal(fast.completion_ids, target[p:][None])
    # a threshold nobody reaches still finishes within the step budget
    slow = generate(model, prompt, gen_length=g, steps=4, block_length=16, threshold=0.999)
    assert slow.nfe == 4 and not (slow.sequences == MASK_ID).any()


def test_cache_with_one_step_per_block_is_exact_and_reports_agreement(model):
    prompt = torch.randint(2, 38, (4, 6))
    base = generate(model, prompt, gen_length=16, steps=2, block_length=8)
    for mode in ("prefix", "dual"):
        assert torch.equal(
            generate(model, prompt, gen_length=16, steps=2, block_length=8, cache=mode).sequences,
            base.sequences,
        )
    # With several steps per block the cache is an approximation: measure it, demand most tokens agree.
    base = generate(model, prompt, gen_length=32, steps=32, block_length=8)
    for mode in ("prefix", "dual"):
        cached = generate(model, prompt, gen_length=32, steps=32, block_length=8, cache=mode)
        agreement = (cached.completion_ids == base.completion_ids).float().mean().item()
        assert agreement > 0.5, (mode, agreement)
        assert cached.nfe == base.nfe


def test_cache_refresh_rebuilds_the_cache_after_k_commits(model):
    """cache_refresh=1 re-encodes at every pass, so it is reference decoding (left padding included);
    cache_refresh=k with one commit per pass re-encodes at passes 0, k, 2k, ... of each block."""
    prompt = torch.randint(2, 38, (4, 6))
    mask = torch.ones_like(prompt)
    mask[1, :2] = 0  # a left-padded row
    prompt[1, :2] = 1
    base = generate(model, prompt, mask, gen_length=32, steps=32, block_length=8)
    assert base.full_passes == base.nfe == 32
    for mode in ("prefix", "dual"):
        every = generate(
            model, prompt, mask, gen_length=32, steps=32, block_length=8, cache=mode, cache_refresh=1
        )
        assert torch.equal(every.sequences, base.sequences) and every.full_passes == every.nfe == 32
        plain = generate(model, prompt, mask, gen_length=32, steps=32, block_length=8, cache=mode)
        assert plain.full_passes == 4  # one per block
        third = generate(
            model, prompt, mask, gen_length=32, steps=32, block_length=8, cache=mode, cache_refresh=3
        )
        assert third.nfe == 32 and third.full_passes == 4 * 3  # passes 0, 3, 6 of each 8-pass block
    for bad in ({"cache_refresh": 2}, {"cache": "dual", "cache_refresh": 0}):
        with pytest.raises(ValueError, match="cache_refresh"):
            generate(model, prompt, gen_length=8, steps=8, block_length=8, **bad)


def test_variable_length_stops_rows_at_eos_and_saves_compute():
    p, g = 3, 32
    target = torch.randint(2, 38, (p + g,), generator=torch.Generator().manual_seed(1))
    target[p + 9] = EOS_ID  # EOS in the second block of 8
    model = ScriptedDenoiser(target, torch.full((p + g,), 0.95))
    out = generate(model, target[:p][None], gen_length=g, steps=32, block_length=8, variable_length=True)
    assert out.nfe == 16  # two blocks of 8 steps instead of four
    assert torch.equal(out.completion_ids[0, :16], target[p : p + 16])
    assert (out.completion_ids[0, 16:] == EOS_ID).all() and (out.commit_step[0, 16:] == -1).all()


@pytest.mark.parametrize("cache", [None, "dual"])
def test_end_of_thinking_boost_grows_with_progress_and_stops_once_written(cache):
    """boost * progress ** power at the block's leftmost masked position: with power 12 the boost is under
    1e-3 over the first block of 24 tokens (nothing changes there) and reaches 100 at the last token; a row
    that wrote the token in the first block is never boosted, and rows that had not write it. (The exact rule
    is checked against the authors' code in tests/test_illada_protocol.py.)"""
    from transformers import AutoTokenizer

    from align.models import LLaDAModelLM
    from align.sampling.boost import EndOfThinkingBoost

    model = LLaDAModelLM.from_pretrained("recipes/tiny/model").eval()  # the committed model: varied tokens
    tokenizer = AutoTokenizer.from_pretrained("recipes/tiny/model")
    enc = tokenizer(["123+456=", "999+1=", "500+500=", "31+47="], return_tensors="pt", padding=True)
    kwargs = dict(gen_length=24, steps=24, block_length=8, cache=cache)
    plain = generate(model, enc["input_ids"], enc["attention_mask"], **kwargs).completion_ids
    early = [set(r[:8].tolist()) for r in plain]
    tok = next(t for t in range(3, len(tokenizer)) if 0 < sum(t in e for e in early) < 4  # some rows wrote it early,
               and all(t not in plain[r].tolist() for r in range(4) if t not in early[r]))  # the others never # fmt: skip
    boosted = generate(model, enc["input_ids"], enc["attention_mask"], **kwargs,
                       logits_hook=EndOfThinkingBoost([tok], 100.0, 12.0, 24)).completion_ids  # fmt: skip
    assert torch.equal(boosted[:, :8], plain[:, :8])  # a boost under 1e-3 changes nothing
    rest = [row for row in range(4) if tok not in early[row]]
    for row in range(4):
        if tok in early[row]:  # already written: never boosted
            assert torch.equal(boosted[row], plain[row])
    assert any(tok in boosted[row, 8:].tolist() for row in rest)  # rows that had not written it now do
    off = generate(model, enc["input_ids"], enc["attention_mask"], **kwargs,
                   logits_hook=EndOfThinkingBoost([tok], 0.0, 12.0, 24))  # fmt: skip
    assert torch.equal(off.completion_ids, plain)


def test_suppressed_tokens_never_appear(model):
    prompt = torch.randint(2, 38, (2, 4))
    out = generate(model, prompt, gen_length=16, steps=16, block_length=8, temperature=2.0,
                   suppress_token_ids=[EOS_ID, 2], generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert not torch.isin(out.completion_ids, torch.tensor([EOS_ID, 2, MASK_ID])).any()


@pytest.mark.parametrize("kwargs,message", [
    (dict(gen_length=250, steps=8, block_length=32), "gen_length 250 is not a multiple of block_length 32"),
    (dict(gen_length=64, steps=5, block_length=32), "steps 5 is not divisible by the number of blocks 2"),
    (dict(gen_length=64, steps=8, block_length=32, remasking="top"), "remasking 'top'"),
])  # fmt: skip
def test_impossible_settings_say_what_to_change(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.randint(2, 38, (1, 4)), **kwargs)


def test_pad_equal_to_mask_is_rejected():
    model = tiny_model()
    model.config.pad_token_id = MASK_ID
    with pytest.raises(ValueError, match="pad id equals mask id"):
        generate(model, torch.randint(2, 38, (1, 4)), gen_length=8, steps=8, block_length=8)


def test_truncate_at_stop_keeps_up_to_first_stop_and_fills_after():
    from align.sampling import truncate_at_stop

    ids = torch.tensor([[5, 0, 7, 1, 0, 9], [5, 6, 7, 8, 0, 9], [2, 5, 1, 0, 0, 0]])
    kept, mask = truncate_at_stop(ids, stop_ids=(1, 2), fill_id=1)
    assert kept.tolist() == [[5, 0, 7, 1, 1, 1], [5, 6, 7, 8, 0, 9], [2, 1, 1, 1, 1, 1]]
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6, [1, 0, 0, 0, 0, 0]]


def test_deprioritized_tokens_are_committed_last():
    """Tokens in deprioritize_token_ids get confidence 0: committed after the others (one id, several, or 0)."""
    p, g = 2, 4
    target = torch.tensor([7, 8, 0, 5, 9, 10])  # the completion's first two tokens are ids 0 and 5
    conf = torch.tensor([0.9, 0.9, 0.99, 0.98, 0.6, 0.5])
    model = ScriptedDenoiser(target, conf)

    def order(ids):
        out = generate(
            model, target[:p][None], gen_length=g, steps=g, block_length=g, deprioritize_token_ids=ids
        )
        assert torch.equal(out.completion_ids[0], target[p:])
        return out.commit_step[0].tolist()

    assert order(None) == [0, 1, 2, 3]
    assert order([0]) == [3, 0, 1, 2]
    assert order([0, 5]) == [2, 3, 0, 1]


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_sampled_tokens_follow_the_tempered_softmax(temperature):
    """Chi-square of 60,000 proposals against softmax(logits / T) on a 6-token vocabulary (token 5 excluded)."""
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 3.0])
    rows = logits.expand(1, 60000, 6).clone()
    x0, conf = sample_tokens(
        rows, temperature, "low_confidence", torch.Generator().manual_seed(0), excluded_ids=[5]
    )
    expected = torch.softmax(logits[:5] / temperature, -1) * 60000
    observed = torch.bincount(x0[0], minlength=6).double()
    assert observed[5] == 0  # an excluded token is never proposed
    chi2 = (((observed[:5] - expected) ** 2) / expected).sum().item()
    assert chi2 < 18.47, chi2  # the 0.999 quantile of chi-square with 4 degrees of freedom
    # the confidence is the untempered probability of the proposal (the excluded token has none)
    untempered = torch.softmax(logits[:5], -1).double()
    assert torch.allclose(conf[0], untempered[x0[0]], rtol=1e-6)
    # a biased sampler fails the same test (the test can fail)
    skewed = torch.softmax(logits[:5] / (temperature * 1.1), -1) * 60000
    assert (((observed[:5] - skewed) ** 2) / skewed).sum().item() > 18.47


def test_the_two_level_draw_is_the_inverse_cdf_at_a_126k_vocabulary():
    """``draw_categorical`` (block masses, then the entry inside the block) picks, for the same uniform, the
    token a plain float64 inverse CDF over the whole vocabulary picks: 126,464 entries (not a multiple of the
    block), zero-weight blocks, zeros at block edges and a zero tail; zero-weight entries are never drawn, and a
    chi-square over mass spread across block boundaries holds."""
    from align.sampling.diffusion import draw_categorical

    v, n = 126464, 400
    gen = torch.Generator().manual_seed(1)
    weights = torch.rand(n, v, generator=gen) ** 8
    weights[:, 2048:5120] = 0  # whole blocks with no mass
    weights[:, 1023::1024] = 0  # the last entry of every block
    weights[:, 126000:] = 0  # the tail block after its first entries
    weights[: n // 2, :60000] = 0  # rows whose mass starts late
    ours, total = draw_categorical(weights, torch.Generator().manual_seed(9))
    u = torch.rand(n, 1, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    w = weights.double()
    reference = (w.cumsum(-1) <= u * w.sum(-1, keepdim=True)).sum(-1)
    assert torch.equal(ours, reference)
    assert torch.allclose(total, w.sum(-1), rtol=1e-6) and (weights.gather(-1, ours[:, None]) > 0).all()
    # mass on both sides of block boundaries and in a one-entry tail block: 4 tokens, 12,000 draws
    tokens = torch.tensor([1023, 1024, 2047, 3072])
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    spread = torch.zeros(12000, 3073)
    spread[:, tokens] = probs
    drawn, _ = draw_categorical(spread, torch.Generator().manual_seed(3))
    observed = torch.stack([(drawn == t).sum() for t in tokens]).double()
    assert observed.sum() == 12000
    chi2 = (((observed - probs * 12000) ** 2) / (probs * 12000)).sum().item()
    assert chi2 < 16.27, chi2  # the 0.999 quantile of chi-square with 3 degrees of freedom


def test_only_masked_positions_get_proposals():
    logits = torch.randn(2, 4, 7)
    masked = torch.tensor([[True, False, True, False], [False, False, False, True]])
    x0, conf = sample_tokens(logits, 0.0, "low_confidence", masked=masked)
    assert torch.isinf(conf[~masked]).all() and (conf[masked] > 0).all()
    assert torch.equal(x0[masked], logits[masked].argmax(-1))
    assert torch.allclose(conf[masked], logits[masked].softmax(-1).max(-1).values.double())


@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_a_cache_of_the_current_canvas_reproduces_the_full_forward(model, mode):
    """The cache plumbing is exact: keys/values computed from the same canvas (left padding, a partly
    decoded block, masks after it) give the full forward's block logits. What the cache modes lose in the
    sampler is therefore staleness: within a block the cached positions were encoded when the block still
    held masks, and in a bidirectional model their keys/values depend on it."""
    torch.manual_seed(0)
    ids = torch.randint(3, 38, (3, 24))
    ids[:, 14:] = MASK_ID  # block [8, 16) partly decoded, the rest masked
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[0, :3] = 0  # left padding in two rows
    mask[1, :1] = 0
    start, end = 8, 16
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = (
            full.kv_cache
            if mode == "dual"
            else [(k[:, :, :start], v[:, :, :start]) for k, v in full.kv_cache]
        )
        segment = ids[:, start:end] if mode == "dual" else ids[:, start:]
        cached = model(input_ids=segment, attention_mask=mask, kv_cache=cache, cache_start=start,
                       logits_range=(0, end - start))  # fmt: skip
    torch.testing.assert_close(cached.logits, full.logits[:, start:end], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_the_long_answer_tiny_model_and_its_fast_modes():
    """The committed long-answer model (recipes/tiny-long: 39-token worked additions) answers held-out
    questions, and threshold 0.9 + prefix cache keeps its accuracy with a fraction of the passes."""
    import json
    import os
    import re

    from align.data import encode_prompts
    from align.models import load_model, load_tokenizer

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "tiny-long")
    tokenizer = load_tokenizer(os.path.join(folder, "model"))
    model = load_model(os.path.join(folder, "model"), dtype="float32").eval()
    rows = [json.loads(line) for line in open(os.path.join(folder, "data", "test.jsonl"))][:64]
    ids = encode_prompts(tokenizer, [r["question"] for r in rows], max_length=16, use_chat_template=False)[
        "input_ids"
    ]

    def accuracy(**mode):
        out = generate(model, ids, gen_length=48, steps=48, block_length=16, **mode)
        texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=False)
        found = [re.search(r"<answer>(\d+)</answer>", t) for t in texts]
        return sum(m is not None and m.group(1) == r["answer"] for m, r in zip(found, rows)) / len(
            rows
        ), out.nfe

    reference, passes = accuracy()
    fast, fast_passes = accuracy(threshold=0.9, cache="prefix")
    assert reference >= 0.9 and passes == 48
    assert fast >= reference - 0.05 and fast_passes <= 12, (reference, fast, fast_passes)


def test_rows_decoded_in_chunks_equal_one_call_when_greedy(model):
    from align.sampling import SamplerSettings, generate_in_chunks

    prompt = torch.randint(2, 38, (5, 4), generator=torch.Generator().manual_seed(3))
    attn = torch.ones_like(prompt)
    attn[1, :2] = 0  # left padding
    kwargs = dict(gen_length=16, steps=16, block_length=8)
    whole = generate(model, prompt, attn, **kwargs)
    parts = generate_in_chunks(model, prompt, attn, SamplerSettings(**kwargs), rows_per_call=2)
    assert torch.equal(parts.sequences, whole.sequences) and torch.equal(parts.commit_step, whole.commit_step)
    assert parts.nfe == 3 * whole.nfe  # three calls of 2, 2 and 1 rows
    assert (
        generate_in_chunks(model, prompt, attn, SamplerSettings(**kwargs), rows_per_call=None).nfe
        == whole.nfe
    )


def test_decoders_register_by_kind_and_generate_dispatches_through_the_table(model, monkeypatch):
    """Each schedule has one registered decoder; block-causal attention is declared by exactly the block
    schedules; generate calls the registered decoder's run (a spy put in the table is what runs)."""
    import dataclasses

    from align.sampling import SamplerSettings
    from align.sampling import decoders as table
    from align.sampling import generate as sampler_generate
    from align.sampling.settings import BLOCK_SCHEDULES, DREAM_ALGS, REMASKING

    found = table.decoders()
    assert set(found) == {"llada_blocks", "dream", "block_diffusion"}
    owned = [s for d in found.values() for s in d.schedules]
    assert sorted(owned) == sorted(REMASKING + DREAM_ALGS + BLOCK_SCHEDULES)  # each schedule exactly once
    assert {s for d in found.values() if d.attention == "block_causal" for s in d.schedules} == set(
        BLOCK_SCHEDULES
    )
    calls = []
    spy = dataclasses.replace(found["llada_blocks"], run=lambda *a, **k: calls.append(a[3]) or "spied")
    monkeypatch.setitem(table._REGISTRY, "llada_blocks", spy)
    settings = SamplerSettings(gen_length=8, steps=8, block_length=8)
    assert sampler_generate(model, torch.randint(2, 38, (1, 4)), None, settings) == "spied"
    assert calls == [settings]


@pytest.mark.parametrize("remasking,hook,message", [
    ("entropy", dict(deprioritize_token_ids=[EOS_ID]), "remasking 'entropy' \\(dream decoder\\) takes no "
                                                       "deprioritize_token_ids"),
    ("entropy", dict(stop_check=lambda c: None), "takes no stop_check"),
    ("low_confidence", dict(max_length=64), "set variable_length"),
])  # fmt: skip
def test_a_hook_the_decoder_does_not_honour_is_refused_in_one_line(model, remasking, hook, message):
    with pytest.raises(ValueError, match=message):
        generate(model, torch.randint(2, 38, (1, 4)), gen_length=8, steps=4, block_length=8, remasking=remasking,
                 **hook)  # fmt: skip


def test_generate_stays_a_dispatcher():
    """generate is a dispatcher through the decoder table: at most 8 parameters and 40 lines."""
    import inspect

    from align.sampling import generate as sampler_generate

    source, _ = inspect.getsourcelines(inspect.unwrap(sampler_generate))
    assert len(inspect.signature(sampler_generate).parameters) <= 8
    assert len(source) <= 40, len(source)


EOT_ID = 2  # the tiny vocabulary's stand-in for LLaDA's <|eot_id|> (126348; EOS_ID stands for 126081)


def reference_generate_eos_rules(model, prompt, gen_length, steps, block_length, logits_eos_inf,
                                 confidence_eos_eot_inf):  # fmt: skip
    """LLaDA's generate.py at T = 0 with its two end-of-text rules (the flags its OpenCompass evaluation sets),
    written out for one row: ``logits_eos_inf`` sets the EOS logit to -inf before the choice;
    ``confidence_eos_eot_inf`` sets the EOS and EoT logits to -inf after the choice (at T = 0 the noised logits
    are the logits themselves, so both land there) and before the confidence softmax. As in the reference
    above, the mask token's logit is -inf (the sampler's documented difference) and ties in the top-k go to the
    lower position."""
    p = prompt.shape[1]
    x = torch.cat([prompt, torch.full((1, gen_length), MASK_ID)], 1)
    spb = steps // (gen_length // block_length)
    for nb in range(gen_length // block_length):
        s, e = p + nb * block_length, p + (nb + 1) * block_length
        n = int((x[0, s:e] == MASK_ID).sum())
        counts = [n // spb + (1 if i < n % spb else 0) for i in range(spb)]
        for i in range(spb):
            logits = model(x).logits[0].clone()
            logits[:, MASK_ID] = -math.inf
            if logits_eos_inf:
                logits[:, EOS_ID] = -math.inf
            x0 = logits.argmax(-1)
            if confidence_eos_eot_inf:
                logits[:, EOS_ID] = logits[:, EOT_ID] = -math.inf
            conf = logits.softmax(-1).gather(-1, x0[:, None])[:, 0]
            candidates = [j for j in range(s, e) if x[0, j] == MASK_ID]
            order = sorted(candidates, key=lambda j: -conf[j].item())
            for j in order[: counts[i]]:
                x[0, j] = x0[j]
    return x


@pytest.mark.parametrize("gen_length,steps,block_length", [(16, 16, 16), (16, 8, 8), (12, 12, 4)])
def test_llada_end_of_text_rules_equal_its_generate(gen_length, steps, block_length):
    """confidence_excluded_ids is LLaDA's confidence_eos_eot_inf and suppress_token_ids its logits_eos_inf, on a
    model whose EOS and EoT rows are scaled up so that they are chosen; deprioritizing the same ids (confidence 0
    without renormalising the others) decodes differently on these inputs."""
    model = tiny_model(3)
    with torch.no_grad():
        weight = model.model.transformer.ff_out.weight
        weight[EOS_ID] *= 2.6
        weight[EOT_ID] *= 2.2
    kwargs = dict(gen_length=gen_length, steps=steps, block_length=block_length)
    differs = changed = 0
    for seed in range(4):
        prompt = torch.randint(3, 38, (1, 5), generator=torch.Generator().manual_seed(seed))
        confidence = generate(model, prompt, **kwargs, confidence_excluded_ids=(EOS_ID, EOT_ID)).sequences
        ref = reference_generate_eos_rules(model, prompt, gen_length, steps, block_length, False, True)
        assert torch.equal(confidence, ref), seed
        suppressed = generate(model, prompt, **kwargs, suppress_token_ids=(EOS_ID,)).sequences
        assert torch.equal(suppressed, reference_generate_eos_rules(model, prompt, gen_length, steps, block_length,
                                                                    True, False)), seed  # fmt: skip
        deprioritized = generate(model, prompt, **kwargs, deprioritize_token_ids=(EOS_ID, EOT_ID)).sequences
        plain = generate(model, prompt, **kwargs).sequences
        differs += not torch.equal(deprioritized, ref)
        changed += not torch.equal(plain, ref)  # the rule had work to do
    assert differs >= 1 and changed >= 1, (differs, changed)
