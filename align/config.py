"""The training configs: the recipe fields of ``align.fields`` on top of ``transformers.TrainingArguments``.

``GRPOConfig`` (TRL's GRPO names and semantics plus the diffusion, model and data fields) and
``SFTConfig`` extend ``TrainingArguments`` (output_dir, learning_rate, batch sizes, logging/saving,
``report_to``, seed, bf16, ...). Every project field is documented once, in ``align.fields``; the
cross-field checks that ``__post_init__`` runs here and that the command line runs before importing this
module are ``align.checks``. ``load_config`` reads a recipe YAML and applies ``--field value`` overrides (the
command line wins; exact names only).

Batch sizes are per device and count completions (TRL's meaning): one rollout phase generates
``generation_batch_size`` completions (``/ num_generations`` prompts) per device and serves
``steps_per_generation`` micro-batches of ``per_device_train_batch_size``, ``num_iterations`` times.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import HfArgumentParser, TrainingArguments

from align.checks import check_model_data, resolve_and_check_grpo, resolve_eval
from align.fields import DPOFields, GRPOFields, ModelDataFields, SFTFields, check_dpo, check_sft
from align.recipe import ACTIVATION_CHECKPOINTING_HELP, recipe_values

# transformers before 5.2x calls activation checkpointing ``gradient_checkpointing`` (the GPU image's 5.17): the
# recipes' name is kept there as a field of ours and passed on under the old one
NAMES_ACTIVATION_CHECKPOINTING = "activation_checkpointing" in TrainingArguments.__dataclass_fields__


@dataclass
class _ActivationCheckpointing:
    activation_checkpointing: bool = field(
        default=False,
        metadata={"help": ACTIVATION_CHECKPOINTING_HELP},
    )


_BASES = (ModelDataFields,) + (() if NAMES_ACTIVATION_CHECKPOINTING else (_ActivationCheckpointing,))


@dataclass
class ModelDataConfig(*_BASES, TrainingArguments):
    """Model, PEFT and data fields shared by GRPO (``GRPOConfig``) and masked-diffusion SFT (``SFTConfig``)."""

    def __post_init__(self):
        if (
            self.ddp_find_unused_parameters is None
        ):  # every parameter gets a gradient: skip DDP's search and warning
            self.ddp_find_unused_parameters = False
        if not NAMES_ACTIVATION_CHECKPOINTING:  # either name turns it on
            on = bool(self.activation_checkpointing or self.gradient_checkpointing)
            self.activation_checkpointing = self.gradient_checkpointing = on
        TrainingArguments.__post_init__(self)
        check_model_data(self)


@dataclass
class SFTConfig(SFTFields, ModelDataConfig):
    """Masked-diffusion SFT (LLaDA's objective): prompt clean, response + EOS padding masked at t ~ U(0, 1)."""

    def __post_init__(self):
        ModelDataConfig.__post_init__(self)
        check_sft(self)


@dataclass
class DPOConfig(DPOFields, ModelDataConfig):
    """DPO / VRPO: TRL's DPO names; the log-likelihoods are Monte Carlo estimates (``align.dpo``)."""

    def __post_init__(self):
        ModelDataConfig.__post_init__(self)
        check_dpo(self)


@dataclass
class GRPOConfig(GRPOFields, ModelDataConfig):
    """GRPO: the model/data fields plus TRL's GRPO fields and the diffusion sampler/estimator fields."""

    def __post_init__(self):
        resolve_eval(self)
        ModelDataConfig.__post_init__(self)
        resolve_and_check_grpo(self)


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


def load_config(
    path: str | None = None, overrides: list[str] | None = None, cls=None, prog: str = "align train"
):
    """``cls`` (default GRPOConfig) from a recipe YAML plus ``--field value`` overrides; unknown fields and
    values of the wrong type are errors (``align.recipe.recipe_values``)."""
    cls = cls or GRPOConfig
    values = recipe_values(cls, path, list(overrides or []), prog)
    parser = HfArgumentParser(cls, allow_abbrev=False)
    argv = _to_argv(values)
    (config, rest) = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        raise ValueError(f"unknown command-line argument(s) {rest}.")
    return config
