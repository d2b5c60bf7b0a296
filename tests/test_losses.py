"""Our GRPO-family loss against TRL 1.16's GRPOTrainer._compute_loss on identical tensors."""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from trl import GRPOTrainer

from align.losses import compute_advantages, kl_penalty, policy_loss

B, T = 6, 7


class _Accelerator:
    num_processes = 1

    def reduce(self, x, reduction="sum"):
        return x

    def gather(self, x):
        return x

    gather_for_metrics = gather


def trl_loss(
    logps, old, ref, adv, mask, *, loss_type, beta, epsilon, epsilon_high, delta, level, max_len, items
):
    """Call TRL's real loss code on a minimal stand-in for the trainer state it reads."""
    fake = SimpleNamespace(
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level=level, beta=beta,
        loss_type=loss_type, epsilon_low=epsilon, epsilon_high=epsilon_high, use_vllm=False,
        vllm_importance_sampling_correction=False, model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1, max_completion_length=max_len, accelerator=_Accelerator(),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, _metrics={"train": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=delta, steps_per_generation=1),
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
    )  # fmt: skip
    inputs = {
        "prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
        "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
        "num_items_in_batch": torch.tensor(float(items)),
    }  # fmt: skip
    loss = GRPOTrainer._compute_loss(fake, None, inputs)
    return loss, fake._metrics["train"]


def tensors(seed):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, T)
    mask[0, 4:] = 0
    mask[3, 2:] = 0
    old = -torch.rand(B, T, generator=g) * 3
    logps = (old + 0.4 * torch.randn(B, T, generator=g)).requires_grad_()
    ref = old + 0.2 * torch.randn(B, T, generator=g)
    adv = torch.randn(B, generator=g)
    return logps, old, ref, adv, mask


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("beta,epsilon_high,delta", [(0.0, None, None), (0.04, 0.28, None), (0.1, 0.3, 1.5)])
def test_loss_and_gradients_match_trl(loss_type, level, beta, epsilon_high, delta):
    logps, old, ref, adv, mask = tensors(hash((loss_type, level, beta)) % 1000)
    eps_high = 0.2 if epsilon_high is None else epsilon_high
    items = mask.sum().item()
    ours, metrics = policy_loss(
        logps, old, ref, adv, mask, loss_type=loss_type, beta=beta, epsilon=0.2, epsilon_high=epsilon_high,
        delta=delta, importance_sampling_level=level, max_completion_length=T, normalizer=items,
    )  # fmt: skip
    (grad_ours,) = torch.autograd.grad(ours, logps)
    theirs, trl_metrics = trl_loss(logps, old, ref, adv, mask, loss_type=loss_type, beta=beta, epsilon=0.2,
                                   epsilon_high=eps_high, delta=delta, level=level, max_len=T, items=items)  # fmt: skip
    (grad_theirs,) = torch.autograd.grad(theirs, logps)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad_ours, grad_theirs, rtol=1e-6, atol=1e-7)
    assert grad_ours.abs().sum() > 0
    for key in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean") + (
        ("kl",) if beta else ()
    ):
        assert metrics[key].item() == pytest.approx(trl_metrics[key][0], abs=1e-6), key


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_match_trl_formula(scale):
    rewards = torch.tensor([1.0, 0.0, 2.0, 0.5, float("nan"), 1.0, 1.0, 1.0, 1.0])
    adv, zero_std = compute_advantages(rewards, 3, scale)
    groups = rewards.view(3, 3)
    mean = groups.nanmean(1).repeat_interleave(3)
    if scale == "group":
        expected = (rewards - mean) / (
            torch.tensor(
                [groups[0].std().item(), torch.tensor([0.5, 1.0]).std().item(), 0.0]
            ).repeat_interleave(3)
            + 1e-4
        )
    elif scale == "batch":
        expected = (rewards - mean) / (rewards[~rewards.isnan()].std() + 1e-4)
    else:
        expected = rewards - mean
    expected = torch.nan_to_num(expected, nan=0.0)
    torch.testing.assert_close(adv, expected)
    assert adv[4] == 0.0  # unscorable row gets no advantage
    assert zero_std.tolist() == [False] * 6 + [True] * 3


