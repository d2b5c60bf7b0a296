"""The project's estimators and losses inside verl (Ray single controller), for labs that run RL there.

Installed with ``pip install "dllm-align[verl]" && pip install --no-deps verl==0.9.1`` (the extra holds the
packages verl's import needs; verl's own pin says transformers < 5.11 and the project needs 5.17 or newer: every part
used here imports and runs under the suite's transformers (requirements/constraints.txt), which tests/test_verl.py
checks). Nothing else in the project imports
this module.

What it holds:

* ``mask_fields`` / ``plan_of``: the Monte Carlo masks drawn once per sample *on the driver* and carried in the
  batch as batch-first tensors (``mc_masked`` / ``mc_weights`` [B, P, T], ``mc_visible`` for ``growing``), so
  the old, reference and current estimates, and any data-parallel split of the rows, use the same masks.
  ``count_for`` is the objective's divisor of the whole batch (tokens, rows with a nonzero advantage, or
  passes with a target), carried in ``meta_info`` so every shard divides by the global count.
* ``DiffusionPolicyWorker``: a verl ``Worker`` (data-parallel over gloo or NCCL) that loads the policy and
  computes, on its shard, the per-token estimates under the carried plan (``compute_log_prob``) and the
  project's loss of any ``loss_type`` with its gradients averaged over the workers (``compute_loss_grads``;
  ``update_actor`` also steps an AdamW optimizer). Losses that need per-sample Monte Carlo terms (SPG's bounds,
  BGPO's sample sums) run here, through the objective's own ``reduce``: verl's policy-loss signature carries
  per-token log-probabilities only. A loss divided by a count of the batch (dapo's tokens, rows, passes)
  gets the whole batch's count, so any split gives the single-process loss; one normalised by its own
  micro-batch as its authors' code is per device (SPG's lengths) is the mean over the micro-batches, as the
  project's trainer computes it for as many processes x accumulation steps.
* ``register_policy_losses``: the ratio losses whose value splits over shards (``align.losses.policy_loss``'s
  dapo, grpo, bnpo, dr_grpo) under verl's policy-loss registry as ``dllm_<name>``, normalised by verl's global
  batch info (``dp_size``, ``batch_num_tokens``, ``global_batch_size``) so the data-parallel average of the
  shards' gradients is the whole batch's gradient, as verl's own losses are.
* registered at import (verl's plug-in routes import this module in each of its processes: the ``verl.plugins``
  entry point ``dllm_align`` of the installed package, or ``VERL_USE_EXTERNAL_MODULES=align.verl``):
* ``register_rollout``: the dense-diffusion rollout server (``align.rollout.server``) as verl rollout replica
  ``dllm_align``; ``check_verl_config`` refuses a verl config that would score a diffusion model with causal
  log-probabilities or roll it out with an engine that cannot decode it, in one line naming the supported one.
* ``train`` (``python -m align.verl``): a single-controller GRPO loop over rollout servers and these workers
  whose rollout rules are the trainer's own stages (``align.rollout.stages``: prompts, the stop cut, rewards,
  advantages with wd1's group weights and ``mask_truncated_completions``, canvas, plans drawn from the
  trainer's seeds), so a verl step sees the batch the trainer's step would.

Not covered: verl's FSDP / Megatron engines (they register for CUDA / NPU devices only; on GPUs the worker here
runs under plain data parallelism, each worker holding the whole model), its PPO entry end to end on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import types


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m align.verl",
        description="GRPO on verl's single controller: rollout servers + data-parallel policy workers on Ray. "
        "Any GRPO recipe field can follow as --field value (align train --help lists them).",
    )
    parser.add_argument("--config", required=True, help="a GRPO recipe (YAML)")
    parser.add_argument("--workers", type=int, default=2, help="policy workers (data parallel)")
    parser.add_argument("--servers", type=int, default=1, help="rollout servers")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker and per server")
    parser.add_argument("--ray_address", default=None, help="a running cluster (default: start one)")
    return parser


if __name__ == "__main__" and {"-h", "--help"} & set(sys.argv[1:]):  # before torch, Ray and verl load
    _parser().print_help()
    raise SystemExit(0)

import torch  # noqa: E402

from align.logprob.estimators import MaskPlan, make_plan, pass_logprobs  # noqa: E402
from align.objectives import get_objective, reduce_estimate  # noqa: E402
from align.rollout.batch import MicroBatch  # noqa: E402

ENGINE = "dllm_align"  # the rollout replica and actor strategy names this module registers
CAUSAL_STRATEGIES = ("fsdp", "fsdp2", "megatron", "veomni", "torchtitan")
CAUSAL_ROLLOUTS = ("vllm", "sglang", "trtllm", "hf")


# ---- masks on the driver --------------------------------------------------------------------------------
def mask_fields(
    completion_mask, *, estimator: str, num_samples: int, seed: int, score_mask=None, **context
) -> dict:
    """The plan of ``estimator`` for completion_mask [B, T], drawn with ``seed``, as batch-first tensors."""
    generator = torch.Generator(device=completion_mask.device).manual_seed(seed)
    plan = make_plan(
        estimator,
        completion_mask,
        num_samples=num_samples,
        generator=generator,
        score_mask=score_mask,
        **context,
    )
    return plan_fields(plan)


def plan_fields(plan: MaskPlan) -> dict:
    """A MaskPlan [P, B, T] as the batch-first tensors a DataProto carries (``mc_masked``, ``mc_weights``,
    ``mc_visible``): verl splits a batch along its first dimension."""
    fields = {
        "mc_masked": plan.masked.transpose(0, 1).contiguous(),
        "mc_weights": plan.weights.transpose(0, 1).contiguous(),
    }
    if plan.visible is not None:
        fields["mc_visible"] = plan.visible.transpose(0, 1).contiguous()
    return fields


def plan_of(batch, num_samples: int) -> MaskPlan:
    """The ``MaskPlan`` [P, n, T] of a (shard of a) batch carrying ``mask_fields``."""
    visible = batch["mc_visible"].transpose(0, 1) if "mc_visible" in batch.keys() else None
    return MaskPlan(
        batch["mc_masked"].transpose(0, 1), batch["mc_weights"].transpose(0, 1), num_samples, visible
    )


def count_for(loss_type: str, mask, advantages, plan_weights) -> float:
    """The objective's divisor of the whole batch (``Objective.divisor_count``: tokens, rows or passes)."""
    return float(get_objective(loss_type).divisor_count(mask, advantages, plan_weights))


