"""GRPO for masked diffusion LMs, on ``transformers.Trainer`` + accelerate (DeepSpeed ZeRO-2/3, DDP).

One rollout phase serves ``steps_per_generation x num_iterations`` micro-steps (TRL's schedule)::

    prompts -> align.sampling.generate (G per prompt) -> completion mask up to the first EOS -> decode
    -> rewards (weighted, None skipped) -> group advantages -> per inner iteration one MaskPlan, with
    old-policy / reference estimates under no grad -> shuffled buffer of steps_per_generation micro-batches

and each micro-step estimates the policy's per-token log-probs with grad under that iteration's plan
(Decision 5: policy, old policy and reference share masks) and applies ``align.losses.policy_loss``.

Groups never straddle processes: each process draws its own prompts and generates all G completions of
each, so advantages are local; ``scale_rewards: batch`` therefore uses the per-process batch std.
The rollout and mask RNGs are seeded from (seed, rollout index, process), so a resumed run draws what
the uninterrupted run drew; a checkpoint taken mid-buffer stores the buffer.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import time
from collections import defaultdict
from itertools import islice

import torch
from torch.utils.data import DataLoader
from transformers import Trainer
from transformers.utils import is_rich_available
from trl.models.utils import prepare_deepspeed, unwrap_model_for_generation
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import nanstd, print_prompt_completions_sample

import rewards as reward_registry
from align.callbacks import WallClock
from align.checkpoints import SafeCheckpointMixin, resolve_resume
from align.config import GRPOConfig
from align.data import encode_prompts, prompt_text, require_columns
from align.errors import RunError
from align.logprob import combine, make_plan, pass_logprobs, sample_sums
from align.logprob.estimators import MaskPlan
from align.losses import (
    CANVAS_LOSSES,
    FULL_VOCAB_LOSSES,
    bgpo_loss,
    compute_advantages,
    espo_loss,
    justgrpo_loss,
    nonzero_advantage_rows,
    policy_loss,
    spg_loss,
    stabledrl_loss,
    tracerl_loss,
    wd1_weights,
)
from align.mc_backward import ChunkedBackwardMixin
from align.models import family_spec
from align.models.loading import quiet_checkpointing_renames
from align.sampling import describe_mode, generate_in_chunks, truncate_at_stop
from align.watchdog import RewardWatchdog

logger = logging.getLogger(__name__)

BUFFER_FILE = "rollout_buffer_rank{rank}.pt"
_RESERVED = ("prompts", "completions", "completion_ids", "trainer_state")  # reward arguments, not columns


class RolloutBatchSampler:
    """Prompt indices per rollout for one process, each batch repeated ``repeats`` times in a row.

    Every ``repeats`` consecutive batches are one rollout phase (steps_per_generation x num_iterations
    micro-steps); the permutation depends only on (seed, epoch), so all processes agree on it and
    take disjoint slices.
    """

    def __init__(self, num_rows: int, prompts_per_rollout: int, repeats: int, *, num_processes: int,
                 process_index: int, seed: int):  # fmt: skip
        self.num_rows, self.per, self.repeats = num_rows, prompts_per_rollout, repeats
        self.num_processes, self.process_index, self.seed = num_processes, process_index, seed
        self.epoch = 0
        self.rollouts = num_rows // (prompts_per_rollout * num_processes)
        if self.rollouts == 0:
            raise ValueError(
                f"the dataset has {num_rows} prompts but one rollout phase needs {prompts_per_rollout} per "
                f"process x {num_processes} processes; use more data or a smaller generation_batch_size."
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rollouts * self.repeats

    def __iter__(self):
        order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for r in range(self.rollouts):
            start = (r * self.num_processes + self.process_index) * self.per
            batch = order[start : start + self.per].tolist()
            for _ in range(self.repeats):
                yield batch


class _RolloutLoader(DataLoader):
    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def _rows(batch: list[dict]) -> list[dict]:
    return batch


class DiffusionGRPOTrainer(SafeCheckpointMixin, ChunkedBackwardMixin, Trainer):
    """GRPO trainer whose policy is a bidirectional denoiser (see the module docstring)."""

    loss_is_scaled_for_ga = True  # compute_loss scales for gradient accumulation itself (as TRL does)

    def __init__(self, model, args: GRPOConfig, train_dataset, processing_class, reward_funcs=None,
                 ref_model=None, callbacks=None):  # fmt: skip
        args.remove_unused_columns = False
        require_columns(train_dataset.column_names, {"prompt_column": args.prompt_column})
        specs = reward_funcs if reward_funcs is not None else args.reward_funcs
        self.reward_funcs = [reward_registry.get(s) for s in specs]
        self.reward_names = [reward_registry.name_of(s) for s in specs]
        for fn in self.reward_funcs:  # e.g. math_accuracy's grading workers: started before the first rollout
            if callable(getattr(fn, "warm_up", None)):
                fn.warm_up()
        weights = args.reward_weights or [1.0] * len(self.reward_funcs)
        if len(weights) != len(self.reward_funcs):
            raise ValueError(f"{len(weights)} reward_weights for {len(self.reward_funcs)} reward functions.")
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)
        self.spec = family_spec(model, processing_class, args.mask_token_id)
        self.stop_ids = torch.tensor(self.spec.stop_token_ids, dtype=torch.long)
        self._eval_tasks = load_eval_tasks(args)
        super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                         eval_dataset={t.name: rows for t, rows in self._eval_tasks} or None, callbacks=callbacks)  # fmt: skip
        self.use_peft = hasattr(self.model, "disable_adapter")
        self.ref_model = None
        if args.beta != 0.0 and not self.use_peft:
            if ref_model is None:
                raise ValueError(
                    "beta != 0 under full fine-tuning needs ref_model (a frozen copy of the policy)."
                )
            ref_model.requires_grad_(False).eval()
            if self.is_deepspeed_enabled:
                self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
            else:
                self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
            if args.sync_ref_model:
                self.add_callback(
                    SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator)
                )
        self._metrics: dict[str, list[float]] = defaultdict(list)
        self._samples: list[dict] = []
        self._warned_all_none: set[str] = set()
        self._buffer: dict | None = None
        self._resume_dir: str | None = None
        self._last_global_step = -1
        self._rollout_time_s = 0.0
        if self.accelerator.is_main_process:
            logger.info("rollouts: %s", describe_mode(args.max_completion_length, args.diffusion_steps,
                        args.block_length, args.threshold, args.cache, args.cache_refresh))  # fmt: skip

    @contextlib.contextmanager
    def _unwrapped(self):
        """The policy gathered for generation (ZeRO-3) or unwrapped (DDP), without the deprecation warnings
        TRL's helper would raise at every rollout (``quiet_checkpointing_renames``)."""
        with quiet_checkpointing_renames():
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
                yield unwrapped

    @property
    def _per_phase(self) -> int:
        """Micro-steps served by one rollout phase."""
        return self.args.steps_per_generation * self.args.num_iterations

    # ---- data: one dataloader item = one micro-step's prompts --------------------------------------
    def get_train_dataloader(self) -> DataLoader:
        args = self.args
        sampler = RolloutBatchSampler(
            len(self.train_dataset),
            args.generation_batch_size // args.num_generations,
            self._per_phase,
            num_processes=self.accelerator.num_processes,
            process_index=self.accelerator.process_index,
            seed=args.seed,
        )
        return _RolloutLoader(self.train_dataset, batch_sampler=sampler, collate_fn=_rows)

    def floating_point_ops(self, inputs) -> int:
        return 0

    # ---- the step ----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, **kwargs):
        """``resume_from_checkpoint``: a checkpoint folder, or True / "true" for the newest complete one in
        output_dir (``align.checkpoints``)."""
        log = logger.warning if self.accelerator.is_main_process else None
        self._resume_dir = resolve_resume(self.args.output_dir, resume_from_checkpoint, log)
        if self._resume_dir and self.accelerator.is_main_process:
            self._drop_completions_after(self._resume_dir)
        return super().train(resume_from_checkpoint=self._resume_dir, **kwargs)

    def _drop_completions_after(self, checkpoint: str) -> None:
        """completions.jsonl rows logged after the checkpoint are logged again by the resumed run: drop them."""
        path = os.path.join(self.args.output_dir, "completions.jsonl")
        state = os.path.join(checkpoint, "trainer_state.json")
        if not (os.path.exists(path) and os.path.exists(state)):
            return
        with open(state) as f:
            step = json.load(f)["global_step"]
        with open(path) as f:
            kept = [line for line in f if line.strip() and _complete_row_at_or_before(line, step)]
        with open(path, "w") as f:
            f.writelines(kept)

    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        self._rollout_time_s = 0.0
        if self.args.mc_backward == "chunked":
            loss = self._chunked_training_step(model, inputs)
        else:
            loss = super().training_step(model, inputs, num_items_in_batch)
        self._metrics["time/update_s"].append(time.perf_counter() - start - self._rollout_time_s)
        return loss

    def _chunked_training_step(self, model, rows) -> torch.Tensor:
        """One micro-step with ``mc_backward: chunked`` (``align.mc_backward``). On-policy without KL (and
        not wd1) the loss's gradient does not depend on the estimate's value (every ratio is exactly 1), so
        the no-grad estimate is skipped."""
        self._train_mode(model)
        inputs = self._prepare_inputs(rows)
        ids = inputs["ids"]
        value = None
        if inputs["old"] is None and self.args.beta == 0.0 and self.args.loss_type not in (
            "wd1", "wd1_mean", "spg", "stabledrl"
        ):
            value = torch.zeros(inputs["plan"].masked.shape, dtype=torch.float32, device=ids.device)
        return self._backward_in_chunks(
            model,
            ids,
            inputs["attn"],
            inputs["plan"],
            lambda passes: self._policy_loss(passes, inputs),
            value,
        )

    def _micro_index(self) -> int:
        if self.state.global_step != self._last_global_step:
            self._last_global_step, self._accum = self.state.global_step, 0
        index = self.state.global_step * self.args.gradient_accumulation_steps + self._accum
        self._accum += 1
        return index

    def _prepare_inputs(self, rows: list[dict]) -> dict:
        """Rollout at the start of each phase; then the micro-batch of this step from the buffer."""
        args, per_phase = self.args, self._per_phase
        micro = self._micro_index()
        if micro % per_phase == 0:
            start = time.perf_counter()
            self._buffer = self._rollout(rows, rollout_index=micro // per_phase)
            self._rollout_time_s = time.perf_counter() - start
        elif self._buffer is None:
            self._buffer = self._load_buffer(micro // per_phase)
        iteration = (micro % per_phase) // args.steps_per_generation
        part = micro % args.steps_per_generation
        return self._micro_batch(self._buffer, part, iteration)

    def _seeded(self, rollout_index: int, stream: int) -> torch.Generator:
        """A generator for one (rollout, process, stream): resumed runs draw exactly what the original drew."""
        seed = hash((self.args.seed, rollout_index, self.accelerator.process_index, stream)) % (2**63)
        return torch.Generator(self.accelerator.device).manual_seed(seed)

    @torch.no_grad()
    def _rollout(self, rows: list[dict], rollout_index: int) -> dict:
        """Generate, score and estimate the fixed (old / reference) log-probs of one rollout phase."""
        g = self.args.num_generations
        prompts = [self._prompt_text(row) for row in rows]
        prompt_ids, prompt_attn, out, rollout_s = self._generate(prompts, rollout_index)
        completion_ids = out.completion_ids
        kept, completion_mask = truncate_at_stop(
            completion_ids, self.spec.stop_token_ids, self.spec.eos_token_id
        )
        terminated = torch.isin(completion_ids, self.stop_ids.to(completion_ids.device)).any(1).long()
        texts = self.processing_class.batch_decode(kept, skip_special_tokens=True)
        expanded = [r for r in rows for _ in range(g)]
        start = time.perf_counter()
        per_func = self._score(
            [p for p in prompts for _ in range(g)], texts, completion_ids, completion_mask, expanded
        )
        reward_s = time.perf_counter() - start
        rewards = (per_func * self.reward_weights).nansum(dim=1)
        advantages, std_is_zero = compute_advantages(rewards, g, self.args.scale_rewards,
                                                     self.args.advantage_baseline)  # fmt: skip
        if self.args.mask_truncated_completions:
            completion_mask = completion_mask * terminated[:, None]
        # wd1 weighs each completion against its own group: computed here, while the groups are contiguous
        # (the buffer is shuffled), and carried in the advantages' place
        wd1 = self.args.loss_type in ("wd1", "wd1_mean")
        signal = wd1_weights(advantages, g, self.args.wd1_psi) if wd1 else advantages
        batch = self._pack(
            prompt_ids, prompt_attn, completion_ids, completion_mask, signal, rollout_index, out.commit_step
        )
        self._log_rollout(per_func, rewards, std_is_zero, completion_mask, terminated, out,
                          {"rollout": rollout_s, "reward": reward_s, "logprob": batch.pop("logprob_s")})  # fmt: skip
        self._keep_samples(expanded, texts, per_func, rewards, advantages)
        return batch

    def _generate(self, prompts: list[str], rollout_index: int):
        """(prompt ids [B*G, P], prompt attention, GenerationOutput, seconds): G completions per prompt."""
        args, device = self.args, self.accelerator.device
        enc = self._tokenize(prompts)
        prompt_ids = enc["input_ids"].repeat_interleave(args.num_generations, 0).to(device)
        prompt_attn = enc["attention_mask"].repeat_interleave(args.num_generations, 0).to(device)
        start = time.perf_counter()
        with self._unwrapped() as unwrapped:
            out = generate_in_chunks(
                unwrapped, prompt_ids, prompt_attn, rows_per_call=args.rollout_batch_size,
                gen_length=args.max_completion_length, steps=args.diffusion_steps, block_length=args.block_length,
                temperature=args.temperature, remasking=args.remasking, cfg_scale=args.cfg_scale,
                threshold=args.threshold, cache=args.cache, cache_refresh=args.cache_refresh, spec=self.spec,
                generator=self._seeded(rollout_index, 0),
            )  # fmt: skip
        return prompt_ids, prompt_attn, out, time.perf_counter() - start

    def _pack(
        self, prompt_ids, prompt_attn, completion_ids, completion_mask, advantages, rollout_index, commit_step
    ) -> dict:
        """The shuffled rollout buffer: sequences, masks, advantages, one MaskPlan per inner iteration and
        the old-policy / reference estimates under those plans."""
        args, device = self.args, self.accelerator.device
        ids = torch.cat([prompt_ids, completion_ids], 1)
        attn = torch.cat([prompt_attn, torch.ones_like(completion_ids)], 1)
        full_mask = torch.cat([torch.zeros_like(prompt_attn), completion_mask], 1)
        prompt_only = torch.cat([prompt_attn, torch.zeros_like(completion_ids)], 1)
        canvas = torch.cat([torch.zeros_like(prompt_attn), torch.ones_like(completion_ids)], 1)
        commit = torch.cat([torch.full_like(prompt_ids, -1), commit_step], 1)  # for the trace estimator
        if args.loss_type in CANVAS_LOSSES:  # their released code scores the EOS padding too
            full_mask = canvas
        plans = [  # noise the whole generated canvas, score the answer (up to its first EOS)
            make_plan(args.estimator, canvas, num_samples=args.num_mc_samples, prompt_mask=prompt_only,
                      p_mask_prompt=args.p_mask_prompt, generator=self._seeded(rollout_index, 1 + k),
                      score_mask=full_mask, commit_step=commit, num_steps=args.diffusion_steps,
                      merge=args.trace_merge, block_length=args.block_length)
            for k in range(args.num_iterations)
        ]  # fmt: skip
        start = time.perf_counter()
        old, ref = self._fixed_logprobs(ids, attn, plans)
        logprob_s = time.perf_counter() - start
        order = torch.randperm(len(ids), generator=self._seeded(rollout_index, -1), device=device)
        # the divisor of one generation batch per process: tokens (dapo), passes with a target (tracerl) or
        # rows with a nonzero advantage (justgrpo), summed over processes / processes
        if args.loss_type == "tracerl":
            count = (plans[0].weights != 0).any(-1).sum().float()
        elif args.loss_type == "justgrpo":
            count = nonzero_advantage_rows(advantages.to(device))
        else:
            count = full_mask.sum().float()
        token_count = self.accelerator.gather(count[None]).sum()
        return {
            "ids": ids[order], "attn": attn[order], "mask": full_mask[order], "advantages": advantages.to(device)[order],
            "masked": torch.stack([p.masked for p in plans])[:, :, order],
            "weights": torch.stack([p.weights for p in plans])[:, :, order],
            "num_samples": plans[0].num_samples,
            "old": None if old is None else old[:, order], "ref": None if ref is None else ref[:, order],
            "normalizer": token_count / self.accelerator.num_processes, "logprob_s": logprob_s,
        }  # fmt: skip

    def _prompt_text(self, row: dict) -> str:
        args = self.args
        return prompt_text(self.processing_class, row[args.prompt_column], system_prompt=args.system_prompt,
                           use_chat_template=args.use_chat_template)  # fmt: skip

    def _tokenize(self, prompts: list[str]) -> dict:
        return encode_prompts(self.processing_class, prompts, max_length=self.args.max_prompt_length,
                              use_chat_template=self.args.use_chat_template)  # fmt: skip

    def _score(self, prompts, texts, completion_ids, completion_mask, rows) -> torch.Tensor:
        """[N, F] rewards per function (NaN where a function returned None), weighted later."""
        columns = {k: [r[k] for r in rows] for k in rows[0] if k not in _RESERVED}
        ids = [c[m.bool()].tolist() for c, m in zip(completion_ids, completion_mask)]
        out = torch.full((len(texts), len(self.reward_funcs)), float("nan"))
        for j, (fn, name) in enumerate(zip(self.reward_funcs, self.reward_names)):
            with RewardWatchdog(fn, name, prompts, texts, ids, columns, self.state, self.args.reward_timeout_s):
                values = _call_reward(fn, name, prompts, texts, ids, columns, self.state)
            out[:, j] = torch.tensor([math.nan if v is None else float(v) for v in values])
            for key, value in (getattr(fn, "last_metrics", None) or {}).items():  # e.g. grading timeouts
                self._metrics[f"rewards/{name}/{key}"].append(float(value))
            if all(v is None for v in values) and name not in self._warned_all_none:
                self._warned_all_none.add(name)
                logger.warning("reward function %r returned None for every completion of a batch: it gives this "
                               "batch no signal (check its dataset columns); warning once.", name)  # fmt: skip
        return out

    def _fixed_logprobs(self, ids, attn, plans) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Old-policy (when some steps are off-policy) and reference estimates [iterations, B, T] (bgpo's old:
        per-sample sequence estimates [iterations, B, K]), no grad."""
        args = self.args
        old = ref = None
        if args.gradient_accumulation_steps % self._per_phase != 0:
            with self._unwrapped() as unwrapped:
                reduce = sample_sums if args.loss_type == "bgpo" else combine
                old = torch.stack([reduce(p, self._passes_by_rows(unwrapped, ids, attn, p)) for p in plans])
        if args.beta != 0.0:
            if self.ref_model is not None:
                ref = torch.stack(
                    [combine(p, self._passes_by_rows(self.ref_model, ids, attn, p)) for p in plans]
                )
            else:
                with self._unwrapped() as unwrapped:
                    with unwrapped.disable_adapter():
                        ref = torch.stack(
                            [combine(p, self._passes_by_rows(unwrapped, ids, attn, p)) for p in plans]
                        )
        return old, ref

    def _passes_by_rows(self, model, ids, attn, plan: MaskPlan) -> torch.Tensor:
        """``_passes`` over the rollout batch, per_device_train_batch_size rows at a time: the no-grad
        passes' transient memory (logits of the scored window) is that of one micro-batch, not of the
        whole generation batch. Every process runs the same number of forwards (ZeRO-3)."""
        size = self.args.per_device_train_batch_size
        parts = [
            self._passes(model, ids[i : i + size], attn[i : i + size],
                         MaskPlan(plan.masked[:, i : i + size], plan.weights[:, i : i + size], plan.num_samples))
            for i in range(0, ids.shape[0], size)
        ]  # fmt: skip
        return torch.cat(parts, 1)

    def _passes(self, model, ids, attn, plan: MaskPlan) -> torch.Tensor:
        # trace replays the sampler, which never emits the mask token: its probability is renormalised away,
        # except for the losses whose released code softmaxes over the whole vocabulary
        replay = self.args.estimator == "trace" and self.args.loss_type not in FULL_VOCAB_LOSSES
        exclude = [self.spec.mask_token_id] if replay else []
        return pass_logprobs(model, ids, plan, mask_token_id=self.spec.mask_token_id, attention_mask=attn,
                              spec=self.spec, chunk_size=self.args.mc_chunk_size, exclude_ids=exclude)  # fmt: skip

    def _micro_batch(self, buffer: dict, part: int, iteration: int) -> dict:
        n = buffer["ids"].shape[0] // self.args.steps_per_generation
        rows = slice(part * n, (part + 1) * n)
        pick = lambda t: None if t is None else t[iteration][rows]  # noqa: E731
        return {
            "ids": buffer["ids"][rows], "attn": buffer["attn"][rows], "mask": buffer["mask"][rows],
            "advantages": buffer["advantages"][rows],
            "plan": MaskPlan(buffer["masked"][iteration][:, rows], buffer["weights"][iteration][:, rows],
                             buffer["num_samples"]),
            "old": pick(buffer["old"]), "ref": pick(buffer["ref"]), "normalizer": buffer["normalizer"],
        }  # fmt: skip

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Policy loss of one micro-batch, scaled for gradient accumulation as TRL's GRPOTrainer does: dapo
        divides by the completion tokens of one accumulation window (the generation batch's count per process
        x GA / steps_per_generation); the other types divide their per-micro-batch loss by GA."""
        return self._policy_loss(self._passes(model, inputs["ids"], inputs["attn"], inputs["plan"]), inputs)

    def _policy_loss(self, passes: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The loss of per-pass log-probabilities [P, B, T] under the micro-batch's plan."""
        args, plan = self.args, inputs["plan"]
        accumulation = self.current_gradient_accumulation_steps
        if args.loss_type == "bgpo":
            loss, metrics = bgpo_loss(sample_sums(plan, passes), inputs["old"], inputs["advantages"],
                                      inputs["mask"].sum(-1), canvas_length=args.max_completion_length,
                                      epsilon=args.epsilon, epsilon_high=args.epsilon_high,
                                      dual_clip=args.bgpo_dual_clip)  # fmt: skip
            return self._logged(loss, metrics) / accumulation
        if args.loss_type == "spg":
            loss, metrics = spg_loss(passes, plan.weights != 0, inputs["advantages"], inputs["mask"],
                                     beta=args.spg_beta, mix=args.spg_mix)  # fmt: skip
            return self._logged(loss, metrics) / accumulation
        if args.loss_type == "stabledrl":
            old = None if inputs["old"] is None else inputs["old"].sum(-1)  # the rollout policy's lower bound
            loss, metrics = stabledrl_loss(passes, plan.weights != 0, old, inputs["advantages"], inputs["mask"],
                                           beta=args.spg_beta, mix=args.spg_mix,
                                           max_weight=args.stabledrl_max_weight)  # fmt: skip
            return self._logged(loss, metrics) / accumulation
        logps = combine(plan, passes)
        window = inputs["normalizer"] * accumulation / args.steps_per_generation  # per process, one optimizer step
        if args.loss_type == "justgrpo":  # each generation batch by its own count, gradients summed
            loss, metrics = justgrpo_loss(logps, inputs["old"], inputs["advantages"], inputs["mask"],
                                          gen_length=args.max_completion_length, valid_rows=inputs["normalizer"],
                                          epsilon=args.epsilon, epsilon_high=args.epsilon_high)  # fmt: skip
            return self._logged(loss, metrics)
        if args.loss_type == "tracerl":
            loss, metrics = tracerl_loss(logps, inputs["old"], inputs["advantages"], plan.weights != 0,
                                         passes=window, epsilon=args.epsilon, epsilon_high=args.epsilon_high,
                                         kl_beta=args.tracerl_beta)  # fmt: skip
            return self._logged(loss, metrics)
        if args.loss_type == "espo":
            loss, metrics = espo_loss(logps, inputs["old"], inputs["ref"], inputs["advantages"],
                                      canvas_length=args.max_completion_length, beta=args.beta,
                                      epsilon=args.epsilon, epsilon_high=args.epsilon_high)  # fmt: skip
            return self._logged(loss, metrics) / accumulation
        loss, metrics = policy_loss(
            logps, inputs["old"], inputs["ref"], inputs["advantages"], inputs["mask"],
            loss_type=args.loss_type, beta=args.beta, epsilon=args.epsilon, epsilon_high=args.epsilon_high,
            delta=args.delta, importance_sampling_level=args.importance_sampling_level,
            kl_estimator=args.kl_estimator, max_completion_length=args.max_completion_length,
            normalizer=window, num_generations=args.num_generations, wd1_psi=args.wd1_psi,
            group_weights=inputs["advantages"] if args.loss_type in ("wd1", "wd1_mean") else None,
        )  # fmt: skip
        self._logged(loss, metrics)
        return loss if args.loss_type == "dapo" else loss / accumulation

    def _logged(self, loss: torch.Tensor, metrics: dict) -> torch.Tensor:
        for key, value in metrics.items():
            self._metrics[key].append(self.accelerator.gather(value.detach().float()[None]).mean().item())
        return loss

    # ---- evaluation during training (the eval runner on held-out tasks) ----------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Greedy-decode every eval task with the current policy (processes share the questions) and score
        it; returns and logs ``{prefix}_<task>/<metric>`` (loggers show ``eval/<task>/<metric>``)."""
        from accelerate.utils import broadcast_object_list

        from align.eval.runner import DiffusionSource, evaluate_task

        source = DiffusionSource(
            self.model, self.processing_class, self.spec, state=self.accelerator.state,
            batch_size=self.args.per_device_eval_batch_size, seed=self.args.seed,
            model_context=self._unwrapped,
        )  # fmt: skip
        protocol, metrics = eval_protocol(self.args), {}
        was_training, started = self.model.training, time.monotonic()
        self.model.eval()
        try:
            for task, rows in self._eval_tasks:
                scores, _ = evaluate_task(source, task, rows, protocol, progress=True)  # a bar on the main process
                # n (questions scored) stays: align report draws each held-out point's interval from it
                metrics.update({f"{metric_key_prefix}_{task.name}/{k}": v for k, v in scores.items()
                                if k != "num_samples"})  # fmt: skip
        finally:
            self.model.train(was_training)
            for callback in self.callback_handler.callbacks:  # training time excludes evaluation
                if isinstance(callback, WallClock):
                    callback.exclude(time.monotonic() - started)
        if self.accelerator.num_processes > 1:  # only the main process scored
            metrics = broadcast_object_list([metrics])[0]
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ---- metrics, samples, checkpoints -------------------------------------------------------------
    def _log_rollout(self, per_func, rewards, std_is_zero, mask, terminated, out, seconds: dict) -> None:
        gather = lambda t: self.accelerator.gather(t.to(self.accelerator.device))  # noqa: E731
        all_rewards = gather(rewards)
        lengths = gather(mask.sum(1).float())
        term = gather(terminated.bool())
        m = self._metrics
        m["reward"].append(all_rewards.mean().item())
        m["reward_std"].append(all_rewards.view(-1, self.args.num_generations).std(1).mean().item())
        m["frac_reward_zero_std"].append(gather(std_is_zero.float()).mean().item())
        for j, name in enumerate(self.reward_names):
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
        m["rollout/forward_passes"].append(float(out.nfe))
        m["rollout/full_passes"].append(float(out.full_passes))
        m["rollout/tokens_per_s"].append(out.completion_ids.numel() / max(seconds["rollout"], 1e-9))
        for phase, value in seconds.items():
            m[f"time/{phase}_s"].append(value)

    def _keep_samples(self, rows, texts, per_func, rewards, advantages) -> None:
        keep = self.args.num_completions_to_print
        self._samples = [
            {
                "prompt": str(r[self.args.prompt_column]), "completion": t, "reward": float(rw),
                "advantage": float(a), **{n: _num(v) for n, v in zip(self.reward_names, pf.tolist())},
            }
            for r, t, pf, rw, a in islice(zip(rows, texts, per_func, rewards, advantages), keep)
        ]  # fmt: skip

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log, not the final summary
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._metrics.items() if v}}
            self._metrics.clear()
            if self.args.log_completions and self._samples and self.accelerator.is_main_process:
                self._log_completions(self._samples)
        super().log(logs, start_time)

    def _log_completions(self, samples: list[dict]) -> None:
        """The rollout sample as TRL shows it: ``completions.jsonl``, a console table (rich), a wandb table
        and a TensorBoard text table."""
        step = self.state.global_step
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "completions.jsonl"), "a") as f:
            f.writelines(json.dumps({"step": step, **sample}) + "\n" for sample in samples)
        rewards = {name: [s[name] for s in samples] for name in self.reward_names}
        prompts, texts = [s["prompt"] for s in samples], [s["completion"] for s in samples]
        if is_rich_available():
            print_prompt_completions_sample(prompts, texts, rewards, [s["advantage"] for s in samples], step)
        report_to = self.args.report_to or []
        if "wandb" in report_to:
            import wandb

            if wandb.run is not None:
                import pandas as pd

                wandb.log(
                    {
                        "completions": wandb.Table(
                            dataframe=pd.DataFrame([{"step": step, **s} for s in samples])
                        )
                    }
                )
        writer = next((getattr(c, "tb_writer", None) for c in self.callback_handler.callbacks
                       if type(c).__name__ == "TensorBoardCallback"), None)  # fmt: skip
        if writer is not None:
            writer.add_text("completions", completions_markdown(samples, self.reward_names), step)

    def _save_extra(self, folder: str) -> None:
        """A checkpoint in the middle of a rollout phase keeps this process's rollout buffer."""
        micro = self.state.global_step * self.args.gradient_accumulation_steps
        if micro % self._per_phase and self._buffer is not None:
            torch.save({"phase": micro // self._per_phase, "buffer": self._buffer, "samples": self._samples},
                       os.path.join(folder, BUFFER_FILE.format(rank=self.accelerator.process_index)))  # fmt: skip

    def _load_buffer(self, phase: int) -> dict:
        path = os.path.join(self._resume_dir or "", BUFFER_FILE.format(rank=self.accelerator.process_index))
        if not self._resume_dir or not os.path.exists(path):
            raise RunError(
                f"resuming in the middle of rollout phase {phase} needs {path}, which the checkpoint lacks; "
                "resume from a checkpoint written by this trainer."
            )
        saved = torch.load(path, map_location=self.accelerator.device, weights_only=False)
        if saved["phase"] != phase:
            raise RunError(f"{path} holds rollout phase {saved['phase']}, but phase {phase} is resuming.")
        self._samples = saved.get("samples", [])  # the phase's rollout sample, logged at its remaining steps
        return saved["buffer"]


def load_eval_tasks(args: GRPOConfig) -> list:
    """[(Task, rows)] of ``eval_tasks``, read (and their columns checked) before training starts."""
    from align.eval.tasks import load_tasks

    return (
        load_tasks(",".join(args.eval_tasks), args.eval_data_dir, args.eval_limit) if args.eval_tasks else []
    )


def eval_protocol(args: GRPOConfig):
    """The named ``eval_protocol``, else the rollouts' own prompt format and sampler, decoded greedily."""
    from align.eval.tasks import PROTOCOLS, Protocol

    if args.eval_protocol:
        return PROTOCOLS[args.eval_protocol]
    return Protocol(
        "rollout", system_prompt=args.system_prompt, instruction=None, use_chat_template=args.use_chat_template,
        gen_length=args.max_completion_length, block_length=args.block_length, steps=args.diffusion_steps,
        temperature=0.0, remasking=args.remasking, threshold=args.threshold, cache=args.cache,
        cache_refresh=args.cache_refresh,
        cfg_scale=args.cfg_scale, max_prompt_length=args.max_prompt_length,
    )  # fmt: skip


class RewardError(RunError):
    """A reward function raised or returned the wrong number of values (the message names it and the sample)."""


def _call_reward(fn, name, prompts, texts, ids, columns, state) -> list:
    """Call one reward function; a raise or a wrong-length result names the function and the sample."""
    try:
        values = fn(prompts=prompts, completions=texts, completion_ids=ids, trainer_state=state, **columns)
    except Exception as exc:
        if isinstance(exc, TypeError) and "unexpected keyword argument" in str(exc):
            raise RewardError(
                f"reward function {name!r} raised TypeError: {exc}. The trainer passes prompts, completions, "
                "completion_ids, trainer_state and every dataset column as keyword arguments: add **kwargs to "
                f"its signature, e.g. def {name}(prompts, completions, **kwargs)."
            ) from exc
        culprit = _first_failing(fn, prompts, texts, ids, columns, state)
        where = (
            ""
            if culprit is None
            else f" on sample {culprit} (prompt {prompts[culprit][-200:]!r}, completion {texts[culprit][:200]!r})"
        )
        raise RewardError(f"reward function {name!r} raised {type(exc).__name__}: {exc}{where}") from exc
    values = list(values) if values is not None else None
    if values is None or len(values) != len(texts):
        got = "None" if values is None else f"{len(values)} values"
        raise RewardError(f"reward function {name!r} returned {got} for {len(texts)} completions; return one "
                           "float (or None) per completion.")  # fmt: skip
    for i, value in enumerate(values):
        if value is not None and not _is_number(value):
            raise RewardError(
                f"reward function {name!r} returned {type(value).__name__} {value!r:.60} for completion {i}; a reward "
                "is a number (int or float) or None per completion."
            )
    return values


def _is_number(value) -> bool:
    """An int / float / bool, or a 0-d numpy / torch number (whose ``item()`` is one); never a string."""
    if isinstance(value, numbers.Real):
        return True
    return getattr(value, "ndim", None) == 0 and isinstance(value.item(), numbers.Real)


def _first_failing(fn, prompts, texts, ids, columns, state) -> int | None:
    for i in range(len(texts)):
        try:
            fn(prompts=prompts[i : i + 1], completions=texts[i : i + 1], completion_ids=ids[i : i + 1],
               trainer_state=state, **{k: v[i : i + 1] for k, v in columns.items()})  # fmt: skip
        except Exception:
            return i
    return None


def _complete_row_at_or_before(line: str, step: int) -> bool:
    try:
        return json.loads(line)["step"] <= step
    except (json.JSONDecodeError, KeyError):  # a line cut by the kill
        return False


def completions_markdown(samples: list[dict], reward_names: list[str]) -> str:
    """A Markdown table of the rollout sample (prompt, completion, each reward, advantage)."""

    def cell(v) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", "<br>")

    columns = ["prompt", "completion", *reward_names, "advantage"]
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    rows += ["| " + " | ".join(cell(s.get(c)) for c in columns) + " |" for s in samples]
    return "\n".join(rows)


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v