def test_zero_std_groups_are_counted_exactly():
    # eight equal 0.7 rewards: their float32 nanstd is 6e-8, not 0, but the group carries no signal
    rewards = torch.tensor([0.7] * 8 + [0.1] * 7 + [0.2] + [float("nan"), 0.3, 0.3, float("nan")] * 2)
    _, zero_std = compute_advantages(rewards, 8)
    assert zero_std.view(3, 8)[:, 0].tolist() == [True, False, True]


def test_mean_centred_advantages_for_d1():
    adv, _ = compute_advantages(torch.tensor([2.0, 0.0, 0.0, 2.0]), 2, "none")
    assert adv.tolist() == [1.0, -1.0, -1.0, 1.0]


def test_k2_and_k3_kl():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.exp(ref - logp) - (ref - logp) - 1)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([0.125, 0.0]))


def test_wd1_pushes_up_good_and_down_bad_completions():
    logps = torch.full((4, 3), -1.0, requires_grad=True)
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    loss, _ = policy_loss(logps, None, None, adv, torch.ones(4, 3), loss_type="wd1", num_generations=2)
    (grad,) = torch.autograd.grad(loss, logps)
    assert (grad[0] < 0).all() and (grad[1] > 0).all()  # descending the loss raises logp of the good one
    # weights are softmax(psi A) - softmax(-psi A) within each group: antisymmetric, sum 0
    torch.testing.assert_close(grad[0], -grad[1])
    assert abs(grad[2, 0]) < abs(grad[0, 0])


def test_bad_arguments_are_explained():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="loss_type 'ppo'"):
        policy_loss(x, None, None, torch.zeros(2), x, loss_type="ppo")
    with pytest.raises(ValueError, match="beta != 0 needs ref_logps"):
        policy_loss(x, None, None, torch.zeros(2), x, beta=0.1)
    with pytest.raises(ValueError, match="cannot be split into groups of 4"):
        compute_advantages(torch.zeros(6), 4)


# ---- StableDRL, SPG, BGPO ------------------------------------------------------------------------------------
def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_stabledrl_clip_on_policy_gradient_is_grpos_when_advantages_sum_to_zero(level):
    logps, _, _, adv, mask = tensors(4)
    adv = adv - adv.mean()  # whole GRPO groups: the advantages of the batch sum to zero
    grpo, _ = policy_loss(logps, None, None, adv, mask, loss_type="grpo", importance_sampling_level=level)
    stable, _ = policy_loss(
        logps, None, None, adv, mask, loss_type="stabledrl_clip", importance_sampling_level=level
    )
    torch.testing.assert_close(_grad(stable, logps), _grad(grpo, logps))
    torch.testing.assert_close(stable, grpo)


def test_stabledrl_clip_clips_both_signs_and_self_normalises():
    # Row 0: A < 0 and a ratio far above 1 + epsilon. PPO's min keeps r * A (unbounded gradient); StableDRL
    # clips whatever the sign, so that row gives no gradient of its own.
    old = torch.zeros(3, 2)
    logps = torch.tensor([[1.5, 1.5], [0.05, 0.05], [-0.05, -0.05]], requires_grad=True)
    adv, mask = torch.tensor([-1.0, 0.5, 0.5]), torch.ones(3, 2)
    grpo, _ = policy_loss(logps, old, None, adv, mask, loss_type="grpo")
    assert _grad(grpo, logps)[0].abs().sum() > 1.0
    stable, _ = policy_loss(logps, old, None, adv, mask, loss_type="stabledrl_clip")
    assert torch.equal(_grad(stable, logps)[0], torch.zeros(2))
    # the loss is -mean(w A) with w = clip(r) / mean(clip(r)): recompute it by hand
    clipped = torch.clamp(torch.exp(logps.detach()), 0.8, 1.2)
    torch.testing.assert_close(stable.detach(), -((clipped / clipped.mean()) * adv[:, None]).mean())


