"""The recipe fields, their checks and the fast path of ``align train`` / ``align sft`` (no torch imported).

Every field is documented once here, tagged with its help group (model, data, rollout, estimator, loss,
rewards, evaluation, logging). ``align.config`` adds ``transformers.TrainingArguments`` to these fields;
before that heavy import the command line reads the recipe YAML, rejects unknown fields (with "did you
mean"), converts and checks every value, and runs the same cross-field checks the config runs, so a typo
costs a fraction of a second. ``TrainingArguments``' own field names, types and defaults are read from
transformers' source without importing it (``training_args_fields``).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib.util
import math
import os
import types
from dataclasses import dataclass, field

from align.objectives import ADVANTAGE_BASELINES, LOSS_TYPES, SCALE_REWARDS, check_objective
from align.sampling.settings import BLOCK_SCHEDULES, DREAM_ALGS, REMASKING, check_decoding

# The vocabularies the checks use; the estimator registry and the loss module are tested to agree.
ESTIMATOR_NAMES = (
    "block_trace",
    "blockwise",
    "coupled",
    "diffucoder",
    "elbo",
    "espo",
    "growing",
    "one_step",
    "spg",
    "trace",
)
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "cdpo")
# trace replays a rollout; spg, diffucoder and espo are their methods' GRPO estimators
DPO_ESTIMATORS = tuple(
    n for n in ESTIMATOR_NAMES if n not in ("trace", "block_trace", "growing", "spg", "diffucoder", "espo")
)
PROTOCOL_NAMES = ("d1", "diffucoder", "dream", "illada", "llada", "llada-fast", "tiny", "tiny-block", "trado")
BUILTIN_REWARDS = (
    "answer_tag_format",
    "code_execution",
    "countdown",
    "length_penalty",
    "loop_penalty",
    "math_accuracy",
    "python_block_format",
    "reasoning_answer_format",
    "repetition_penalty",
    "sudoku",
    "think_answer_format",
)
GROUPS = ("model", "data", "schedule", "rollout", "estimator", "loss", "rewards", "evaluation", "logging")


_GROUP_OF_HELP: dict[
    str, str
] = {}  # transformers' HfArgumentParser passes metadata on to argparse: keep it {help}


def _help(group: str, text: str, **kwargs):
    _GROUP_OF_HELP[text] = group
    return field(metadata={"help": text}, **kwargs)


@dataclass
class ModelDataFields:
    """Model, PEFT and data fields shared by GRPO and masked-diffusion SFT."""

    # ---- model --------------------------------------------------------------------------------------
    model_name_or_path: str = _help(
        "model", "Hub id or local path of the diffusion LM.", default="recipes/tiny/model"
    )
    dtype: str = _help("model", "Parameter dtype: bfloat16, float16, float32.", default="bfloat16")
    trust_remote_code: bool = _help(
        "model", "Run the checkpoint's own code (needed outside the LLaDA family).", default=False
    )
    attn_implementation: str | None = _help(
        "model",
        "Attention kernel for remote-code models (e.g. flash_attention_2); the native LLaDA uses SDPA.",
        default=None,
    )
    mask_token_id: int | None = _help(
        "model", "Override the mask id (normally read from config/tokenizer).", default=None
    )
    use_peft: bool = _help("model", "Train a LoRA adapter instead of all weights.", default=False)
    lora_r: int = _help("model", "LoRA rank.", default=16)
    lora_alpha: int = _help("model", "LoRA alpha.", default=32)
    lora_dropout: float = _help("model", "LoRA dropout.", default=0.0)
    lora_target_modules: list[str] | None = _help(
        "model",
        "Module names LoRA wraps; default: the model family's linear layers (LLaDA: q_proj k_proj v_proj attn_out "
        "ff_proj up_proj ff_out); all-linear (PEFT's name) wraps every linear layer. The LM head is never wrapped, "
        "although untied LLaDA names it ff_out.",
        default=None,
    )
    # ---- data ---------------------------------------------------------------------------------------
    dataset_name: str | None = _help(
        "data", "Hub dataset id (e.g. openai/gsm8k); or use dataset_files.", default=None
    )
    dataset_config: str | None = _help("data", "Hub dataset config name (e.g. main).", default=None)
    dataset_files: list[str] | None = _help(
        "data", "Local JSON/JSONL/CSV/Parquet files instead of a hub dataset.", default=None
    )
    dataset_split: str = _help("data", "Split to train on.", default="train")
    rename_columns: list[str] | None = _help(
        "data",
        "Dataset column renames 'old:new' (e.g. test_cases:tests so code_execution finds its column).",
        default=None,
    )
    prompt_column: str = _help("data", "Column holding the question / prompt text.", default="question")
    system_prompt: str | None = _help("data", "System prompt prepended to every chat.", default=None)
    use_chat_template: bool = _help("data", "Wrap prompts with the tokenizer's chat template.", default=True)
    max_prompt_length: int = _help(
        "data", "Prompts longer than this (tokens) are cut from the left.", default=256
    )
    # ---- schedule -----------------------------------------------------------------------------------
    max_time_s: float | None = _help(
        "schedule",
        "Stop after this many seconds of training (from the first step of this process; the step in progress "
        "finishes and the run saves as at max_steps, whichever comes first). Every log entry carries wall_s, "
        "the seconds since training began, for accuracy-vs-wall-clock plots.",
        default=None,
    )
    allow_changed: list[str] | None = _help(
        "schedule",
        "Fields a resumed run may change from its checkpoint's recipe (or all); without it, resuming into a "
        "different learning rate, reward, group size, estimator, dataset... stops with one line naming each change.",
        default=None,
    )
    overwrite_output_dir: bool = _help(
        "schedule",
        "Write into an output_dir that holds files committed to git (e.g. a recipe's committed model folder); "
        "without it such a run is refused before anything loads.",
        default=False,
    )
    drop_empty_prompts: bool = _help(
        "data",
        "Drop rows whose prompt is empty (the log says how many); false: refuse them, naming the rows.",
        default=False,
    )
    on_nonfinite: str = _help(
        "schedule",
        "A step whose gradient norm is NaN or inf: stop (one line naming the step and the newest complete "
        "checkpoint; the weights are not updated) or skip (drop that update with a warning line and a running "
        "count; not under DeepSpeed).",
        default="stop",
    )


@dataclass
class SFTFields(ModelDataFields):
    """Masked-diffusion SFT (LLaDA's objective): prompt clean, response + EOS padding masked at t ~ U(0, 1)."""

    init_config: str | None = _help(
        "model",
        "Start from random weights with this LLaDA config (JSON path) instead of model_name_or_path's "
        "weights; the tokenizer still comes from model_name_or_path.",
        default=None,
    )
    completion_column: str = _help("data", "Column holding the target response text.", default="completion")
    max_completion_length: int = _help(
        "data",
        "Responses are padded with EOS (and trained to predict it) up to this many tokens; longer ones are cut.",
        default=256,
    )
    growing_fraction: float = _help(
        "data",
        "Fraction of rows trained on the growing canvas instead of the whole one: one block (of block_length, "
        "up to the block holding the response's first EOS) masked at t ~ U, the clean earlier blocks before "
        "it and no later canvas, the process variable_length decoding runs (iLLaDA's). 0 = LLaDA's objective "
        "only; 1 = growing only; between, a model that decodes both ways.",
        default=0.0,
    )
    block_length: int | None = _help(
        "data",
        "Block size of the growing canvas (growing_fraction > 0); it must divide max_completion_length.",
        default=None,
    )


def check_sft(c) -> None:
    if not 0.0 <= c.growing_fraction <= 1.0:
        raise ValueError(f"growing_fraction must be in [0, 1], got {c.growing_fraction}.")
    if c.growing_fraction > 0 and (not c.block_length or c.max_completion_length % c.block_length):
        raise ValueError(
            f"growing_fraction {c.growing_fraction} needs block_length dividing max_completion_length "
            f"({c.max_completion_length}), got {c.block_length}: set e.g. --block_length 8."
        )


@dataclass
class DPOFields(ModelDataFields):
    """Preference optimisation (DPO / VRPO): TRL's DPO names; log-likelihoods are Monte Carlo estimates."""

    prompt_column: str = _help("data", "Column holding the prompt (text or chat messages).", default="prompt")
    chosen_column: str = _help(
        "data", "Column holding the preferred response (text or messages).", default="chosen"
    )
    rejected_column: str = _help("data", "Column holding the dispreferred response.", default="rejected")
    max_completion_length: int = _help(
        "data",
        "Response canvas: each response (+ its end token) is padded with EOS to this many tokens; pairs with "
        "a longer response are dropped (counted and named in the log).",
        default=256,
    )
    beta: float = _help(
        "loss", "DPO temperature: how far the policy may move from the reference.", default=0.1
    )
    loss_type: str = _help(
        "loss",
        "DPO loss: sigmoid, ipo, hinge, robust (TRL 1.16's definitions) or cdpo (conservative DPO: "
        "TRL 0.x's sigmoid with label smoothing).",
        default="sigmoid",
    )
    label_smoothing: float = _help(
        "loss",
        "robust / cdpo: probability that a preference label is flipped (TRL 1.16's sigmoid has none).",
        default=0.0,
    )
    precompute_ref_log_probs: bool = _help(
        "loss",
        "Estimate the reference once before training (masks fixed per row, from the seed) instead of at "
        "every step; saves the reference forward passes.",
        default=False,
    )
    estimator: str = _help(
        "estimator",
        "Log-likelihood estimator: " + ", ".join(DPO_ESTIMATORS) + " (VRPO: elbo).",
        default="elbo",
    )
    num_mc_samples: int = _help(
        "estimator", "Monte Carlo budget n per response (VRPO: 8; pairs for coupled).", default=8
    )
    masks_per_timestep: int = _help(
        "estimator",
        "elbo: masks drawn per sampled timestep; num_mc_samples / masks_per_timestep timesteps (VRPO: 1, "
        "i.e. n timesteps with one mask each).",
        default=1,
    )
    share_masks: bool = _help(
        "estimator",
        "VRPO's antithetic sampling: the policy and the reference score each response under the same "
        "timesteps and masks (false: independent draws, for comparison).",
        default=True,
    )
    mc_chunk_size: int = _help(
        "estimator", "Forward passes stacked per model call when estimating.", default=1
    )
    mc_backward: str = _help(
        "estimator",
        "chunked: backpropagate mc_chunk_size passes at a time through the detached DPO loss (memory flat in "
        "num_mc_samples, same gradient); joint: keep every pass's graph.",
        default="chunked",
    )


def check_dpo(c) -> None:
    choices = {
        "loss_type": list(DPO_LOSS_TYPES),
        "estimator": list(DPO_ESTIMATORS),
        "mc_backward": ["joint", "chunked"],
    }
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            raise ValueError(f"{name} {getattr(c, name)!r} is not one of {allowed}.")
    if c.beta <= 0:
        raise ValueError(f"beta must be > 0 for DPO, got {c.beta}.")
    if not 0.0 <= c.label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {c.label_smoothing}.")
    if c.label_smoothing and c.loss_type not in ("robust", "cdpo"):
        raise ValueError(
            f"label_smoothing {c.label_smoothing} has no effect with loss_type {c.loss_type!r} (TRL 1.16's "
            "sigmoid ignores it); use loss_type cdpo (conservative DPO, TRL 0.x's smoothed sigmoid) or robust."
        )
    if c.num_mc_samples < 1 or c.mc_chunk_size < 1:
        raise ValueError("num_mc_samples and mc_chunk_size must be >= 1.")
    if c.masks_per_timestep < 1 or c.num_mc_samples % c.masks_per_timestep:
        raise ValueError(
            f"num_mc_samples {c.num_mc_samples} is not a multiple of masks_per_timestep {c.masks_per_timestep}."
        )
    if c.masks_per_timestep > 1 and c.estimator != "elbo":
        raise ValueError("masks_per_timestep applies to estimator elbo only.")
    if c.precompute_ref_log_probs and not c.share_masks:
        raise ValueError("precompute_ref_log_probs fixes each row's masks: it needs share_masks true.")
    if c.max_completion_length < 1:
        raise ValueError(f"max_completion_length must be >= 1, got {c.max_completion_length}.")


@dataclass
class GRPOFields(ModelDataFields):
    """GRPO: the model/data fields plus TRL's GRPO fields and the diffusion sampler/estimator fields."""

    # ---- generation (the diffusion sampler) ---------------------------------------------------------
    num_generations: int = _help("rollout", "Completions per prompt (the GRPO group size G).", default=8)
    generation_batch_size: int | None = _help(
        "rollout",
        "Completions generated per rollout phase per device (= per_device_train_batch_size x "
        "steps_per_generation; set one of the two).",
        default=None,
    )
    steps_per_generation: int | None = _help(
        "rollout",
        "Optimizer micro-steps served by one rollout phase; default gradient_accumulation_steps.",
        default=None,
    )
    max_completion_length: int = _help(
        "rollout", "Generated tokens per completion (the canvas length).", default=256
    )
    block_length: int = _help("rollout", "Semi-autoregressive block length of the sampler.", default=32)
    diffusion_steps: int = _help(
        "rollout", "Sampler steps for max_completion_length tokens (upper bound with threshold).", default=128
    )
    temperature: float = _help("rollout", "Sampling temperature (Gumbel-max); 0 = greedy.", default=0.9)
    remasking: str = _help(
        "rollout",
        "Which tokens to commit: low_confidence or random (LLaDA's schedule), one of Dream's schedules "
        "origin, maskgit_plus, topk_margin, entropy (one block: block_length = max_completion_length), or for "
        "block-diffusion models (SDAR, TraDo) low_confidence_static, low_confidence_dynamic (with threshold), "
        "sequential (block_length = the model's block size).",
        default="low_confidence",
    )
    top_p: float | None = _help(
        "rollout", "Dream's and SDAR's schedules: nucleus cut of the proposals.", default=None
    )
    top_k: int | None = _help(
        "rollout", "Dream's and SDAR's schedules: top-k cut of the proposals.", default=None
    )
    alg_temp: float | None = _help(
        "rollout",
        "Dream's schedules: draw the positions to commit at this temperature (None: the top ones).",
        default=None,
    )
    diffusion_eps: float = _help(
        "rollout", "Dream's schedules: the last timestep (Dream's eps).", default=1e-3
    )
    threshold: float | None = _help(
        "rollout", "Fast-dLLM confidence threshold for parallel decoding; None = reference.", default=None
    )
    cache: str | None = _help(
        "rollout", "KV cache for rollouts: None, prefix or dual (native LLaDA only).", default=None
    )
    cache_refresh: int | None = _help(
        "rollout",
        "With a cache: re-encode the whole canvas once some row committed this many tokens since the last "
        "full pass (None: only at block starts).",
        default=None,
    )
    cfg_scale: float = _help("rollout", "Classifier-free guidance scale (0 = off).", default=0.0)
    variable_length: bool = _help(
        "rollout",
        "Grow each rollout block by block (each block decoded on the canvas cut at its end) until it emits a "
        "stop token, max_completion_length at most (iLLaDA's decoding); needs estimator growing, the likelihood "
        "of that process. Block-diffusion models always stop at their stop token.",
        default=False,
    )
    boost_token: str | None = _help(
        "rollout",
        "iLLaDA's end-of-thinking boost in rollouts, as its authors' evaluation computes it (the illada eval "
        "protocol's rule): at each step, the leftmost masked position of the block gets boost * progress ** "
        "boost_power added to the next piece of this text's tokens (e.g. </think>), progress being the position's "
        "share of max_completion_length, until the completion holds the whole text. None: off.",
        default=None,
    )
    boost: float = _help("rollout", "The end-of-thinking boost's scale (iLLaDA: 100).", default=0.0)
    boost_power: float = _help(
        "rollout", "The end-of-thinking boost's power of progress (iLLaDA: 3; 1 for HumanEval).", default=3.0
    )
    max_gpu_memory_gb: float | None = _help(
        "schedule",
        "GiB per process for the start-up memory check (align plan's phases); default: the visible GPU's "
        "memory, no check on CPU.",
        default=None,
    )
    rollout_batch_size: int | None = _help(
        "rollout",
        "Rows the sampler decodes together per process (None: the whole generation batch at once). Smaller "
        "bounds the rollout's memory (align plan says when it must); the rows then get other random draws.",
        default=None,
    )
    rollout_engine: str = _help(
        "rollout",
        "Where rollouts are decoded: in_process (the policy in each training process) or ray_server (a "
        "DiffusionServer Ray actor per process, align.rollout.server; the policy's weights are pushed to it "
        "before each rollout phase; full fine-tuning without ZeRO-3). ray_address: the cluster to join.",
        default="in_process",
    )
    ray_address: str | None = _help(
        "rollout",
        "Ray cluster address for rollout_engine ray_server (None: join RAY_ADDRESS or start one).",
        default=None,
    )
    mask_truncated_completions: bool = _help(
        "rollout", "Exclude completions with no EOS from the loss.", default=False
    )
    # ---- likelihood estimation ----------------------------------------------------------------------
    estimator: str = _help(
        "estimator", "Log-likelihood estimator: " + ", ".join(ESTIMATOR_NAMES) + ".", default="one_step"
    )
    trace_merge: int = _help(
        "estimator",
        "trace: sampler steps replayed per forward pass (1 = exact replay, diffusion_steps passes; k: "
        "diffusion_steps / k passes, biased).",
        default=1,
    )
    num_mc_samples: int = _help(
        "estimator", "Monte Carlo samples per estimate (pairs for coupled).", default=1
    )
    p_mask_prompt: float = _help(
        "estimator", "Probability of masking each prompt token (d1 uses 0.15).", default=0.0
    )
    mc_chunk_size: int = _help(
        "estimator", "Forward passes stacked per model call when estimating.", default=1
    )
    mc_backward: str = _help(
        "estimator",
        "joint: keep every pass's graph until the loss; chunked: backpropagate mc_chunk_size passes at a time, "
        "peak memory flat in num_mc_samples, same gradient, one extra no-grad estimate unless on-policy with "
        "beta 0; auto: chunked when an estimate has more passes than mc_chunk_size, else joint.",
        default="auto",
    )
    # ---- loss (TRL names) ---------------------------------------------------------------------------
    loss_type: str = _help(
        "loss",
        "Loss: grpo, bnpo, dr_grpo, dapo (TRL's aggregations of the clipped ratio); as their authors "
        "released them: wd1, spg and stabledrl (estimator spg), bgpo, espo (estimator espo), justgrpo and "
        "tracerl (estimator trace); our variants: wd1_mean, stabledrl_clip (align/losses.py).",
        default="dapo",
    )
    beta: float = _help("loss", "KL coefficient; 0 skips the reference model.", default=0.0)
    kl_estimator: str = _help("loss", "KL estimator: k3 (TRL) or k2.", default="k3")
    epsilon: float = _help("loss", "Lower clip range of the ratio.", default=0.2)
    epsilon_high: float | None = _help("loss", "Upper clip range; default epsilon.", default=None)
    delta: float | None = _help("loss", "Cap on the ratio for two-sided clipping; None = off.", default=None)
    importance_sampling_level: str = _help(
        "loss", "Ratio per token or per sequence (GSPO / ESPO).", default="token"
    )
    num_iterations: int = _help("loss", "Inner updates per rollout batch (mu).", default=1)
    scale_rewards: str | None = _help(
        "loss",
        "Advantage scaling: group, batch or none (mean-centring only); default group (TRL's), or what a "
        "released method's code fixes (wd1, spg, espo: none).",
        default=None,
    )
    advantage_baseline: str | None = _help(
        "loss",
        "group_mean (TRL) or leave_one_out (DiffuCoder, ESPO: r minus the mean of the other G - 1 "
        "rewards of its group); scale_rewards divides either by the group's std. Default group_mean, or what a "
        "released method's code fixes (espo: leave_one_out).",
        default=None,
    )
    wd1_psi: float = _help(
        "loss", "Temperature of wd1's advantage softmax (1 = wd1's released code).", default=1.0
    )
    tracerl_beta: float = _help(
        "loss",
        "tracerl: coefficient of the k3 KL to the rollout (old) policy, TraceRL's beta (0.01 in its "
        "configs); TraceRL has no reference-model KL (beta stays 0).",
        default=0.01,
    )
    spg_beta: float = _help(
        "loss",
        "spg: beta of the upper bound (EUBO) for negative-advantage samples (SPG: 1.5 math, 1.0 sudoku, "
        "2.0 countdown).",
        default=1.5,
    )
    spg_mix: float = _help(
        "loss",
        "spg: negative-advantage samples use mix * EUBO + (1 - mix) * ELBO (1 = EUBO only).",
        default=0.5,
    )
    bgpo_dual_clip: float = _help(
        "loss",
        "bgpo: for negative advantages the loss is capped at -A * this (dual-clip PPO; verl's clip_ratio_c).",
        default=3.0,
    )
    stabledrl_max_weight: float = _help(
        "loss",
        "stabledrl: importance weights are clipped from above at this value before self-normalising "
        "(StableDRL's ais_clip_iw).",
        default=5.0,
    )
    sync_ref_model: bool = _help("loss", "Periodically mix policy weights into the reference.", default=False)
    ref_model_sync_steps: int = _help("loss", "Steps between reference syncs.", default=512)
    ref_model_mixup_alpha: float = _help(
        "loss", "ref <- (1 - alpha) ref + alpha policy at each sync.", default=0.6
    )
    # ---- rewards ------------------------------------------------------------------------------------
    reward_funcs: list[str] = _help(
        "rewards",
        "Reward specs: built-in names (" + ", ".join(BUILTIN_REWARDS) + "), package.module:function or "
        "path/to/file.py:function (relative paths and modules resolve from the working directory).",
        default_factory=lambda: ["math_accuracy"],
    )
    reward_weights: list[float] | None = _help(
        "rewards", "One weight per reward function; default all 1.", default=None
    )
    reward_timeout_s: float = _help(
        "rewards",
        "Seconds one reward function may take for one batch. Past it the run stops with one line naming the "
        "function and the sample (checkpoints already written are kept; resume from them).",
        default=600.0,
    )
    # ---- evaluation during training ------------------------------------------------------------------
    eval_tasks: list[str] | None = _help(
        "evaluation",
        "Held-out tasks scored every eval_steps by the eval runner (all processes share the work): gsm8k, "
        "math500, humaneval, mbpp or NAME=file.jsonl (math rows with question/answer). Logged as "
        "eval/<task>/<metric>; metric_for_best_model (e.g. eval/tiny/accuracy) with load_best_model_at_end "
        "keeps the best checkpoint. Setting it turns eval_strategy to steps.",
        default=None,
    )
    eval_protocol: str | None = _help(
        "evaluation",
        "Decoding protocol for eval_tasks (d1, llada, llada-fast, illada, tiny); default: the rollouts' own prompt format "
        "and sampler settings, greedy.",
        default=None,
    )
    eval_limit: int | None = _help(
        "evaluation", "Score only the first N questions of each eval task.", default=None
    )
    eval_data_dir: str | None = _help(
        "evaluation", "Read eval tasks from DIR/<task>.jsonl instead of the hub.", default=None
    )
    # ---- logging ------------------------------------------------------------------------------------
    log_completions: bool = _help(
        "logging",
        "At each logging step show a sample of the rollout (prompt, completion, each reward, advantage): a "
        "console table, a wandb / TensorBoard table when report_to names them, and OUTPUT_DIR/completions.jsonl.",
        default=False,
    )
    num_completions_to_print: int = _help("logging", "How many completions the sample holds.", default=4)


# ---- checks: run on the real config (align.config) and, before any heavy import, on a plain view ------
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
    check_decoding(
        c.remasking,
        c.max_completion_length,
        c.diffusion_steps,
        c.block_length,
        ("max_completion_length", "diffusion_steps", "block_length"),
        top_p=c.top_p,
        top_k=c.top_k,
        alg_temp=c.alg_temp,
        threshold=c.threshold,
        cache=c.cache,
        cfg_scale=c.cfg_scale,
        variable_length=c.variable_length,
    )
    if c.boost_token and c.boost != 0.0 and c.remasking not in REMASKING:
        raise ValueError(
            f"boost_token is iLLaDA's end-of-thinking boost for LLaDA's schedule, not remasking {c.remasking!r}: "
            "unset boost_token or set boost 0."
        )
    if c.remasking not in BLOCK_SCHEDULES and c.variable_length != (c.estimator == "growing"):
        raise ValueError(
            "variable_length rollouts are scored by estimator growing (each block on the canvas cut at its end, "
            "as they were decoded); a fixed-canvas estimator would noise blocks the sampler never wrote: set "
            "estimator growing."
            if c.variable_length
            else "estimator growing scores variable-length rollouts (the canvas cut at each block): set "
            "variable_length true, or use blockwise for fixed canvases."
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
    """Forward passes of one estimate under the config's estimator."""
    k = c.num_mc_samples
    per_block = max(1, c.diffusion_steps // max(1, c.max_completion_length // c.block_length))
    return {
        "coupled": 2 * k,
        "espo": 2 * k,
        "diffucoder": 3 * k,
        "trace": math.ceil(c.diffusion_steps / c.trace_merge),
        "block_trace": math.ceil(per_block / c.trace_merge),
    }.get(c.estimator, k)


def resolve_mc_backward(c) -> None:
    """``mc_backward: auto`` -> chunked when one estimate has more passes than one call stacks (memory flat in
    the passes), joint otherwise (one chunk: the two are the same computation)."""
    if c.mc_backward == "auto":
        c.mc_backward = "chunked" if passes_per_estimate(c) > c.mc_chunk_size else "joint"


def check_protocol(protocol) -> None:
    """A decoding protocol's sampler settings (``align eval`` / ``align generate`` before loading), with
    each task's own settings."""
    for task, _ in getattr(protocol, "per_task", ()):
        try:
            check_protocol(protocol.for_task(task))
        except ValueError as e:
            raise ValueError(f"{e} (protocol {protocol.name!r}, task {task})") from None
    check_decoding(
        protocol.remasking,
        protocol.gen_length,
        protocol.resolved_steps(),
        protocol.block_length,
        ("--gen-length", "--steps", "--block-length"),
        top_p=protocol.top_p,
        top_k=protocol.top_k,
        alg_temp=protocol.alg_temp,
        threshold=protocol.threshold,
        cache=protocol.cache,
        cfg_scale=protocol.cfg_scale,
        variable_length=protocol.variable_length,
    )
    if protocol.cache_refresh is not None and (protocol.cache is None or protocol.cache_refresh < 1):
        raise ValueError(
            f"--cache-refresh {protocol.cache_refresh} needs --cache prefix or dual and a value >= 1."
        )


# ---- TrainingArguments' fields, read from transformers' source (importing it costs seconds) ------------
@dataclass(frozen=True)
class FieldInfo:
    name: str
    annotation: str  # e.g. "int | None", "list[str]"
    default: object
    help: str
    group: str


@functools.cache
def training_args_fields() -> dict[str, FieldInfo]:
    """``TrainingArguments``' fields (name, annotation, literal default or None, help), without importing it."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return {}
    with open(os.path.join(os.path.dirname(spec.origin), "training_args.py")) as f:
        tree = ast.parse(f.read())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "TrainingArguments")
    out = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)) or node.value is None:
            continue
        default, text = None, ""
        if isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "field":
            for kw in node.value.keywords:
                if kw.arg == "default":
                    default = _literal(kw.value)
                elif kw.arg == "metadata" and isinstance(kw.value, ast.Dict):
                    for k, v in zip(kw.value.keys, kw.value.values):
                        if _literal(k) == "help":
                            text = _literal(v) or ""
        else:
            default = _literal(node.value)
        name = node.target.id
        out[name] = FieldInfo(
            name, ast.unparse(node.annotation), default, " ".join(str(text).split()), "trainer"
        )
    return out


def _literal(node):
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError):
        return None


def our_fields(cls) -> dict[str, FieldInfo]:
    out = {}
    for f in dataclasses.fields(cls):
        group = _GROUP_OF_HELP.get(f.metadata.get("help", ""))
        if group is None:  # TrainingArguments' own, when cls is a full config
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        out[f.name] = FieldInfo(f.name, _annotation(cls, f.name), default, f.metadata["help"], group)
    return out


def _annotation(cls, name: str) -> str:
    """A field's annotation as written (``"float | None"``): from the class bodies, because transformers'
    HfArgumentParser rewrites ``Field.type`` in place (``float | None`` becomes ``float``) when it parses a
    config class that inherits the field, which would change how a later command in the process converts."""
    for klass in cls.__mro__:
        written = vars(klass).get("__annotations__", {})
        if name in written:
            return str(written[name])
    raise KeyError(name)


# ---- reading a recipe: YAML + --field value pairs -> checked values ------------------------------------
def convert(name: str, annotation: str, value):
    """``value`` (a command-line string or a YAML value) as the field's type; ValueError in one line."""
    kinds = {k.strip() for k in annotation.replace("Optional[", "").rstrip("]").split("|")}
    if value is None or (isinstance(value, str) and value == "None" and "None" in kinds):
        return None
    lists = [k for k in kinds if k.startswith("list[")]
    if lists and ("str" not in kinds or isinstance(value, list)):
        inner = lists[0][5:-1]
        items = value if isinstance(value, list) else [value]
        return [convert(name, inner, v) for v in items]
    if isinstance(value, list):
        if len(value) == 1:
            return convert(name, annotation, value[0])
        raise ValueError(f"--{name} takes one value, got {len(value)}: {value}.")
    for kind, parse in (("bool", _bool), ("int", _int), ("float", float)):
        if kind in kinds:
            try:
                return parse(value)
            except (TypeError, ValueError):
                if "str" in kinds:
                    break  # e.g. "str | bool": any other text is a string
                expected = {"bool": "true or false", "int": "an integer", "float": "a number"}[kind]
                raise ValueError(f"--{name} {value!r} is not {expected}.") from None
    return str(value) if "str" in kinds and isinstance(value, (int, float)) else value


def _int(value) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(value)


def parse_overrides(argv: list[str], known: dict[str, FieldInfo]) -> dict[str, object]:
    """``--field value [value ...]`` pairs (exact names: no prefixes) -> {field: raw value(s)}."""
    out: dict[str, object] = {}
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"unexpected argument {token!r}; fields are given as --field value.")
        name, eq, inline = token[2:].partition("=")
        name = name.replace("-", "_")  # --num-generations and --num_generations alike
        negated = name.startswith("no_") and name not in known and name[3:] in known
        field_name = name[3:] if negated else name
        if field_name not in known:
            raise ValueError(f"unknown field --{name}{suggest(name, known)}")
        values = [inline] if eq else []
        i += 1
        while not eq and i < len(argv) and not (argv[i].startswith("--") and len(argv[i]) > 2):
            values.append(argv[i])
            i += 1
        if negated:
            if values:
                raise ValueError(f"--{name} takes no value.")
            out[field_name] = False
        elif not values:
            if "bool" not in known[field_name].annotation:
                raise ValueError(f"--{name} needs a value.")
            out[field_name] = True
        else:
            out[field_name] = (
                values if len(values) > 1 or known[field_name].annotation.startswith("list") else values[0]
            )
    return out


_YAML11_BOOLS = ("yes", "no", "on", "off", "y", "n")


def _check_yaml_traps(path: str, root, known) -> None:
    """A recipe's YAML read strictly: a field given twice is refused (YAML keeps the last silently), and a bare
    yes / no / on / off for a field that is not a boolean (YAML 1.1 reads ``save_strategy: no`` as false) is
    refused with the quoted form to write."""
    if root is None or not hasattr(root, "value") or not isinstance(root.value, list):
        return
    seen: dict[str, int] = {}
    for key, value in root.value:
        name = getattr(key, "value", None)
        if not isinstance(name, str):
            continue
        line = key.start_mark.line + 1
        if name in seen:
            raise ValueError(
                f"{path}: field {name!r} is given twice (lines {seen[name]} and {line}); keep one."
            )
        seen[name] = line
        info = known.get(name)
        is_bool = info is not None and str(info.annotation).startswith("bool")
        if (
            getattr(value, "tag", "").endswith(":bool")
            and value.style is None
            and str(value.value).lower() in _YAML11_BOOLS
            and not is_bool
        ):
            raise ValueError(
                f"{path}: line {line}: YAML reads {name}: {value.value} as a boolean; quote it: "
                f'{name}: "{value.value}".'
            )


def suggest(name: str, known, prefix: str = "--") -> str:
    """'; did you mean --x?' for the closest known names, else '.'."""
    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.75)
    return f"; did you mean {' or '.join(prefix + c for c in close)}?" if close else "."


def recipe_values(cls, path: str | None, overrides: list[str], prog: str) -> dict[str, object]:
    """The recipe's fields (YAML, then the command line), names and values checked, not yet defaulted."""
    import yaml

    known = {**training_args_fields(), **our_fields(cls)}
    values: dict[str, object] = {}
    if path is not None:
        if os.path.isdir(path):
            raise ValueError(
                f"--config {path} is a folder; give a recipe YAML file (e.g. {path.rstrip('/')}/grpo.yaml)."
            )
        try:
            with open(path) as f:
                text = f.read()
            if not text.strip():
                raise ValueError(
                    f"--config {path} is empty; give a recipe with fields, or leave --config out and "
                    "give every field on the command line."
                )
            values = yaml.safe_load(text) or {}
            _check_yaml_traps(path, yaml.compose(text, Loader=yaml.SafeLoader), known)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({' '.join(str(exc).split())}).") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(values).__name__}.")
        for name in values:
            if name not in known:
                hint = suggest(name, known, prefix="")
                raise ValueError(
                    f"{path}: unknown config field {name!r}{hint[:-1] if hint == '.' else hint} "
                    f"`{prog} --help` lists the fields."
                )
            if isinstance(values[name], dict):
                raise ValueError(f"{path}: field {name!r} is a nested mapping; flatten it.")
    values.update(parse_overrides(overrides, known))
    return {name: convert(name, known[name].annotation, value) for name, value in values.items()}


