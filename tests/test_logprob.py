"""Estimators against exact enumeration of the masked-diffusion ELBO on a tiny random model."""

import copy
import itertools
import math

import pytest
import torch
from conftest import MASK_ID, tiny_model

from align.logprob import (
    MaskPlan,
    combine,
    eubo_token_values,
    make_plan,
    pass_logprobs,
    sample_sums,
    sequence_logprob,
    token_logprobs,
)
from align.losses import policy_loss

P, L = 3, 5


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=3)
    with torch.no_grad():  # soften the logits so log-probs differ across tokens but stay moderate
        model.model.transformer.ff_out.weight.mul_(0.25)
    ids = torch.randint(2, 38, (1, P + L), generator=torch.Generator().manual_seed(0))
    completion = torch.zeros(1, P + L, dtype=torch.bool)
    completion[:, P:] = True
    return model, ids, completion


@torch.no_grad()
def exact_elbo(model, ids, completion_positions, scored=None):
    """B = sum_k (1/k) mean_{|S|=k} sum_{i in S} log p(y_i | y with S masked, x): every subset enumerated.

    With ``scored``, S still ranges over all completion subsets but only scored positions are summed."""
    scored = set(completion_positions if scored is None else scored)
    total = 0.0
    for k in range(1, len(completion_positions) + 1):
        values = []
        for subset in itertools.combinations(completion_positions, k):
            noisy = ids.clone()
            noisy[0, list(subset)] = MASK_ID
            logp = model(noisy).logits[0].log_softmax(-1)
            values.append(sum(logp[i, ids[0, i]].item() for i in subset if i in scored))
        total += sum(values) / len(values) / k
    return total


@torch.no_grad()
def draws(model, ids, completion, estimator, num_samples, n=3000, seed=0, score=None):
    """n independent estimates (one per row of a batch of n copies of the sequence)."""
    batch, cm = ids.expand(n, -1), completion.expand(n, -1)
    g = torch.Generator().manual_seed(seed)
    if score is None:
        return sequence_logprob(model, batch, cm, estimator=estimator, num_samples=num_samples,
                                mask_token_id=MASK_ID, generator=g, chunk_size=4)  # fmt: skip
    plan = make_plan(estimator, cm, num_samples=num_samples, generator=g, score_mask=score.expand(n, -1))
    return token_logprobs(model, batch, plan, mask_token_id=MASK_ID, chunk_size=4).sum(-1)


@pytest.mark.parametrize("estimator", ["elbo", "coupled"])
def test_scoring_part_of_the_noised_completion_is_unbiased_for_that_part(setup, estimator):
    # GRPO noises the whole canvas and scores the answer up to its first EOS: here 3 of the 5 positions.
    model, ids, completion = setup
    score = torch.zeros_like(completion)
    score[:, P : P + 3] = True
    exact = exact_elbo(model, ids, list(range(P, P + L)), scored=range(P, P + 3))
    est = draws(model, ids, completion, estimator, 1, seed=5, score=score)
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 4 * se and se < 0.05 * abs(exact), (est.mean().item(), exact, se)
    plan = make_plan(
        estimator, completion, num_samples=2, generator=torch.Generator().manual_seed(0), score_mask=score
    )
    assert plan.masked[:, :, P + 3 :].any() and not plan.weights[:, :, P + 3 :].any()
    with pytest.raises(ValueError, match="subset of completion_mask"):
        make_plan(estimator, score, num_samples=1, score_mask=completion)


@pytest.mark.parametrize("estimator,num_samples", [("elbo", 1), ("elbo", 3), ("coupled", 1), ("coupled", 2)])
def test_elbo_estimators_are_unbiased(setup, estimator, num_samples):
    model, ids, completion = setup
    exact = exact_elbo(model, ids, list(range(P, P + L)))
    est = draws(model, ids, completion, estimator, num_samples)
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - exact) < 4 * se, (est.mean().item(), exact, se)
    assert se < 0.05 * abs(exact)  # the test has power: the standard error is small against B


