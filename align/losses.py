"""Policy losses of the GRPO family as pure tensor functions, with TRL's names and semantics.

Inputs are per-token log-probability *estimates* [B, T] from ``align.logprob`` (for ELBO estimators the
per-token values sum to the sequence ELBO), so TRL's formulas carry over unchanged:

* ratio ``r = exp(logp - old)`` per token (``importance_sampling_level="token"``) or
  ``exp(mean_t(logp - old))`` per sequence (``"sequence"``, GSPO; with ELBO estimates this is ESPO's
  ``exp((B_new - B_old) / L)``);
* clipped surrogate ``-min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)``, with ``delta`` capping r
  (two-sided clipping);
* KL to the reference: k3 ``exp(ref - logp) - (ref - logp) - 1`` (TRL) or k2 ``(logp - ref)^2 / 2``;
* aggregation by ``loss_type``: ``grpo`` (mean per sequence, then over sequences), ``bnpo`` (mean over
  tokens of the batch), ``dr_grpo`` (sum / (B * max_completion_length)), ``dapo`` (sum / tokens of the
  global batch, passed as ``normalizer``);
* ``wd1`` (Tang et al. 2025, as released: xiaohangt/wd1@0898985 ``RevDiffuGRPOTrainer.compute_loss``):
  ratio-free, ``-sum_i (softmax_g(psi A) - softmax_g(-psi A))_i * sum_t logp_i`` over each group g of
  ``num_generations`` completions, averaged over groups (psi = 1 is the released code; no KL term).
  ``wd1_mean`` is our variant with the per-sequence token mean in place of the token sum (a gradient
  1 / L_i as large per sequence), which takes the KL term when beta > 0.
* ``stabledrl_clip`` (our variant of StableDRL's idea; ``stabledrl`` is the released algorithm): the ratio is clipped to [1 - epsilon, 1 + epsilon_high] whatever the
  advantage's sign (PPO's min lets a negative-advantage ratio grow without bound: the reported source
  of gradient spikes in full fine-tuning), then self-normalised over the micro-batch,
  w = clip(r) / mean(clip(r)) (differentiated through the normaliser: the gradient is
  sum_i grad r_i (A_i - A_bar_w) / sum r, centred like a baseline); loss ``-w A`` aggregated per sequence
  then over sequences. On-policy with advantages summing to zero over the batch (whole GRPO groups) its
  gradient equals ``grpo``'s.
* ``spg_loss`` (SPG, Wang et al. 2025, as its authors released it): REINFORCE on sandwiched per-sequence
  bounds, no ratio and no clipping: the lower bound for A > 0 and ``mix * EUBO + (1 - mix) * lower`` else,
  from per-pass log-probs under SPG's own masks (``estimator: spg``), rows weighted by their length.
* ``justgrpo_loss``, ``tracerl_loss`` (``tracerl_block_loss`` for block diffusion), ``espo_loss``: JustGRPO, TraceRL and ESPO as released (their
  docstrings give the arithmetic and the commits).
* ``bgpo_loss`` (BGPO, as released in DARE's verl): per-sample sequence ELBO changes over the padded
  canvas length, ratio 1 + d for A > 0 and exp(d) otherwise, PPO and dual clipping, token-mean rows.

Advantages (``compute_advantages``) follow TRL: group mean subtracted, divided by std + 1e-4 for
``scale_rewards`` ``group`` / ``batch``, not divided for ``none`` (d1's mean-centring); rows whose
reward is NaN (every reward function returned None) get advantage 0.

DPO (``dpo_loss``, TRL's DPOTrainer definitions, reverse-KL): with sequence log-likelihood estimates
pi_c, pi_r (policy) and ref_c, ref_r (reference) of the chosen and rejected responses and
delta = (pi_c - ref_c) - (pi_r - ref_r) and s = ``label_smoothing``, as TRL 1.16's ``DPOTrainer``
computes them: ``sigmoid`` -log sigma(beta delta) (TRL 1.16 reads no label smoothing here), ``hinge``
relu(1 - beta delta), ``ipo`` (delta' - 1 / (2 beta))^2 with delta' the same difference of per-token
averages (TRL's length-normalised IPO), ``robust`` (Chowdhury et al. 2024)
((1 - s)(-log sigma(beta delta)) + s log sigma(-beta delta)) / (1 - 2s). Our name ``cdpo`` is conservative
DPO (Mitchell 2023; TRL 0.x's sigmoid with label smoothing): -(1 - s) log sigma(beta delta)
- s log sigma(-beta delta). VRPO (LLaDA 1.5) is the sigmoid loss with ELBO estimates whose masks are shared by policy and
reference (``align.dpo``).

Not covered: TRL's cispo/sapo/vespo/luspo loss types, entropy bonuses, vLLM importance correction, DPO's
other loss types and f-divergences.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from trl.trainer.utils import nanstd

from align.logprob.estimators import MaskPlan, eubo_token_values

SCALE_REWARDS = ("group", "batch", "none")  # compute_advantages' (the recipe checks keep torch-free copies)
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "cdpo")  # dpo_loss's


def compute_advantages(
    rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group", baseline: str = "group_mean"
) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards [N] (N = prompts * num_generations, grouped contiguously; NaN = unscorable).

    ``baseline`` ``group_mean`` subtracts the group's mean (TRL); ``leave_one_out`` the mean of the other
    G - 1 rewards of the group, i.e. G / (G - 1) times the mean-centred reward (DiffuCoder's and ESPO's
    released advantage; with NaN rewards, the mean of the other scored ones).
    Returns (advantages [N], std_is_zero [N] bool: the row's group has all scored rewards equal, for the
    ``frac_reward_zero_std`` metric, whatever ``scale_rewards`` is).
    """
    if baseline not in ("group_mean", "leave_one_out"):
        raise ValueError(f"advantage baseline {baseline!r} is not 'group_mean' or 'leave_one_out'.")
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards {scale_rewards!r} is not one of {SCALE_REWARDS}.")
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards cannot be split into groups of {num_generations}.")
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    elif num_generations > 1:
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    else:
        std = torch.zeros_like(rewards)
    advantages = rewards - mean
    if baseline == "leave_one_out":
        scored = (~torch.isnan(grouped)).sum(1).repeat_interleave(num_generations).to(rewards.dtype)
        advantages = advantages * scored / (scored - 1).clamp(min=1)
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    # A group is "zero std" when its scored rewards are all equal, tested exactly: a float32 std of equal
    # values (e.g. eight 0.1 rewards) can round to 1e-8 and hide the group from ``frac_reward_zero_std``.
    lo = torch.nan_to_num(grouped, nan=math.inf).amin(1)
    hi = torch.nan_to_num(grouped, nan=-math.inf).amax(1)
    return advantages, (~(hi > lo)).repeat_interleave(num_generations)


