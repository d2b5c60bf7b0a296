"""Every rollout rule, once: what a generation batch goes through before and after an engine decodes it. The
GRPO trainer's phase (``align.rollout.phase``) and verl's driver (``align.verl``) call these stages in this
order; only the transport (who decodes, how the batch reaches the workers) is theirs::

    prompt_batch   rows -> chat text -> ids [B * G, P] (left-padded, each prompt repeated G times)
    cut            the decoded canvas -> completion mask (up to the first stop token and where decoding
                   stopped), terminated rows, decoded texts
    score          texts -> each reward function's values -> the weighted reward
    advantages     rewards -> group advantages (scale_rewards, advantage_baseline), the objective's group
                   weights (wd1's), mask_truncated_completions
    canvas         prompt + completion -> ids, attention, the generated canvas the estimators noise, the
                   scored mask (the answer, or the whole canvas for an objective that ``scores_canvas``),
                   the prompt mask, commit steps
    plans          one MaskPlan per inner iteration (estimator, prompt masking, trace replay, growing blocks)

The objective's divisor is ``Objective.divisor_count`` and the trace replay's excluded ids are
``Objective.excluded_ids`` (``align.objectives``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from align.data import encode_rows
from align.logprob import make_plan
from align.logprob.estimators import MaskPlan
from align.losses import compute_advantages
from align.sampling import truncate_at_stop


def seeded(seed: int, rollout_index: int, process_index: int, stream: int, device="cpu") -> torch.Generator:
    """The generator of one (run seed, rollout, process, stream): a resumed run, and every caller of these
    stages, draws what the uninterrupted run drew (the trainer's plans of inner iteration k: stream 1 + k)."""
    return torch.Generator(device).manual_seed(hash((seed, rollout_index, process_index, stream)) % (2**63))


@dataclass
class Prompts:
    texts: list[str]  # one per prompt row, as the model reads it (chat template applied)
    ids: torch.Tensor  # [B * G, P] left-padded, each prompt repeated G times
    attn: torch.Tensor  # [B * G, P]


def prompt_batch(tokenizer, rows: list[dict], args, device=None) -> Prompts:
    """The prompts of ``rows`` (``prompt_column``, ``system_prompt``, ``use_chat_template``,
    ``max_prompt_length``), each repeated ``num_generations`` times."""
    texts, enc = encode_rows(tokenizer, rows, args)
    g = args.num_generations
    ids, attn = enc["input_ids"].repeat_interleave(g, 0), enc["attention_mask"].repeat_interleave(g, 0)
    if device is not None:
        ids, attn = ids.to(device), attn.to(device)
    return Prompts(texts, ids, attn)


@dataclass
class Completions:
    ids: torch.Tensor  # [B * G, L] the canvas as decoded
    mask: torch.Tensor  # [B * G, L] long: the answer, up to and including its first stop token
    terminated: torch.Tensor  # [B * G] long: it wrote a stop token
    texts: list[str]  # decoded answers, special tokens skipped


def cut(completion_ids: torch.Tensor, spec, tokenizer, decoded: torch.Tensor | None = None) -> Completions:
    """The answer of each decoded canvas: up to its first stop token, and no further than the ``decoded``
    tokens its sampler wrote (``GenerationOutput.decoded``: a row that left a variable-length batch without
    a stop token, e.g. a loop stopped early, keeps what it wrote)."""
    kept, mask = truncate_at_stop(completion_ids, spec.stop_token_ids, spec.eos_token_id, decoded)
    stops = torch.isin(completion_ids, torch.tensor(spec.stop_token_ids, device=completion_ids.device))
    terminated = (stops & mask.bool()).any(1).long()
    return Completions(
        completion_ids, mask, terminated, tokenizer.batch_decode(kept, skip_special_tokens=True)
    )


def score(rewards, prompts: Prompts, rows: list[dict], completions: Completions, args, state):
    """(per-function rewards [B * G, F] (NaN where a function returned None), their metrics, the weighted
    reward [B * G]) of ``rewards`` (an ``align.rollout.rewards.RewardSet``) on the decoded answers."""
    g = args.num_generations
    expanded = [r for r in rows for _ in range(g)]
    per_func, metrics = rewards.score(
        [p for p in prompts.texts for _ in range(g)],
        completions.texts,
        completions.ids,
        completions.mask,
        expanded,
        state,
        raw_prompts=[r[args.prompt_column] for r in expanded],
    )
    return per_func, metrics, rewards.weighted(per_func)


@dataclass
class Advantages:
    advantages: torch.Tensor  # [B * G]
    std_is_zero: torch.Tensor  # [B * G] bool: the row's group had one reward
    group_weights: torch.Tensor | None  # the objective's rollout-time weights (wd1's), or None
    mask: torch.Tensor  # [B * G, L] the completion mask after mask_truncated_completions


def advantages(rewards: torch.Tensor, completions: Completions, args, objective) -> Advantages:
    """Group advantages of the weighted rewards (contiguous groups of ``num_generations``), the objective's
    group weights computed while the groups are contiguous, and the completion mask without the rows that
    never wrote a stop token when ``mask_truncated_completions``."""
    adv, std_is_zero = compute_advantages(
        rewards, args.num_generations, args.scale_rewards, args.advantage_baseline
    )
    mask = completions.mask
    if args.mask_truncated_completions:
        mask = mask * completions.terminated[:, None]
    weights = None if objective.group_weights is None else objective.group_weights(adv, args)
    return Advantages(adv, std_is_zero, weights, mask)


@dataclass
class Canvas:
    ids: torch.Tensor  # [B, P + L] prompt + completion
    attn: torch.Tensor  # [B, P + L]
    generated: torch.Tensor  # [B, P + L] the completion canvas (what the estimators noise)
    scored: torch.Tensor  # [B, P + L] the scored positions
    prompt: torch.Tensor  # [B, P + L] the real prompt tokens (prompt masking)
    commit: torch.Tensor  # [B, P + L] the step each token was committed (-1: prompt, never)


def canvas(prompts: Prompts, completion_ids, mask, commit_step, objective) -> Canvas:
    """Prompt and completion as one canvas; the scored mask is the answer (``mask``), or the whole completion
    canvas for an objective whose released code scores the EOS padding too (``scores_canvas``)."""
    zeros = torch.zeros_like(prompts.attn)
    generated = torch.cat([zeros, torch.ones_like(completion_ids)], 1)
    return Canvas(
        ids=torch.cat([prompts.ids, completion_ids], 1),
        attn=torch.cat([prompts.attn, torch.ones_like(completion_ids)], 1),
        generated=generated,
        scored=generated if objective.scores_canvas else torch.cat([zeros, mask], 1),
        prompt=torch.cat([prompts.attn, torch.zeros_like(completion_ids)], 1),
        commit=torch.cat([torch.full_like(prompts.ids, -1), commit_step], 1),
    )


def plans(c: Canvas, args, generators) -> list[MaskPlan]:
    """One MaskPlan per generator (the trainer: one per inner iteration): the estimator noises the generated
    canvas (and the prompt with ``p_mask_prompt``) and scores ``c.scored``."""
    return [
        make_plan(
            args.estimator,
            c.generated,
            num_samples=args.num_mc_samples,
            prompt_mask=c.prompt,
            p_mask_prompt=args.p_mask_prompt,
            generator=generator,
            score_mask=c.scored,
            commit_step=c.commit,
            num_steps=args.diffusion_steps,
            merge=args.trace_merge,
            block_length=args.block_length,
        )
        for generator in generators
    ]
