"""TraceRL for block diffusion against dLLM-RL's released SDAR trainer (Gen-Verse/dLLM-RL@10b4fd1
``train/rl_sdar.py``: ``collapse_k_unique`` l. 219-230, ``one_round_vectorized`` l. 366-427, the TraceRL
branch of ``collect_training_data`` l. 514-550, ``forward_process`` l. 711-763), rewritten here from reading
it: the replay rows (which tokens each row masks and scores) and the loss, on identical inputs where the
variants differ (ties inside a block, shrink 2, a partial last block, off-policy ratios beyond the clip and
beyond the released clamp, zero advantages)."""

from __future__ import annotations

import torch

from align.logprob import make_plan
from align.losses import tracerl_block_loss

L0, L1, BLOCK = 4, 10, 4


def ref_collapse(lst, k):
    uniq = sorted(set(lst))
    mapping = {}
    for idx, val in enumerate(uniq):
        end = min((idx // k + 1) * k - 1, len(uniq) - 1)
        mapping[val] = uniq[end]
    return [mapping[x] for x in lst]


def ref_rows(step_map, shrink):
    """[(pmask [L1], noise [L1])] for one rollout: per block the smallest remaining step's tokens are the
    targets, every token at or after it is noised; all blocks in one row; repeat until none is left."""
    steps = list(step_map)
    for j in range((L1 - 1) // BLOCK + 1):
        lo, hi = j * BLOCK, min(L1, (j + 1) * BLOCK)
        steps[lo:hi] = ref_collapse(steps[lo:hi], shrink)
    steps = torch.tensor(steps)
    rows = []
    while True:
        nb = (L1 + BLOCK - 1) // BLOCK
        pad = torch.full((nb * BLOCK,), -1, dtype=torch.long)
        pad[:L1] = steps
        blk = pad.view(nb, BLOCK)
        valid = blk.ge(0)
        mins = blk.masked_fill(~valid, torch.iinfo(torch.long).max).min(1, keepdim=True)[0]
        pmask = (blk.eq(mins) & valid).view(-1)[:L1]
        if not pmask.any():
            return rows
        noise = (blk.ge(mins) & valid).view(-1)[:L1]
        rows.append((pmask, noise))
        steps = steps.clone()
        steps[pmask] = -1


def ref_loss(new_rows, old_rows, pmasks, adv, eps, beta):
    """forward_process over all rows at once (B = rows), logp [R, L1] of each row."""
    ratio = torch.where(pmasks, new_rows - old_rows, torch.zeros_like(new_rows)).clamp(-10.0, 10.0).exp()
    clipped = torch.clamp(ratio, 1 - eps, 1 + eps)
    a = adv[:, None]
    surrogate = (torch.min(ratio * a, clipped * a) * pmasks).sum(1) / L1
    policy = -(surrogate.sum() / len(pmasks))
    kl = torch.where(pmasks, new_rows - old_rows, torch.zeros_like(new_rows))
    kl = (-kl).clamp(-10.0, 10.0).exp() - 1.0 + kl
    return policy + beta * (kl * pmasks).sum(1).div(L1).sum() / len(pmasks)


def _step_maps():
    # global commit steps (dLLM-RL's first-unmask steps): ties (two tokens in one step), gaps, a last block of 2
    return torch.tensor([
        [1, 1, 2, 3, 4, 6, 6, 5, 7, 8],
        [2, 1, 4, 3, 5, 5, 5, 5, 9, 7],
        [1, 2, 3, 4, 8, 7, 6, 5, 9, 9],
    ])  # fmt: skip


def _plan(steps, shrink):
    b = steps.shape[0]
    cm = torch.cat([torch.zeros(b, L0, dtype=torch.bool), torch.ones(b, L1, dtype=torch.bool)], 1)
    commit = torch.cat([torch.full((b, L0), -1), steps], 1)
    prompt = torch.cat([torch.ones(b, L0, dtype=torch.bool), torch.zeros(b, L1, dtype=torch.bool)], 1)
    # 4 steps per block, as the released configs decode (block_size 4, denoising_steps_per_block 4)
    return make_plan("block_trace", cm, prompt_mask=prompt, commit_step=commit, num_steps=4 * 3, merge=shrink,
                     block_length=BLOCK)  # fmt: skip


def test_rows_are_the_released_rounds():
    for shrink in (1, 2):
        steps = _step_maps()
        plan = _plan(steps, shrink)
        assert plan.num_passes == (4 + shrink - 1) // shrink
        for b in range(steps.shape[0]):
            rows = ref_rows(steps[b].tolist(), shrink)
            ours = [(plan.weights[p, b, L0:] != 0, plan.masked[p, b, L0:]) for p in range(plan.num_passes)
                    if (plan.weights[p, b] != 0).any()]  # fmt: skip
            assert len(ours) == len(rows)
            for (pm, noise), (rpm, rnoise) in zip(ours, rows):
                assert torch.equal(pm, rpm) and torch.equal(noise, rnoise)


def test_loss_and_gradient_equal_the_released_arithmetic():
    torch.manual_seed(0)
    steps = _step_maps()
    plan = _plan(steps, 1)
    b = steps.shape[0]
    new = (torch.randn(b, L0 + L1) - 2).requires_grad_()
    old = new.detach() + torch.randn(b, L0 + L1) * 0.5
    old[0, L0 + 2] = new[0, L0 + 2].detach() - 12.0  # log-ratio past the released clamp
    old[1, L0 + 5] = new[1, L0 + 5].detach() + 0.6  # ratio below the clip
    adv = torch.tensor([1.3, -0.7, 0.0])
    targets = plan.weights != 0
    rows = int(targets.any(-1).sum())
    ours, _ = tracerl_block_loss(
        new, old, adv, targets, canvas_length=L1, passes=rows, epsilon=0.2, kl_beta=0.05
    )
    (g_ours,) = torch.autograd.grad(ours, new)
    # the released rows: one per (rollout, non-empty pass), each row's logp read at its own targets
    new_rows, old_rows, pmasks, advs = [], [], [], []
    for r in range(b):
        for p in range(plan.num_passes):
            pm = targets[p, r, L0:]
            if pm.any():
                new_rows.append(new[r, L0:])
                old_rows.append(old[r, L0:])
                pmasks.append(pm)
                advs.append(adv[r])
    ref = ref_loss(
        torch.stack(new_rows), torch.stack(old_rows), torch.stack(pmasks), torch.stack(advs), 0.2, 0.05
    )
    (g_ref,) = torch.autograd.grad(ref, new)
    assert torch.allclose(ours, ref, atol=1e-6), (ours, ref)
    assert torch.allclose(g_ours, g_ref, atol=1e-7)
    assert g_ours[2].abs().sum() > 0  # zero advantage: only the KL term moves it


def test_the_objective_divides_by_the_generation_batchs_longest_answer():
    """loss_type tracerl with block_trace: L1 is the longest scored answer of the generation batch (the
    released trainer pads the step's responses to the longest), carried by the rollout buffer."""
    from types import SimpleNamespace

    from align.objectives import get_objective
    from align.rollout.batch import MicroBatch

    steps = _step_maps()
    plan = _plan(steps, 1)
    b = steps.shape[0]
    new = torch.randn(b, L0 + L1).requires_grad_()
    old = new.detach() + 0.1 * torch.randn(b, L0 + L1)
    adv = torch.tensor([1.0, -1.0, 0.5])
    batch = MicroBatch(ids=torch.zeros(b, L0 + L1, dtype=torch.long), attn=torch.ones(b, L0 + L1), mask=plan.weights.sum(0) > 0,
                       advantages=adv, plan=plan, old=old, ref=None, normalizer=torch.tensor(12.0),
                       longest=torch.tensor(7.0))  # fmt: skip
    args = SimpleNamespace(estimator="block_trace", max_completion_length=L1, epsilon=0.2, epsilon_high=None,
                           tracerl_beta=0.01, steps_per_generation=1)  # fmt: skip
    loss, _ = get_objective("tracerl").loss(new, batch, args, 1)
    expected, _ = tracerl_block_loss(
        new, old, adv, plan.weights != 0, canvas_length=7.0, passes=12.0, kl_beta=0.01
    )
    assert torch.allclose(loss, expected)