def kl_penalty(logps: torch.Tensor, ref_logps: torch.Tensor, kind: str = "k3") -> torch.Tensor:
    """Per-token KL estimate of policy from reference: k3 (TRL's, >= 0) or k2."""
    if kind == "k3":
        diff = ref_logps - logps
        return torch.exp(diff) - diff - 1
    if kind == "k2":
        return 0.5 * (logps - ref_logps) ** 2
    raise ValueError(f"kl estimator {kind!r} is not one of ('k3', 'k2').")


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def wd1_weights(advantages: torch.Tensor, num_generations: int, psi: float) -> torch.Tensor:
    """wd1's per-completion weights softmax_g(psi A) - softmax_g(-psi A) for advantages [N] laid out in
    contiguous groups of ``num_generations`` (compute them before any shuffling of the rows)."""
    grouped = advantages.view(-1, num_generations)
    w = torch.softmax(psi * grouped, dim=1) - torch.softmax(-psi * grouped, dim=1)
    return w.view(-1)


# ---- the ratio losses: each is a per-token term and an aggregation, declared once -------------------------
# a per-token term: (ratio [B, T] or [B, 1], advantages [B, T] or [B, 1], logps, mask, settings) -> [B, T]
def _clipped_term(ratio, adv, logps, mask, s):
    """PPO's clipped surrogate (TRL's), with ``delta``'s two-sided cap of the unclipped ratio."""
    clipped = torch.clamp(ratio, 1 - s["epsilon"], 1 + s["epsilon_high"])
    capped = ratio if s["delta"] is None else torch.clamp(ratio, max=s["delta"])
    return -torch.min(capped * adv, clipped * adv)


def _self_normalised_clip_term(ratio, adv, logps, mask, s):
    """Our StableDRL variant: the clipped ratio over its masked mean (stabledrl_clip)."""
    clipped = torch.clamp(ratio, 1 - s["epsilon"], 1 + s["epsilon_high"])
    return -(clipped / _masked_mean(clipped, mask)) * adv


