"""One rollout phase of the GRPO trainer: the stages of ``align.rollout.stages`` around its engine and its
no-grad estimates::

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

from align.logprob.estimators import MaskPlan
from align.objectives import Objective, reduce_estimate
from align.rollout import stages
from align.rollout.batch import RolloutBatch
from align.rollout.completions import keep_samples
from align.rollout.engine import RolloutEngine
from align.rollout.loop_stop import LoopStop
from align.rollout.rewards import RewardSet
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
        self.samples: list[dict] = []

    def seeded(self, rollout_index: int, stream: int) -> torch.Generator:
        """A generator for one (rollout, process, stream): resumed runs draw exactly what the original drew."""
        return stages.seeded(
            self.args.seed, rollout_index, self.accelerator.process_index, stream, self.accelerator.device
        )

    @torch.no_grad()
    def run(self, rows: list[dict], rollout_index: int, state, metrics) -> RolloutBatch:
        args, g = self.args, self.args.num_generations
        prompts = stages.prompt_batch(self.tokenizer, rows, args, self.accelerator.device)
        out, rollout_s = self._generate(prompts, rollout_index)
        done = stages.cut(out.completion_ids, self.spec, self.tokenizer, out.decoded)
        start = time.perf_counter()
        per_func, reward_metrics, rewards = stages.score(self.rewards, prompts, rows, done, args, state)
        reward_s = time.perf_counter() - start
        for key, value in reward_metrics.items():
            metrics[key].append(value)
        adv = stages.advantages(rewards, done, args, self.objective)
        batch, logprob_s = self._pack(
            prompts.ids,
            prompts.attn,
            done.ids,
            adv.mask,
            adv.advantages,
            adv.group_weights,
            rollout_index,
            out.commit_step,
        )
        seconds = {"rollout": rollout_s, "reward": reward_s, "logprob": logprob_s}
        unit = args.loop_unit
        looping = [completion_loop(t, unit=unit) is not None for t in done.texts]
        unclosed = [
            unclosed_think(t, opened=prompts.texts[i // g].rstrip().endswith("<think>"))
            for i, t in enumerate(done.texts)
        ]
        flags = {
            "loop_ratio": torch.tensor(looping, dtype=torch.float32),
            "unclosed_think_ratio": torch.tensor(unclosed, dtype=torch.float32),
        }
        if getattr(args, "loop_stop_blocks", 0):  # rows cut early for looping (no stop token, budget left)
            early = (
                out.decoded.to(done.terminated.device) < args.max_completion_length
            ) & ~done.terminated.bool()
            flags["loop_stopped_ratio"] = early.float().cpu()
        self._log(metrics, per_func, rewards, adv.std_is_zero, adv.mask, done.terminated, out, seconds, flags)
        self.samples = keep_samples(
            [r for r in rows for _ in range(g)],
            args.prompt_column,
            done.texts,
            per_func,
            rewards,
            adv.advantages,
            self.rewards.names,
            args.num_completions_to_print,
            looping,
        )
        return batch

    def _generate(self, prompts: stages.Prompts, rollout_index: int):
        """(GenerationOutput, seconds): the engine decodes G completions per prompt."""
        args = self.args
        start = time.perf_counter()
        hooks = {} if self.boost is None else {"logits_hook": self.boost}
        if getattr(args, "loop_stop_blocks", 0):
            hooks["stop_check"] = LoopStop(self.spec.stop_token_ids, args.loop_stop_blocks, args.block_length)
        out = self.engine.generate(
            prompts.ids, prompts.attn, self.settings, generator=self.seeded(rollout_index, 0), **hooks
        )
        return out, time.perf_counter() - start

    def _end_of_thinking_boost(self):
        """iLLaDA's end-of-thinking boost for rollouts (``boost_token`` / ``boost`` / ``boost_power``: the illada
        eval protocol's rule), or None. The rollouts are then drawn with the boosted logits; the estimators score
        the model's own ones."""
        from align.errors import UsageError
        from align.sampling.boost import end_of_thinking_boost

        args = self.args
        unwritable = UsageError(
            f"boost_token {args.boost_token!r}: this tokenizer cannot write it (its tokens do not decode back to "
            "it); unset boost_token or set boost 0."
        )
        return end_of_thinking_boost(
            self.tokenizer,
            getattr(args, "boost_token", None),
            args.boost,
            args.boost_power,
            args.max_completion_length,
            unwritable=unwritable,
        )

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
        prompts = stages.Prompts([], prompt_ids, prompt_attn)
        c = stages.canvas(prompts, completion_ids, completion_mask, commit_step, self.objective)
        ids, attn, full_mask = c.ids, c.attn, c.scored
        generators = [self.seeded(rollout_index, 1 + k) for k in range(args.num_iterations)]
        plans = stages.plans(c, args, generators)  # noise the generated canvas, score c.scored
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
        decoded = (
            out.completion_ids.new_tensor([out.completion_ids.numel()])
            if out.decoded is None
            else out.decoded
        )
        m["rollout/decoded_tokens"].append(
            gather(decoded.sum()[None].float()).sum().item()
        )  # what was decoded
        m["rollout/forward_passes"].append(float(out.nfe))
        m["rollout/full_passes"].append(float(out.full_passes))
        m["rollout/tokens_per_s"].append(out.completion_ids.numel() / max(seconds["rollout"], 1e-9))
        for phase, value in seconds.items():
            m[f"time/{phase}_s"].append(value)
