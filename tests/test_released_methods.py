"""JustGRPO, TraceRL, d1, wd1, coupled-GRPO, ESPO and VRPO against their authors' released code.

Each ``_..._released`` function is that code's arithmetic written out here (repository @ commit, file and
lines in its docstring), independent of ``align``; the project's side goes through the trainer's own
methods (``GRPOTrainer._passes`` / ``_policy_loss`` on a stand-in ``self``) where the trainer decides something
(which positions are scored, the softmax, the divisor, gradient accumulation). Float64 throughout; inputs
where the variants differ: zero advantages, unequal answer lengths, off-policy old values.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import EOS_ID, MASK_ID, tiny_model

from align.logprob import combine, make_plan, pass_logprobs
from align.logprob.estimators import MaskPlan
from align.losses import compute_advantages, nonzero_advantage_rows, policy_loss, wd1_weights
from align.models import family_spec
from align.objectives import get_objective
from align.rollout.batch import MicroBatch
from align.sampling.diffusion import truncate_at_stop
from align.trainer import DiffusionGRPOTrainer as GRPOTrainer

PAD_ID = 2  # what follows the first EOS on the canvas (TraceRL's pad_id)


def _model(seed=3):
    return tiny_model(seed).double()


def _rows(rows, prompt_len, length, answers, seed=0):
    """Prompt + canvas ids: answer tokens, EOS, then pads (answers = answer lengths before the EOS)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, MASK_ID, (rows, prompt_len + length), generator=g)
    for i, n in enumerate(answers):
        if n < length:
            ids[i, prompt_len + n] = EOS_ID
            ids[i, prompt_len + n + 1 :] = PAD_ID
    return ids


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _trainer(model, **args):
    """A stand-in ``self`` for the trainer's estimate and loss methods."""
    defaults = dict(estimator="trace", loss_type="grpo", mc_chunk_size=2, steps_per_generation=2, beta=0.0,
                    epsilon=0.2, epsilon_high=None, max_completion_length=None, tracerl_beta=0.01)  # fmt: skip
    defaults.update(args)
    return SimpleNamespace(args=SimpleNamespace(**defaults), spec=family_spec(model), current_gradient_accumulation_steps=2,
                           objective=get_objective(defaults["loss_type"]), _record=lambda metrics: None,
                           _metrics=defaultdict(list))  # fmt: skip


def _micro_steps(trainer, model, ids, plan, inputs, old=None):
    """The trainer's two micro-batches of one generation batch (gradient accumulation 2): backward each."""
    half = ids.shape[0] // 2
    total = 0.0
    for rows in (slice(0, half), slice(half, None)):
        part = MaskPlan(plan.masked[:, rows], plan.weights[:, rows], plan.num_samples)
        passes = GRPOTrainer._passes(trainer, model, ids[rows], None, part)
        micro = MicroBatch(ids=ids[rows], attn=None, plan=part, advantages=inputs["advantages"][rows],
                           mask=inputs["mask"][rows], old=None if old is None else old[rows], ref=None,
                           normalizer=inputs["normalizer"])  # fmt: skip
        loss = GRPOTrainer._policy_loss(trainer, passes, micro)
        loss.backward()
        total += loss.item()
    return total


# ---- JustGRPO ------------------------------------------------------------------------------------------


def _justgrpo_released(model, generated, prompt_len, advantages, valid_samples, gen_length, eps=0.2):
    """LeapLabTHU/JustGRPO @ eebe50e, grpo.py ``logprob_loss`` l. 25-56: one backward per position t with the
    past shown and the future masked, the full softmax, scale 1 / gen_length / (valid + 1e-5); train.py
    l. 157-219 sums the gradients of the accumulation steps (``valid_samples``: rows with A != 0)."""
    batch = advantages.shape[0]
    prompt, completion = generated[:, :prompt_len], generated[:, prompt_len:]
    scale = 1.0 / gen_length / (valid_samples + 1e-5)
    total = 0.0
    for t in range(gen_length):
        x = torch.cat([prompt, completion[:, :t], torch.full((batch, gen_length - t), MASK_ID)], dim=1)
        log_prob = F.log_softmax(model(x).logits[:, prompt_len + t, :], dim=-1)
        token = log_prob.gather(-1, completion[:, t : t + 1]).squeeze(-1)
        ratio = (token - token.detach()).exp()
        loss = -torch.min(ratio * advantages, ratio.clamp(1 - eps, 1 + eps) * advantages)
        loss.mul(scale).sum().backward()
        total += loss.mul(scale).sum().item()
    return total