def loss_args(**overrides) -> types.SimpleNamespace:
    """The GRPO recipe fields an objective reads, at their defaults, with ``overrides`` (loss_type, beta, ...)."""
    from align.fields import GRPOFields
    from align.recipe import our_fields

    values = {name: f.default for name, f in our_fields(GRPOFields).items()}
    unknown = sorted(set(overrides) - set(values))
    if unknown:
        raise ValueError(f"loss_args: {unknown} are not GRPO recipe fields.")
    values.update(overrides)
    values["steps_per_generation"] = values["steps_per_generation"] or 1  # one micro-step per batch
    return types.SimpleNamespace(**values)


def shard_loss(model, spec, batch, args, *, num_samples: int, normalizer: float, accumulation: int = 1):
    """The objective's loss of one shard ``batch`` (a dict-like of tensors), scaled for accumulation as the
    trainer scales it; the estimate under the carried plan."""
    objective = get_objective(args.loss_type)
    plan = plan_of(batch, num_samples)
    passes = pass_logprobs(
        model,
        batch["input_ids"],
        plan,
        mask_token_id=spec.mask_token_id,
        attention_mask=batch["attention_mask"],
        spec=spec,
        exclude_ids=objective.excluded_ids(args.estimator, spec.mask_token_id),
    )
    get = lambda k: batch[k] if k in batch.keys() else None  # noqa: E731
    micro = MicroBatch(
        ids=batch["input_ids"],
        attn=batch["attention_mask"],
        mask=batch["response_mask"],
        advantages=batch["advantages"],
        plan=plan,
        old=get("old_log_probs"),
        ref=get("ref_log_prob"),
        normalizer=torch.tensor(normalizer),
        group_weights=get("group_weights"),
    )
    loss, metrics = objective.loss(reduce_estimate(objective.reduce, plan, passes), micro, args, accumulation)
    return (loss if objective.scales_itself else loss / accumulation), metrics


def _worker_base():
    from verl.single_controller.base import Worker

    return Worker


def _register(mode: str):
    from verl.single_controller.base.decorator import Dispatch, register

    return register(dispatch_mode=getattr(Dispatch, mode))