def _wd1_term(ratio, adv, logps, mask, s):
    """wd1: the group weights times the log-probabilities (no ratio)."""
    weights = s["group_weights"]
    if weights is None:
        if s["num_generations"] is None:
            raise ValueError(
                f"loss_type {s['loss_type']!r} needs group_weights or num_generations to form the groups."
            )
        weights = wd1_weights(adv[:, 0], s["num_generations"], s["wd1_psi"])
    return -weights.to(logps.dtype)[:, None] * logps


# an aggregation: (per_token [B, T], mask, settings) -> scalar
def _group_sums(
    per_token, mask, s
):  # wd1's released code: token sums, weighted over each group, mean over groups
    return (per_token * mask).sum() * s["num_generations"] / per_token.shape[0]


def _sequence_means(per_token, mask, s):  # grpo: each answer's token mean, mean over answers
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()


def _sequence_means_per_group(per_token, mask, s):  # wd1_mean: the sum of a group's weights, mean over groups
    return _sequence_means(per_token, mask, s) * s["num_generations"]


def _token_mean(per_token, mask, s):  # bnpo: this batch's token mean
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def _constant_length(per_token, mask, s):  # dr_grpo: / (rows x max_completion_length)
    if s["max_completion_length"] is None:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length.")
    return (per_token * mask).sum() / (per_token.shape[0] * s["max_completion_length"])


def _global_tokens(per_token, mask, s):  # dapo: / the global batch's token count (default: this batch's)
    norm = mask.sum() if s["normalizer"] is None else s["normalizer"]
    return (per_token * mask).sum() / torch.as_tensor(norm, dtype=per_token.dtype).clamp(min=1.0)


@dataclass(frozen=True)
class RatioLoss:
    term: Callable
    aggregate: Callable
    clips: bool = True  # reports TRL's clip_ratio metrics (wd1 has no ratio to clip)


RATIO_LOSSES = {
    "grpo": RatioLoss(_clipped_term, _sequence_means),
    "bnpo": RatioLoss(_clipped_term, _token_mean),
    "dr_grpo": RatioLoss(_clipped_term, _constant_length),
    "dapo": RatioLoss(_clipped_term, _global_tokens),
    "wd1": RatioLoss(_wd1_term, _group_sums, clips=False),
    "wd1_mean": RatioLoss(_wd1_term, _sequence_means_per_group, clips=False),
    "stabledrl_clip": RatioLoss(_self_normalised_clip_term, _sequence_means),
}
RATIO_LOSS_TYPES = tuple(RATIO_LOSSES)  # policy_loss's