def test_justgrpo_equals_the_released_code_with_zero_advantages():
    """2 of 8 advantages zero (the case that differed by 0.75x), unequal answers, EOS padding scored."""
    prompt_len, length = 3, 5
    ids = _rows(8, prompt_len, length, [5, 2, 0, 4, 3, 1, 5, 2])
    advantages = torch.tensor([1.2, 0.0, -0.4, 0.7, 0.0, -1.5, 0.3, -0.3], dtype=torch.float64)
    released = _model()
    reference = _justgrpo_released(
        released, ids, prompt_len, advantages, (advantages != 0).sum().item(), length
    )

    ours = _model()
    canvas = torch.zeros_like(ids)
    canvas[:, prompt_len:] = 1
    commit = torch.cat(
        [torch.full((8, prompt_len), -1), torch.arange(length).expand(8, -1)], 1
    )  # block_length 1
    plan = make_plan("trace", canvas, commit_step=commit, num_steps=length, merge=1, score_mask=canvas)
    trainer = _trainer(ours, loss_type="justgrpo", max_completion_length=length)
    inputs = {"advantages": advantages, "mask": canvas, "normalizer": nonzero_advantage_rows(advantages)}
    loss = _micro_steps(trainer, ours, ids, plan, inputs)
    assert loss == pytest.approx(reference, abs=1e-10)
    torch.testing.assert_close(_grads(ours), _grads(released), rtol=0, atol=1e-9)


# ---- TraceRL -------------------------------------------------------------------------------------------