def test_one_step_equals_its_definition(setup):
    model, ids, completion = setup
    noisy = ids.clone()
    noisy[:, P:] = MASK_ID
    with torch.no_grad():
        logp = model(noisy).logits.log_softmax(-1)[0, torch.arange(P, P + L), ids[0, P:]]
    est = sequence_logprob(model, ids, completion, estimator="one_step", num_samples=1, mask_token_id=MASK_ID)
    torch.testing.assert_close(est, logp.sum()[None], rtol=1e-5, atol=1e-5)
    # with prompt masking the plan's masks are the ones applied
    plan = make_plan("one_step", completion, num_samples=1, prompt_mask=torch.ones_like(completion),
                     p_mask_prompt=0.5, generator=torch.Generator().manual_seed(1))  # fmt: skip
    noisy = torch.where(plan.masked[0], MASK_ID, ids)
    assert plan.masked[0, 0, :P].any() and plan.masked[0, 0, P:].all()
    with torch.no_grad():
        logp = model(noisy).logits.log_softmax(-1)[0, torch.arange(P, P + L), ids[0, P:]]
        values = token_logprobs(model, ids, plan, mask_token_id=MASK_ID)
    torch.testing.assert_close(values[0, P:], logp, rtol=1e-5, atol=1e-5)
    assert (values[0, :P] == 0).all()
    # sequence_logprob without attention_mask masks the prompt too (every position outside the completion)
    est = sequence_logprob(model, ids, completion, estimator="one_step", mask_token_id=MASK_ID, p_mask_prompt=0.5,
                           generator=torch.Generator().manual_seed(1))  # fmt: skip
    torch.testing.assert_close(est, logp.sum()[None], rtol=1e-5, atol=1e-5)


def test_coupled_pairs_predict_every_token_once(setup):
    _, _, completion = setup
    plan = make_plan(
        "coupled", completion.expand(64, -1), num_samples=3, generator=torch.Generator().manual_seed(0)
    )
    assert plan.num_passes == 6
    pair_counts = plan.masked.view(3, 2, 64, -1).sum(1)  # per pair, how often each position is masked
    assert torch.equal(pair_counts.bool(), completion.expand(3, 64, -1)) and pair_counts.max() == 1


def test_variance_per_forward_pass_coupled_and_stratified_beat_naive(setup):
    model, ids, completion = setup
    naive = draws(model, ids, completion, "elbo", 1, seed=1).var().item()  # 1 pass; 2 naive passes: naive / 2
    coupled = draws(model, ids, completion, "coupled", 1, seed=2).var().item()  # 2 passes
    stratified = draws(model, ids, completion, "elbo", 2, seed=3).var().item()  # 2 passes
    assert coupled < 0.8 * naive / 2, (coupled, naive)
    assert stratified < 0.95 * naive / 2, (stratified, naive)


def test_rows_with_different_lengths_are_estimated_independently(setup):
    model, ids, _ = setup
    cm = torch.zeros(2, P + L, dtype=torch.bool)
    cm[0, P:] = True
    cm[1, P : P + 2] = True  # a 2-token completion (the rest is context)
    plan = make_plan("elbo", cm, num_samples=4, generator=torch.Generator().manual_seed(0))
    assert not (plan.masked & ~cm).any()
    torch.testing.assert_close(
        plan.weights.sum(-1), torch.tensor([[float(L), 2.0]] * 4)
    )  # L/l x l masked = L
    assert (plan.weights[:, 1, P + 2 :] == 0).all()