class DiffusionPolicyWorker(_worker_base()):
    """A data-parallel policy worker for diffusion LMs (module docstring). ``loss`` holds GRPO recipe fields
    (``loss_type``, ``estimator``, ``epsilon``, ...); ``dtype`` the weights' dtype."""

    def __init__(
        self,
        model_path: str,
        loss: dict | None = None,
        dtype: str = "float32",
        backend: str = "gloo",
        learning_rate: float = 1e-5,
    ):
        super().__init__()
        self.model_path, self.dtype, self.backend, self.lr = model_path, dtype, backend, learning_rate
        self.args = loss_args(**(loss or {}))

    @_register("ONE_TO_ALL")
    def init_model(self):
        import torch.distributed as dist

        from align.machine import actor_device
        from align.models import family_spec, load_model, load_tokenizer

        self.device = actor_device()  # the GPU Ray gave this worker, else the CPU
        if (self.backend == "nccl") != (self.device == "cuda"):
            raise RuntimeError(
                f"worker on {self.device} with backend {self.backend}: NCCL needs the model on CUDA, gloo on CPU "
                "(run with --gpu on a GPU cluster, without it on CPUs)."
            )
        if not dist.is_initialized():
            dist.init_process_group(self.backend, rank=self.rank, world_size=self.world_size)
        torch.set_num_threads(1)
        self.model = load_model(self.model_path, dtype=self.dtype).to(self.device)
        self.model.train()
        self.spec = family_spec(self.model, load_tokenizer(self.model_path))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.lr)
        return self.world_size

    @_register("DP_COMPUTE_PROTO")
    def compute_log_prob(self, data):
        """Estimates under the carried plan (no grad): the old / reference log-probs, per token [n, T] (per
        sample [n, K] for a sample-level objective, ``meta_info["loss"]["loss_type"]`` or the worker's)."""
        from verl import DataProto

        batch = data.batch.to(self.device)
        plan = plan_of(batch, data.meta_info["num_samples"])
        with torch.no_grad():
            passes = pass_logprobs(
                self.model,
                batch["input_ids"],
                plan,
                mask_token_id=self.spec.mask_token_id,
                attention_mask=batch["attention_mask"],
                spec=self.spec,
            )
        loss_type = data.meta_info.get("loss", {}).get("loss_type", self.args.loss_type)
        estimate = reduce_estimate(get_objective(loss_type).old_reduce, plan, passes)
        return DataProto.from_dict(tensors={"old_log_probs": estimate.cpu()})

    def _loss_and_grads(self, data):
        import torch.distributed as dist

        meta = data.meta_info
        rows, micro = (
            data.batch["input_ids"].shape[0],
            meta.get("micro_batch_size") or data.batch["input_ids"].shape[0],
        )
        if rows % micro:
            raise ValueError(f"micro_batch_size {micro} does not divide this worker's {rows} rows.")
        normalizer = meta["count"] / self.world_size  # DDP averages gradients over the workers
        # the shard is one generation batch stepped once: its micro-batches are the accumulation window
        args = loss_args(**{**vars(self.args), **meta.get("loss", {}), "steps_per_generation": rows // micro})
        self.model.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        batch = data.batch.to(self.device)
        for start in range(0, rows, micro):
            shard = batch[start : start + micro]
            loss, _ = shard_loss(
                self.model,
                self.spec,
                shard,
                args,
                num_samples=meta["num_samples"],
                normalizer=normalizer,
                accumulation=rows // micro,
            )
            loss.backward()
            total += loss.detach()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.model.parameters()]
        flat = torch.cat([g.flatten() for g in grads])
        if self.world_size > 1:
            dist.all_reduce(flat)
            flat /= self.world_size
            dist.all_reduce(total)
            total /= self.world_size
        offset = 0
        for p, g in zip(self.model.parameters(), grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
            offset += g.numel()
        return total, flat

    @_register("DP_COMPUTE_PROTO")
    def compute_loss_grads(self, data):
        """The whole batch's loss and flattened gradient (every worker returns the same, one row each)."""
        from verl import DataProto

        loss, flat = self._loss_and_grads(data)
        return DataProto.from_dict(tensors={"loss": loss[None].cpu(), "grad": flat[None].cpu()})

    @_register("DP_COMPUTE_PROTO")
    def update_actor(self, data):
        """One optimizer step on the batch; returns the loss (one row per worker)."""
        from verl import DataProto

        loss, _ = self._loss_and_grads(data)
        self.optimizer.step()
        return DataProto.from_dict(tensors={"loss": loss[None].cpu()})

    @_register("ONE_TO_ALL")
    def state_dict(self):
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}

    @_register("ONE_TO_ALL")
    def optimizer_state(self):
        """The optimizer's state on the CPU (every worker's is the same: gradients are averaged)."""
        return _to_cpu(self.optimizer.state_dict())

    @_register("ONE_TO_ALL")
    def load_state(self, model_state, optimizer_state):
        """A checkpoint's weights and optimizer state, on every worker (resume)."""
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)
        return self.world_size