def policy_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    delta: float | None = None,
    importance_sampling_level: str = "token",
    kl_estimator: str = "k3",
    max_completion_length: int | None = None,
    normalizer: float | torch.Tensor | None = None,
    num_generations: int | None = None,
    wd1_psi: float = 1.0,
    group_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss (scalar) and detached metrics for per-token log-probs [B, T]: the loss type's per-token term (plus
    ``beta`` times the KL) aggregated its way (``RATIO_LOSSES``).

    old_logps: [B, T] or None (on-policy: ``logps.detach()``); ref_logps: [B, T], needed when beta > 0;
    advantages: [B] or [B, T]; mask: [B, T] completion mask. ``normalizer`` is the token count of the
    global batch for ``dapo`` (default: this batch's). ``wd1`` needs the groups: ``group_weights`` [B]
    (``wd1_weights`` computed where the rows were still grouped; the trainer does this before shuffling its
    buffer), or contiguous groups of ``num_generations`` rows in this batch.
    """
    if loss_type not in RATIO_LOSSES:
        raise ValueError(
            f"loss_type {loss_type!r} is not one of {RATIO_LOSS_TYPES} (the others have their own functions)."
        )
    if importance_sampling_level not in ("token", "sequence"):
        raise ValueError(
            f"importance_sampling_level {importance_sampling_level!r} is not 'token' or 'sequence'."
        )
    if beta != 0.0 and ref_logps is None:
        raise ValueError("beta != 0 needs ref_logps (the reference model's estimates).")
    kind = RATIO_LOSSES[loss_type]
    mask = mask.to(logps.dtype)
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    settings = {"loss_type": loss_type, "epsilon": epsilon, "epsilon_high": epsilon_high, "delta": delta,
                "max_completion_length": max_completion_length, "normalizer": normalizer,
                "num_generations": num_generations, "wd1_psi": wd1_psi, "group_weights": group_weights}  # fmt: skip
    old_logps = logps.detach() if old_logps is None else old_logps
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    log_ratio = logps - old_logps
    if importance_sampling_level == "sequence":
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0))[:, None]
    ratio = torch.exp(log_ratio)
    metrics: dict[str, torch.Tensor] = {}
    per_token = kind.term(ratio, adv, logps, mask, settings)
    if beta != 0.0:
        per_token_kl = kl_penalty(logps, ref_logps, kl_estimator)
        per_token = per_token + beta * per_token_kl
        metrics["kl"] = _masked_mean(per_token_kl, mask).detach()
    loss = kind.aggregate(per_token, mask, settings)
    if kind.clips:
        low = ((ratio < 1 - epsilon) & (adv < 0)).float()
        high = ((ratio > 1 + epsilon_high) & (adv > 0)).float()
        metrics["clip_ratio/low_mean"] = _masked_mean(low, mask).detach()
        metrics["clip_ratio/high_mean"] = _masked_mean(high, mask).detach()
        metrics["clip_ratio/region_mean"] = _masked_mean(torch.maximum(low, high), mask).detach()
    metrics["ratio/mean"] = _masked_mean(ratio, mask).detach()
    return loss, metrics


def spg_bounds(per_pass: torch.Tensor, scored: torch.Tensor, mask: torch.Tensor, *, beta: float, mix: float):
    """SPG's per-sequence lower bound and EUBO [B] and the answer lengths [B] (see ``spg_loss``). The EUBO
    is ``eubo_token_values`` under weights 1 / t_p = L / (pass p's scored count), averaged over the tokens
    some pass scores."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"spg_mix must be in [0, 1], got {mix}.")
    scored = scored.bool()
    counts = scored.sum(-1, keepdim=True).to(per_pass.dtype)  # [P, B, 1]
    lower = ((per_pass * scored).sum(-1) / counts[..., 0].clamp(min=1)).mean(0)  # [B]
    lengths = mask.to(per_pass.dtype).sum(-1)  # [B]
    inverse_t = scored * lengths[None, :, None] / counts.clamp(min=1)
    per_token = eubo_token_values(
        MaskPlan(scored, inverse_t, per_pass.shape[0]), per_pass, beta
    )  # 0 if unscored
    upper = per_token.sum(-1) / scored.any(0).sum(-1).clamp(min=1)
    return lower, upper, lengths


def _sandwiched(
    advantages: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, mix: float
) -> torch.Tensor:
    """SPG's choice per row: the lower bound where A > 0, ``mix * upper + (1 - mix) * lower`` elsewhere."""
    return torch.where(advantages > 0, lower, mix * upper + (1 - mix) * lower)


def stabledrl_loss(
    per_pass: torch.Tensor,
    scored: torch.Tensor,
    old_lower: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 1.5,
    mix: float = 0.5,
    max_weight: float = 5.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """StableDRL as released (JianyuanZhong/StableDRL @ 26ad014, networks/llada_svpo.py ``compute_loss_spg``
    l. 1010-1040, ``use_snis: true``): SPG's per-sequence bound (lower for A > 0, ``mix`` x EUBO + rest
    otherwise; ``spg_bounds``) weighted by self-normalised importance weights over the micro-batch,
    w = softmax(min(lower - old_lower, log max_weight)), detached; loss = -sum_i w_i A_i bound_i.
    ``old_lower`` [B] is the rollout policy's lower bound (None: on-policy, w uniform). Deliberate difference:
    the released code estimates ``old_lower`` under fresh masks; here it uses the training pass's masks
    (masks are data: at identical weights every weight is exactly 1/B)."""
    lower, upper, _ = spg_bounds(per_pass, scored, mask, beta=beta, mix=mix)
    old_lower = lower.detach() if old_lower is None else old_lower
    log_iw = (lower.detach() - old_lower).clamp(max=math.log(max_weight))
    weights = torch.softmax(log_iw, 0).detach()
    bound = _sandwiched(advantages, lower, upper, mix)
    loss = -(weights * advantages * bound).sum()
    iw = torch.exp(lower.detach() - old_lower)
    return loss, {"stabledrl/iw_mean": iw.mean(), "stabledrl/iw_max": iw.max()}


def spg_loss(
    per_pass: torch.Tensor,
    scored: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 1.5,
    mix: float = 0.5,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SPG as released (facebookresearch/SPG @ a1c7120: ``_get_per_seq_logps`` l. 523-549, ``compute_loss``
    l. 87-126), on per-pass log-probs ``per_pass`` [P, B, T] and the positions each pass scores ``scored``
    [P, B, T] (masked answer tokens: ``estimator: spg``); advantages [B]; mask [B, T] the answer.

    s_p = plain mean of pass p's scored log-probs; ELBO side = mean_p s_p. EUBO side: with t_p = (pass p's
    scored count) / L, per token u_k = (1/P) sum_p [k scored by p] p_pk^beta / t_p, and
    EUBO = mean over tokens some pass scores of log(u_k) / beta. Rows with A > 0 use the ELBO side, the others
    ``mix * EUBO + (1 - mix) * ELBO``; the loss is token-weighted over rows: sum_i L_i (-A_i s_i) / sum_i L_i.
    Deliberate difference: u_k is a log-sum-exp here, where the released code takes p^beta in float32 and
    drops a token whose p^beta underflows to 0; the two agree whenever nothing underflows."""
    lower, upper, lengths = spg_bounds(per_pass, scored, mask, beta=beta, mix=mix)
    bound = _sandwiched(advantages, lower, upper, mix)
    loss = (-advantages * bound * lengths).sum() / lengths.sum().clamp(min=1e-8)
    negative = (advantages <= 0).float()
    return loss, {
        "spg/bound_gap": (upper - lower).mean().detach(),
        "spg/negative_frac": negative.mean().detach(),
    }


def bgpo_loss(
    samples: torch.Tensor,
    old_samples: torch.Tensor | None,
    advantages: torch.Tensor,
    lengths: torch.Tensor,
    *,
    canvas_length: int | float,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BGPO as released (vendored in yjyddq/DARE @ f4999da: ``compute_policy_loss_bgpo`` in
    verl/trainer/ppo/dllm_core_algos.py and its caller ``llada_dp_actor_bgpo.update_policy``).

    samples / old_samples [B, K]: per-sample sequence ELBO terms (old None: on-policy); advantages [B];
    lengths [B] the answer's scored tokens (verl's response mask); ``canvas_length`` the padded response
    length that every sample's change is divided by: d_ij = (e_ij - e_ij_old) / canvas_length. Ratio
    1 + d for A > 0 (exp(x) >= 1 + x), exp(d) otherwise (Jensen); PPO clipping to [1 - epsilon,
    1 + epsilon_high] and, for A < 0, dual clipping at ``dual_clip``; per sample the token-mean over the
    micro-batch (rows weighted by their length), then the mean over the K samples. Deliberate difference:
    the released code writes 1 + d as exp(log(1 + d)), NaN once d < -1 (the ELBO per token fell by more
    than one nat); here it stays finite, equal wherever the released value is a number."""
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    old_samples = samples.detach() if old_samples is None else old_samples
    d = (samples - old_samples) / float(canvas_length)  # [B, K]
    adv = advantages[:, None].to(d.dtype)
    ratio = torch.where(adv > 0, 1 + d, torch.exp(d))
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    ppo = torch.maximum(unclipped, clipped)
    per_sample = torch.where(adv < 0, torch.minimum(-adv * dual_clip, ppo), ppo)  # [B, K]
    weights = lengths.to(d.dtype)[:, None]
    loss = ((per_sample * weights).sum(0) / weights.sum().clamp(min=1.0)).mean()
    metrics = {
        "ratio/mean": ratio.detach().mean(),
        "clip_ratio/region_mean": (clipped > unclipped).float().mean().detach(),
    }
    return loss, metrics


def _clipped_surrogate(logps, old_logps, adv, epsilon, epsilon_high):
    """Per element ``-min(r A, clip(r, 1 - epsilon, 1 + epsilon_high) A)`` with r = exp(logps - old) (old None:
    on-policy) and the ratio."""
    old_logps = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old_logps)
    high = epsilon if epsilon_high is None else epsilon_high
    return -torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + high) * adv), ratio


