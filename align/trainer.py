"""GRPO for masked diffusion LMs, on ``transformers.Trainer`` + accelerate (DeepSpeed ZeRO-2/3, DDP).

One rollout phase (``align.rollout.RolloutPhase``: generate through the rollout engine, score with the
reward set, advantages, mask plans, fixed log-probs, a shuffled ``RolloutBatch``) serves
``steps_per_generation x num_iterations`` micro-steps (TRL's schedule). Each micro-step estimates the
policy's per-token log-probs with grad under that iteration's plan (Decision 5: policy, old policy and
reference share masks) and applies the registered objective of ``loss_type`` (``align.objectives``).

``scale_rewards: batch`` uses the per-process batch std (groups never straddle processes). A checkpoint
taken mid-phase stores the phase's buffer, so a resumed run continues with the same rollouts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

import torch
from transformers import Trainer
from trl.models.utils import unwrap_model_for_generation
from trl.trainer.callbacks import SyncRefModelCallback

from align.callbacks import WallClock
from align.checkpoints import SafeCheckpointMixin, resolve_resume
from align.config import GRPOConfig
from align.data import require_columns
from align.errors import RunError, UsageError
from align.logprob import pass_logprobs
from align.logprob.estimators import MaskPlan
from align.mc_backward import ChunkedBackwardMixin
from align.models import family_spec
from align.models.loading import quiet_checkpointing_renames
from align.objectives import get_objective, reduce_estimate
from align.policy_trainer import PolicyTrainerMixin
from align.rollout import completions
from align.rollout.batch import MicroBatch, RolloutBatch
from align.rollout.engine import InProcessEngine, RolloutEngine
from align.rollout.phase import RolloutPhase
from align.rollout.prompts import RolloutBatchSampler, RolloutLoader
from align.rollout.rewards import RewardSet, check_reward_columns
from align.sampling.family_checks import check_family_settings

logger = logging.getLogger(__name__)

BUFFER_FILE = "rollout_buffer_rank{rank}.pt"


class DiffusionGRPOTrainer(SafeCheckpointMixin, ChunkedBackwardMixin, PolicyTrainerMixin, Trainer):
    """GRPO trainer whose policy is a bidirectional denoiser (see the module docstring). ``engine``: the
    rollout backend (default: ``align.sampling`` in this process on the live policy)."""

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: GRPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        peft_config=None,
        ref_model=None,
        engine: RolloutEngine | None = None,
    ):
        """TRL's ``GRPOTrainer`` signature. ``model``: a loaded diffusion LM, or a hub id / local path loaded
        with ``args.dtype`` (the tokenizer too, when ``processing_class`` is None); ``reward_funcs``: reward
        names, ``module:function`` specs or callables (default ``args.reward_funcs``); ``train_dataset``:
        rows with ``args.prompt_column`` and the rewards' columns (a ``datasets.Dataset`` or anything with
        ``column_names``); ``peft_config``: a ``peft.LoraConfig`` to train instead of every weight (its
        initial weights follow ``args.seed``); ``ref_model``: a frozen copy of the policy, needed for
        ``beta != 0`` under full fine-tuning; ``engine``: the rollout backend (default: the sampler in this
        process). Evaluation during training comes from ``args.eval_tasks``, not ``eval_dataset``."""
        if args is None or train_dataset is None:
            raise UsageError("DiffusionGRPOTrainer needs args (a GRPOConfig) and train_dataset.")
        if eval_dataset is not None:
            raise UsageError(
                "DiffusionGRPOTrainer: eval_dataset is not used; set args.eval_tasks (align eval's "
                "tasks, scored with the rollout sampler during training)."
            )
        if isinstance(model, str):
            from align.models import load_model, load_tokenizer

            processing_class = processing_class or load_tokenizer(
                model, trust_remote_code=args.trust_remote_code
            )
            model = load_model(model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
        if processing_class is None:
            raise UsageError(
                "DiffusionGRPOTrainer: pass processing_class (the tokenizer) with a loaded model."
            )
        if peft_config is not None:
            import torch
            from peft import get_peft_model

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)
                model = get_peft_model(model, peft_config)
        args.remove_unused_columns = False
        require_columns(train_dataset.column_names, {"prompt_column": args.prompt_column})
        specs = reward_funcs if reward_funcs is not None else args.reward_funcs
        check_reward_columns(specs, list(train_dataset.column_names))
        warn_repeated_passes(args)
        self.rewards = RewardSet(specs, args.reward_weights, args.reward_timeout_s)
        self.rewards.warm_up()  # e.g. math_accuracy's grading workers: started before the first rollout
        self.objective = get_objective(args.loss_type)
        self.spec = family_spec(model, processing_class, args.mask_token_id)
        check_family_settings(
            self.spec,
            cache=args.cache,
            remasking=args.remasking,
            block_length=args.block_length,
            estimator=args.estimator,
        )
        if args.variable_length and not self.spec.stop_token_ids:
            raise UsageError(
                f"variable_length rollouts stop at an EOS / end-of-turn token, and model_type {self.spec.model_type!r} "
                "has none in its config or tokenizer: set eos_token_id in the config, or variable_length false."
            )
        self._eval_tasks = load_eval_tasks(args)
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processing_class,
            eval_dataset={t.name: rows for t, rows in self._eval_tasks} or None,
            callbacks=callbacks,
        )
        self._setup_reference(
            ref_model,
            args.beta != 0.0,
            "beta != 0 under full fine-tuning needs ref_model (a frozen copy of the policy).",
        )
        if self.ref_model is not None and args.sync_ref_model:
            self.add_callback(SyncRefModelCallback(ref_model=self.ref_model, accelerator=self.accelerator))
        self.engine = engine or self._default_engine(args)
        self.rollouts = RolloutPhase(
            args,
            self.objective,
            self.engine,
            self.rewards,
            processing_class,
            self.spec,
            self.accelerator,
            passes=self._passes,
            policy=self._unwrapped,
            reference=self._reference,
        )
        self._samples: list[dict] = []
        self._buffer: RolloutBatch | None = None
        self._resume_dir: str | None = None
        self._last_global_step = -1
        self._rollout_time_s = 0.0
        if self.accelerator.is_main_process:
            logger.info("rollouts: %s (%s)", self.rollouts.settings.describe(), self.engine.describe())

    def _default_engine(self, args) -> RolloutEngine:
        """The recipe's ``rollout_engine``: the policy in this process, or a Ray server actor of its own."""
        if args.rollout_engine == "ray_server":
            import ray

            from align.rollout.server import ServerEngine, ray_server
            from align.sampling.settings import SamplerSettings

            if not ray.is_initialized():
                ray.init(address=args.ray_address, include_dashboard=False, log_to_driver=False)
            settings = SamplerSettings.from_rollout_fields(args)
            server = ray_server(
                args.model_name_or_path,
                settings=settings.as_kwargs(),
                dtype=args.dtype,
                max_batch_rows=args.rollout_batch_size or 256,
                seed=args.seed + self.accelerator.process_index,
                trust_remote_code=args.trust_remote_code,
            )
            return ServerEngine(server, spec=self.spec)
        return InProcessEngine(
            self.spec, model_context=self._unwrapped, rows_per_call=args.rollout_batch_size
        )

    @contextlib.contextmanager
    def _unwrapped(self):
        """The policy gathered for generation (ZeRO-3) or unwrapped (DDP), without the deprecation warnings
        TRL's helper would raise at every rollout (``quiet_checkpointing_renames``)."""
        with quiet_checkpointing_renames():
            with unwrap_model_for_generation(self.model_wrapped, self.accelerator) as unwrapped:
                yield unwrapped

    @contextlib.contextmanager
    def _reference(self):
        if self.ref_model is not None:
            yield self.ref_model
        else:
            with self._unwrapped() as unwrapped, self._reference_model(unwrapped) as reference:
                yield reference

    @property
    def _per_phase(self) -> int:
        """Micro-steps served by one rollout phase."""
        return self.args.steps_per_generation * self.args.num_iterations

    def get_train_dataloader(self) -> RolloutLoader:
        args = self.args
        sampler = RolloutBatchSampler(
            len(self.train_dataset),
            args.generation_batch_size // args.num_generations,
            self._per_phase,
            num_processes=self.accelerator.num_processes,
            process_index=self.accelerator.process_index,
            seed=args.seed,
        )
        return RolloutLoader(self.train_dataset, sampler)

    def floating_point_ops(self, inputs) -> int:
        return 0

    # ---- the step ----------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint=None, **kwargs):
        """``resume_from_checkpoint``: a checkpoint folder, or True / "true" for the newest complete one in
        output_dir (``align.checkpoints``)."""
        log = logger.warning if self.accelerator.is_main_process else None
        self._resume_dir = resolve_resume(self.args.output_dir, resume_from_checkpoint, log)
        if self._resume_dir and self.accelerator.is_main_process:
            completions.drop_after(self.args.output_dir, self._resume_dir)
        return super().train(resume_from_checkpoint=self._resume_dir, **kwargs)

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
        """One micro-step with ``mc_backward: chunked`` (``align.mc_backward``). When the objective's gradient
        does not depend on the estimate's value (on-policy, no KL: every ratio is exactly 1) the no-grad
        estimate is skipped."""
        self._train_mode(model)
        batch = self._prepare_inputs(rows)
        value = None
        if batch.old is None and self.args.beta == 0.0 and self.objective.value_free:
            value = torch.zeros(batch.plan.masked.shape, dtype=torch.float32, device=batch.ids.device)
        return self._backward_in_chunks(
            model, batch.ids, batch.attn, batch.plan, lambda passes: self._policy_loss(passes, batch), value
        )

    def _micro_index(self) -> int:
        if self.state.global_step != self._last_global_step:
            self._last_global_step, self._accum = self.state.global_step, 0
        index = self.state.global_step * self.args.gradient_accumulation_steps + self._accum
        self._accum += 1
        return index

    def _prepare_inputs(self, rows: list[dict]) -> MicroBatch:
        """Rollout at the start of each phase; then the micro-batch of this step from the buffer."""
        args, per_phase = self.args, self._per_phase
        micro = self._micro_index()
        if micro % per_phase == 0:
            start = time.perf_counter()
            self.engine.sync_weights(self.model)
            self._buffer = self.rollouts.run(rows, micro // per_phase, self.state, self._metrics)
            self._samples = self.rollouts.samples
            self._rollout_time_s = time.perf_counter() - start
        elif self._buffer is None:
            self._buffer = self._load_buffer(micro // per_phase)
        iteration = (micro % per_phase) // args.steps_per_generation
        return self._buffer.micro_batch(
            micro % args.steps_per_generation, iteration, args.steps_per_generation
        )

    def _passes(self, model, ids, attn, plan: MaskPlan) -> torch.Tensor:
        """Per-pass log-probs [P, n, L]. The trace estimator replays the sampler, which never emits the mask
        token: its probability is renormalised away, except for objectives whose released code softmaxes
        over the whole vocabulary."""
        exclude = self.objective.excluded_ids(self.args.estimator, self.spec.mask_token_id)
        return pass_logprobs(
            model,
            ids,
            plan,
            mask_token_id=self.spec.mask_token_id,
            attention_mask=attn,
            spec=self.spec,
            chunk_size=self.args.mc_chunk_size,
            exclude_ids=exclude,
        )

    def compute_loss(self, model, inputs: MicroBatch, return_outputs=False, num_items_in_batch=None):
        """The objective's loss of one micro-batch, scaled for gradient accumulation as TRL's GRPOTrainer does
        (dapo divides by the completion tokens of one accumulation window itself; see align.objectives)."""
        loss = self._policy_loss(self._passes(model, inputs.ids, inputs.attn, inputs.plan), inputs)
        return self._for_training_step(loss)

    def _policy_loss(self, passes: torch.Tensor, batch: MicroBatch) -> torch.Tensor:
        """The loss of per-pass log-probabilities [P, n, L] under the micro-batch's plan."""
        accumulation = self.current_gradient_accumulation_steps
        estimate = reduce_estimate(self.objective.reduce, batch.plan, passes)
        loss, metrics = self.objective.loss(estimate, batch, self.args, accumulation)
        self._record(metrics)
        return loss if self.objective.scales_itself else loss / accumulation

    # ---- evaluation during training (the eval runner on held-out tasks) ----------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict:
        """Greedy-decode every eval task with the current policy (processes share the questions) and score
        it; returns and logs ``{prefix}_<task>/<metric>`` (loggers show ``eval/<task>/<metric>``)."""
        from accelerate.utils import broadcast_object_list

        from align.eval.runner import DiffusionSource, evaluate_task

        source = DiffusionSource(
            self.model,
            self.processing_class,
            self.spec,
            state=self.accelerator.state,
            batch_size=self.args.per_device_eval_batch_size,
            seed=self.args.seed,
            model_context=self._unwrapped,
        )
        protocol, metrics = eval_protocol(self.args), {}
        was_training, started = self.model.training, time.monotonic()
        self.model.eval()
        try:
            for task, rows in self._eval_tasks:
                scores, _ = evaluate_task(
                    source, task, rows, protocol, progress=True
                )  # a bar on the main process
                # n (questions scored) stays: align report draws each held-out point's interval from it; so do
                # the loop rates (rewards/loops.py), beside the score
                metrics.update(
                    {
                        f"{metric_key_prefix}_{task.name}/{k}": v
                        for k, v in scores.items()
                        if k != "num_samples"
                    }
                )
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

    # ---- logs and checkpoints ----------------------------------------------------------------------
    def _on_training_log(self) -> None:
        if self.args.log_completions and self._samples and self.accelerator.is_main_process:
            writer = next(
                (
                    getattr(c, "tb_writer", None)
                    for c in self.callback_handler.callbacks
                    if type(c).__name__ == "TensorBoardCallback"
                ),
                None,
            )
            completions.log_completions(
                self._samples,
                self.state.global_step,
                self.args.output_dir,
                self.rewards.names,
                self.args.report_to,
                writer,
            )

    def _save_extra(self, folder: str) -> None:
        """A checkpoint in the middle of a rollout phase keeps this process's rollout buffer."""
        micro = self.state.global_step * self.args.gradient_accumulation_steps
        if micro % self._per_phase and self._buffer is not None:
            torch.save(
                {"phase": micro // self._per_phase, "buffer": self._buffer.state(), "samples": self._samples},
                os.path.join(folder, BUFFER_FILE.format(rank=self.accelerator.process_index)),
            )

    def _load_buffer(self, phase: int) -> RolloutBatch:
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
        return RolloutBatch.from_state(
            saved["buffer"], group_weighted=self.objective.group_weights is not None
        )


def load_eval_tasks(args: GRPOConfig) -> list:
    """[(Task, rows)] of ``eval_tasks``, read (and their columns checked) before training starts."""
    from align.eval.tasks import load_tasks

    return (
        load_tasks(",".join(args.eval_tasks), args.eval_data_dir, args.eval_limit) if args.eval_tasks else []
    )


def eval_protocol(args: GRPOConfig):
    """The named ``eval_protocol``, else the rollouts' own prompt format and sampler, decoded greedily."""
    from align.eval.tasks import PROTOCOLS, Protocol
    from align.sampling.settings import SamplerSettings

    if args.eval_protocol:
        return PROTOCOLS[args.eval_protocol]
    greedy = SamplerSettings.from_rollout_fields(args).replace(temperature=0.0)
    return Protocol.from_sampler(
        "rollout",
        greedy,
        system_prompt=args.system_prompt,
        instruction=None,
        use_chat_template=args.use_chat_template,
        max_prompt_length=args.max_prompt_length,
    )


def warn_repeated_passes(args) -> bool:
    """``one_step`` masks the whole completion and, without ``p_mask_prompt``, no prompt token: its Monte Carlo
    samples are then the same pass repeated (the same gradient for ``num_mc_samples`` times the compute). Says
    so once; returns whether it did."""
    if args.estimator != "one_step" or args.num_mc_samples <= 1 or args.p_mask_prompt:
        return False
    logger.warning(
        "estimator one_step with num_mc_samples %d and p_mask_prompt 0: every sample masks the same positions "
        "(the whole completion, no prompt token), so the %d passes are identical: %dx the estimate's compute for "
        "the same gradient. Set num_mc_samples 1, or p_mask_prompt > 0 for distinct masks (d1: 0.15).",
        args.num_mc_samples,
        args.num_mc_samples,
        args.num_mc_samples,
    )
    return True