def _to_cpu(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


# ---- verl's policy-loss registry --------------------------------------------------------------------------
def _verl_policy_loss(loss_type: str):
    from align.losses import policy_loss

    def loss_fn(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        loss_agg_mode="token-mean",
        config=None,
        rollout_is_weights=None,
    ):
        if rollout_is_weights is not None:
            raise ValueError(
                f"dllm_{loss_type} takes no rollout correction weights (rollout_is); turn it off."
            )
        info = dict(getattr(config, "global_batch_info", None) or {})
        dp = int(info.get("dp_size") or 1)
        mask = response_mask.to(log_prob.dtype)
        rows, tokens = mask.shape[0], mask.sum()
        batch_tokens = info.get("batch_num_tokens") or tokens * dp
        batch_rows = info.get("global_batch_size") or rows * dp
        low = getattr(config, "clip_ratio_low", None) or getattr(config, "clip_ratio", 0.2)
        high = getattr(config, "clip_ratio_high", None) or low
        loss, metrics = policy_loss(
            log_prob,
            old_log_prob,
            None,
            advantages,
            response_mask,
            loss_type=loss_type,
            epsilon=low,
            epsilon_high=high,
            normalizer=batch_tokens / dp,
            max_completion_length=mask.shape[1],
        )
        # policy_loss normalises per-row losses by this shard's rows (bnpo: its tokens): rescale to the global
        # batch's count over dp, so verl's data-parallel mean of the shards' gradients is the batch's
        if loss_type in ("grpo", "dr_grpo"):
            loss = loss * rows * dp / batch_rows
        elif loss_type == "bnpo":
            loss = loss * tokens.clamp(min=1.0) * dp / batch_tokens
        return loss, {f"actor/{k}": float(v) for k, v in metrics.items()}

    loss_fn.__name__ = f"dllm_{loss_type}"
    return loss_fn


def register_policy_losses() -> list[str]:
    """Register ``dllm_<loss_type>`` for the ratio losses under verl's policy-loss registry; their names."""
    from verl.trainer.ppo.core_algos import register_policy_loss

    from align.losses import RATIO_LOSS_TYPES

    names = []
    for loss_type in RATIO_LOSS_TYPES:
        if loss_type in ("wd1", "wd1_mean", "stabledrl_clip"):  # wd1: weights over the groups; stabledrl_clip
            continue  # divides by its batch's mean clipped ratio, which no shard knows: the worker runs them
        register_policy_loss(f"dllm_{loss_type}")(_verl_policy_loss(loss_type))
        names.append(f"dllm_{loss_type}")
    return names


# ---- rollout replica and config checks ----------------------------------------------------------------------
def register_rollout() -> None:
    """The dense-diffusion rollout server as verl's rollout replica ``dllm_align``, and its ``BaseRollout``
    adapter (what verl's hybrid actor-rollout worker builds by ``get_rollout_class("dllm_align", "async")``)."""
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY
    from verl.workers.rollout.replica import RolloutReplicaRegistry

    RolloutReplicaRegistry.register(ENGINE, _replica_class)
    _ROLLOUT_REGISTRY[(ENGINE, "async")] = f"{__name__}.DiffusionRolloutAdapter"


def server_name(replica_rank: int) -> str:
    """The Ray actor name of replica ``replica_rank``'s server (verl's ``{name}_server_{replica}_{node}``)."""
    return f"{ENGINE}_server_{replica_rank}_0"


def _rollout_base():
    from verl.workers.rollout.base import BaseRollout

    return BaseRollout


class DiffusionRolloutAdapter(_rollout_base()):
    """verl's per-worker client of a ``dllm_align`` replica in the hybrid (colocated) mode: the trainer's weight
    sync reaches the replica's ``DiffusionServer`` through it. Rank 0 of each replica's ranks holds the server
    (found by name, ``server_name``); every rank drains the weights generator (verl gathers full tensors with
    collectives, so every rank must take part) and rank 0 sends them as named tensors. Weights and the
    per-batch cache stay resident, so ``resume`` / ``release`` do nothing. Generation goes through the replica's
    server (verl's agent loop), not through this adapter: ``generate_sequences`` says so."""

    def __init__(self, config, model_config, device_mesh, replica_rank: int = -1):
        super().__init__(config, model_config, device_mesh)
        rank = int(os.environ.get("RANK", "0"))
        c = self.config
        world = c.tensor_model_parallel_size * c.data_parallel_size * c.pipeline_model_parallel_size
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.rollout_rank = rank % world
        self.server_handle = None

    def _server(self):
        if self.rollout_rank != 0:
            return None
        if self.server_handle is None:
            import ray

            self.server_handle = ray.get_actor(server_name(self.replica_rank))
        return self.server_handle

    async def resume(self, tags: list[str]):
        return None

    async def release(self):
        return None

    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps=None, **kwargs):
        if wire_format != "named_tensors":
            raise ValueError(
                f"the dllm_align rollout takes wire_format 'named_tensors', not {wire_format!r}: set "
                "rollout.checkpoint_engine to send full tensors."
            )
        server = self._server()
        if server is None:  # verl gathers the tensors with collectives: this rank takes part, keeps nothing
            for _ in weights:
                pass
            return None
        return await server.update_weights.remote({name: tensor.detach().cpu() for name, tensor in weights})

    def generate_sequences(self, prompts):
        raise NotImplementedError(
            "the dllm_align rollout generates through its replica's server (verl's agent loop, async mode), "
            "not through the worker's generate_sequences."
        )


