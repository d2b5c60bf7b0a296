"""The GRPO training config: TRL's GRPO names and semantics plus the diffusion, model and data fields.

``GRPOConfig`` extends ``transformers.TrainingArguments`` (output_dir, learning_rate, batch sizes,
logging/saving, ``report_to``, seed, bf16, ...) and documents every field once. ``load_config`` reads a
recipe YAML and applies ``--field value`` overrides from the command line (the command line wins).
Cross-field checks in ``__post_init__`` state the arithmetic when something does not fit.

Batch sizes are per device and count completions (TRL's meaning): one rollout phase generates
``generation_batch_size`` completions (``/ num_generations`` prompts) per device and serves
``steps_per_generation`` micro-batches of ``per_device_train_batch_size``, ``num_iterations`` times.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser, TrainingArguments

from align.eval.tasks import PROTOCOLS
from align.logprob import ESTIMATORS
from align.losses import LOSS_TYPES, SCALE_REWARDS
from align.sampling.diffusion import check_schedule


def _help(text: str, **kwargs):
    return field(metadata={"help": text}, **kwargs)


@dataclass
class ModelDataConfig(TrainingArguments):
    """Model, PEFT and data fields shared by GRPO (``GRPOConfig``) and masked-diffusion SFT (``SFTConfig``)."""

    # ---- model --------------------------------------------------------------------------------------
    model_name_or_path: str = _help("Hub id or local path of the diffusion LM.", default="recipes/tiny/model")
    dtype: str = _help("Parameter dtype: bfloat16, float16, float32.", default="bfloat16")
    trust_remote_code: bool = _help(
        "Run the checkpoint's own code (needed outside the LLaDA family).", default=False
    )
    attn_implementation: str | None = _help(
        "Attention kernel for remote-code models (e.g. flash_attention_2); the native LLaDA uses SDPA.",
        default=None,
    )
    mask_token_id: int | None = _help(
        "Override the mask id (normally read from config/tokenizer).", default=None
    )
    use_peft: bool = _help("Train a LoRA adapter instead of all weights.", default=False)
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA alpha.", default=32)
    lora_dropout: float = _help("LoRA dropout.", default=0.0)
    lora_target_modules: list[str] = _help(
        "Module names LoRA wraps (LLaDA names; the LM head is never wrapped, although untied LLaDA names it ff_out).",
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"],
    )
    # ---- data ---------------------------------------------------------------------------------------
    dataset_name: str | None = _help(
        "Hub dataset id (e.g. openai/gsm8k); or use dataset_files.", default=None
    )
    dataset_config: str | None = _help("Hub dataset config name (e.g. main).", default=None)
    dataset_files: list[str] | None = _help(
        "Local JSON/JSONL/CSV/Parquet files instead of a hub dataset.", default=None
    )
    dataset_split: str = _help("Split to train on.", default="train")
    rename_columns: list[str] | None = _help(
        "Dataset column renames 'old:new' (e.g. test_cases:tests so code_execution finds its column).",
        default=None,
    )
    prompt_column: str = _help("Column holding the question / prompt text.", default="question")
    system_prompt: str | None = _help("System prompt prepended to every chat.", default=None)
    use_chat_template: bool = _help("Wrap prompts with the tokenizer's chat template.", default=True)
    max_prompt_length: int = _help("Prompts longer than this (tokens) are cut from the left.", default=256)

    def __post_init__(self):
        super().__post_init__()
        for item in self.rename_columns or []:
            if item.count(":") != 1 or "" in item.split(":"):
                raise ValueError(f"rename_columns entry {item!r} is not 'old:new'.")
        if self.dataset_name is None and not self.dataset_files:
            raise ValueError("No training data: set dataset_name (a hub id) or dataset_files (local files).")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype {self.dtype!r} is not one of ['bfloat16', 'float16', 'float32'].")


@dataclass
class SFTConfig(ModelDataConfig):
    """Masked-diffusion SFT (LLaDA's objective): prompt clean, response + EOS padding masked at t ~ U(0, 1)."""

    init_config: str | None = _help(
        "Start from random weights with this LLaDA config (JSON path) instead of model_name_or_path's "
        "weights; the tokenizer still comes from model_name_or_path.",
        default=None,
    )
    completion_column: str = _help("Column holding the target response text.", default="completion")
    max_completion_length: int = _help(
        "Responses are padded with EOS (and trained to predict it) up to this many tokens; longer ones are cut.",
        default=256,
    )


@dataclass
class GRPOConfig(ModelDataConfig):
    """GRPO: the model/data fields plus TRL's GRPO fields and the diffusion sampler/estimator fields."""

    # ---- generation (the diffusion sampler) ---------------------------------------------------------
    num_generations: int = _help("Completions per prompt (the GRPO group size G).", default=8)
    generation_batch_size: int | None = _help(
        "Completions generated per rollout phase per device (= per_device_train_batch_size x "
        "steps_per_generation; set one of the two).",
        default=None,
    )
    steps_per_generation: int | None = _help(
        "Optimizer micro-steps served by one rollout phase; default gradient_accumulation_steps.",
        default=None,
    )
    max_completion_length: int = _help("Generated tokens per completion (the canvas length).", default=256)
    block_length: int = _help("Semi-autoregressive block length of the sampler.", default=32)
    diffusion_steps: int = _help(
        "Sampler steps for max_completion_length tokens (upper bound with threshold).", default=128
    )
    temperature: float = _help("Sampling temperature (Gumbel-max); 0 = greedy.", default=0.9)
    remasking: str = _help("Which tokens to commit: low_confidence or random.", default="low_confidence")
    threshold: float | None = _help(
        "Fast-dLLM confidence threshold for parallel decoding; None = reference.", default=None
    )
    cache: str | None = _help(
        "KV cache for rollouts: None, prefix or dual (native LLaDA only).", default=None
    )
    cfg_scale: float = _help("Classifier-free guidance scale (0 = off).", default=0.0)
    mask_truncated_completions: bool = _help("Exclude completions with no EOS from the loss.", default=False)
    # ---- likelihood estimation ----------------------------------------------------------------------
    estimator: str = _help(
        "Log-likelihood estimator: " + ", ".join(sorted(ESTIMATORS)) + ".", default="one_step"
    )
    num_mc_samples: int = _help("Monte Carlo samples per estimate (pairs for coupled).", default=1)
    p_mask_prompt: float = _help("Probability of masking each prompt token (d1 uses 0.15).", default=0.0)
    mc_chunk_size: int = _help("Forward passes stacked per model call when estimating.", default=1)
    # ---- loss (TRL names) ---------------------------------------------------------------------------
    loss_type: str = _help("Aggregation: " + ", ".join(LOSS_TYPES) + ".", default="dapo")
    beta: float = _help("KL coefficient; 0 skips the reference model.", default=0.0)
    kl_estimator: str = _help("KL estimator: k3 (TRL) or k2.", default="k3")
    epsilon: float = _help("Lower clip range of the ratio.", default=0.2)
    epsilon_high: float | None = _help("Upper clip range; default epsilon.", default=None)
    delta: float | None = _help("Cap on the ratio for two-sided clipping; None = off.", default=None)
    importance_sampling_level: str = _help("Ratio per token or per sequence (GSPO / ESPO).", default="token")
    num_iterations: int = _help("Inner updates per rollout batch (mu).", default=1)
    scale_rewards: str = _help(
        "Advantage scaling: group, batch or none (mean-centring only).", default="group"
    )
    wd1_psi: float = _help("Temperature of wd1's advantage softmax.", default=1.0)
    sync_ref_model: bool = _help("Periodically mix policy weights into the reference.", default=False)
    ref_model_sync_steps: int = _help("Steps between reference syncs.", default=512)
    ref_model_mixup_alpha: float = _help("ref <- (1 - alpha) ref + alpha policy at each sync.", default=0.6)
    # ---- rewards ------------------------------------------------------------------------------------
    reward_funcs: list[str] = _help(
        "Reward specs: built-in names, package.module:function or path/file.py:function.",
        default_factory=lambda: ["math_accuracy"],
    )
    reward_weights: list[float] | None = _help("One weight per reward function; default all 1.", default=None)
    # ---- evaluation during training ------------------------------------------------------------------
    eval_tasks: list[str] | None = _help(
        "Held-out tasks scored every eval_steps by the eval runner (all processes share the work): gsm8k, "
        "math500, humaneval, mbpp or NAME=file.jsonl (math rows with question/answer). Logged as "
        "eval/<task>/<metric>; metric_for_best_model (e.g. eval/tiny/accuracy) with load_best_model_at_end "
        "keeps the best checkpoint. Setting it turns eval_strategy to steps.",
        default=None,
    )
    eval_protocol: str | None = _help(
        "Decoding protocol for eval_tasks (d1, llada, illada, tiny); default: the rollouts' own prompt format "
        "and sampler settings, greedy.",
        default=None,
    )
    eval_limit: int | None = _help("Score only the first N questions of each eval task.", default=None)
    eval_data_dir: str | None = _help(
        "Read eval tasks from DIR/<task>.jsonl instead of the hub.", default=None
    )
    # ---- logging ------------------------------------------------------------------------------------
    log_completions: bool = _help(
        "At each logging step show a sample of the rollout (prompt, completion, each reward, advantage): a "
        "console table, a wandb / TensorBoard table when report_to names them, and OUTPUT_DIR/completions.jsonl.",
        default=False,
    )
    num_completions_to_print: int = _help("How many completions the sample holds.", default=4)

    def __post_init__(self):
        self._resolve_eval()
        super().__post_init__()
        self._resolve_generation_batch()
        self._check_choices()
        self._check_arithmetic()

    def _resolve_eval(self) -> None:
        """eval_tasks turn periodic evaluation on; the Trainer's eval fields without them are refused."""
        strategy = getattr(self.eval_strategy, "value", self.eval_strategy)
        if self.eval_tasks and strategy == "no":
            self.eval_strategy = "steps"
        elif not self.eval_tasks and strategy != "no":
            raise ValueError(
                f"eval_strategy {strategy!r} needs eval_tasks (what to score), e.g. --eval_tasks gsm8k or "
                "--eval_tasks heldout=data/test.jsonl."
            )
        if self.metric_for_best_model and self.metric_for_best_model.startswith("eval/"):
            self.metric_for_best_model = self.metric_for_best_model[len("eval/") :]  # the Trainer adds eval_
        if self.load_best_model_at_end and not self.metric_for_best_model:
            raise ValueError(
                "load_best_model_at_end needs metric_for_best_model, e.g. eval/<task>/accuracy (or pass@1)."
            )

    def _resolve_generation_batch(self) -> None:
        per_device = self.per_device_train_batch_size
        if self.steps_per_generation is None and self.generation_batch_size is not None:
            if self.generation_batch_size % per_device:
                raise ValueError(
                    f"generation_batch_size {self.generation_batch_size} is not a multiple of "
                    f"per_device_train_batch_size {per_device}."
                )
            self.steps_per_generation = self.generation_batch_size // per_device
        self.steps_per_generation = self.steps_per_generation or self.gradient_accumulation_steps
        if self.generation_batch_size is None:
            self.generation_batch_size = per_device * self.steps_per_generation
        if self.generation_batch_size != per_device * self.steps_per_generation:
            raise ValueError(
                f"generation_batch_size {self.generation_batch_size} != per_device_train_batch_size {per_device} x "
                f"steps_per_generation {self.steps_per_generation}; set only one of the two."
            )

    def _check_choices(self) -> None:
        choices = {
            "estimator": sorted(ESTIMATORS),
            "loss_type": list(LOSS_TYPES),
            "scale_rewards": list(SCALE_REWARDS),
            "importance_sampling_level": ["token", "sequence"],
            "remasking": ["low_confidence", "random"],
            "cache": [None, "prefix", "dual"],
            "kl_estimator": ["k3", "k2"],
            "eval_protocol": [None, *sorted(PROTOCOLS)],
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {allowed}.")
        if not 0.0 <= self.p_mask_prompt < 1.0:
            raise ValueError(f"p_mask_prompt must be in [0, 1), got {self.p_mask_prompt}.")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.reward_funcs):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} values but reward_funcs has "
                f"{len(self.reward_funcs)} functions ({self.reward_funcs}); give one weight per function."
            )

    def _check_arithmetic(self) -> None:
        if self.num_generations < 2:
            raise ValueError(
                f"num_generations must be >= 2 for group advantages, got {self.num_generations}."
            )
        if self.generation_batch_size % self.num_generations:
            raise ValueError(
                f"generation_batch_size {self.generation_batch_size} (per_device_train_batch_size "
                f"{self.per_device_train_batch_size} x steps_per_generation {self.steps_per_generation}) is not "
                f"divisible by num_generations {self.num_generations}; each prompt's group must fit in one rollout "
                "batch."
            )
        check_schedule(
            self.max_completion_length,
            self.diffusion_steps,
            self.block_length,
            names=("max_completion_length", "diffusion_steps", "block_length"),
        )
        if self.beta == 0.0 and self.sync_ref_model:
            raise ValueError("sync_ref_model needs a reference model, but beta is 0 (no reference is kept).")


def _to_argv(values: dict) -> list[str]:
    argv: list[str] = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            raise ValueError(f"config field {key!r}: nested mappings are not supported; flatten it.")
        else:
            argv += [f"--{key}", str(value)]
    return argv


def load_config(path: str | None = None, overrides: list[str] | None = None, cls=None):
    """``cls`` (default GRPOConfig) from a recipe YAML plus ``--field value`` overrides (unknown fields are errors)."""
    cls = cls or GRPOConfig
    values = {}
    if path is not None:
        try:
            with open(path) as f:
                values = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc}).") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of config fields, got {type(values).__name__}.")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{path}: unknown config field(s) {unknown}; see `align train --help` for the fields."
        )
    parser = HfArgumentParser(cls)
    argv = _to_argv(values) + list(overrides or [])
    (config, rest) = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        raise ValueError(f"unknown command-line argument(s) {rest}.")
    return config
