"""The recipe fields (no torch imported).

Every field is documented once here, tagged with its help group (model, data, rollout, estimator, loss,
rewards, evaluation, logging), with the vocabularies the checks use. ``align.config`` adds
``transformers.TrainingArguments`` to these fields; ``align.checks`` holds the cross-field checks the config
and the command line's fast path both run; ``align.recipe`` reads a recipe (YAML + ``--field value``) and
prints the help.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from align.logprob.kinds import DPO_ESTIMATORS, ESTIMATOR_NAMES
from align.objectives import LOSS_TYPES  # noqa: F401 (the loss names, beside the estimators' and protocols')

# The vocabularies the checks use (the estimators' from their declarations, align.logprob.kinds).
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust", "cdpo")
PROTOCOL_NAMES = (
    "d1",
    "diffucoder",
    "dream",
    "illada",
    "llada",
    "llada-1.5-opencompass",
    "llada-fast",
    "llada-opencompass",
    "tiny",
    "tiny-block",
    "trado",
)
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


# each field's help group, keyed by its help text (transformers' HfArgumentParser passes metadata on to
# argparse: the metadata stays {help})
GROUP_OF_HELP: dict[str, str] = {}


def _help(group: str, text: str, **kwargs):
    GROUP_OF_HELP[text] = group
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
    loop_stop_blocks: int = _help(
        "rollout",
        "Variable-length rollouts: a row whose completion has ended in a loop (rewards/loops.py's definition, on "
        "its token ids) for this many consecutive blocks leaves the batch like a row that wrote a stop token; "
        "what it wrote is rewarded as written and counts as truncated. 0 = off.",
        default=0,
    )
    loop_unit: str = _help(
        "rollout",
        "What completions/loop_ratio reads a completion's text in (rewards/loops.py): words (whitespace-separated, "
        "tokenizer-independent) or chars, for text without spaces such as the character-level tiny tasks.",
        default="words",
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
        "Decoding protocol for eval_tasks (d1, llada, llada-fast, llada-opencompass, illada, tiny, ...); default: the rollouts' own prompt format "
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