def _spg_released(per_token_logps, perturb_mask, completion_mask, advantages, eubo_beta, mix_weight):
    """facebookresearch/SPG @ a1c7120, spg/spg_trainer.py: ``_get_per_seq_logps`` l. 523-556 ("mix" mode)
    and ``compute_loss`` l. 116-118, written out for one iteration: per_token_logps / perturb_mask
    [B, num_t, T] (the released layout), completion_mask [B, T], advantages [B]."""
    probs = per_token_logps.exp()
    cm = completion_mask[:, None, :].expand_as(perturb_mask).to(per_token_logps.dtype)
    pm = perturb_mask.to(per_token_logps.dtype)
    denominator = (cm * pm).sum(2).clamp(min=1e-8)
    per_seq = (per_token_logps * cm * pm).sum(2) / denominator  # [B, num_t]
    empirical_t = (cm * pm).sum(2) / cm.sum(2)
    avg_ps = (probs.pow(eubo_beta) * pm * cm / empirical_t[..., None].clamp(min=1e-8)).mean(1)  # [B, T]
    dezero = torch.where(avg_ps == 0, torch.ones_like(avg_ps), avg_ps)
    loss_mask = (avg_ps > 0).to(per_token_logps.dtype)
    positive = per_seq.mean(1)
    negative = mix_weight * (dezero.log() * loss_mask).sum(1) / loss_mask.sum(1).clamp(
        min=1e-8
    ) / eubo_beta + (1 - mix_weight) * per_seq.mean(1)
    reward_mask = advantages > 0
    per_seq_logps = reward_mask.to(positive.dtype) * positive + (~reward_mask).to(positive.dtype) * negative
    length = completion_mask.sum(1).to(positive.dtype)
    return (-advantages * per_seq_logps * length).sum() / length.sum()


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_spg_equals_the_released_code_in_value_and_gradient(mix):
    """Unequal answer lengths, zero and nonzero advantages, passes that score different numbers of tokens
    (a chosen block's subset plus later blocks), float64."""
    from align.losses import spg_loss

    g = torch.Generator().manual_seed(0)
    rows, passes, width = 4, 3, 12
    answer = torch.zeros(rows, width, dtype=torch.bool)
    for i, n in enumerate([12, 7, 3, 9]):
        answer[i, :n] = True
    scored = (torch.rand(passes, rows, width, generator=g) < 0.5) & answer[None]
    scored[:, :, 0] |= True  # every pass scores something on every row
    logps = (-3 * torch.rand(passes, rows, width, generator=g, dtype=torch.float64)).requires_grad_()
    advantages = torch.tensor([1.5, 0.0, -0.7, -2.0], dtype=torch.float64)
    loss, metrics = spg_loss(logps, scored, advantages, answer, beta=1.5, mix=mix)
    (grad,) = torch.autograd.grad(loss, logps)
    other = logps.detach().clone().requires_grad_()
    reference = _spg_released(other.permute(1, 0, 2) * answer[:, None], scored.permute(1, 0, 2), answer,
                              advantages, 1.5, mix)  # fmt: skip
    (reference_grad,) = torch.autograd.grad(reference, other)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-12)
    assert metrics["spg/negative_frac"] == 0.75
    with pytest.raises(ValueError, match="spg_mix"):
        spg_loss(logps, scored, advantages, answer, mix=1.5)