def _collapse_k_unique(lst, k):
    """dLLM-RL @ 10b4fd1, train/rl_llada.py l. 203-215."""
    uniq = sorted(set(lst))
    mapping = {}
    for idx, val in enumerate(uniq):
        mapping[val] = uniq[min((idx // k + 1) * k - 1, len(uniq) - 1)]
    return [mapping[x] for x in lst]


def _tracerl_rows(ids, prompt_len, step_map, shrink):
    """The trace branch, l. 248-292 (post_num 0: pad tokens are never targets): one row per replayed step
    that has a target: (row index, noisy ids, target mask)."""
    rows = []
    for b in range(ids.shape[0]):
        order = torch.tensor(_collapse_k_unique(step_map[b].tolist(), shrink))
        order_full = torch.full((ids.shape[1],), -1)
        order_full[prompt_len:] = order
        tail_pad = ids[b] == PAD_ID
        tail_pad[:prompt_len] = False
        for step_val in torch.unique(order_full[prompt_len:], sorted=True):
            target = (order_full == step_val) & ~tail_pad
            if not target.any():
                continue
            noisy = ids[b].clone()
            noisy[order_full >= step_val] = MASK_ID
            rows.append((b, noisy, target))
    return rows


def _tracerl_released(model, old_model, ids, prompt_len, step_map, advantages, shrink, eps, beta):
    """``forward_process`` l. 573-607 over every trace row at once (one accumulation window): per row the
    mean of the clipped surrogate over its targets, minus; plus beta x the k3 KL to the old policy summed
    over its targets; divided by the number of rows."""
    rows = _tracerl_rows(ids, prompt_len, step_map, shrink)
    noisy = torch.stack([r[1] for r in rows])
    p_mask = torch.stack([r[2] for r in rows]).double()
    labels = ids[[r[0] for r in rows]]
    adv = advantages[[r[0] for r in rows]]
    with torch.no_grad():
        old = F.log_softmax(old_model(noisy).logits, -1).gather(-1, labels[..., None])[..., 0]
    new = F.log_softmax(model(noisy).logits, -1).gather(-1, labels[..., None])[..., 0]
    ratio = torch.exp(new - old)
    surrogate = torch.min(ratio * adv[:, None], torch.clamp(ratio, 1 - eps, 1 + eps) * adv[:, None]) * p_mask
    policy = -((surrogate.sum(1) / p_mask.sum(1).clamp(min=1)).sum() / len(rows))
    kl = new - old
    kl = ((-kl).exp() - 1.0 + kl) * p_mask
    loss = policy + beta * kl.sum(1).sum() / len(rows)
    loss.backward()
    return loss.item()


@pytest.mark.parametrize("steps,shrink", [(6, 1), (6, 2), (3, 2)])
@pytest.mark.parametrize("off_policy", [False, True])
def test_tracerl_equals_the_released_code(steps, shrink, off_policy):
    """Sampler orders with one or two tokens per step, merged steps, rows whose last passes hold only pads
    (skipped by the released code and by the divisor), zero advantages, the old policy a different model."""
    prompt_len, length, rows = 3, 6, 4
    ids = _rows(rows, prompt_len, length, [6, 2, 4, 0], seed=1)
    g = torch.Generator().manual_seed(2)
    per_step = length // steps
    step_map = torch.stack([torch.randperm(length, generator=g) // per_step for _ in range(rows)])
    advantages = torch.tensor([0.9, 0.0, -1.1, 0.4], dtype=torch.float64)
    old_model = _model(seed=4) if off_policy else _model()
    released = _model()
    reference = _tracerl_released(
        released, old_model, ids, prompt_len, step_map, advantages, shrink, 0.2, 0.01
    )

    ours = _model()
    canvas = torch.zeros_like(ids)
    canvas[:, prompt_len:] = 1
    _, answer = truncate_at_stop(ids[:, prompt_len:], [EOS_ID], EOS_ID)
    score = torch.cat([torch.zeros(rows, prompt_len, dtype=torch.long), answer], 1)
    commit = torch.cat([torch.full((rows, prompt_len), -1), step_map], 1)
    plan = make_plan("trace", canvas, commit_step=commit, num_steps=steps, merge=shrink, score_mask=score)
    trainer = _trainer(ours, loss_type="tracerl")
    old = None
    if off_policy:
        with torch.no_grad():
            old = combine(plan, GRPOTrainer._passes(trainer, old_model, ids, None, plan))
    count = (plan.weights != 0).any(-1).sum().double()  # as GRPOTrainer._pack counts them
    inputs = {"advantages": advantages, "mask": score, "normalizer": count}
    loss = _micro_steps(trainer, ours, ids, plan, inputs, old)
    assert loss == pytest.approx(reference, abs=1e-10)
    torch.testing.assert_close(_grads(ours), _grads(released), rtol=0, atol=1e-9)


# ---- d1 (diffu-GRPO) -----------------------------------------------------------------------------------


def _d1_released(logps, old, ref, advantages, completion_mask, beta, eps):
    """dllm-reasoning/d1 @ 837888f, diffu-grpo/diffu_grpo_trainer.py ``compute_loss`` l. 82-135."""
    kl = torch.exp(ref - logps) - (ref - logps) - 1
    coef_1 = torch.exp(logps - old)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    per_token = -torch.min(coef_1 * advantages[:, None], coef_2 * advantages[:, None]) + beta * kl
    return (per_token * completion_mask).sum() / completion_mask.sum()


def _tokens(seed, rows=6, width=7):
    g = torch.Generator().manual_seed(seed)
    logps = (-2 * torch.rand(rows, width, generator=g, dtype=torch.float64)).requires_grad_()
    old = logps.detach() + 0.3 * torch.randn(rows, width, generator=g, dtype=torch.float64)
    ref = logps.detach() + 0.2 * torch.randn(rows, width, generator=g, dtype=torch.float64)
    mask = torch.zeros(rows, width)
    for i, n in enumerate([7, 3, 5, 1, 6, 2][:rows]):
        mask[i, :n] = 1
    return logps, old, ref, mask


def test_d1_is_bnpo_and_the_recipe_says_so():
    import yaml

    logps, old, ref, mask = _tokens(0)
    rewards = torch.tensor([2.0, 0.0, 2.5, 0.5, 0.0, 2.0])
    advantages, _ = compute_advantages(rewards, 6, "none")
    loss, _ = policy_loss(
        logps, old, ref, advantages.double(), mask, loss_type="bnpo", beta=0.04, epsilon=0.5
    )
    (grad,) = torch.autograd.grad(loss, logps)
    other = logps.detach().clone().requires_grad_()
    centred = rewards - rewards.mean()  # d1's advantages l. 534-541: mean-centred, no std
    reference = _d1_released(other, old, ref, centred.double(), mask, 0.04, 0.5)
    (reference_grad,) = torch.autograd.grad(reference, other)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-12)
    with open("recipes/llada-8b-instruct/grpo/gsm8k_d1.yaml") as f:
        recipe = yaml.safe_load(f)
    assert (recipe["loss_type"], recipe["scale_rewards"], recipe["estimator"]) == ("bnpo", "none", "one_step")


# ---- wd1 -----------------------------------------------------------------------------------------------


def _wd1_released(logps, advantages, completion_mask):
    """xiaohangt/wd1 @ 0898985, wd1/trainers/rev_grpo_trainer.py ``compute_loss`` l. 117-162, one micro-batch
    holding one group (its configs: per_device_train_batch_size = num_generations = 6)."""
    sums = (logps * completion_mask).sum(-1)
    return -(sums * torch.softmax(advantages, 0)).sum() + (sums * torch.softmax(-advantages, 0)).sum()


def test_wd1_equals_the_released_code_and_wd1_mean_is_the_token_mean():
    logps, _, _, mask = _tokens(1)
    logps2, _, _, mask2 = _tokens(2)
    both = torch.cat([logps, logps2]).detach().requires_grad_()
    masks = torch.cat([mask, mask2])
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    from align.checks import resolve_method_defaults

    recipe = SimpleNamespace(
        loss_type="wd1", scale_rewards=None, advantage_baseline=None
    )  # a wd1 recipe leaving them unset
    resolve_method_defaults(recipe)
    advantages, _ = compute_advantages(rewards, 6, recipe.scale_rewards)
    weights = wd1_weights(advantages.double(), 6, 1.0)
    order = torch.randperm(12, generator=torch.Generator().manual_seed(0))  # the trainer's shuffled buffer
    loss, _ = policy_loss(both[order], None, None, weights[order], masks[order], loss_type="wd1",
                          num_generations=6, group_weights=weights[order])  # fmt: skip
    (grad,) = torch.autograd.grad(loss, both)
    other = both.detach().clone().requires_grad_()
    groups = [
        _wd1_released(other[k : k + 6], advantages[k : k + 6].double(), masks[k : k + 6]) for k in (0, 6)
    ]
    reference = sum(groups) / 2  # one group per micro-batch, the Trainer averages the micro-batches
    (reference_grad,) = torch.autograd.grad(reference, other)
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, reference_grad, rtol=0, atol=1e-12)
    mean, _ = policy_loss(both, None, None, weights, masks, loss_type="wd1_mean", num_generations=6,
                          group_weights=weights)  # fmt: skip
    token_mean = -(weights * (both * masks).sum(-1) / masks.sum(-1)).sum() / 2
    torch.testing.assert_close(mean, token_mean, rtol=0, atol=1e-12)


# ---- coupled-GRPO (DiffuCoder) -------------------------------------------------------------------------


def _diffucoder_released(logits3, targets, weights, first):
    """apple/ml-diffucoder @ f735e01, src/open_r1/coupled_grpo.py ``selective_log_softmax`` l. 59-145 for one
    iteration: logits of the three versions [3, B, T, V] (fully masked, mask, reverse mask), ``weights`` its
    float32 tensor [1, 1/t, 1/(1 - t)], ``first`` the mask of version 2."""
    logps = F.log_softmax(logits3, -1).gather(-1, targets[None, ..., None].expand(3, -1, -1, 1))[..., 0]
    weighted = torch.where(first, logps[1] * weights[1], logps[2] * weights[2])
    return (logps[0] + weighted) / 2


def _leave_one_out_released(rewards, g):
    """coupled_grpo.py l. 556-566 (``leave_one_out = True``, ``scale_rewards: false``); ESPO's is the same."""
    grouped = rewards.view(-1, g)
    return (grouped - (grouped.sum(1, keepdim=True) - grouped) / (g - 1)).view(-1)


def test_coupled_grpo_estimate_loss_and_advantages_equal_the_released_code():
    prompt_len, length, rows = 3, 6, 4
    ids = _rows(rows, prompt_len, length, [6, 2, 4, 3], seed=5)
    canvas = torch.zeros_like(ids)
    canvas[:, prompt_len:] = 1
    _, answer = truncate_at_stop(ids[:, prompt_len:], [EOS_ID], EOS_ID)
    score = torch.cat([torch.zeros(rows, prompt_len, dtype=torch.long), answer], 1)
    plan = make_plan("diffucoder", canvas, generator=torch.Generator().manual_seed(0), score_mask=score)
    assert plan.num_passes == 3 and torch.equal(plan.masked[0], canvas.bool())
    w1 = 2 * plan.weights[1][plan.masked[1] & score.bool()][0]  # 1 / t, as a float32 (exact: 2 x is)
    w2 = 2 * plan.weights[2][plan.masked[2] & score.bool()][0]
    assert 0.2 <= 1 / w1 <= 0.8 and abs(w2.item() * (1 - 1 / w1.item()) - 1) < 1e-6
    t = torch.stack([torch.tensor(1.0), w1, w2])
    assert (
        torch.equal(plan.masked[1] | plan.masked[2], canvas.bool())
        and not (plan.masked[1] & plan.masked[2]).any()
    )

    model, old_model = _model(), _model(seed=6)
    logps = combine(plan, pass_logprobs(model, ids, plan, mask_token_id=MASK_ID))[:, prompt_len:]
    with torch.no_grad():
        old = combine(plan, pass_logprobs(old_model, ids, plan, mask_token_id=MASK_ID))[:, prompt_len:]
    noisy = torch.where(plan.masked, MASK_ID, ids[None])
    logits3 = torch.stack([model(x).logits for x in noisy])[:, :, prompt_len:]
    released = _diffucoder_released(logits3, ids[:, prompt_len:], t, plan.masked[1][:, prompt_len:])
    torch.testing.assert_close(logps, released * answer, rtol=0, atol=1e-12)

    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5])
    advantages, _ = compute_advantages(rewards, 4, "none", "leave_one_out")
    torch.testing.assert_close(advantages, _leave_one_out_released(rewards, 4))
    loss, _ = policy_loss(logps, old, None, advantages.double(), answer, loss_type="bnpo", epsilon=0.5)
    with torch.no_grad():
        old_released = _diffucoder_released(torch.stack([old_model(x).logits for x in noisy])[:, :, prompt_len:],
                                            ids[:, prompt_len:], t, plan.masked[1][:, prompt_len:])  # fmt: skip
    # compute_loss l. 182-252 (beta 0 here): the clipped surrogate, token mean over the micro-batch
    coef = torch.exp(released - old_released)
    adv = advantages.double()[:, None]  # equal to the released advantages (asserted above), identical inputs
    per_token = -torch.min(coef * adv, torch.clamp(coef, 0.5, 1.5) * adv)
    reference = (per_token * answer).sum() / answer.sum()
    torch.testing.assert_close(loss, reference, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(torch.cat([g.flatten() for g in grads]),
                               torch.cat([g.flatten() for g in reference_grads]), rtol=0, atol=1e-10)  # fmt: skip


# ---- ESPO ----------------------------------------------------------------------------------------------


def _espo_elbo_released(model, ids, prompt_len, is_mask):
    """ML-GSAI/ESPO @ b5f2dac, espo/espo_trainer.py ``_get_elbo`` l. 376-438 (``reduce_var``) and
    ``_get_elbo_mc`` l. 440-476, given the masks ``is_mask`` [K, B, L] over the canvas: the ratio
    p = x / (L + 1), masked tokens weighted 1 / p, the complement 1 / (L / (L + 1) - p), halved; sum over the
    canvas, mean over the K samples."""
    length = ids.shape[1] - prompt_len
    targets = ids[:, prompt_len:]
    values = []
    for mask in is_mask:
        p = (mask.sum(1, keepdim=True) / (length + 1)).double().expand(-1, length)
        loss = torch.zeros(ids.shape[0], length, dtype=torch.float64)
        noisy = ids.clone()
        noisy[:, prompt_len:] = torch.where(mask, MASK_ID, targets)
        logits = model(noisy).logits[:, prompt_len:]
        loss[mask] = F.cross_entropy(logits[mask], targets[mask], reduction="none") / p[mask]
        coupled = ids.clone()
        coupled[:, prompt_len:] = torch.where(mask, targets, MASK_ID)
        logits = model(coupled).logits[:, prompt_len:]
        loss[~mask] = F.cross_entropy(logits[~mask], targets[~mask], reduction="none") / (
            length / (length + 1) - p[~mask]
        )
        values.append(-(loss / 2).sum(-1))
    return torch.stack(values).mean(0)


def _espo_loss_released(elbo, old, ref, advantages, length, beta, eps):
    """``compute_loss`` l. 161-233: sequence ratio exp((B - B_old) / L), mean over rows, k2 KL on B."""
    coef_1 = torch.exp((elbo - old) / length)
    coef_2 = torch.clamp(coef_1, 1 - eps, 1 + eps)
    loss = -torch.min(coef_1 * advantages, coef_2 * advantages).sum() / elbo.shape[0]
    return loss + beta * ((elbo - ref) ** 2 / 2).sum() / (elbo.shape[0] * length)


def test_espo_masks_estimate_and_loss_equal_the_released_code():
    prompt_len, length, rows = 3, 6, 5
    ids = _rows(rows, prompt_len, length, [6, 2, 4, 3, 0], seed=7)
    canvas = torch.zeros_like(ids)
    canvas[:, prompt_len:] = 1
    plan = make_plan(
        "espo", canvas, num_samples=2, generator=torch.Generator().manual_seed(1), score_mask=canvas
    )
    first = plan.masked[0::2, :, prompt_len:]  # [K, B, L]
    for sample in first:  # forward_process l. 55-75: counts round(k + i (L + 1) / B) mod (L + 1) for one k
        counts = sample.sum(-1)
        spaced = torch.round(torch.linspace(0.0, (rows - 1) * (length + 1) / rows, rows)).long()
        assert any(torch.equal(counts, (k + spaced) % (length + 1)) for k in range(length + 1)), counts
    model, old_model, ref_model = _model(), _model(seed=8), _model(seed=9)
    elbo = combine(plan, pass_logprobs(model, ids, plan, mask_token_id=MASK_ID))
    with torch.no_grad():
        old, ref = (
            combine(plan, pass_logprobs(m, ids, plan, mask_token_id=MASK_ID)) for m in (old_model, ref_model)
        )
    released = _espo_elbo_released(model, ids, prompt_len, first)
    # the plan's weights (L + 1) / (2 x) are float32 (the released code's are too): 3e-8 relative
    torch.testing.assert_close(elbo.sum(-1), released, rtol=1e-7, atol=0)

    from align.losses import espo_loss

    advantages = torch.tensor([0.8, 0.0, -0.5, 1.2, -1.5], dtype=torch.float64)
    loss, _ = espo_loss(elbo, old, ref, advantages, canvas_length=length, beta=0.05)
    with torch.no_grad():
        old_seq, ref_seq = (_espo_elbo_released(m, ids, prompt_len, first) for m in (old_model, ref_model))
    reference = _espo_loss_released(released, old_seq, ref_seq, advantages, length, 0.05, 0.2)
    torch.testing.assert_close(loss, reference, rtol=1e-7, atol=0)
    grads = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    ours, theirs = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in reference_grads])
    assert (ours - theirs).norm() / theirs.norm() < 1e-6  # float32 weights, as above


