"""The recipe's cross-field checks and resolutions: run on the real config (``align.config``) and, before
any heavy import, on a plain view of the recipe (``align.recipe.preflight``); each refusal is one line that
says what to set."""

from __future__ import annotations

from align.fields import ESTIMATOR_NAMES, PROTOCOL_NAMES
from align.logprob.kinds import KINDS
from align.objectives import ADVANTAGE_BASELINES, LOSS_TYPES, SCALE_REWARDS, check_objective
from align.sampling.settings import BLOCK_SCHEDULES, DREAM_ALGS, REMASKING, SamplerSettings


def check_model_data(c) -> None:
    for item in c.rename_columns or []:
        if item.count(":") != 1 or "" in item.split(":"):
            raise ValueError(f"rename_columns entry {item!r} is not 'old:new'.")
    if c.dataset_name is None and not c.dataset_files:
        raise ValueError("No training data: set dataset_name (a hub id) or dataset_files (local files).")
    if c.dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype {c.dtype!r} is not one of ['bfloat16', 'float16', 'float32'].")
    if c.max_time_s is not None and c.max_time_s <= 0:
        raise ValueError(f"max_time_s must be a positive number of seconds, got {c.max_time_s}.")
    if c.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"on_nonfinite {c.on_nonfinite!r} is not one of ['stop', 'skip'].")
    if c.on_nonfinite == "skip" and getattr(c, "deepspeed", None):
        raise ValueError(
            "on_nonfinite skip cannot drop an update under DeepSpeed (its engine steps itself); use stop."
        )


def resolve_eval(c) -> None:
    """eval_tasks turn periodic evaluation on; the Trainer's eval fields without them are refused."""
    strategy = getattr(c.eval_strategy, "value", c.eval_strategy)
    if c.eval_tasks and strategy == "no":
        c.eval_strategy = "steps"
    elif not c.eval_tasks and strategy != "no":
        raise ValueError(
            f"eval_strategy {strategy!r} needs eval_tasks (what to score), e.g. --eval_tasks gsm8k or "
            "--eval_tasks heldout=data/test.jsonl."
        )
    if c.metric_for_best_model and c.metric_for_best_model.startswith("eval/"):
        c.metric_for_best_model = c.metric_for_best_model[len("eval/") :]  # the Trainer adds eval_
    if c.load_best_model_at_end and not c.metric_for_best_model:
        raise ValueError(
            "load_best_model_at_end needs metric_for_best_model, e.g. eval/<task>/accuracy (or pass@1)."
        )


def resolve_generation_batch(c) -> None:
    per_device = c.per_device_train_batch_size
    if c.steps_per_generation is None and c.generation_batch_size is not None:
        if c.generation_batch_size % per_device:
            raise ValueError(
                f"generation_batch_size {c.generation_batch_size} is not a multiple of "
                f"per_device_train_batch_size {per_device}."
            )
        c.steps_per_generation = c.generation_batch_size // per_device
    c.steps_per_generation = c.steps_per_generation or c.gradient_accumulation_steps
    if c.generation_batch_size is None:
        c.generation_batch_size = per_device * c.steps_per_generation
    if c.generation_batch_size != per_device * c.steps_per_generation:
        raise ValueError(
            f"generation_batch_size {c.generation_batch_size} != per_device_train_batch_size {per_device} x "
            f"steps_per_generation {c.steps_per_generation}; set only one of the two."
        )


def resolve_method_defaults(c) -> None:
    """Fields a released method's own code fixes (``Objective.defaults``, e.g. wd1's raw advantages) take its
    value when the recipe leaves them unset, and a recipe that sets another value is refused in one line;
    unset fields of other methods get the general default (``scale_rewards: group``, TRL's)."""
    from align.objectives import OBJECTIVES

    objective = OBJECTIVES.get(c.loss_type)
    fixed = {} if objective is None else dict(objective.defaults)
    for name, general in (("scale_rewards", "group"), ("advantage_baseline", "group_mean")):
        value, wanted = getattr(c, name), fixed.get(name)
        if value is None:
            setattr(c, name, wanted if wanted is not None else general)
        elif wanted is not None and value != wanted:
            raise ValueError(
                f"loss_type {c.loss_type} runs with {name} {wanted}, as its authors' code does; the "
                f"recipe sets {name} {value!r}: remove it or set {wanted}."
            )


