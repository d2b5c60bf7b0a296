"""One rollout phase of the GRPO trainer::

    prompts -> engine.generate (G per prompt) -> completion mask up to the first EOS -> decode -> rewards
    (weighted, None skipped) -> group advantages (and the objective's group weights) -> per inner iteration
    one MaskPlan, with old-policy / reference estimates under no grad -> shuffled ``RolloutBatch``

Groups never straddle processes: each process draws its own prompts and generates all G completions of
each, so advantages are local. The rollout and mask RNGs are seeded from (seed, rollout index, process),
so a resumed run draws what the uninterrupted run drew.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from align.data import encode_prompts, prompt_text
from align.logprob import make_plan
from align.logprob.estimators import MaskPlan
from align.losses import compute_advantages
from align.objectives import Objective, reduce_estimate
from align.rollout.batch import RolloutBatch
from align.rollout.completions import keep_samples
from align.rollout.engine import RolloutEngine
from align.rollout.rewards import RewardSet
from align.sampling import truncate_at_stop
from align.sampling.settings import SamplerSettings
from rewards.loops import completion_loop, unclosed_think


class RolloutPhase:
    """Generates, scores and estimates one phase (module docstring).

    ``passes(model, ids, attn, plan)`` is the trainer's per-pass estimate [P, n, L] (the same function its
    gradient step uses); ``policy()`` yields the policy ready for no-grad passes (gathered under ZeRO-3);
    ``reference()`` yields the reference model (a frozen copy, or the policy with its adapter disabled).
    ``run`` returns the batch and leaves the phase's metrics in ``metrics`` (a list per key) and its logged
    sample in ``samples``.
    """

    def __init__(
        self,
        args,
        objective: Objective,
        engine: RolloutEngine,
        rewards: RewardSet,
        tokenizer,
        spec,
        accelerator,
        *,
        passes: Callable,
        policy: Callable,
        reference: Callable,
    ):
        self.args, self.objective, self.engine, self.rewards = args, objective, engine, rewards
        self.tokenizer, self.spec, self.accelerator = tokenizer, spec, accelerator
        self.boost = self._end_of_thinking_boost()
        self.passes, self.policy, self.reference = passes, policy, reference
        self.settings = SamplerSettings.from_rollout_fields(args)
        self.stop_ids = torch.tensor(spec.stop_token_ids, dtype=torch.long)
        self.samples: list[dict] = []

    def seeded(self, rollout_index: int, stream: int) -> torch.Generator:
        """A generator for one (rollout, process, stream): resumed runs draw exactly what the original drew."""
        seed = hash((self.args.seed, rollout_index, self.accelerator.process_index, stream)) % (2**63)
        return torch.Generator(self.accelerator.device).manual_seed(seed)

    @torch.no_grad()
    def run(self, rows: list[dict], rollout_index: int, state, metrics) -> RolloutBatch:
        args, g = self.args, self.args.num_generations
        prompts = [self._prompt_text(row) for row in rows]
        prompt_ids, prompt_attn, out, rollout_s = self._generate(prompts, rollout_index)
        completion_ids = out.completion_ids
        kept, completion_mask = truncate_at_stop(
            completion_ids, self.spec.stop_token_ids, self.spec.eos_token_id
        )
        terminated = torch.isin(completion_ids, self.stop_ids.to(completion_ids.device)).any(1).long()
        texts = self.tokenizer.batch_decode(kept, skip_special_tokens=True)
        expanded = [r for r in rows for _ in range(g)]
        start = time.perf_counter()
        per_func, reward_metrics = self.rewards.score(
            [p for p in prompts for _ in range(g)],
            texts,
            completion_ids,
            completion_mask,
            expanded,
            state,
            raw_prompts=[r[args.prompt_column] for r in expanded],
        )
        reward_s = time.perf_counter() - start
        for key, value in reward_metrics.items():
            metrics[key].append(value)
        rewards = self.rewards.weighted(per_func)
        advantages, std_is_zero = compute_advantages(rewards, g, args.scale_rewards, args.advantage_baseline)
        if args.mask_truncated_completions:
            completion_mask = completion_mask * terminated[:, None]
        # group weights (wd1's) are computed here, while the groups are contiguous: the buffer is shuffled
        weights = (
            None if self.objective.group_weights is None else self.objective.group_weights(advantages, args)
        )
        batch, logprob_s = self._pack(
            prompt_ids,
            prompt_attn,
            completion_ids,
            completion_mask,
            advantages,
            weights,
            rollout_index,
            out.commit_step,
        )
        seconds = {"rollout": rollout_s, "reward": reward_s, "logprob": logprob_s}
        looping = [completion_loop(t) is not None for t in texts]
        unclosed = [
            unclosed_think(t, opened=prompts[i // g].rstrip().endswith("<think>"))
            for i, t in enumerate(texts)
        ]
        flags = {
            "loop_ratio": torch.tensor(looping, dtype=torch.float32),
            "unclosed_think_ratio": torch.tensor(unclosed, dtype=torch.float32),
        }
        self._log(metrics, per_func, rewards, std_is_zero, completion_mask, terminated, out, seconds, flags)
        self.samples = keep_samples(
            expanded,
            args.prompt_column,
            texts,
            per_func,
            rewards,
            advantages,
            self.rewards.names,
            args.num_completions_to_print,
            looping,
        )
        return batch

    def _prompt_text(self, row: dict) -> str:
        args = self.args
        return prompt_text(
            self.tokenizer,
            row[args.prompt_column],
            system_prompt=args.system_prompt,
            use_chat_template=args.use_chat_template,
        )

    def _generate(self, prompts: list[str], rollout_index: int):
        """(prompt ids [B*G, P], prompt attention, GenerationOutput, seconds): G completions per prompt."""
        args, device = self.args, self.accelerator.device
        enc = encode_prompts(
            self.tokenizer,
            prompts,
            max_length=args.max_prompt_length,
            use_chat_template=args.use_chat_template,
        )
        prompt_ids = enc["input_ids"].repeat_interleave(args.num_generations, 0).to(device)
        prompt_attn = enc["attention_mask"].repeat_interleave(args.num_generations, 0).to(device)
        start = time.perf_counter()
        hooks = {} if self.boost is None else {"logits_hook": self.boost}
        out = self.engine.generate(
            prompt_ids, prompt_attn, self.settings, generator=self.seeded(rollout_index, 0), **hooks
        )
        return prompt_ids, prompt_attn, out, time.perf_counter() - start

    def _end_of_thinking_boost(self):
        """iLLaDA's end-of-thinking boost for rollouts (``boost_token`` / ``boost`` / ``boost_power``: the illada
        eval protocol's rule), or None. The rollouts are then drawn with the boosted logits; the estimators score
        the model's own ones."""
        args = self.args
        if not getattr(args, "boost_token", None) or args.boost == 0.0:
            return None
        from align.errors import UsageError
        from align.eval.boost import EndOfThinkingBoost
        from align.eval.runner import writes

        ids = self.tokenizer.encode(args.boost_token, add_special_tokens=False)
        if not writes(self.tokenizer, ids, args.boost_token):
            raise UsageError(
                f"boost_token {args.boost_token!r}: this tokenizer cannot write it (its tokens do not "
                "decode back to it); unset boost_token or set boost 0."
            )
        return EndOfThinkingBoost(ids, args.boost, args.boost_power, args.max_completion_length)

    def _pack(
        self,
        prompt_ids,
        prompt_attn,
        completion_ids,
        completion_mask,
        advantages,
        group_weights,
        rollout_index,
        commit_step,
    ) -> tuple[RolloutBatch, float]:
        """Sequences, masks, advantages, one MaskPlan per inner iteration and the old-policy / reference
        estimates under those plans, rows shuffled; and the seconds those estimates took."""
        args, device = self.args, self.accelerator.device
        ids = torch.cat([prompt_ids, completion_ids], 1)
        attn = torch.cat([prompt_attn, torch.ones_like(completion_ids)], 1)
        full_mask = torch.cat([torch.zeros_like(prompt_attn), completion_mask], 1)
        prompt_only = torch.cat([prompt_attn, torch.zeros_like(completion_ids)], 1)
        canvas = torch.cat([torch.zeros_like(prompt_attn), torch.ones_like(completion_ids)], 1)
        commit = torch.cat([torch.full_like(prompt_ids, -1), commit_step], 1)  # for the trace estimator
        if self.objective.scores_canvas:  # their released code scores the EOS padding too
            full_mask = canvas
        plans = [  # noise the whole generated canvas, score the answer (up to its first EOS)
            make_plan(
                args.estimator,
                canvas,
                num_samples=args.num_mc_samples,
                prompt_mask=prompt_only,
                p_mask_prompt=args.p_mask_prompt,
                generator=self.seeded(rollout_index, 1 + k),
                score_mask=full_mask,
                commit_step=commit,
                num_steps=args.diffusion_steps,
                merge=args.trace_merge,
                block_length=args.block_length,
            )
            for k in range(args.num_iterations)
        ]
        start = time.perf_counter()
        old, ref = self._fixed_logprobs(ids, attn, plans)
        logprob_s = time.perf_counter() - start
        order = torch.randperm(len(ids), generator=self.seeded(rollout_index, -1), device=device)
        # the objective's divisor of one generation batch per process, summed over processes / processes
        count = self.objective.divisor_count(full_mask, advantages.to(device), plans[0].weights)
        total = self.accelerator.gather(count[None]).sum()
        longest = self.accelerator.gather(full_mask.sum(1).max()[None].float()).max()  # TraceRL-SDAR's L1
        shuffled = lambda t: None if t is None else t.to(device)[order]  # noqa: E731
        batch = RolloutBatch(
            ids=ids[order],
            attn=attn[order],
            mask=full_mask[order],
            advantages=shuffled(advantages),
            masked=torch.stack([p.masked for p in plans])[:, :, order],
            weights=torch.stack([p.weights for p in plans])[:, :, order],
            num_samples=plans[0].num_samples,
            visible=None
            if plans[0].visible is None
            else torch.stack([p.visible for p in plans])[:, :, order],
            old=None if old is None else old[:, order],
            ref=None if ref is None else ref[:, order],
            normalizer=total / self.accelerator.num_processes,
            group_weights=shuffled(group_weights),
            longest=longest,
        )
        return batch, logprob_s

    def _fixed_logprobs(self, ids, attn, plans) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Old-policy (when some steps are off-policy) and reference estimates [iterations, B, T] (a sample-level
        objective's old: per-sample sequence estimates [iterations, B, K]), no grad."""
        args = self.args
        old = ref = None
        if args.gradient_accumulation_steps % (args.steps_per_generation * args.num_iterations) != 0:
            with self.policy() as policy:
                old = torch.stack(
                    [
                        reduce_estimate(self.objective.old_reduce, p, self._by_rows(policy, ids, attn, p))
                        for p in plans
                    ]
                )
        if args.beta != 0.0:
            with self.reference() as reference:
                ref = torch.stack(
                    [reduce_estimate("tokens", p, self._by_rows(reference, ids, attn, p)) for p in plans]
                )
        return old, ref

    def _by_rows(self, model, ids, attn, plan: MaskPlan) -> torch.Tensor:
        """``passes`` over the rollout batch, per_device_train_batch_size rows at a time: the no-grad passes'
        transient memory (logits of the scored window) is that of one micro-batch, not of the whole
        generation batch. Every process runs the same number of forwards (ZeRO-3)."""
        size = self.args.per_device_train_batch_size
        parts = [
            self.passes(model, ids[i : i + size], attn[i : i + size], plan.rows(slice(i, i + size)))
            for i in range(0, ids.shape[0], size)
        ]
        return torch.cat(parts, 1)

    def _log(
        self, m, per_func, rewards, std_is_zero, mask, terminated, out, seconds: dict, flags: dict
    ) -> None:
        from trl.trainer.utils import nanstd

        gather = lambda t: self.accelerator.gather(t.to(self.accelerator.device))  # noqa: E731
        all_rewards = gather(rewards)
        lengths = gather(mask.sum(1).float())
        term = gather(terminated.bool())
        m["reward"].append(all_rewards.mean().item())
        m["reward_std"].append(all_rewards.view(-1, self.args.num_generations).std(1).mean().item())
        m["frac_reward_zero_std"].append(gather(std_is_zero.float()).mean().item())
        for j, name in enumerate(self.rewards.names):
            col = gather(per_func[:, j])
            m[f"rewards/{name}/mean"].append(torch.nanmean(col).item())
            m[f"rewards/{name}/std"].append(nanstd(col).item())
        m["num_tokens"].append(lengths.sum().item())
        m["completions/mean_length"].append(lengths.mean().item())
        m["completions/min_length"].append(lengths.min().item())
        m["completions/max_length"].append(lengths.max().item())
        m["completions/clipped_ratio"].append(1.0 - term.float().mean().item())
        done = lengths[term]
        m["completions/mean_terminated_length"].append(done.mean().item() if len(done) else 0.0)
        for key, flag in flags.items():  # rewards/loops.py's definitions, over every process's completions
            m[f"completions/{key}"].append(gather(flag).mean().item())
        m["rollout/forward_passes"].append(float(out.nfe))
        m["rollout/full_passes"].append(float(out.full_passes))
        m["rollout/tokens_per_s"].append(out.completion_ids.numel() / max(seconds["rollout"], 1e-9))
        for phase, value in seconds.items():
            m[f"time/{phase}_s"].append(value)