def check_output_dir(path: str) -> None:
    """output_dir is, or can be created as, a folder this process can write; nothing is created here."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"output_dir {path} is a file; give a folder (it is created when missing).")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"output_dir {path} cannot be created: {existing} is a file.")
    try:
        probe = os.path.join(existing, f".align-write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as exc:
        raise ValueError(
            f"output_dir {path} is not writable ({exc.strerror} in {existing}); give a folder you can write."
        ) from None


def check_hub_push(view) -> None:
    """push_to_hub needs a token and a reachable hub: checked before training, not after it."""
    if not getattr(view, "push_to_hub", False):
        return
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, get_token

    if constants.HF_HUB_OFFLINE:
        raise ValueError("push_to_hub true, but HF_HUB_OFFLINE is set; unset it or set push_to_hub false.")
    if not get_token():
        raise ValueError("push_to_hub true needs a hub token: run `hf auth login` or set HF_TOKEN.")
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.create_connection((host, 443), timeout=10).close()
    except OSError as exc:
        raise ValueError(
            f"push_to_hub true, but the hub ({host}) is unreachable ({exc}); set push_to_hub false "
            "and upload the output folder later."
        ) from None


def preflight(cls, values: dict[str, object]) -> None:
    """Run the config's own checks on a plain view (TrainingArguments' literal defaults, the fields'
    defaults, the recipe's values) and the local paths it names, before anything heavy is imported."""
    from align.errors import check_model_path

    view = types.SimpleNamespace(
        **{n: f.default for n, f in training_args_fields().items()},
        **{n: f.default for n, f in our_fields(cls).items()},
    )
    for name, value in values.items():
        setattr(view, name, value)
    view.eval_strategy = view.eval_strategy or "no"
    if view.per_device_train_batch_size is None or view.gradient_accumulation_steps is None:
        return  # transformers' source did not give its defaults; the config checks everything later
    if hasattr(view, "reward_funcs"):
        resolve_eval(view)
    check_model_data(view)
    if hasattr(view, "reward_funcs"):
        resolve_generation_batch(view)
        resolve_method_defaults(view)
        check_grpo(view)
        resolve_mc_backward(view)
        check_reward_specs(view.reward_funcs)
    if hasattr(view, "chosen_column"):
        check_dpo(view)
    if hasattr(view, "growing_fraction"):
        check_sft(view)
    if not getattr(view, "init_config", None):
        check_model_path(view.model_name_or_path, "model_name_or_path")
    for path in view.dataset_files or []:
        if not os.path.exists(path):
            raise ValueError(f"dataset_files: {path} does not exist (paths are relative to {os.getcwd()}).")
        if os.path.isfile(path) and _blank_file(path):
            raise ValueError(
                f"dataset_files: {path} is empty (no rows); give a file with one row per line "
                "(JSONL), or the file this recipe meant."
            )
    from align.machine import check_report_to

    check_report_to(getattr(view, "report_to", None))
    if view.output_dir:
        check_output_dir(view.output_dir)
    check_hub_push(view)