def _stabledrl_released(per_seq_logps, per_seq_elbo, ref_elbo, advantages, ais_clip_iw):
    """JianyuanZhong/StableDRL @ 26ad014, networks/llada_svpo.py ``compute_loss_spg`` l. 1010-1040 (use_snis)."""
    log_iw = (per_seq_elbo - ref_elbo).detach()
    clipped = torch.clamp(log_iw, max=math.log(ais_clip_iw))
    weights = torch.nn.functional.softmax(clipped, dim=0).detach()
    return -torch.sum(weights * advantages * per_seq_logps)


@pytest.mark.parametrize(
    "shift", [0.0, 0.3, 3.0]
)  # on-policy, off-policy inside and beyond the clip at log 5
def test_stabledrl_equals_the_released_code_in_value_and_gradient(shift):
    from align.losses import spg_bounds, stabledrl_loss

    g = torch.Generator().manual_seed(1)
    rows, passes, width = 5, 2, 10
    answer = torch.zeros(rows, width, dtype=torch.bool)
    for i, n in enumerate([10, 4, 7, 2, 9]):
        answer[i, :n] = True
    scored = (torch.rand(passes, rows, width, generator=g) < 0.6) & answer[None]
    scored[:, :, 0] = True
    logps = (-2 * torch.rand(passes, rows, width, generator=g, dtype=torch.float64)).requires_grad_()
    advantages = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.5], dtype=torch.float64)
    lower, upper, _ = spg_bounds(logps.detach(), scored, answer, beta=1.5, mix=0.5)
    old = lower - shift * torch.tensor([1.0, -1.0, 0.5, 2.0, 0.0], dtype=torch.float64)
    loss, metrics = stabledrl_loss(logps, scored, old, advantages, answer, beta=1.5, mix=0.5, max_weight=5.0)
    (grad,) = torch.autograd.grad(loss, logps)
    other = logps.detach().clone().requires_grad_()
    low, up, _ = spg_bounds(
        other, scored, answer, beta=1.5, mix=0.5
    )  # SPG's bound: checked against SPG above
    bound = torch.where(advantages > 0, low, 0.5 * up + 0.5 * low)
    reference = _stabledrl_released(bound, low, old, advantages, 5.0)
    (reference_grad,) = torch.autograd.grad(reference, other, retain_graph=True)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-12)
    if shift == 0.0:  # on-policy: uniform weights, the gradient of -mean(A * bound)
        on = -(advantages * bound).mean()
        torch.testing.assert_close(grad, torch.autograd.grad(on, other)[0], rtol=0, atol=1e-12)
    assert metrics["stabledrl/iw_max"] >= 1.0


