"""Monte Carlo masking estimators of per-token and sequence log-likelihoods of a masked diffusion LM.

Notation: x = prompt, y = completion of length L (the positions where ``completion_mask`` is 1), S = set
of masked completion positions. Every estimator is split in two steps so that masks are *data*:

1. ``plan = make_plan(estimator, completion_mask, num_samples=K, ...)`` draws the masks and the weight of
   every scored token, as tensors ``masked`` [K', B, T] (bool) and ``weights`` [K', B, T] (K' = forward
   passes). The plan is drawn once per rollout and inner iteration and reused for the policy, the old
   policy and the reference, so that at identical weights every ratio is exactly 1.
2. ``token_logprobs(model, input_ids, plan, ...)`` [B, T] = (1 / K) * sum over the plan's passes of
   ``weights * log p(y_i | masked input)``; the sequence estimate is its sum over the completion.

Estimators (registered by name; add one with ``@register_estimator("name")``):

* ``one_step`` (d1, Zhao et al. 2025): the whole completion masked, each prompt token masked with
  probability ``p_mask_prompt``; one pass per sample; value ``log p(y_i | x', M...M)`` per token. Biased
  (mean-field) but cheap.
* ``elbo`` (LLaDA, Nie et al. 2025, Eq. 12, exact-count form): l ~ U{1..L}, S a uniform subset of size l,
  weight L / l on each masked token: unbiased for
  ``B(y|x) = sum_{k=1..L} (1/k) * mean_{|S|=k} sum_{i in S} log p(y_i | y_S masked, x)``.
  Mask counts are stratified across the K samples (l = floor(u L) + 1 with u = (k + U) / K);
  ``masks_per_timestep`` m draws K / m stratified counts and m independent masks for each (VRPO's
  timesteps-vs-masks allocation; m = 1 is its recommended one mask per timestep).
* ``coupled`` (our exact-count complementary masks, after DiffuCoder / ESPO): each sample is a pair (S, S^c) with
  l = |S| ~ U{1..L} (stratified), so every completion token is predicted exactly once per pair. The pair
  averages two estimates of B: A = (L/l) F(S) and C = (L/(L-l)) F(S^c) (each unbiased over
  |S^c| in {1..L-1}); when l = L the complement is empty and C reuses F(S) for the missing k = L term.
  Per-token weights: L / (2 l) on S, L / (2 (L - l)) on S^c, and 1 on S when l = L. Two passes per sample
  (the second is empty, and still run, when l = L).

* ``espo`` (ESPO's released coupled masks, see ``espo_plan``): counts x ~ U{0..L} stratified across the
  batch's rows, weights (L + 1) / (2 x) and (L + 1) / (2 (L - x)); two passes per sample, unbiased.
* ``diffucoder`` (coupled-GRPO's released estimate, see ``diffucoder_plan``): a fully masked pass plus a
  Bernoulli(t) mask and its complement, t ~ U(0.2, 0.8); three passes per sample, biased (half one-step).

* ``trace`` (TraceRL, Wang et al. 2025): replays the sampler's own decoding order from
  ``GenerationOutput.commit_step``. Pass tau (one per sampler step, ``num_steps`` of them) shows every
  token committed before step tau and masks the rest; its targets are the tokens committed at tau
  (weight 1). The sum is ``log p(y | x, order) = sum_tau sum_{k in C_tau} log p(y_k | state_tau)``: with
  ``exclude_ids`` = the ids the sampler never emits (the mask token, suppressed ids) and the model's
  untempered distribution this is exactly the log-probability with which the sampler at temperature 1
  with ``random`` remasking drew those tokens in that order (tests/test_logprob.py checks the frequencies
  of real sampler runs against it). With ``low_confidence`` remasking the order itself depends on the drawn
  tokens, and the value is the log-likelihood of the tokens given the order, not of the pair. ``merge``
  consecutive steps share a pass (``trace_merge``): passes / merge, but a token is then predicted with the
  tokens committed earlier in its group still masked (less context than the sampler had: a biased,
  approximation for merge times fewer passes, the exact replay at merge 1). The pass count does not depend
  on the data (ZeRO-3 needs equal forward counts on every process); passes that commit nothing still run.

* ``blockwise`` (SPG, Wang et al. 2025): the canvas is cut into blocks of ``block_length`` as the
  semi-autoregressive sampler writes it. Each sample picks a block b (stratified across samples, uniform
  over the row's nB blocks), shows the earlier blocks, masks every later block, and masks a uniform subset
  S of size l ~ U{1..L_b} inside b; weight nB * L_b / l on S. Unbiased for
  ``sum_b B(y_b | x, y_<b, later blocks masked)``: each block's own ELBO given the blocks before it, the
  order the sampler writes in (a different quantity from the whole-canvas ELBO). One pass per sample.

* ``spg`` (SPG's released ``block_random`` process, see ``spg_plan``): the masks SPG's authors train with;
  each pass scores every masked answer token with weight 1 / its count (a plain mean per pass), which is
  not an unbiased ELBO (``blockwise`` is our unbiased block-wise variant). ``loss_type: spg`` needs it.

Upper bound (SPG's EUBO, ``eubo_token_values``): for token k and the passes of a plan,
``(1/beta) log( (1/K) sum_p w_pk p(y_k | x_p)^beta )`` (w the plan's weights, whose average over masks
is 1 for every token: 1/t_hat in the exact-count form). By Jensen it is >= the same plan's ELBO term in
expectation, and for beta >= 1.5 it was >= the exact log-likelihood (the any-order sampler's probability)
in every enumeration we ran (tests/test_logprob.py); at beta = 1 it fell below it once in twelve. A token
that no pass scores contributes 0.

Per-pass values: ``pass_logprobs`` returns the unweighted [P, B, T] log-probabilities so that estimates
which are not linear in the passes (EUBO, BGPO's per-sample terms) and the chunked backward
(``align.mc_backward``) work from one set of forwards; ``combine`` forms the linear estimate.

* ``growing`` (variable-length rollouts, see ``growing_plan``): one block's ELBO per sample on the canvas
  cut at that block's end (``MaskPlan.visible``), earlier blocks clean, the process iLLaDA decodes with.

* ``block_trace`` (TraceRL for block-diffusion models, see ``block_trace_plan``): one pass per group of
  commit steps inside every block at once, the rows TraceRL's SDAR trainer builds.

Block-diffusion models (a family with ``block_causal``, e.g. SDAR) read every plan through the family's
block layout (``Family.noised_forward``: the clean canvas plus the noised one, one forward): each block's
masked tokens are predicted given the clean earlier blocks and their own noised block, never a later block.
With that layout ``elbo`` / ``coupled`` are unbiased for the sum of the blocks' own ELBOs (their noise level
shared across blocks; enumerated in tests/test_sdar.py) and ``trace`` replays the block sampler exactly.

Rows may have different completion lengths; each row's L is its own. Not covered here: trace replay of
variable-length (growing-canvas) LLaDA rollouts.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from align.models.family import FamilySpec, noised_logits


@dataclass
class MaskPlan:
    """The masks and weights of one estimate: ``masked``/``weights`` [P, B, T]; ``num_samples`` = K.

    ``masked`` also covers prompt positions (one_step's prompt masking); ``weights`` is nonzero only on
    scored (masked completion) positions. Estimates are sum over P of weights * logp, divided by K.
    """

    masked: torch.Tensor
    weights: torch.Tensor
    num_samples: int
    visible: torch.Tensor | None = (
        None  # [P, B, T] keys each pass may see (None: all); ``growing``'s cut canvas
    )

    @property
    def num_passes(self) -> int:
        return self.masked.shape[0]

    def rows(self, rows) -> MaskPlan:
        """The plan of batch rows ``rows`` (a slice or an index tensor)."""
        vis = None if self.visible is None else self.visible[:, rows]
        return MaskPlan(self.masked[:, rows], self.weights[:, rows], self.num_samples, vis)

    def passes(self, start: int, end: int) -> MaskPlan:
        """Passes [start, end) (their weights as in the whole plan)."""
        vis = None if self.visible is None else self.visible[start:end]
        return MaskPlan(self.masked[start:end], self.weights[start:end], self.num_samples, vis)

    @staticmethod
    def cat_rows(plans: list[MaskPlan]) -> MaskPlan:
        """Plans of the same passes over different rows, side by side."""
        vis = None if plans[0].visible is None else torch.cat([p.visible for p in plans], 1)
        return MaskPlan(
            torch.cat([p.masked for p in plans], 1),
            torch.cat([p.weights for p in plans], 1),
            plans[0].num_samples,
            vis,
        )


PlanFn = Callable[..., MaskPlan]
ESTIMATORS: dict[str, PlanFn] = {}


def register_estimator(name: str) -> Callable[[PlanFn], PlanFn]:
    def wrap(fn: PlanFn) -> PlanFn:
        ESTIMATORS[name] = fn
        return fn

    return wrap


def _stratified_uniform(k: int, b: int, generator, device) -> torch.Tensor:
    """[k, b] uniforms, sample j of each row in [j/k, (j+1)/k)."""
    u = torch.rand(k, b, generator=generator, device=device)
    return (torch.arange(k, device=device)[:, None] + u) / k


def _random_subset(completion_mask: torch.Tensor, sizes: torch.Tensor, generator) -> torch.Tensor:
    """Bool [B, T]: for each row a uniform subset of its completion positions of size sizes[b]."""
    scores = torch.rand(completion_mask.shape, generator=generator, device=completion_mask.device)
    scores = scores.masked_fill(~completion_mask, 2.0)  # non-completion positions rank last
    rank = scores.argsort(-1).argsort(-1)
    return (rank < sizes[:, None]) & completion_mask


def _prompt_masking(
    prompt_mask: torch.Tensor | None, p_mask_prompt: float, k: int, generator
) -> torch.Tensor | None:
    if prompt_mask is None or p_mask_prompt <= 0:
        return None
    u = torch.rand((k, *prompt_mask.shape), generator=generator, device=prompt_mask.device)
    return (u < p_mask_prompt) & prompt_mask[None]


@register_estimator("one_step")
def one_step_plan(
    completion_mask, num_samples, generator=None, prompt_mask=None, p_mask_prompt=0.0, **_
) -> MaskPlan:
    cm = completion_mask.bool()
    masked = cm[None].expand(num_samples, -1, -1).clone()
    prompt = _prompt_masking(prompt_mask, p_mask_prompt, num_samples, generator)
    if prompt is not None:
        masked |= prompt
    weights = cm[None].float().expand(num_samples, -1, -1).clone()
    return MaskPlan(masked, weights, num_samples)


@register_estimator("elbo")
def elbo_plan(
    completion_mask,
    num_samples,
    generator=None,
    prompt_mask=None,
    p_mask_prompt=0.0,
    masks_per_timestep=1,
    **_,
) -> MaskPlan:
    cm = completion_mask.bool()
    length = cm.sum(-1)  # [B]
    if masks_per_timestep < 1 or num_samples % masks_per_timestep:
        raise ValueError(
            f"num_samples {num_samples} is not a multiple of masks_per_timestep {masks_per_timestep}."
        )
    timesteps = num_samples // masks_per_timestep  # VRPO's allocation: n timesteps x 1 mask by default
    u = _stratified_uniform(timesteps, cm.shape[0], generator, cm.device).repeat_interleave(
        masks_per_timestep, 0
    )
    sizes = torch.minimum((u * length).floor().long() + 1, length)  # l in {1..L}
    masked = torch.stack([_random_subset(cm, sizes[j], generator) for j in range(num_samples)])
    weights = masked.float() * (length.float() / sizes.clamp(min=1).float())[..., None]
    prompt = _prompt_masking(prompt_mask, p_mask_prompt, num_samples, generator)
    if prompt is not None:
        masked |= prompt
    return MaskPlan(masked, weights, num_samples)


def _pair_plan(
    first, second, w_first, w_second, prompt_mask, p_mask_prompt, num_samples, generator
) -> MaskPlan:
    """Complementary passes [K, B, T] with per-row weights [K, B] as one plan, in the order S_1, S_1^c, S_2, ..."""
    weights = torch.stack([first.float() * w_first[..., None], second.float() * w_second[..., None]], 1)
    masked = torch.stack([first, second], 1).flatten(0, 1)
    prompt = _prompt_masking(prompt_mask, p_mask_prompt, num_samples, generator)
    if prompt is not None:
        masked |= prompt.repeat_interleave(2, dim=0)
    return MaskPlan(masked, weights.flatten(0, 1), num_samples)


@register_estimator("coupled")
def coupled_plan(
    completion_mask, num_samples, generator=None, prompt_mask=None, p_mask_prompt=0.0, **_
) -> MaskPlan:
    cm = completion_mask.bool()
    length = cm.sum(-1).float()
    u = _stratified_uniform(num_samples, cm.shape[0], generator, cm.device)
    sizes = torch.minimum((u * length).floor() + 1, length)  # l in {1..L}
    first = torch.stack([_random_subset(cm, sizes[j].long(), generator) for j in range(num_samples)])
    second = cm[None] & ~first
    full = sizes >= length
    w_first = torch.where(full, torch.ones_like(sizes), length / (2 * sizes.clamp(min=1)))
    w_second = length / (2 * (length - sizes).clamp(min=1))
    return _pair_plan(first, second, w_first, w_second, prompt_mask, p_mask_prompt, num_samples, generator)


@register_estimator("espo")
def espo_plan(
    completion_mask, num_samples, generator=None, prompt_mask=None, p_mask_prompt=0.0, **_
) -> MaskPlan:
    """ESPO's coupled masks as released (ML-GSAI/ESPO@b5f2dac ``forward_process`` and ``_get_elbo``): per
    sample one offset k ~ U{0..L} for the batch, row i masks x_i = round(k + i (L + 1) / B) mod (L + 1) tokens
    (counts stratified across the rows, each uniform on {0..L}), a uniform subset S; two passes, S with weight
    (L + 1) / (2 x) and its complement with (L + 1) / (2 (L - x)). Unbiased for the ELBO (both halves are);
    x = 0 leaves S empty (the complement scores every token), x = L the complement. Rows are those of the
    plan's batch (the rollout batch; the released code stratifies within each micro-batch)."""
    cm = completion_mask.bool()
    rows, length = cm.shape[0], cm.sum(-1)  # [B]
    stride = torch.arange(rows, device=cm.device)
    first = []
    for _ in range(num_samples):
        offset = (torch.rand((), generator=generator, device=cm.device) * (length + 1)).floor()
        counts = torch.round(offset + stride * (length + 1) / rows).long() % (length + 1)
        first.append(_random_subset(cm, counts, generator))
    first = torch.stack(first)  # [K, B, T]
    second = cm[None] & ~first
    scale = (length.float() + 1) / 2
    w_first = scale / first.sum(-1).clamp(min=1).float()
    w_second = scale / second.sum(-1).clamp(min=1).float()
    return _pair_plan(first, second, w_first, w_second, prompt_mask, p_mask_prompt, num_samples, generator)


@register_estimator("diffucoder")
def diffucoder_plan(
    completion_mask, num_samples, generator=None, prompt_mask=None, p_mask_prompt=0.0, **_
) -> MaskPlan:
    """Coupled-GRPO's estimate as released (apple/ml-diffucoder@f735e01 ``forward_process`` and
    ``selective_log_softmax``): per sample one t ~ U(0.2, 0.8) for the batch and three passes: the whole
    completion masked (weight 1/2), each token masked with probability t (S, weight 1 / (2 t)) and the
    complement (weight 1 / (2 (1 - t))): per token (one_step + coupled) / 2. Not an unbiased ELBO (the
    one-step half is mean-field)."""
    cm = completion_mask.bool()
    masked, weights = [], []
    for _ in range(num_samples):
        t = 0.2 + 0.6 * torch.rand((), generator=generator, device=cm.device)
        u = torch.rand(cm.shape, generator=generator, device=cm.device)
        first, second = cm & (u < t), cm & (u > t)
        masked += [cm, first, second]
        weights += [cm.float() / 2, first.float() / (2 * t), second.float() / (2 * (1 - t))]
    masked, weights = torch.stack(masked), torch.stack(weights)
    prompt = _prompt_masking(prompt_mask, p_mask_prompt, num_samples, generator)
    if prompt is not None:
        masked |= prompt.repeat_interleave(3, dim=0)
    return MaskPlan(masked, weights, num_samples)


@register_estimator("trace")
def trace_plan(
    completion_mask,
    num_samples,
    generator=None,
    prompt_mask=None,
    p_mask_prompt=0.0,
    *,
    commit_step=None,
    num_steps=None,
    merge=1,
    **_,
) -> MaskPlan:
    if commit_step is None or num_steps is None:
        raise ValueError("estimator 'trace' replays the sampler: it needs commit_step [B, T] and num_steps.")
    if merge < 1:
        raise ValueError(f"trace merge must be >= 1, got {merge}.")
    cm = completion_mask.bool()
    step = commit_step.to(cm.device).masked_fill(~cm, -1)  # -1: shown from the start (prompt, EOS fill)
    edges = torch.arange(0, num_steps, merge, device=cm.device)
    masked = torch.stack([cm & (step >= e) for e in edges])
    weights = torch.stack([cm & (step >= e) & (step < e + merge) for e in edges]).float()
    return MaskPlan(masked, weights, 1)


@register_estimator("block_trace")
def block_trace_plan(
    completion_mask,
    num_samples,
    generator=None,
    prompt_mask=None,
    p_mask_prompt=0.0,
    *,
    commit_step=None,
    num_steps=None,
    merge=1,
    block_length=None,
    **_,
) -> MaskPlan:
    """TraceRL's replay rows for block-diffusion models (dLLM-RL ``train/rl_sdar.py``: ``collapse_k_unique``
    and ``one_round_vectorized``). Blocks are the sampler's (position-aligned, positions counting the real
    prompt and completion tokens); inside each block the commit steps' sorted distinct values are grouped
    ``merge`` at a time (``shrink``; a group stands for its last value). Pass r holds, for every block at
    once, the r-th group: its tokens are the targets (weight 1) and every token of that block in group >= r
    is masked. Read through the family's block layout (each block sees only clean earlier blocks), a pass
    shows every block in the state the sampler had when it committed that group. The pass count is fixed,
    ceil(steps per block / merge) with steps per block = ``num_steps`` / ceil(completion length / block_length),
    so every process runs as many forwards (ZeRO-3); passes with no target in some block still run."""
    if commit_step is None or num_steps is None or block_length is None:
        raise ValueError(
            "estimator 'block_trace' replays the block sampler: it needs commit_step [B, T], "
            "num_steps and block_length."
        )
    if merge < 1:
        raise ValueError(f"trace merge (TraceRL's shrink) must be >= 1, got {merge}.")
    cm = completion_mask.bool()
    real = cm if prompt_mask is None else cm | prompt_mask.bool()
    block = (real.long().cumsum(-1) - 1).clamp(min=0) // block_length  # [B, T] the sampler's block
    step = commit_step.to(cm.device).masked_fill(~cm, -1)
    length = int(cm.sum(-1).max())
    per_block = max(1, num_steps // max(1, math.ceil(length / block_length)))
    rounds = math.ceil(per_block / merge)
    # each token's group: the rank of its step among its block's distinct steps, // merge
    b, t = cm.shape
    key = block * (step.max() + 2) + step  # distinct per (block, step); shown tokens (-1) sort first
    group = torch.full_like(step, -1)
    for r in range(b):
        live = step[r] >= 0
        if not live.any():
            continue
        keys = key[r, live]
        uniq = torch.unique(keys)  # sorted
        blk_of = torch.div(uniq, step.max() + 2, rounding_mode="floor")
        first = torch.searchsorted(uniq, blk_of * (step.max() + 2))  # index of each block's first key
        rank = torch.arange(len(uniq), device=cm.device) - first
        group[r, live] = (rank // merge)[torch.searchsorted(uniq, keys)]
    if int(group.max()) >= rounds:
        raise ValueError(
            f"a block holds tokens committed at more than {per_block} distinct steps, the sampler's steps per block "
            f"(num_steps {num_steps} over blocks of {block_length}): the commit steps are not this sampler's."
        )
    masked = torch.stack([cm & (step >= 0) & (group >= g) for g in range(rounds)])
    weights = torch.stack([cm & (step >= 0) & (group == g) for g in range(rounds)]).float()
    return MaskPlan(masked, weights, 1)


@register_estimator("growing")
def growing_plan(
    completion_mask,
    num_samples,
    generator=None,
    prompt_mask=None,
    p_mask_prompt=0.0,
    *,
    block_length=None,
    score_mask=None,
    **_,
) -> MaskPlan:
    """The likelihood of variable-length rollouts (``variable_length``: the canvas grows block by block and
    each block is decoded on the canvas cut at its end, iLLaDA's process). Blocks of ``block_length`` from
    the completion's start; a row's blocks are those up to the one holding its last scored token (its stop
    token: later blocks were never decoded). Each sample picks one of the row's nB blocks b (stratified
    across samples), shows the prompt and the clean earlier blocks, hides everything after b (``visible``:
    no later canvas, as when b was decoded) and masks a uniform subset S of size l ~ U{1..L_b} of b; weight
    nB * L_b / l on S. Unbiased for ``sum_b ELBO(y_b | x, y_<b)`` on the cut canvas; one pass per sample,
    whatever the rows' lengths, so every process runs as many forwards (ZeRO-3; the variable-length sampler
    itself runs on the gathered policy, where ranks may stop at different blocks)."""
    if block_length is None or block_length < 1:
        raise ValueError(f"estimator 'growing' needs block_length >= 1, got {block_length}.")
    cm = completion_mask.bool()
    scored = cm if score_mask is None else score_mask.bool() & cm
    block = torch.where(cm, (cm.long().cumsum(-1) - 1) // block_length, -1)  # [B, T]
    last = torch.where(scored, block, -1).amax(-1)  # [B] the block holding the last scored token
    num_blocks = (last + 1).clamp(min=1)
    chosen = (_stratified_uniform(num_samples, cm.shape[0], generator, cm.device) * num_blocks).floor().long()
    masked, weights, visible = [], [], []
    for j in range(num_samples):
        inside = cm & (block == chosen[j][:, None])
        size_b = inside.sum(-1)
        u = torch.rand(cm.shape[0], generator=generator, device=cm.device)
        sizes = torch.minimum((u * size_b).floor().long() + 1, size_b)
        subset = _random_subset(inside, sizes, generator)
        masked.append(subset)
        visible.append(~cm | (block <= chosen[j][:, None]))
        scale = num_blocks.float() * size_b.float() / sizes.clamp(min=1).float()
        weights.append(subset.float() * scale[:, None])
    masked, weights, visible = torch.stack(masked), torch.stack(weights), torch.stack(visible)
    prompt = _prompt_masking(prompt_mask, p_mask_prompt, num_samples, generator)
    if prompt is not None:
        masked |= prompt
    return MaskPlan(masked, weights, num_samples, visible)


@register_estimator("blockwise")
def blockwise_plan(
    completion_mask,
    num_samples,
    generator=None,
    prompt_mask=None,
    p_mask_prompt=0.0,
    *,
    block_length=None,
    **_,
) -> MaskPlan:
    if block_length is None or block_length < 1:
        raise ValueError(f"estimator 'blockwise' needs block_length >= 1, got {block_length}.")
    cm = completion_mask.bool()
    block = (cm.long().cumsum(-1) - 1).clamp(min=0) // block_length  # [B, T] block index of each position
    num_blocks = (cm.sum(-1) + block_length - 1) // block_length  # [B]
    chosen = (_stratified_uniform(num_samples, cm.shape[0], generator, cm.device) * num_blocks).floor().long()
    masked, weights = [], []
    for j in range(num_samples):
        inside = cm & (block == chosen[j][:, None])
        later = cm & (block > chosen[j][:, None])
        size_b = inside.sum(-1)
        u = torch.rand(cm.shape[0], generator=generator, device=cm.device)
        sizes = torch.minimum((u * size_b).floor().long() + 1, size_b)
        subset = _random_subset(inside, sizes, generator)
        masked.append(subset | later)
        scale = num_blocks.float() * size_b.float() / sizes.clamp(min=1).float()
        weights.append(subset.float() * scale[:, None])
    masked, weights = torch.stack(masked), torch.stack(weights)
    prompt = _prompt_masking(prompt_mask, p_mask_prompt, num_samples, generator)
    if prompt is not None:
        masked |= prompt
    return MaskPlan(masked, weights, num_samples)


@register_estimator("spg")
def spg_plan(
    completion_mask,
    num_samples,
    generator=None,
    prompt_mask=None,
    p_mask_prompt=0.0,
    *,
    block_length=None,
    score_mask=None,
    **_,
) -> MaskPlan:
    """SPG's released ``block_random`` forward process (facebookresearch/SPG @ a1c7120, ``forward_process``):
    per row, blocks are drawn as ``randperm(num_blocks) % answer_blocks`` (num_blocks over the whole canvas,
    answer_blocks over the answer up to its first EOS), one per pass; the chosen block's answer positions get
    a uniform subset of l ~ U{1..m} masked (m of them in the block), every later position is masked (so
    nothing after the first EOS is shown); then every position still shown (prompt and earlier blocks alike)
    is masked with probability ``p_mask_prompt``. Scored: every masked answer position, weight 1 / (the
    pass's count), so the linear estimate is SPG's mean over passes of each pass's plain mean."""
    if block_length is None or block_length < 1:
        raise ValueError(f"estimator 'spg' needs block_length >= 1, got {block_length}.")
    canvas = completion_mask.bool()
    answer = canvas if score_mask is None else score_mask.bool() & canvas
    rows, width = canvas.shape
    gen_length = int(canvas.sum(-1).max())
    if (canvas.sum(-1) != gen_length).any() or gen_length % block_length:
        raise ValueError(
            f"estimator 'spg' needs equal canvases whose length is a multiple of block_length "
            f"{block_length}, got {canvas.sum(-1).tolist()}."
        )
    num_blocks = gen_length // block_length
    if num_samples > num_blocks:
        raise ValueError(
            f"estimator 'spg' draws one block per sample: num_mc_samples {num_samples} > {num_blocks} blocks."
        )
    position = (canvas.long().cumsum(-1) - 1).clamp(min=0)  # canvas position of each column
    lengths = answer.sum(-1)
    answer_blocks = ((lengths - 1).clamp(min=0) // block_length + 1).tolist()
    masked = torch.zeros(num_samples, rows, width, dtype=torch.bool, device=canvas.device)
    for i in range(rows):
        draws = torch.randperm(num_blocks, generator=generator, device=canvas.device) % answer_blocks[i]
        for j, b in enumerate(draws[:num_samples].tolist()):
            start = b * block_length
            inside = min(block_length, int(lengths[i]) - start)
            hidden = canvas[i] & (position[i] >= start)
            if inside > 0:
                count = int(torch.randint(1, inside + 1, (1,), generator=generator, device=canvas.device))
                keep = torch.randperm(inside, generator=generator, device=canvas.device)[count:]
                shown = canvas[i] & (position[i] >= start) & (position[i] < start + inside)
                hidden[shown.nonzero()[keep, 0]] = False
            masked[j, i] = hidden
    if p_mask_prompt > 0:
        eligible = ~masked & (canvas | (prompt_mask.bool() if prompt_mask is not None else False))[None]
        masked |= eligible & (
            torch.rand(masked.shape, generator=generator, device=canvas.device) < p_mask_prompt
        )
    scored = masked & answer[None]
    weights = scored.float() / scored.sum(-1, keepdim=True).clamp(min=1).float()
    return MaskPlan(masked, weights, num_samples)


def make_plan(
    estimator: str,
    completion_mask: torch.Tensor,
    *,
    num_samples: int = 1,
    prompt_mask: torch.Tensor | None = None,
    p_mask_prompt: float = 0.0,
    generator: torch.Generator | None = None,
    score_mask: torch.Tensor | None = None,
    **context,
) -> MaskPlan:
    """Draw the masks of ``estimator`` for completion_mask [B, T] (1 = completion token).

    ``context`` carries what a data-dependent estimator needs (``trace``: ``commit_step`` [B, T],
    ``num_steps``, ``merge``); the others ignore it.

    ``score_mask`` [B, T] (a subset of the completion) keeps the noise over the whole completion but
    counts only those tokens: the estimate is the same per-position decomposition of the completion's
    ELBO, summed over the scored positions. GRPO uses it to noise the whole generated canvas, as the
    sampler did, while scoring the answer up to its first EOS (d1 masks the canvas the same way).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator {estimator!r} is not one of {sorted(ESTIMATORS)}.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
    if not 0.0 <= p_mask_prompt < 1.0:
        raise ValueError(f"p_mask_prompt must be in [0, 1), got {p_mask_prompt}.")
    pm = None if prompt_mask is None else prompt_mask.bool() & ~completion_mask.bool()
    plan = ESTIMATORS[estimator](
        completion_mask.bool(),
        num_samples,
        generator=generator,
        prompt_mask=pm,
        p_mask_prompt=p_mask_prompt,
        score_mask=score_mask,
        **context,
    )
    if score_mask is not None:
        if (score_mask.bool() & ~completion_mask.bool()).any():
            raise ValueError("score_mask must be a subset of completion_mask.")
        plan.weights = plan.weights * score_mask.bool()[None]
    return plan


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor, exclude_ids=()) -> torch.Tensor:
    """log softmax(logits)[targets] in float32 (float64 stays float64): logits [..., V], targets [...] -> [...];
    ``exclude_ids`` get probability 0 (the distribution renormalised over the other ids, as the sampler draws)."""
    logits = (logits if logits.dtype == torch.float64 else logits.float()).flatten(0, -2)
    if len(exclude_ids):
        logits = logits.index_fill(-1, torch.as_tensor(list(exclude_ids), device=logits.device), -torch.inf)
    return -F.cross_entropy(logits, targets.flatten(), reduction="none").view(targets.shape)


def pass_logprobs(
    model,
    input_ids: torch.Tensor,
    plan: MaskPlan,
    *,
    mask_token_id: int,
    attention_mask: torch.Tensor | None = None,
    spec: FamilySpec | None = None,
    chunk_size: int = 1,
    exclude_ids=(),
) -> torch.Tensor:
    """Per-pass log-probabilities [P, B, T]: ``log p(y_i | input masked as pass p)`` where the pass scores
    position i (nonzero weight), 0 elsewhere; ``exclude_ids`` are renormalised away (``trace`` passes the
    ids the sampler never emits).

    Passes are run ``chunk_size`` at a time (stacked along the batch) and only the scored positions'
    log-probabilities are kept, so without grad the peak memory does not grow with the number of passes
    beyond these [P, B, T] floats. With grad, each chunk's graph is kept until backward.
    """
    b, t = input_ids.shape
    out = []
    for start in range(0, plan.num_passes, chunk_size):
        masked = plan.masked[start : start + chunk_size]
        scored = plan.weights[start : start + chunk_size] != 0
        n = masked.shape[0]
        noisy = torch.where(masked, mask_token_id, input_ids[None]).flatten(0, 1)
        attn = None if attention_mask is None else attention_mask.repeat(n, 1)
        if plan.visible is not None:  # the pass's cut canvas: keys beyond it are padding to the model
            seen = plan.visible[start : start + chunk_size].flatten(0, 1)
            attn = seen.long() if attn is None else attn * seen.long()
        # Logits only for the columns some row scores. A chunk that scores nothing still runs its forward:
        # under ZeRO-3 every process must run the same number of forwards.
        columns = scored.any(0).any(0).nonzero()
        lo, hi = (columns[0].item(), columns[-1].item() + 1) if len(columns) else (0, 1)
        clean = input_ids.repeat(n, 1)
        logits = noised_logits(model, clean, noisy, attn, spec, logits_range=(lo, hi)).logits.view(
            n, b, hi - lo, -1
        )
        window = scored[..., lo:hi]
        targets = input_ids[None, :, lo:hi].expand(n, -1, -1)
        gathered = gather_logprobs(logits[window], targets[window], exclude_ids)
        values = torch.zeros(n, b, hi - lo, dtype=gathered.dtype, device=input_ids.device)
        values = values.masked_scatter(window, gathered)
        out.append(F.pad(values, (lo, t - hi)))
    return torch.cat(out)


def combine(plan: MaskPlan, per_pass: torch.Tensor) -> torch.Tensor:
    """The plan's linear estimate [B, T] = (1 / K) * sum over passes of weights * per-pass log-probs."""
    return (plan.weights * per_pass).sum(0) / plan.num_samples


def sample_sums(plan: MaskPlan, per_pass: torch.Tensor) -> torch.Tensor:
    """[B, K]: each Monte Carlo sample's own sequence estimate (its passes' weighted sums; coupled's pair
    counts as one sample). Their mean over K is the sequence estimate (``combine(...).sum(-1)``)."""
    k = plan.num_samples
    weighted = (plan.weights * per_pass).sum(-1)  # [P, B]
    return weighted.view(k, -1, weighted.shape[-1]).sum(1).T


def eubo_token_values(plan: MaskPlan, per_pass: torch.Tensor, beta: float) -> torch.Tensor:
    """SPG's upper bound per token [B, T]: (1/beta) log((1/K) sum_p w_pk exp(beta * logp_pk)); 0 where
    no pass scores the token. Computed as a log-sum-exp (stable for very negative log-probs)."""
    if beta <= 0:
        raise ValueError(f"the EUBO's beta must be > 0, got {beta}.")
    w = plan.weights
    scored = w > 0
    terms = torch.where(scored, beta * per_pass + torch.log(w.clamp(min=1e-30)), -torch.inf)
    any_scored = scored.any(0)
    total = torch.logsumexp(terms, 0) - math.log(plan.num_samples)
    return torch.where(any_scored, total / beta, torch.zeros_like(total))


def token_logprobs(model, input_ids: torch.Tensor, plan: MaskPlan, **kwargs) -> torch.Tensor:
    """Per-token estimates [B, T] (zero off the completion) for input_ids [B, T] under ``plan``: the
    ``combine`` of ``pass_logprobs`` (same keyword arguments)."""
    return combine(plan, pass_logprobs(model, input_ids, plan, **kwargs))


def sequence_logprob(
    model,
    input_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    *,
    estimator: str = "elbo",
    num_samples: int = 1,
    mask_token_id: int,
    p_mask_prompt: float = 0.0,
    attention_mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    chunk_size: int = 1,
    spec: FamilySpec | None = None,
    **context,
) -> torch.Tensor:
    """Sequence log-likelihood estimate [B] of the completion tokens (completion_mask [B, T] == 1);
    ``context`` as for ``make_plan`` (``block_length`` for blockwise).

    ``p_mask_prompt`` masks each prompt position (every real position outside the completion: those of
    ``attention_mask``, or all of them without one) with that probability, as d1 does."""
    prompt_mask = attention_mask if attention_mask is not None else torch.ones_like(completion_mask)
    plan = make_plan(
        estimator,
        completion_mask,
        num_samples=num_samples,
        prompt_mask=prompt_mask,
        p_mask_prompt=p_mask_prompt,
        generator=generator,
        **context,
    )
    values = token_logprobs(
        model,
        input_ids,
        plan,
        mask_token_id=mask_token_id,
        attention_mask=attention_mask,
        spec=spec,
        chunk_size=chunk_size,
    )
    return values.sum(-1)