def test_espo_estimate_is_an_unbiased_elbo():
    """Averaged over many plans the espo estimate approaches the exact ELBO (enumerated over subsets)."""
    from itertools import combinations

    model = _model()
    prompt_len, length = 2, 4
    ids = _rows(1, prompt_len, length, [4], seed=11)
    canvas = torch.zeros_like(ids)
    canvas[:, prompt_len:] = 1
    exact = 0.0
    with torch.no_grad():
        for k in range(1, length + 1):
            subsets = list(combinations(range(length), k))
            for subset in subsets:
                noisy = ids.clone()
                positions = [prompt_len + i for i in subset]
                noisy[0, positions] = MASK_ID
                lp = F.log_softmax(model(noisy).logits[0], -1)
                exact += sum(lp[p, ids[0, p]].item() for p in positions) / k / len(subsets)
        values = []
        g = torch.Generator().manual_seed(0)
        for _ in range(400):
            plan = make_plan("espo", canvas, num_samples=1, generator=g)
            values.append(combine(plan, pass_logprobs(model, ids, plan, mask_token_id=MASK_ID)).sum().item())
    values = torch.tensor(values)
    assert abs(values.mean().item() - exact) < 4 * values.std().item() / math.sqrt(len(values))


# ---- VRPO (LLaDA 1.5) ----------------------------------------------------------------------------------