@pytest.mark.parametrize("estimator", ["one_step", "elbo", "coupled"])
def test_ratio_is_one_and_kl_zero_at_identical_weights(setup, estimator):
    model, ids, completion = setup
    policy = copy.deepcopy(model).train()
    reference = copy.deepcopy(model)
    batch, cm = ids.expand(4, -1), completion.expand(4, -1)
    plan = make_plan(estimator, cm, num_samples=2, prompt_mask=torch.ones_like(cm), p_mask_prompt=0.15,
                     generator=torch.Generator().manual_seed(5))  # fmt: skip
    logps = token_logprobs(policy, batch, plan, mask_token_id=MASK_ID)
    with torch.no_grad():
        old = token_logprobs(policy, batch, plan, mask_token_id=MASK_ID)
        ref = token_logprobs(reference, batch, plan, mask_token_id=MASK_ID)
    loss, metrics = policy_loss(logps, old, ref, torch.tensor([1.0, -1.0, 0.5, -0.5]), cm.float(), beta=0.04,
                                importance_sampling_level="token")  # fmt: skip
    assert metrics["ratio/mean"].item() == 1.0 and metrics["kl"].item() == 0.0
    assert torch.equal(logps.detach(), old) and torch.equal(old, ref)
    loss.backward()
    assert policy.model.transformer.blocks[0].q_proj.weight.grad.abs().sum() > 0


