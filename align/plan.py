"""``align plan``: per-GPU memory by phase and passes / FLOPs per optimizer step, before any weight loads.

    align plan RECIPE.yaml [--gpus 8 --gpu-memory 80 --nodes 1] [--field value ...]

From the model's config (read, never its weights) and the recipe, for one process:

* **static**: weights, gradients and optimizer state of the trainable parameters (Adam: fp32 master copy
  + two moments in mixed precision), divided over the processes as ZeRO does (stage from
  ``--zero``: 0 = DDP, 2 shards gradients and optimizer state, 3 also the weights); LoRA trains only
  the adapter; a reference model (beta > 0, full fine-tuning) adds its weights.
* **rollout**: one sampler call over ``rollout_batch_size`` rows (default: the whole generation batch):
  a layer's working set, the block's logits and the sampler's float32 copies, the KV cache when a cache
  mode is on.
* **estimate** (no grad, old policy / reference): ``mc_chunk_size`` passes over one micro-batch of rows
  (the trainer runs them a micro-batch at a time): a layer's working set and the scored window's logits
  with the float32 log-softmax.
* **policy step**: the activations kept for backward of ``mc_chunk_size`` passes (all passes with
  ``mc_backward: joint``), per layer, or one layer's input per layer plus one recomputed layer under
  activation checkpointing, and the logits window with its float32 copies.

Element counts per token come from the model's shapes; the constants (how many d- and h-sized tensors a
layer keeps) were fitted to measured peak resident memory on CPU in float32, measured with glibc's mmap
threshold fixed so that freed tensors leave the resident set (tests/test_plan.py checks 25%); on GPUs in bf16 they are unverified until a device run. Attention is assumed memory-efficient (no
[heads, S, S] tensor kept). FLOPs: 2 x parameters x tokens per forward, x3 with backward (x4 with
recomputation), attention's 4 x S x d per token and layer added.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field

from align.checks import passes_per_estimate
from align.logprob.kinds import KINDS

GIB = 1024**3

# Elements per token alive at a phase's peak, as multiples of d_model and mlp_hidden_size (x activation bytes),
# and bytes per logit element (the logits and their float32 copies). Least-squares fits to the peak resident
# memory of 24 configurations on CPU in float32 (tests/plan_probe.py; d 128-256, h 384-1536, V 2k-16k, 8-16
# rows, 144-272 tokens): every fit within 20% but one no-grad point (31%). The grad phase's d/h terms are
# per layer; the others are one layer's working set.
ROLLOUT_D, ROLLOUT_H, ROLLOUT_LOGIT_BYTES = 2.5, 2.85, 13.4  # block logits: rows, softmax, probabilities
NO_GRAD_D, NO_GRAD_H, NO_GRAD_LOGIT_BYTES = 0.5, 0.5, 7.5  # scored window + float32 log-softmax
GRAD_D, GRAD_H, GRAD_LOGIT_BYTES = 15.0, 4.3, 7.5


@dataclass
class ModelShape:
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    mlp_hidden: int
    vocab: int
    params: int
    family: str = "llada"  # model_type: the family's LoRA names and shapes (align.models.family)
    head_dim: int | None = None  # explicit head size (Qwen3 / SDAR); None: d_model / n_heads

    @classmethod
    def from_config(cls, config) -> ModelShape:
        """From a config its family reads (the native LLaDAConfig)."""
        from align.models.family import family_for

        fields = family_for(config.model_type).shape(config)
        if fields is None:
            raise ValueError(f"model family {config.model_type!r} does not read its shape from this config.")
        return dataclasses.replace(shape_of(**fields), family=str(config.model_type).lower())

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * (self.head_dim or self.d_model // self.n_heads)

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim if self.head_dim else self.d_model


@dataclass
class Plan:
    """Bytes per process by phase, and the work of one optimizer step."""

    static: dict = field(default_factory=dict)
    phases: dict = field(default_factory=dict)  # phase -> transient bytes on top of the static ones
    forward_passes: int = 0  # per optimizer step and process (sampler calls + estimate passes + recompute)
    flops: float = 0.0  # per optimizer step and process
    advice: dict = field(default_factory=dict)  # phase -> the setting to change when it does not fit

    @property
    def static_bytes(self) -> float:
        return sum(self.static.values())

    def peak(self, phase: str) -> float:
        return self.static_bytes + self.phases[phase]


def _act_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def trainable_params(shape: ModelShape, args) -> int:
    if not args.use_peft:
        return shape.params
    from align.models.family import family_for

    family = family_for(shape.family)
    targets = set(family.lora_targets if args.lora_target_modules is None else args.lora_target_modules)
    sizes = family.lora_shapes(shape.d_model, shape.kv_dim, shape.mlp_hidden, shape.q_dim)
    per_layer = sum(
        args.lora_r * (i + o) for name, (i, o) in sizes.items() if name in targets or "all-linear" in targets
    )
    return shape.n_layers * per_layer


def make_plan(
    shape: ModelShape, args, *, processes: int = 1, zero: int = 0, expected_length: float | None = None
) -> Plan:
    """The plan of GRPO config ``args`` (align.config) for a model of ``shape`` on ``processes`` ranks.

    With ``variable_length`` rollouts, ``expected_length`` (the mean completion length, default the budget)
    sets the work: a row decodes ceil(E / block_length) blocks, each on the canvas cut at its end, and
    estimator growing scores one of them per sample (a cut canvas of prompt + (nb + 1) / 2 blocks on average).
    Memory stays the budget's (the longest row reaches it) and sampler calls assume every call runs to the
    budget (a call lasts as long as its longest row): both upper bounds."""
    b = _act_bytes(args.dtype)
    d, h, layers, v = shape.d_model, shape.mlp_hidden, shape.n_layers, shape.vocab
    trainable = trainable_params(shape, args)
    mixed = args.dtype != "float32"
    plan = Plan()
    weights = shape.params * b
    plan.static["weights"] = weights / processes if zero == 3 else weights
    grad_bytes = trainable * (4 if not mixed or zero == 0 else 2)
    plan.static["gradients"] = grad_bytes / processes if zero >= 2 else grad_bytes
    optim = trainable * ((4 if mixed else 0) + 8)
    plan.static["optimizer"] = optim / processes if zero >= 1 else optim
    if args.beta != 0.0 and not args.use_peft:
        plan.static["reference"] = weights / processes if zero == 3 else weights

    from align.models.family import family_for

    block_model = family_for(
        shape.family
    ).block_causal  # block diffusion: exact block cache, two-stream estimates
    seq = args.max_prompt_length + args.max_completion_length
    window = args.max_completion_length
    # rollout: one sampler call
    rows = args.rollout_batch_size or args.generation_batch_size
    logits = rows * args.block_length * v * ROLLOUT_LOGIT_BYTES
    cache = 2 * layers * rows * seq * shape.kv_dim * b if args.cache or block_model else 0
    encoded = args.block_length if block_model else seq  # a block model's sampler passes run on one block
    plan.phases["rollout"] = rows * encoded * (ROLLOUT_D * d + ROLLOUT_H * h) * b + logits + cache
    if block_model:  # likelihood passes read the clean canvas and the noised completion in one forward
        seq = args.max_prompt_length + 2 * args.max_completion_length
    plan.advice["rollout"] = "set rollout_batch_size (rows per sampler call) lower" + (
        " or cache: None" if args.cache else ""
    )
    # no-grad estimate: one micro-batch of rows x mc_chunk_size passes
    n = args.per_device_train_batch_size * args.mc_chunk_size
    plan.phases["estimate"] = (
        n * seq * (NO_GRAD_D * d + NO_GRAD_H * h) * b + n * window * v * NO_GRAD_LOGIT_BYTES
    )
    plan.advice["estimate"] = "lower mc_chunk_size or per_device_train_batch_size"
    # policy step: kept activations of the live chunks
    passes = passes_per_estimate(args)
    live = n if args.mc_backward == "chunked" else args.per_device_train_batch_size * passes
    per_layer = live * seq * (GRAD_D * d + GRAD_H * h) * b
    kept = live * seq * d * b * layers + per_layer if args.activation_checkpointing else per_layer * layers
    plan.phases["policy step"] = kept + live * window * v * GRAD_LOGIT_BYTES
    plan.advice["policy step"] = (
        "set mc_backward: chunked" if args.mc_backward != "chunked" else "lower mc_chunk_size"
    ) + ", turn activation_checkpointing on, or lower per_device_train_batch_size"
    # work of one optimizer step on this process
    micro = args.gradient_accumulation_steps
    per_rollout = args.steps_per_generation * args.num_iterations
    rollouts = micro / per_rollout
    gen_rows = args.generation_batch_size
    steps = args.diffusion_steps
    blocks = args.max_completion_length // args.block_length
    # a block model's sampler: a prefill, then per block its steps and one pass storing it (at most: rows stop
    # at EOS and the dynamic schedule takes fewer steps)
    sampler_calls = (1 + steps + blocks if block_model else steps) * math.ceil(gen_rows / rows)
    fixed = (
        int(args.gradient_accumulation_steps % per_rollout != 0) + int(args.beta != 0.0)
    ) * args.num_iterations
    chunks = math.ceil(passes / args.mc_chunk_size)
    est_calls = fixed * math.ceil(gen_rows / args.per_device_train_batch_size) * chunks
    policy_calls = micro * chunks * (2 if args.mc_backward == "chunked" else 1)
    plan.forward_passes = round(rollouts * (sampler_calls + est_calls) + policy_calls)
    token_flops = 2 * shape.params + 4 * seq * d * layers
    growing = bool(getattr(args, "variable_length", False)) and not block_model
    if growing:
        length = min(args.max_completion_length, expected_length or args.max_completion_length)
        decoded = min(blocks, math.ceil(length / args.block_length))
        per_block = max(1, steps // blocks)
        cut = [args.max_prompt_length + (b + 1) * args.block_length for b in range(decoded)]
        if args.cache:  # a full pass over the cut canvas per block, then the block alone
            per_row = sum(cut) + decoded * (per_block - 1) * args.block_length
        else:
            per_row = per_block * sum(cut)
        gen_tokens = rollouts * gen_rows * per_row
    elif block_model:  # the prompt once, each block (steps per block + 1) times
        gen_tokens = rollouts * gen_rows * (args.max_prompt_length + (steps + blocks) * args.block_length)
    elif (
        args.cache
    ):  # a full pass per block, then the block alone (dual) or the block and what follows (prefix)
        blocks = args.max_completion_length // args.block_length
        partial = args.block_length if args.cache == "dual" else args.max_completion_length / 2
        gen_tokens = rollouts * gen_rows * (blocks * seq + (steps - blocks) * partial)
    else:  # every sampler step encodes the whole canvas
        gen_tokens = rollouts * steps * gen_rows * seq
    est_seq = seq
    if (
        growing and KINDS[args.estimator].canvas == "growing"
    ):  # one block's cut canvas per pass, (nb + 1) / 2 blocks
        est_seq = args.max_prompt_length + args.block_length * (decoded + 1) / 2
    est_tokens = rollouts * fixed * passes * gen_rows * est_seq
    train_tokens = micro * passes * args.per_device_train_batch_size * est_seq
    backward = 3 + int(args.activation_checkpointing) + (1 if args.mc_backward == "chunked" else 0)
    plan.flops = token_flops * (gen_tokens + est_tokens + backward * train_tokens)
    return plan


def table(plan: Plan, gpu_memory_gb: float | None = None) -> list[str]:
    lines = ["| phase | transient | peak per GPU | fits |", "|---|---|---|---|"]
    for phase, extra in plan.phases.items():
        peak = plan.peak(phase)
        fits = "-" if gpu_memory_gb is None else ("yes" if peak <= gpu_memory_gb * GIB else "**no**")
        lines.append(f"| {phase} | {extra / GIB:.2f} GiB | {peak / GIB:.2f} GiB | {fits} |")
    static = ", ".join(f"{k} {v / GIB:.2f}" for k, v in plan.static.items())
    lines.append(f"\nstatic (GiB): {static}; total {plan.static_bytes / GIB:.2f}")
    lines.append(
        f"per optimizer step and GPU: {plan.forward_passes} forward calls, {plan.flops / 1e15:.2f} PFLOP"
    )
    return lines


def misfits(plan: Plan, gpu_memory_gb: float) -> list[str]:
    """One sentence per phase that does not fit, naming the setting to change."""
    return [
        f"the {phase} phase needs about {plan.peak(phase) / GIB:.1f} GiB per GPU (static "
        f"{plan.static_bytes / GIB:.1f} + {plan.phases[phase] / GIB:.1f}), more than the "
        f"{gpu_memory_gb:.0f} GiB there: {plan.advice[phase]}"
        for phase in plan.phases
        if plan.peak(phase) > gpu_memory_gb * GIB
    ]


def check_fits(plan: Plan, gpu_memory_gb: float) -> None:
    """Raise the first phase that does not fit, naming the setting to change."""
    problems = misfits(plan, gpu_memory_gb)
    if problems:
        more = f"; {len(problems) - 1} more phase(s) too" if len(problems) > 1 else ""
        raise ValueError(f"{problems[0]} (align plan shows every phase{more}).")


def _get(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


# The published config.json shapes of the project's target models, for planning without the hub:
# (d_model, layers, heads, kv heads, MLP hidden, vocabulary, tied embeddings).
KNOWN_SHAPES = {
    "GSAI-ML/LLaDA-8B-Instruct": (4096, 32, 32, 32, 12288, 126464, False),
    "GSAI-ML/LLaDA-8B-Base": (4096, 32, 32, 32, 12288, 126464, False),
    "GSAI-ML/iLLaDA-8B-Instruct": (4096, 32, 32, 8, 14336, 155136, True),
    "GSAI-ML/iLLaDA-8B-Base": (4096, 32, 32, 8, 14336, 155136, True),
    # Dream family (model_type "Dream"): Qwen2.5-7B shapes with q/k/v biases, untied
    "Dream-org/Dream-v0-Instruct-7B": (3584, 28, 28, 4, 18944, 152064, False, True, "dream"),
    "Dream-org/Dream-v0-Base-7B": (3584, 28, 28, 4, 18944, 152064, False, True, "dream"),
    "apple/DiffuCoder-7B-Instruct": (3584, 28, 28, 4, 18944, 152064, False, True, "dream"),
    "apple/DiffuCoder-7B-cpGRPO": (3584, 28, 28, 4, 18944, 152064, False, True, "dream"),
    # SDAR family (model_type "sdar"): Qwen3 shapes, head_dim 128, q/k norms, untied (the hub configs)
    "JetLM/SDAR-8B-Chat": (4096, 36, 32, 8, 12288, 151936, False, False, "sdar", 128),
    "JetLM/SDAR-4B-Chat": (2560, 36, 32, 8, 9728, 151936, False, False, "sdar", 128),
    "Gen-Verse/TraDo-8B-Instruct": (4096, 36, 32, 8, 12288, 151936, False, False, "sdar", 128),
    "Gen-Verse/TraDo-4B-Instruct": (2560, 36, 32, 8, 9728, 151936, False, False, "sdar", 128),
}


def known_shape(name: str) -> ModelShape:
    """The published shape of a target model (``KNOWN_SHAPES``: d, layers, heads, kv heads, MLP hidden,
    vocabulary, tied [, q/k/v biases, family [, head_dim]])."""
    d, layers, heads, kv, h, v, tied, *rest = KNOWN_SHAPES[name]
    bias, family, head_dim = (list(rest) + [False, "llada", None][len(rest) :])[:3]
    return dataclasses.replace(shape_of(d, layers, heads, kv, h, v, tied, bias, head_dim), family=family)


def shape_of(
    d: int,
    layers: int,
    heads: int,
    kv_heads: int,
    h: int,
    v: int,
    tied: bool,
    qkv_bias: bool = False,
    head_dim: int | None = None,
) -> ModelShape:
    """Shapes and parameter count: embeddings (and an untied head), per layer q/k/v/out, the SwiGLU MLP and
    two norms (plus q/k/v biases when asked; with an explicit ``head_dim``, Qwen3's q/k norms and
    q / out projections of heads x head_dim), a final norm."""
    q = heads * head_dim if head_dim else d
    kv = kv_heads * (head_dim or d // heads)
    per_layer = 2 * d * q + 2 * d * kv + 3 * d * h + 2 * d + ((q + 2 * kv) if qkv_bias else 0)
    per_layer += 2 * head_dim if head_dim else 0
    params = v * d * (1 if tied else 2) + layers * per_layer + d
    return ModelShape(d, layers, heads, kv_heads, h, v, params, head_dim=head_dim)


def hub_reachable(timeout_s: float = 5.0) -> bool:
    """One connection attempt to the hub's endpoint (no retries)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    try:
        socket.create_connection((urlparse(constants.ENDPOINT).hostname, 443), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def load_shape(model_name_or_path: str, trust_remote_code: bool = False, say=None) -> ModelShape:
    """The model's shapes from its config.json alone (LLaDA names, or the usual transformers names); the
    target models' published shapes when the hub cannot be reached (tried once; ``say`` is told so)."""
    from transformers import AutoConfig

    from align.errors import looks_local
    from align.models import LLaDAConfig

    if not looks_local(model_name_or_path) and not hub_reachable():
        from huggingface_hub import try_to_load_from_cache

        if not isinstance(try_to_load_from_cache(model_name_or_path, "config.json"), str):
            if model_name_or_path not in KNOWN_SHAPES:
                raise ValueError(
                    f"the hub is unreachable and {model_name_or_path} is not in the cache: give a local model folder "
                    "or run where the hub is reachable."
                )
            if say is not None:
                say(f"hub unreachable: using the published shape of {model_name_or_path}")
            return known_shape(model_name_or_path)
        os.environ["HF_HUB_OFFLINE"] = "1"  # read the cached config without retrying the network

    try:
        return ModelShape.from_config(LLaDAConfig.from_pretrained(model_name_or_path))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    try:
        config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        if model_name_or_path in KNOWN_SHAPES:
            return known_shape(model_name_or_path)
        raise ValueError(
            f"cannot read the config of {model_name_or_path} ({str(e).splitlines()[0]}); give a local model folder "
            "or run where the hub is reachable."
        ) from None
    from align.models.family import family_for

    if family_for(config.model_type).shape(config) is not None:  # a family that reads its own config (Dream)
        return ModelShape.from_config(config)
    d = _get(config, "d_model", "hidden_size")
    layers = _get(config, "n_layers", "num_hidden_layers")
    heads = _get(config, "n_heads", "num_attention_heads")
    if not (d and layers and heads):
        raise ValueError(
            f"{model_name_or_path}: its config has no hidden size / layers / heads that align plan reads."
        )
    kv_heads = _get(config, "n_kv_heads", "num_key_value_heads", default=heads)
    h = _get(config, "mlp_hidden_size", "intermediate_size", default=4 * d)
    v = _get(config, "embedding_size", "vocab_size")
    tied = bool(_get(config, "weight_tying", "tie_word_embeddings", default=False))
    return dataclasses.replace(shape_of(d, layers, heads, kv_heads, h, v, tied), family=config.model_type)


def processes_and_zero() -> tuple[int, int]:
    """(world size, ZeRO stage) of the current launch, from the variables accelerate sets."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    zero = (
        int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "0"))
        if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")
        else 0
    )
    return world, zero


def preflight_memory(args) -> Plan | None:
    """``align train``'s start-up check: refuse a plan whose peak exceeds ``max_gpu_memory_gb`` (default: the
    visible GPU's memory; no check without a GPU unless the field is set)."""
    import torch

    budget = getattr(args, "max_gpu_memory_gb", None)
    if budget is None and torch.cuda.is_available() and not args.use_cpu:
        budget = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB
    if budget is None:
        return None
    world, zero = processes_and_zero()
    plan = make_plan(
        load_shape(args.model_name_or_path, args.trust_remote_code), args, processes=world, zero=zero
    )
    check_fits(plan, budget)
    return plan


def launch_zero(recipe: str) -> int | None:
    """The ZeRO stage of the launch command a recipe's header gives (``accelerate launch --config_file
    X.yaml ...``: X's ``zero_stage`` under DeepSpeed, 0 for DDP), or None when it names none. The config file
    is looked up from the working directory, then from the folders above the recipe."""
    import re

    with open(recipe, encoding="utf-8") as f:
        header = "".join(line for line in f if line.lstrip().startswith("#"))
    found = re.search(r"--config_file\s+(\S+\.ya?ml)", header)
    if found is None:
        return None
    name = found.group(1)
    candidates = [name] + [os.path.join(parent, name) for parent in _parents(os.path.abspath(recipe))]
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is None:
        return None
    import yaml

    with open(path, encoding="utf-8") as f:
        launch = yaml.safe_load(f) or {}
    if str(launch.get("distributed_type", "")).upper() != "DEEPSPEED":
        return 0
    return int((launch.get("deepspeed_config") or {}).get("zero_stage", 0))


def _parents(path: str):
    while (parent := os.path.dirname(path)) != path:
        yield parent
        path = parent


def main(argv: list[str] | None = None) -> int:
    """``align plan RECIPE.yaml [--gpus N --nodes M --gpu-memory GB --zero Z] [--field value ...]``."""
    import argparse

    from align.errors import main_guard

    parser = argparse.ArgumentParser(
        prog="align plan",
        allow_abbrev=False,
        description="per-GPU memory by phase and work per step, before loading",
    )
    parser.add_argument("recipe")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80: H100)")
    parser.add_argument(
        "--zero",
        type=int,
        default=None,
        choices=[0, 1, 2, 3],
        help="ZeRO stage (default: the stage of the launch command in the recipe's header; "
        "without one, 2 with LoRA, else 3)",
    )
    parser.add_argument(
        "--expected-length",
        type=float,
        default=None,
        help="variable_length recipes: the mean completion length the work is planned for "
        "(default: the budget)",
    )
    parser.add_argument("--debug", action="store_true")
    args, overrides = parser.parse_known_args(argv)

    def run() -> int:
        from align.fields import GRPOFields
        from align.recipe import recipe_values

        recipe_values(
            GRPOFields, args.recipe, overrides, "align plan"
        )  # a bad path or field: before torch loads
        from align.config import load_config

        config = load_config(args.recipe, [*overrides, "--use_cpu", "true"], prog="align plan")
        zero = args.zero if args.zero is not None else launch_zero(args.recipe)
        zero = zero if zero is not None else (2 if config.use_peft else 3)
        shape = load_shape(config.model_name_or_path, config.trust_remote_code, say=print)
        if args.expected_length is not None and not config.variable_length:
            raise ValueError(
                "--expected-length plans variable-length rollouts; the recipe has variable_length false."
            )
        plan = make_plan(
            shape, config, processes=args.gpus * args.nodes, zero=zero, expected_length=args.expected_length
        )
        expected = f", mean completion {args.expected_length:g} tokens" if args.expected_length else ""
        print(
            f"{args.recipe}: {shape.params / 1e9:.2f}B parameters, {args.nodes} x {args.gpus} GPUs of "
            f"{args.gpu_memory:g} GiB, ZeRO-{zero}{', LoRA' if config.use_peft else ''}{expected}"
        )
        print("\n".join(table(plan, args.gpu_memory)))
        problems = misfits(plan, args.gpu_memory)
        for problem in problems:
            print(f"does not fit: {problem}.")
        return 1 if problems else 0

    return main_guard("align plan", run, debug=args.debug)