def test_vrpo_allocation_one_mask_per_timestep_and_shared_plans():
    """arXiv 2505.19223: budget n spent on n timesteps with one mask each (its optimal allocation), and the
    same timesteps and masks for the policy and the reference (antithetic sampling). The timesteps are
    stratified: sample j's mask count lies in the j-th n-th of {1..L}."""
    from align.dpo import DiffusionDPOTrainer as DPOTrainer

    length, n = 40, 8
    mask = torch.ones(3, length, dtype=torch.long)
    plan = make_plan("elbo", mask, num_samples=n, generator=torch.Generator().manual_seed(0))
    counts = plan.masked.sum(-1)  # [n, rows]
    for j in range(n):
        assert ((counts[j] > j * length // n) & (counts[j] <= (j + 1) * length // n)).all(), counts[:, 0]
    assert len(set(counts[:, 0].tolist())) == n  # n distinct timesteps, one mask each
    two = make_plan(
        "elbo", mask, num_samples=n, masks_per_timestep=2, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(two.masked.sum(-1)[0::2], two.masked.sum(-1)[1::2])  # 4 timesteps x 2 masks
    fake = SimpleNamespace(args=SimpleNamespace(share_masks=True, precompute_ref_log_probs=False),
                           _plan=lambda batch, stream, fixed=False: (stream, copy.copy(batch)),
                           _reference=lambda batch, plan: plan)  # fmt: skip
    policy_plan, reference_plan = DPOTrainer._pair_inputs(fake, {"ids": 0})
    assert policy_plan is reference_plan


# ---- BGPO ----------------------------------------------------------------------------------------------


def _phase(model, **args):
    """A stand-in ``self`` for ``RolloutPhase._pack`` (one process, on-policy, no reference)."""
    from align.rollout.phase import RolloutPhase

    defaults = dict(estimator="elbo", num_mc_samples=3, p_mask_prompt=0.0, diffusion_steps=4, trace_merge=1,
                    block_length=6, num_iterations=1, gradient_accumulation_steps=1, steps_per_generation=1,
                    beta=0.0, seed=0, per_device_train_batch_size=4)  # fmt: skip
    defaults.update(args)
    accelerator = SimpleNamespace(
        device=torch.device("cpu"), process_index=0, num_processes=1, gather=lambda t: t
    )
    phase = SimpleNamespace(args=SimpleNamespace(**defaults), accelerator=accelerator,
                            objective=get_objective(defaults.get("loss_type", "bgpo")))  # fmt: skip
    phase.seeded = lambda index, stream: RolloutPhase.seeded(phase, index, stream)
    phase._fixed_logprobs = lambda ids, attn, plans: RolloutPhase._fixed_logprobs(phase, ids, attn, plans)
    return phase


def _bgpo_elbo_released(model, ids, masked, prompt_len):
    """yjyddq/DARE @ f4999da ``dllm_dp_actor.py`` l. 100-125 for one Monte Carlo draw: the canvas positions
    ``masked`` [B, L] replaced by the mask token (the prompt shown), ``(CE / p_mask).sum() / response_length``
    with p_mask = x / L over every masked position of the padded response (its response mask is all ones:
    ``rollout_utils.py`` l. 337), negated: l = -(1/x) sum CE."""
    length = ids.shape[1] - prompt_len
    noisy = ids.clone()
    noisy[:, prompt_len:][masked] = MASK_ID
    logits = model(noisy).logits[:, prompt_len:]
    ce = F.cross_entropy(logits.transpose(1, 2), ids[:, prompt_len:], reduction="none")  # [B, L]
    p_mask = masked.sum(-1, keepdim=True).double() / length
    return -((ce / p_mask) * masked).sum(-1) / length


def test_bgpo_scores_the_whole_canvas_through_the_trainers_mask_path():
    """BGPO's released pipeline scores every response position (EOS padding included, so each row weighs
    the same in the token-mean). Through the trainer's own path (the phase's mask and plans, its passes and
    loss) on answers of unequal length, value and gradient equal the released arithmetic, off-policy."""
    from test_losses import _bgpo_released

    from align.rollout.phase import RolloutPhase

    prompt_len, length, rows, k = 3, 6, 4, 3
    ids = _rows(rows, prompt_len, length, [6, 1, 3, 0], seed=5)
    completion = ids[:, prompt_len:]
    _, completion_mask = truncate_at_stop(completion, (EOS_ID,), EOS_ID)
    assert completion_mask.sum(1).tolist() == [6, 2, 4, 1]  # what a fixed-length objective would score
    advantages = torch.tensor([1.0, -0.5, 0.8, -1.2], dtype=torch.float64)
    model = _model()
    phase = _phase(model, num_mc_samples=k)
    batch, _ = RolloutPhase._pack(phase, ids[:, :prompt_len], torch.ones(rows, prompt_len, dtype=torch.long),
                                  completion, completion_mask, advantages, None, 0,
                                  torch.zeros_like(completion))  # fmt: skip
    assert batch.mask[:, prompt_len:].all() and not batch.mask[:, :prompt_len].any()  # the whole canvas
    trainer = _trainer(model, estimator="elbo", loss_type="bgpo", max_completion_length=length, bgpo_dual_clip=3.0,
                       num_mc_samples=k)  # fmt: skip
    trainer.current_gradient_accumulation_steps = 1  # the whole generation batch in one micro-step
    micro = batch.micro_batch(0, 0, 1)
    ordered = micro.ids
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # an old policy a little away from this one, as at the second inner iteration
        old_model = _model()
        for p in old_model.parameters():
            p.mul_(1 + 0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))  # 5% relative
        old_sums = torch.stack([_bgpo_elbo_released(old_model, ordered, micro.plan.masked[j][:, prompt_len:], prompt_len)
                                for j in range(k)], 1) * length  # fmt: skip
    micro.old = old_sums
    loss = GRPOTrainer._policy_loss(
        trainer, GRPOTrainer._passes(trainer, model, ordered, None, micro.plan), micro
    )
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # the released side: per draw the ELBO over the masked canvas positions, verl's token-mean over an all-ones
    # response mask, the mean over draws
    released = []
    for j in range(k):
        l_theta = _bgpo_elbo_released(model, ordered, micro.plan.masked[j][:, prompt_len:], prompt_len)
        released.append(_bgpo_released((old_sums[:, j] / length)[:, None].expand(-1, length),
                                       l_theta[:, None].expand(-1, length),
                                       micro.advantages[:, None].expand(-1, length).double(),
                                       torch.ones(rows, length, dtype=torch.float64), 0.2, 3.0))  # fmt: skip
    reference = sum(released) / k
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    assert torch.isfinite(reference) and not torch.equal(
        loss, -micro.advantages.mean()
    )  # off-policy, log(1 + d) defined
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=0)
    ours, theirs = torch.cat([g.flatten() for g in grads]), torch.cat([g.flatten() for g in reference_grads])
    assert (ours - theirs).norm() / theirs.norm() < 1e-6