def nonzero_advantage_rows(advantages: torch.Tensor) -> torch.Tensor:
    """JustGRPO's ``valid_samples`` of one process: rows whose advantage is nonzero (float scalar)."""
    return (advantages != 0).sum().float()


def justgrpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    gen_length: int,
    valid_rows: float | torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """JustGRPO as released (LeapLabTHU/JustGRPO@eebe50e grpo.py ``logprob_loss`` l. 25-56, train.py
    l. 157-219): per-token log-probs [B, T] of the left-to-right replay (estimator trace over
    ``block_length: 1`` rollouts, full-vocabulary softmax), mask [B, T] every generated position (the EOS
    padding too), loss = sum of ``-min(r A, clip(r) A)`` / (gen_length x (valid_rows + 1e-5)), where
    ``valid_rows`` is the mean over processes of each process's rows with a nonzero advantage in this
    generation batch. Not divided by gradient accumulation: the released code sums the accumulated
    gradients. The released ratio is always 1 (one update per rollout); off-policy r = exp(logp - old)."""
    adv = advantages[:, None].to(logps.dtype)
    per_token, ratio = _clipped_surrogate(logps, old_logps, adv, epsilon, epsilon_high)
    mask = mask.to(logps.dtype)
    loss = (per_token * mask).sum() / (gen_length * (torch.as_tensor(valid_rows, dtype=logps.dtype) + 1e-5))
    return loss, {"ratio/mean": _masked_mean(ratio, mask).detach()}