def _chi2_quantile(dof: int, z: float = 3.09) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile (z = 3.09: the 0.999 quantile)."""
    return dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3


@torch.no_grad()
def test_trace_replay_is_the_samplers_probability_of_tokens_and_order():
    """Run the real sampler (T = 1, random remasking, 3 allowed tokens, 3 positions, one commit per step:
    27 outputs x 6 orders) 12000 times and compare the frequency of every (output, order) with
    exp(trace estimate) / 3!; the 162 probabilities must also sum to 1."""
    from conftest import kw_generate as generate

    model = tiny_model(seed=5)
    with torch.no_grad():
        model.model.transformer.ff_out.weight.mul_(0.1)  # moderate logits: every cell is visited
    allowed = [5, 6, 7]
    excluded = [i for i in range(40) if i not in allowed]  # the mask id (39) included
    suppress = [i for i in excluded if i != MASK_ID]
    prompt = torch.tensor([[0, 9, 12, 20]])
    n, g, p = 12000, 3, prompt.shape[1]
    out = generate(model, prompt.repeat(n, 1), gen_length=g, steps=g, block_length=g, temperature=1.0,
                   remasking="random", suppress_token_ids=suppress, generator=torch.Generator().manual_seed(0))  # fmt: skip
    keys = [(tuple(y), tuple(o)) for y, o in zip(out.completion_ids.tolist(), out.commit_step.tolist())]
    counts = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    completion = torch.zeros(1, p + g, dtype=torch.bool)
    completion[:, p:] = True
    expected = {}
    for y in itertools.product(allowed, repeat=g):
        for order in itertools.permutations(range(g)):
            ids = torch.cat([prompt, torch.tensor([y])], 1)
            commit = torch.cat([torch.full((1, p), -1), torch.tensor([order])], 1)
            plan = make_plan("trace", completion, commit_step=commit, num_steps=g)
            logp = token_logprobs(model, ids, plan, mask_token_id=MASK_ID, exclude_ids=excluded).sum()
            expected[(y, order)] = math.exp(logp.item()) / math.factorial(g)
    assert sum(expected.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(counts) <= set(expected)
    cells = sorted(expected, key=expected.get)
    chi2, pooled_obs, pooled_exp, dof = 0.0, 0, 0.0, 0
    for key in cells:  # cells expected below 5 counts are pooled
        pooled_obs, pooled_exp = pooled_obs + counts.get(key, 0), pooled_exp + n * expected[key]
        if pooled_exp >= 5:
            chi2, dof = chi2 + (pooled_obs - pooled_exp) ** 2 / pooled_exp, dof + 1
            pooled_obs, pooled_exp = 0, 0.0
    assert dof > 100 and chi2 < _chi2_quantile(dof - 1), (chi2, dof)


def test_trace_merge_and_plan_shape():
    commit = torch.tensor([[-1, -1, 0, 2, 1, 3, 3, 5]])
    completion = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1]]).bool()
    plan = make_plan("trace", completion, commit_step=commit, num_steps=6)
    assert plan.num_passes == 6 and plan.num_samples == 1
    assert plan.weights.sum(0).tolist() == [[0, 0, 1, 1, 1, 1, 1, 1]]  # every token scored exactly once
    assert plan.masked[3].tolist() == [
        [False, False, False, False, False, True, True, True]
    ]  # step >= 3 hidden
    merged = make_plan("trace", completion, commit_step=commit, num_steps=6, merge=4)
    assert merged.num_passes == 2 and merged.weights.sum(0).tolist() == plan.weights.sum(0).tolist()
    assert merged.masked[0].tolist() == completion.tolist()  # steps 0-3 predicted from the empty canvas
    with pytest.raises(ValueError, match="commit_step"):
        make_plan("trace", completion)


@torch.no_grad()
def test_left_to_right_rollouts_and_trace_give_the_exact_autoregressive_likelihood():
    """JustGRPO's setting is block_length 1 + the trace estimator: the sampler commits position k at step k,
    and the replay is sum_k log p(o_k | x, o_<k, masks after), written out here as a loop."""
    from conftest import kw_generate as generate

    model = tiny_model(seed=7)
    prompt = torch.tensor([[0, 9, 12, 20], [0, 5, 6, 7]])
    g = 5
    out = generate(model, prompt, gen_length=g, steps=g, block_length=1, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert out.commit_step.tolist() == [list(range(g))] * 2
    ids = out.sequences
    p = prompt.shape[1]
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, p:] = True
    commit = torch.cat([torch.full_like(prompt, -1), out.commit_step], 1)
    plan = make_plan("trace", completion, commit_step=commit, num_steps=g)
    trace = token_logprobs(model, ids, plan, mask_token_id=MASK_ID, exclude_ids=[MASK_ID]).sum(-1)
    direct = torch.zeros(2)
    for k in range(g):
        state = ids.clone()
        state[:, p + k :] = MASK_ID
        logits = model(state).logits[:, p + k].float()
        logits[:, MASK_ID] = -math.inf
        direct += logits.log_softmax(-1).gather(-1, ids[:, p + k, None])[:, 0]
    torch.testing.assert_close(trace, direct, rtol=1e-5, atol=1e-5)


# ---- blockwise masking and the upper bound (SPG) ----------------------------------------------------------
@torch.no_grad()
def _logp_table(model, ids, positions):
    """{masked subset (sorted tuple): {i: log p(y_i | subset masked)}} over every subset of ``positions``,
    with later positions (given as ``always``) handled by the caller."""
    table = {}
    for k in range(0, len(positions) + 1):
        for subset in itertools.combinations(positions, k):
            noisy = ids.clone()
            noisy[0, list(subset)] = MASK_ID
            logp = model(noisy).logits[0].log_softmax(-1)
            table[subset] = {i: logp[i, ids[0, i]].item() for i in positions}
    return table


def test_blockwise_is_unbiased_for_the_sum_of_each_blocks_elbo_given_the_earlier_blocks(setup):
    model, ids, completion = setup  # L = 5, blocks of 2: {P, P+1}, {P+2, P+3}, {P+4}
    blocks = [[P, P + 1], [P + 2, P + 3], [P + 4]]
    exact = 0.0
    for b, block in enumerate(blocks):
        later = [i for blk in blocks[b + 1 :] for i in blk]
        for k in range(1, len(block) + 1):
            values = []
            for subset in itertools.combinations(block, k):
                noisy = ids.clone()
                noisy[0, list(subset) + later] = MASK_ID
                with torch.no_grad():
                    logp = model(noisy).logits[0].log_softmax(-1)
                values.append(sum(logp[i, ids[0, i]].item() for i in subset))
            exact += sum(values) / len(values) / k
    n = 4000
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        est = sequence_logprob(model, ids.expand(n, -1), completion.expand(n, -1), estimator="blockwise",
                               num_samples=2, mask_token_id=MASK_ID, generator=g, chunk_size=2, block_length=2)  # fmt: skip
    se = est.std().item() / math.sqrt(n)
    assert abs(est.mean().item() - exact) < 4 * se and se < 0.05 * abs(exact), (est.mean().item(), exact, se)
    assert abs(exact - exact_elbo(model, ids, list(range(P, P + L)))) > 4 * se  # a different quantity
    plan = make_plan("blockwise", completion, num_samples=3, generator=g, block_length=2)
    for j in range(3):  # shown: earlier blocks; masked: a nonempty part of one block and every later block
        scored = plan.weights[j, 0].nonzero().flatten().tolist()
        b = next(i for i, blk in enumerate(blocks) if scored[0] in blk)
        assert set(scored) <= set(blocks[b])
        later = [i for blk in blocks[b + 1 :] for i in blk]
        assert (
            plan.masked[j, 0, later].all()
            and not plan.masked[j, 0, [i for blk in blocks[:b] for i in blk]].any()
        )
    with pytest.raises(ValueError, match="block_length"):
        make_plan("blockwise", completion, num_samples=1)


def _exact_bounds(model, ids, positions, betas):
    """(ELBO, log-likelihood, {beta: EUBO}) by enumeration. The log-likelihood is the log-probability that
    the any-order sampler (a uniformly random order, one token per step, each drawn from the model) writes
    y; the EUBO is the expectation of eubo_token_values' argument over the exact-count masks."""
    table = _logp_table(model, ids, positions)
    n = len(positions)
    elbo = 0.0
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(positions, k))
        elbo += sum(sum(table[s][i] for i in s) for s in subsets) / len(subsets) / k
    paths = []
    for order in itertools.permutations(positions):
        total, masked = 0.0, list(positions)
        for i in order:
            total += table[tuple(masked)][i]
            masked.remove(i)
        paths.append(total)
    loglik = math.log(sum(math.exp(v) for v in paths) / len(paths))
    eubo = {}
    for beta in betas:
        value = 0.0
        for i in positions:
            mean = 0.0
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(positions, k))
                mean += (
                    sum((n / k) * math.exp(beta * table[s][i]) for s in subsets if i in s) / len(subsets) / n
                )
            value += math.log(mean) / beta
        eubo[beta] = value
    return elbo, loglik, eubo


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_eubo_sandwiches_the_exact_log_likelihood_with_the_elbo(seed):
    # Sharp logits (scale 1.0) separate the three; at beta = 1 the per-token EUBO fell below the
    # log-likelihood for seed 3 here, so only SPG's beta >= 1.5 settings are asserted.
    model = tiny_model(seed=seed)
    ids = torch.randint(2, 38, (1, 3 + 4), generator=torch.Generator().manual_seed(seed))
    elbo, loglik, eubo = _exact_bounds(model, ids, list(range(3, 7)), (1.5, 2.0))
    assert elbo < loglik < eubo[1.5] < eubo[2.0], (elbo, loglik, eubo)
    assert loglik - elbo > 1e-3  # a model sharp enough for the gaps to be measurable


def test_eubo_estimate_converges_to_its_expectation_and_sample_sums_average_to_the_estimate(setup):
    model, ids, completion = setup
    positions = list(range(P, P + L))
    _, _, eubo = _exact_bounds(model, ids, positions, (1.5,))
    plan = make_plan("elbo", completion, num_samples=4000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        passes = pass_logprobs(model, ids, plan, mask_token_id=MASK_ID, chunk_size=500)
    estimate = eubo_token_values(plan, passes, 1.5).sum().item()
    assert abs(estimate - eubo[1.5]) < 0.02 * abs(eubo[1.5]), (estimate, eubo[1.5])
    coupled = make_plan(
        "coupled", completion.expand(3, -1), num_samples=4, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        passes = pass_logprobs(model, ids.expand(3, -1), coupled, mask_token_id=MASK_ID, chunk_size=8)
    sums = sample_sums(coupled, passes)
    assert sums.shape == (3, 4)
    torch.testing.assert_close(sums.mean(1), combine(coupled, passes).sum(-1))
    unscored = MaskPlan(coupled.masked[:1], torch.zeros_like(coupled.weights[:1]), 1)
    assert (eubo_token_values(unscored, passes[:1], 1.5) == 0).all()  # no pass scores a token: 0, not -inf