def _replica_class():
    from verl.workers.rollout.replica import RolloutReplica

    from align.rollout.server import ray_server

    class DiffusionReplica(RolloutReplica):
        """One ``DiffusionServer`` actor per replica: weights arrive through its ``update_weights``; its results
        carry verl's ``TokenOutput`` field names (``align.rollout.server.TokenOutput``)."""

        def rollout_worker_use_gpu(self) -> bool:
            import torch

            return torch.cuda.is_available()

        async def launch_servers(self):
            """The canvas is ``response_length``; ``custom: {dllm_align: {...}}`` gives any other sampler setting
            (``steps``, ``block_length``, ``remasking``, ...; default one token per step, one block)."""
            rollout = self.config
            settings = {
                "gen_length": rollout.response_length,
                "steps": rollout.response_length,
                "block_length": rollout.response_length,
                "temperature": float(rollout.temperature),
                **((rollout.custom or {}).get(ENGINE) or {}),
            }
            path = getattr(self.model_config, "local_path", None) or self.model_config.path
            server = ray_server(
                path,
                settings=settings,
                num_cpus=0,
                num_gpus=1 if self.rollout_worker_use_gpu() else 0,
                name=server_name(self.replica_rank),
            )
            self.servers = [server]
            self._server_handle = server
            self._server_address = None  # token-in / token-out only: no OpenAI endpoint

    return DiffusionReplica


def _get(config, path: str):
    node = config
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) or hasattr(node, "get") else getattr(node, key, None)
        if node is None:
            return None
    return node


def check_verl_config(config, model_type: str) -> None:
    """Refuse, in one line, a verl PPO config that cannot train the diffusion model ``model_type``: causal
    actor log-probabilities or a rollout engine that cannot decode it."""
    from align.models.family import family_for

    family = family_for(model_type).name
    rollout = _get(config, "actor_rollout_ref.rollout.name")
    if rollout in CAUSAL_ROLLOUTS or (rollout is not None and rollout != ENGINE):
        raise ValueError(
            f"actor_rollout_ref.rollout.name {rollout!r} cannot roll out the dense diffusion LM "
            f"{model_type!r} ({family} family): set it to {ENGINE!r} (align.rollout.server)."
        )
    strategy = _get(config, "actor_rollout_ref.actor.strategy")
    if strategy in CAUSAL_STRATEGIES:
        raise ValueError(
            f"actor_rollout_ref.actor.strategy {strategy!r} scores {model_type!r} with causal "
            "next-token log-probabilities, which a diffusion LM does not have: run its actor as "
            f"align.verl.DiffusionPolicyWorker (strategy {ENGINE!r})."
        )