def _blank_file(path: str) -> bool:
    """True when the file holds nothing but whitespace (read until the first other byte)."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return False
    return True


def check_reward_specs(specs: list[str]) -> None:
    """Built-in names (with their parameters) and file paths are checked here; modules are imported when the
    trainer starts."""
    for full in specs:
        spec, params = full, {}
        if "(" in full:
            from rewards import split_params

            spec, params = split_params(full)
        if params and spec in BUILTIN_REWARDS:
            from rewards import get

            get(full)  # its parameters: names and values
        target = spec.rsplit(":", 1)[0] if ":" in spec else None
        if target is None and spec not in BUILTIN_REWARDS:
            hint = suggest(spec, BUILTIN_REWARDS, prefix="")
            raise ValueError(
                f"unknown reward {spec!r}{'.' if hint == '.' else hint} Built-ins are "
                f"{', '.join(BUILTIN_REWARDS)}, or give package.module:function or path/to/file.py:function."
            )
        if target is not None and target.endswith(".py") and not os.path.isfile(target):
            raise ValueError(
                f"reward {spec!r}: file {target} does not exist (paths are relative to {os.getcwd()})."
            )
        if target is not None and target.endswith(".py"):
            with open(target, "rb") as f:
                source = f.read()
            try:
                compile(source, target, "exec")
            except SyntaxError as exc:
                raise ValueError(
                    f"reward file {target} line {exc.lineno}: {exc.msg}; fix the file."
                ) from None


# ---- help: the project's fields first, grouped; TrainingArguments' after them --------------------------
def render_help(cls, prog: str, description: str) -> str:
    lines = [
        f"usage: {prog} [--config RECIPE.yaml] [--field value ...]",
        "",
        description + ". A recipe YAML "
        "sets fields; --field value overrides it (the command line wins). Booleans: --flag true|false.",
        "",
    ]
    ours = our_fields(cls)
    for group in GROUPS:
        members = [f for f in ours.values() if f.group == group]
        if members:
            lines.append(f"{group}:")
            lines += [_help_line(f) for f in members]
            lines.append("")
    lines.append(
        "training (transformers.TrainingArguments: output_dir, batch sizes, optimizer, saving, logging):"
    )
    lines += [_help_line(f, short=True) for f in training_args_fields().values() if f.name not in ours]
    return "\n".join(lines) + "\n"


def _help_line(f: FieldInfo, short: bool = False) -> str:
    text = f.help.split(". ")[0].rstrip(".") + "." if short and f.help else f.help
    default = "" if f.default in (None, "", []) else f" (default: {f.default})"
    return f"  --{f.name} {f.annotation.upper().replace(' | NONE', '')}\n      {text}{default}"