def tracerl_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    targets: torch.Tensor,
    *,
    passes: float | torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    kl_beta: float = 0.01,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TraceRL as released (Gen-Verse/dLLM-RL@10b4fd1 train/rl_llada.py: the trace rows l. 248-292, the loss
    ``forward_process`` l. 573-607). Each replay pass of each rollout is one training row; its value is the
    mean over its targets of ``-min(r A, clip(r) A)`` (r = exp(logp - old), old = the rollout policy) plus
    ``kl_beta`` x the *sum* over its targets of the k3 KL to the old policy; the loss is the mean over every
    row that has a target (a token weighs 1 / (rows x its pass's size)). logps / old_logps [B, T] (trace
    estimates: each token belongs to one pass); targets [P, B, T] bool (the plan's scored positions per pass);
    ``passes`` the rows with a target in one accumulation window per process (this micro-batch's count when
    alone), the divisor as dapo's token count is. The released windows are random subsets of pass rows;
    here a window holds whole rollouts with all their passes (the same expectation)."""
    adv = advantages[:, None].to(logps.dtype)
    per_token, ratio = _clipped_surrogate(logps, old_logps, adv, epsilon, epsilon_high)
    old = logps.detach() if old_logps is None else old_logps
    kl = kl_penalty(logps, old, "k3")
    t = targets.to(logps.dtype)  # [P, B, T]
    sizes = t.sum(-1)  # [P, B]
    rows = (per_token[None] * t).sum(-1) / sizes.clamp(min=1.0) + kl_beta * (kl[None] * t).sum(-1)
    loss = rows.sum() / torch.as_tensor(passes, dtype=logps.dtype).clamp(min=1.0)
    scored = t.sum(0).clamp(max=1.0)
    return loss, {"ratio/mean": _masked_mean(ratio, scored).detach(), "kl": _masked_mean(kl, scored).detach()}


def tracerl_block_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    targets: torch.Tensor,
    *,
    canvas_length: int | torch.Tensor,
    passes: float | torch.Tensor,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    kl_beta: float = 0.01,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """TraceRL for block-diffusion models as released (Gen-Verse/dLLM-RL@10b4fd1 train/rl_sdar.py: rows from
    ``one_round_vectorized``, loss ``forward_process``). A row is one replay pass of one rollout (estimator
    block_trace); its value is ``-sum over its targets of min(r A, clip(r) A) / L1`` plus ``kl_beta x sum over
    its targets of k3(old || new) / L1``, with L1 = ``canvas_length`` (the released trainer pads the step's
    responses to the longest one, at most max_gen_length: the trainer passes the generation batch's longest
    answer over all processes; not the target count) and log r = logp - old clamped to [-10, 10] as released
    (and the k3 exponent likewise); the loss
    is the sum over rows / ``passes`` (rows with a target in one accumulation window per process: the
    released ``/ B`` over micro-batches of rows, then ``/ gradient_accumulation_steps``)."""
    old = logps.detach() if old_logps is None else old_logps
    t = targets.to(logps.dtype)  # [P, B, T]
    scored = t.sum(0).clamp(max=1.0)  # [B, T]: each target token belongs to one pass
    log_ratio = torch.where(scored.bool(), logps - old, torch.zeros_like(logps)).clamp(-10.0, 10.0)
    ratio = torch.exp(log_ratio)
    high = epsilon if epsilon_high is None else epsilon_high
    adv = advantages[:, None].to(logps.dtype)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + high) * adv)
    diff = torch.where(scored.bool(), logps - old, torch.zeros_like(logps))
    kl = torch.exp((-diff).clamp(-10.0, 10.0)) - 1.0 + diff
    rows = (-(surrogate[None] * t).sum(-1) + kl_beta * (kl[None] * t).sum(-1)) / canvas_length  # [P, B]
    loss = rows.sum() / torch.as_tensor(passes, dtype=logps.dtype).clamp(min=1.0)
    return loss, {"ratio/mean": _masked_mean(ratio, scored).detach(), "kl": _masked_mean(kl, scored).detach()}


def espo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor | None,
    ref_logps: torch.Tensor | None,
    advantages: torch.Tensor,
    *,
    canvas_length: int,
    beta: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """ESPO as released (ML-GSAI/ESPO@b5f2dac espo/espo_trainer.py ``compute_loss`` l. 161-233): per-token
    ELBO terms [B, T] over the whole canvas (estimator espo), sequence ELBO B_i their sum; sequence ratio
    r_i = exp((B_i - B_old_i) / canvas_length); loss = mean over rows of ``-min(r A, clip(r) A)`` plus
    beta x sum_i (B_i - B_ref_i)^2 / 2 / (rows x canvas_length) (its k2 KL on the sequence ELBO)."""
    seq = logps.sum(-1)
    old = None if old_logps is None else old_logps.sum(-1)
    per_seq, ratio = _clipped_surrogate(
        seq / canvas_length,
        None if old is None else old / canvas_length,
        advantages.to(seq.dtype),
        epsilon,
        epsilon_high,
    )
    loss = per_seq.mean()
    metrics = {"ratio/mean": ratio.mean().detach()}
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("espo with beta != 0 needs ref_logps (the reference model's estimates).")
        kl = (seq - ref_logps.sum(-1)) ** 2 / 2
        loss = loss + beta * kl.sum() / (seq.shape[0] * canvas_length)
        metrics["kl"] = (kl.mean() / canvas_length).detach()
    return loss, metrics


def dpo_loss(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    lengths: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean DPO loss and TRL's metrics for sequence estimates laid out [chosen..., rejected...].

    logps / ref_logps: [2N] sequence log-likelihoods (policy with grad, reference without); lengths: [2N]
    scored tokens per response (for ``ipo``). Metrics: rewards/chosen, rewards/rejected (beta x log-ratio),
    rewards/accuracies, rewards/margins, logps/chosen, logps/rejected, all [N] and detached.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"loss_type {loss_type!r} is not one of {DPO_LOSS_TYPES}.")
    ratios = logps - ref_logps
    chosen, rejected = ratios.chunk(2)
    delta = chosen - rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "cdpo":
        losses = (
            -F.logsigmoid(beta * delta) * (1 - label_smoothing)
            - F.logsigmoid(-beta * delta) * label_smoothing
        )
    elif loss_type == "robust":
        clean = -(1 - label_smoothing) * F.logsigmoid(beta * delta)
        flipped = -label_smoothing * F.logsigmoid(-beta * delta)
        losses = (clean - flipped) / (1 - 2 * label_smoothing)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:  # ipo, on per-token averages
        per_token = ratios / lengths.to(ratios.dtype).clamp(min=1.0)
        avg_chosen, avg_rejected = per_token.chunk(2)
        losses = (avg_chosen - avg_rejected - 1 / (2 * beta)) ** 2
    reward_chosen, reward_rejected = beta * chosen.detach(), beta * rejected.detach()
    logps_chosen, logps_rejected = logps.detach().chunk(2)
    metrics = {
        "rewards/chosen": reward_chosen,
        "rewards/rejected": reward_rejected,
        "rewards/accuracies": (reward_chosen > reward_rejected).float(),
        "rewards/margins": reward_chosen - reward_rejected,
        "logps/chosen": logps_chosen,
        "logps/rejected": logps_rejected,
    }
    return losses.mean(), metrics