# ---- a single-controller GRPO loop on verl's worker groups ---------------------------------------------------
def train(config, *, workers: int = 2, servers: int = 1, use_gpu: bool = False, on_step=None) -> list[dict]:
    """GRPO with verl's single controller: ``workers`` ``DiffusionPolicyWorker`` s (data parallel) train, ``servers``
    ``DiffusionServer`` actors roll out, this process draws the prompts, scores the rewards, forms the
    advantages and the masks, and pushes the updated weights to the servers after each step (through the
    object store: the whole state dict, gathered from worker 0). ``config`` is a GRPO recipe
    (``align.config.GRPOConfig``): its model, data, rollout, estimator, loss and reward fields;
    ``per_device_train_batch_size`` rows per worker per step, on-policy (one update per rollout).
    ``on_step(entry, state_dict)`` sees each step's log and weights (default: print the log). Returns the
    logs of the steps this call ran. Ray must be started (``ray.init``) by the caller.

    Checkpoints as ``align train`` writes them (``save_strategy steps``, ``save_steps``, ``save_total_limit``):
    ``OUTPUT_DIR/checkpoint-N``, staged then renamed, with a manifest, checksums and the run fingerprint; the
    weights load with ``align eval``, ``optimizer.pt`` and ``driver.pt`` (the prompt sampler's state) resume.
    ``resume_from_checkpoint`` (true: the newest complete one) goes on from one, refusing a changed recipe
    as ``align train`` does (``allow_changed``), and gives the steps the uninterrupted run would have."""
    import ray
    from verl.single_controller.ray import RayClassWithInitArgs, RayResourcePool, RayWorkerGroup

    from align.models import family_spec, load_tokenizer
    from align.rollout.server import ray_server
    from align.sampling import SamplerSettings

    c = config
    if c.use_peft:
        raise ValueError(
            "align.verl.train fine-tunes all weights (the worker has no LoRA yet): set use_peft false."
        )
    if c.num_iterations != 1 or c.beta != 0.0:
        raise ValueError(
            "align.verl.train runs on-policy without a reference: set num_iterations 1 and beta 0."
        )
    g, rows_per_step = c.num_generations, c.per_device_train_batch_size * workers
    if rows_per_step % g:
        raise ValueError(
            f"per_device_train_batch_size x workers ({rows_per_step}) must be a multiple of "
            f"num_generations ({g})."
        )
    tok = load_tokenizer(c.model_name_or_path, trust_remote_code=c.trust_remote_code)
    from transformers import AutoConfig

    spec = family_spec(
        AutoConfig.from_pretrained(c.model_name_or_path, trust_remote_code=c.trust_remote_code), tok
    )
    run = _Run(c, spec, tok, workers, servers)  # a refused resume leaves nothing on the cluster
    loss = {
        "loss_type": c.loss_type,
        "estimator": c.estimator,
        "epsilon": c.epsilon,
        "epsilon_high": c.epsilon_high,
        "num_mc_samples": c.num_mc_samples,
        "max_completion_length": c.max_completion_length,
        "num_generations": g,
        "block_length": c.block_length,
    }
    have = ray.available_resources()
    need = (
        {"GPU": workers + servers} if use_gpu else {"CPU": workers}
    )  # servers take no CPU slot of their own
    for kind, count in need.items():
        if have.get(kind, 0) < count:
            raise ValueError(
                f"the Ray cluster has {have.get(kind, 0):g} free {kind}s, this run needs {count} "
                f"({workers} workers{f' + {servers} servers' if use_gpu else ''}): lower --workers / "
                "--servers or add nodes (Ray would wait for them forever)."
            )
    pool = RayResourcePool([workers], use_gpu=use_gpu, max_colocate_count=1)
    cls = RayClassWithInitArgs(
        cls=ray.remote(DiffusionPolicyWorker),
        model_path=c.model_name_or_path,
        loss=loss,
        dtype=c.dtype,
        backend="nccl" if use_gpu else "gloo",
        learning_rate=c.learning_rate,
    )
    group = RayWorkerGroup(
        resource_pool=pool, ray_cls_with_init=cls, device_name="cuda" if use_gpu else "cpu"
    )
    group.init_model()
    settings = SamplerSettings.from_rollout_fields(c)
    actors = [
        ray_server(
            c.model_name_or_path,
            settings=settings.as_kwargs(),
            dtype=c.dtype,
            seed=c.seed + i,
            num_cpus=0,
            num_gpus=1 if use_gpu else 0,
        )
        for i in range(servers)
    ]
    try:
        run.resume(group, actors)
        return _steps(c, group, actors, tok, spec, g, rows_per_step, servers, on_step, run)
    finally:  # nothing of this run stays on the cluster
        for actor in [*actors, *group.workers]:
            ray.kill(actor)
        for pg in getattr(pool, "pgs", None) or []:
            ray.util.remove_placement_group(pg)