def check_grpo(c) -> None:
    """Choices and batch / sampler arithmetic of a GRPO config (after ``resolve_generation_batch``)."""
    choices = {
        "estimator": list(ESTIMATOR_NAMES),
        "loss_type": list(LOSS_TYPES),
        "scale_rewards": list(SCALE_REWARDS),
        "advantage_baseline": list(ADVANTAGE_BASELINES),
        "importance_sampling_level": ["token", "sequence"],
        "remasking": [*REMASKING, *DREAM_ALGS, *BLOCK_SCHEDULES],
        "cache": [None, "prefix", "dual"],
        "mc_backward": ["auto", "joint", "chunked"],
        "kl_estimator": ["k3", "k2"],
        "eval_protocol": [None, *PROTOCOL_NAMES],
        "rollout_engine": ["in_process", "ray_server"],
    }
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            raise ValueError(f"{name} {getattr(c, name)!r} is not one of {allowed}.")
    if c.cache_refresh is not None and (c.cache is None or c.cache_refresh < 1):
        raise ValueError(f"cache_refresh {c.cache_refresh} needs cache: prefix or dual and a value >= 1.")
    if c.rollout_batch_size is not None and c.rollout_batch_size < 1:
        raise ValueError(
            f"rollout_batch_size must be >= 1 (or None: the whole batch), got {c.rollout_batch_size}."
        )
    if c.trace_merge < 1:
        raise ValueError(f"trace_merge must be >= 1, got {c.trace_merge}.")
    if c.rollout_engine == "ray_server" and (
        c.use_peft or "zero3" in str(getattr(c, "deepspeed", None) or "")
    ):
        raise ValueError(
            "rollout_engine ray_server pushes the whole state dict of a fully fine-tuned policy; LoRA "
            "and ZeRO-3 are not supported with it yet: use rollout_engine in_process."
        )
    if not 0.0 <= c.p_mask_prompt < 1.0:
        raise ValueError(f"p_mask_prompt must be in [0, 1), got {c.p_mask_prompt}.")
    if not c.reward_timeout_s > 0:
        raise ValueError(f"reward_timeout_s must be > 0 (seconds per reward call), got {c.reward_timeout_s}.")
    if c.reward_weights is not None and len(c.reward_weights) != len(c.reward_funcs):
        raise ValueError(
            f"reward_weights has {len(c.reward_weights)} values but reward_funcs has {len(c.reward_funcs)} "
            f"functions ({c.reward_funcs}); give one weight per function."
        )
    if c.num_generations < 2:
        raise ValueError(f"num_generations must be >= 2 for group advantages, got {c.num_generations}.")
    if c.generation_batch_size % c.num_generations:
        raise ValueError(
            f"generation_batch_size {c.generation_batch_size} (per_device_train_batch_size "
            f"{c.per_device_train_batch_size} x steps_per_generation {c.steps_per_generation}) is not divisible by "
            f"num_generations {c.num_generations}; each prompt's group must fit in one rollout batch."
        )
    SamplerSettings.from_rollout_fields(c).check(("max_completion_length", "diffusion_steps", "block_length"))
    if c.boost_token and c.boost != 0.0 and c.remasking not in REMASKING:
        raise ValueError(
            f"boost_token is iLLaDA's end-of-thinking boost for LLaDA's schedule, not remasking {c.remasking!r}: "
            "unset boost_token or set boost 0."
        )
    if c.remasking not in BLOCK_SCHEDULES and c.variable_length != (KINDS[c.estimator].canvas == "growing"):
        raise ValueError(
            "variable_length rollouts are scored by estimator growing (each block on the canvas cut at its end, "
            "as they were decoded); a fixed-canvas estimator would noise blocks the sampler never wrote: set "
            "estimator growing."
            if c.variable_length
            else "estimator growing scores variable-length rollouts (the canvas cut at each block): set "
            "variable_length true, or use blockwise for fixed canvases."
        )
    from rewards.loops import UNITS as LOOP_UNITS  # numpy: not for --help

    if c.loop_unit not in LOOP_UNITS:
        raise ValueError(f"loop_unit {c.loop_unit!r} is not one of {', '.join(LOOP_UNITS)}.")
    if c.loop_stop_blocks < 0:
        raise ValueError(f"loop_stop_blocks must be >= 0 (0 = off), got {c.loop_stop_blocks}.")
    if c.loop_stop_blocks and (not c.variable_length or c.remasking not in REMASKING):
        raise ValueError(
            "loop_stop_blocks stops looping rows of variable-length rollouts (LLaDA's schedules): set "
            "variable_length true and estimator growing, or loop_stop_blocks 0."
        )
    check_objective(c)
    if c.estimator == "spg" and c.num_mc_samples > c.max_completion_length // c.block_length:
        raise ValueError(
            f"estimator spg draws one block per Monte Carlo sample: num_mc_samples {c.num_mc_samples} > "
            f"{c.max_completion_length // c.block_length} blocks (max_completion_length / block_length); lower it."
        )
    if c.beta == 0.0 and c.sync_ref_model:
        raise ValueError("sync_ref_model needs a reference model, but beta is 0 (no reference is kept).")


def passes_per_estimate(c) -> int:
    """Forward passes of one estimate under the config's estimator (its declaration, align.logprob.kinds)."""
    return KINDS[c.estimator].passes(c)


def resolve_mc_backward(c) -> None:
    """``mc_backward: auto`` -> chunked when one estimate has more passes than one call stacks (memory flat in
    the passes), joint otherwise (one chunk: the two are the same computation)."""
    if c.mc_backward == "auto":
        c.mc_backward = "chunked" if passes_per_estimate(c) > c.mc_chunk_size else "joint"


def resolve_and_check_grpo(c) -> None:
    """GRPO's derived fields and checks, in order, after the model/data checks: the config's ``__post_init__``
    and the recipe preflight both run exactly this."""
    resolve_generation_batch(c)
    resolve_method_defaults(c)
    check_grpo(c)
    resolve_mc_backward(c)
