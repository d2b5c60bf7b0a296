"""Our GRPO-family loss against TRL 1.16's GRPOTrainer._compute_loss on identical tensors."""

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