def _steps(c, group, actors, tok, spec, g, rows_per_step, servers, on_step, run=None) -> list[dict]:
    """The training steps (``train``); ``run`` (a ``_Run``): where they start and what they save (None: from
    step 0, nothing saved)."""
    import ray
    from verl import DataProto

    from align.data import load_rows
    from align.rollout import stages
    from align.rollout.rewards import RewardSet

    rewards = RewardSet(c.reward_funcs, c.reward_weights, c.reward_timeout_s)
    objective = get_objective(c.loss_type)
    rows = load_rows(c)
    rng = torch.Generator().manual_seed(c.seed)
    if run is not None and run.driver is not None:
        rng.set_state(run.driver["rng"])
    history = []
    for step in range(0 if run is None else run.start_step, c.max_steps):
        picked = [rows[i] for i in torch.randperm(len(rows), generator=rng)[: rows_per_step // g].tolist()]
        prompts = stages.prompt_batch(tok, picked, c)
        requests = [row[m.bool()].tolist() for row, m in zip(prompts.ids, prompts.attn, strict=True)]
        share = -(-len(requests) // servers)
        calls = [
            actor.generate_batch.remote(
                requests[i * share : (i + 1) * share], {"seed": c.seed * 1000003 + step * servers + i}
            )
            for i, actor in enumerate(actors)
        ]
        results = [r for part in ray.get(calls) for r in part]
        completion = torch.tensor([r.extra_fields["canvas"] for r in results])
        commit = torch.tensor([r.extra_fields["commit_step"] for r in results])
        decoded = [r.extra_fields.get("decoded") for r in results]
        decoded = None if None in decoded else torch.tensor(decoded)
        done = stages.cut(completion, spec, tok, decoded)
        _, _, reward = stages.score(rewards, prompts, picked, done, c, {"global_step": step})
        adv = stages.advantages(reward, done, c, objective)
        canvas = stages.canvas(prompts, completion, adv.mask, commit, objective)
        [plan] = stages.plans(canvas, c, [stages.seeded(c.seed, step, 0, 1)])  # the trainer's draw
        fields = {
            "input_ids": canvas.ids,
            "attention_mask": canvas.attn,
            "response_mask": canvas.scored,
            "advantages": adv.advantages,
            **plan_fields(plan),
        }
        if adv.group_weights is not None:  # wd1's, computed while the groups were contiguous
            fields["group_weights"] = adv.group_weights
        count = float(objective.divisor_count(canvas.scored, adv.advantages, plan.weights))
        meta = {
            "num_samples": c.num_mc_samples,
            "count": count,
            "micro_batch_size": c.per_device_train_batch_size,
        }
        out = group.update_actor(DataProto.from_dict(tensors=fields, meta_info=meta))
        state = group.state_dict()[0]  # every worker holds the same weights after the averaged step
        versions = ray.get([actor.update_weights.remote(state) for actor in actors])
        entry = {
            "step": step + 1,
            "loss": float(out.batch["loss"][0]),
            "reward": float(reward.nanmean()),
            "completions/mean_length": float(adv.mask.sum(1).float().mean()),
            "weights_version": versions[0],
        }
        history.append(entry)
        if on_step is None:
            print(json.dumps(entry), flush=True)
        else:
            on_step(entry, state)
        if run is not None and run.due(step + 1):
            optimizer = ray.get(group.workers[0].optimizer_state.remote())  # every worker's is the same
            run.save(step + 1, state, optimizer, rng.get_state(), entry)
    return history


class _Run:
    """The checkpoints of one ``train`` call: where it starts (a resumed checkpoint) and what it saves."""

    def __init__(self, config, spec, tokenizer, workers: int, servers: int):
        from align import checkpoints, fingerprint

        self.config, self.tokenizer, self.start_step, self.driver = config, tokenizer, 0, None
        # the data-parallel split decides the rows per step: a change of workers or servers is a recipe change
        self.fields = {
            **fingerprint.run_fields(config, spec),
            "verl_workers": workers,
            "verl_servers": servers,
        }
        self.path = checkpoints.resolve_resume(config.output_dir, config.resume_from_checkpoint, print)
        self.accepted = []
        if self.path is not None:
            self.accepted = fingerprint.check_resume(self.path, self.fields, config.allow_changed, print)
        self._model = None

    def resume(self, group, actors) -> None:
        """The checkpoint's weights and optimizer on every worker, its weights on every server."""
        if self.path is None:
            return
        import ray

        from align.models import load_model

        c = self.config
        self.driver = torch.load(os.path.join(self.path, "driver.pt"), weights_only=True)
        self.start_step = int(self.driver["step"])
        model = load_model(self.path, dtype=c.dtype, trust_remote_code=c.trust_remote_code)
        state = {k: v.detach() for k, v in model.state_dict().items()}
        optimizer = torch.load(os.path.join(self.path, "optimizer.pt"), weights_only=True)
        group.load_state(state, optimizer)
        ray.get([actor.update_weights.remote(state) for actor in actors])
        print(f"python -m align.verl: resumed {self.path} at step {self.start_step}", flush=True)

    def due(self, step: int) -> bool:
        c = self.config
        return (
            str(getattr(c.save_strategy, "value", c.save_strategy)) == "steps"
            and step % int(c.save_steps) == 0
        )

    def save(self, step: int, state: dict, optimizer: dict, rng_state, entry: dict) -> str:
        from align import checkpoints, fingerprint

        c = self.config
        name = f"checkpoint-{step}"
        staged, final = (
            os.path.join(c.output_dir, checkpoints.STAGING, name),
            os.path.join(c.output_dir, name),
        )
        shutil.rmtree(staged, ignore_errors=True)
        try:
            model = self._model_for_io()
            model.load_state_dict(state)
            model.save_pretrained(staged)
            self.tokenizer.save_pretrained(staged)
            torch.save(optimizer, os.path.join(staged, "optimizer.pt"))
            torch.save({"step": step, "rng": rng_state}, os.path.join(staged, "driver.pt"))
            with open(os.path.join(staged, "log.json"), "w") as f:
                json.dump(entry, f)
            fingerprint.write(staged, self.fields, self.accepted, step)
            checkpoints.publish(staged, final, step)
        except OSError as exc:
            raise checkpoints.save_failed(c.output_dir, name, staged, exc) from exc
        if c.save_total_limit:
            checkpoints.rotate(c.output_dir, c.save_total_limit)
        print(f"python -m align.verl: saved {final}", flush=True)
        return final

    def _model_for_io(self):
        """One CPU copy of the policy on the driver, loaded once, to write checkpoints in the model's format."""
        if self._model is None:
            from align.models import load_model

            c = self.config
            self._model = load_model(
                c.model_name_or_path, dtype=c.dtype, trust_remote_code=c.trust_remote_code
            )
        return self._model


def main(argv: list[str] | None = None) -> int:
    """``python -m align.verl --config RECIPE.yaml [--workers N --servers M --gpu] [--field value ...]``: trains,
    prints each step, and writes the trained policy to ``OUTPUT_DIR/final`` (model + tokenizer: what
    ``align eval`` and ``align train`` load)."""
    import ray

    from align.config import load_config

    args, rest = _parser().parse_known_args(argv)
    config = load_config(args.config, rest)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(
        address=args.ray_address,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "RAY_AUTH_MODE") if k in os.environ}
        },
    )
    last = {}

    def on_step(entry, state):
        print(json.dumps(entry), flush=True)
        last["state"] = state

    try:
        history = train(config, workers=args.workers, servers=args.servers, use_gpu=args.gpu, on_step=on_step)
    finally:
        ray.shutdown()
    if not history:
        print(
            f"python -m align.verl: no step ran (max_steps {config.max_steps} was reached before this run)."
        )
        return 1
    print(f"python -m align.verl: the trained policy is in {save_final(config, last['state'], history)}")
    return 0


def save_final(config, state: dict, history: list[dict]) -> str:
    """The trained policy (model, tokenizer, ``history.json``) as ``OUTPUT_DIR/final``, written beside it first and
    renamed into place: a kill leaves the previous one or none, never half of one."""
    from align.models import load_model, load_tokenizer

    final = os.path.join(config.output_dir, "final")
    partial, old = final + ".partial", final + ".old"
    shutil.rmtree(partial, ignore_errors=True)
    model = load_model(
        config.model_name_or_path, dtype=config.dtype, trust_remote_code=config.trust_remote_code
    )
    model.load_state_dict(state)
    model.save_pretrained(partial)
    load_tokenizer(config.model_name_or_path, trust_remote_code=config.trust_remote_code).save_pretrained(
        partial
    )
    with open(os.path.join(partial, "history.json"), "w") as f:
        json.dump(history, f)
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(partial, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


# verl's plug-in routes (the ``verl.plugins`` entry point ``dllm_align``; ``VERL_USE_EXTERNAL_MODULES=align.verl``)
# import this module in every process verl starts: registering at import reaches all of them, no call of ours.
register_rollout()
register_policy_losses()


if __name__ == "__main__":
    from align.errors import main_guard

    raise SystemExit(main_guard("python -m align.verl", main))