def test_spg_masks_follow_the_released_block_random_process():
    """estimator spg: one block per pass drawn as randperm(num_blocks) % answer_blocks; earlier canvas shown
    (up to prompt-style masking), the chosen block's answer part partly masked, everything later masked,
    nothing after the answer shown; scored = masked answer positions, each pass a plain mean."""
    from align.logprob import make_plan

    canvas = torch.zeros(3, 20, dtype=torch.bool)
    canvas[:, 4:] = True  # 4 prompt columns, 16-token canvas, blocks of 4
    answer = canvas.clone()
    answer[1, 4 + 6 :] = False  # row 1 answers with 6 tokens: its blocks 0-1 only
    answer[2, 4 + 1 :] = False  # row 2: one token
    for seed in range(40):
        plan = make_plan("spg", canvas, num_samples=3, score_mask=answer, block_length=4,
                         generator=torch.Generator().manual_seed(seed))  # fmt: skip
        for j in range(3):
            for i in range(3):
                hidden = plan.masked[j, i, 4:]
                first = int(hidden.nonzero()[0])
                block, n = first // 4, int(answer[i].sum())
                assert block < (n - 1) // 4 + 1  # the drawn block lies in the answer
                assert hidden[(block + 1) * 4 :].all() and hidden[n:].all()  # later blocks and after EOS
                assert not hidden[: block * 4].any() and not plan.masked[j, i, :4].any()  # p_mask_prompt 0
                scored = plan.weights[j, i] > 0
                assert torch.equal(scored, plan.masked[j, i] & answer[i])
                torch.testing.assert_close(
                    plan.weights[j, i][scored], torch.full((int(scored.sum()),), 1 / scored.sum())
                )
    plan = make_plan("spg", canvas, num_samples=2, score_mask=answer, block_length=4, prompt_mask=~canvas,
                     p_mask_prompt=0.5, generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert plan.masked[:, :, :4].any()  # shown positions (the prompt too) are masked with p_mask_prompt
    with pytest.raises(ValueError, match="num_mc_samples 5 > 4 blocks"):
        make_plan("spg", canvas, num_samples=5, block_length=4)


def _bgpo_released(old_l, l_theta, advantages, response_mask, cliprange, clip_ratio_c):
    """yjyddq/DARE @ f4999da ``compute_policy_loss_bgpo`` with verl's token-mean ``agg_loss``, for one
    Monte Carlo sample: old_l / l_theta / advantages / response_mask all [B, R] (the caller broadcasts
    each row's ELBO / R and its advantage over the R response positions)."""
    neg_kl = torch.where(advantages > 0, torch.log(1 + l_theta - old_l), l_theta - old_l)
    ratio = torch.exp(neg_kl)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    clip1 = torch.maximum(pg1, pg2)
    clip2 = torch.min(-advantages * clip_ratio_c, clip1)
    losses = torch.where(advantages < 0, clip2, clip1)
    return (losses * response_mask).sum() / response_mask.sum()


@pytest.mark.parametrize(
    "spread", [0.0, 0.05, 1.0]
)  # on-policy, inside the clip, beyond it and the dual clip
def test_bgpo_equals_the_released_code_in_value_and_gradient(spread):
    from align.losses import bgpo_loss

    g = torch.Generator().manual_seed(1)
    k, canvas = 3, 8
    lengths = torch.tensor([5.0, 3.0, 8.0, 2.0, 6.0, 4.0], dtype=torch.float64)
    samples = (-10 * torch.rand(6, k, generator=g, dtype=torch.float64)).requires_grad_()
    adv = torch.tensor([1.0, -0.5, 0.0, 2.0, -1.5, -3.0], dtype=torch.float64)
    noise = torch.randn(6, k, generator=g, dtype=torch.float64).clamp(-0.9, 1.5)  # d > -1: log(1 + d) defined
    noise[5, 0] = 1.4  # A < 0 and exp(d) > 3 at spread 1: the dual clip
    old = samples.detach() - spread * canvas * noise
    loss, _ = bgpo_loss(samples, old, adv, lengths, canvas_length=canvas, epsilon=0.2, dual_clip=3.0)
    (grad,) = torch.autograd.grad(loss, samples)
    other = samples.detach().clone().requires_grad_()
    response_mask = (torch.arange(canvas)[None] < lengths[:, None]).to(torch.float64)
    per_sample = [
        _bgpo_released((old[:, j] / canvas)[:, None].expand(-1, canvas), (other[:, j] / canvas)[:, None].expand(-1, canvas),
                       adv[:, None].expand(-1, canvas), response_mask, 0.2, 3.0)
        for j in range(k)
    ]  # fmt: skip
    reference = sum(per_sample) / k
    (reference_grad,) = torch.autograd.grad(reference, other)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-12)
    if spread == 1.0:
        assert (grad == 0).any() and (grad != 0).any()  # some samples clipped, some not
        assert (
            bgpo_loss(samples, old, adv, lengths, canvas_length=canvas, dual_clip=100.0)[0] != loss
        )  # dual clip bit
    # a drop of more than one nat per token: the released log(1 + d) is NaN, ours stays finite
    far = samples.detach() - 2 * canvas
    assert torch.isfinite(bgpo_loss(far, samples.detach(), adv.abs() + 0.1, lengths, canvas_length=canvas)[0])
