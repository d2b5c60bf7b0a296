"""GRPO entry point: config -> dataset -> tokenizer -> model (+LoRA) -> rewards -> trainer -> train -> save.

accelerate launch --config_file recipes/accelerate/zero3.yaml -m align.train --config RECIPE.yaml [--field value ...]
align train --config RECIPE.yaml [--field value ...]
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def load_policy(config):
    """(policy, reference or None): LoRA-wrapped under use_peft (reference = adapter disabled)."""
    from align.models import load_model

    def load():
        return load_model(
            config.model_name_or_path, dtype=config.dtype, trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation,
        )  # fmt: skip

    model = load()
    if config.use_peft:
        from peft import LoraConfig, get_peft_model

        head = model.get_output_embeddings()  # LLaDA's untied head is also named ff_out: keep LoRA off it
        exclude = [name for name, module in model.named_modules() if head is not None and module is head]
        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules, exclude_modules=exclude or None, bias="none",
        )  # fmt: skip
        return get_peft_model(model, lora), None
    return model, (load() if config.beta != 0.0 else None)


def build_trainer(config):
    from align.data import load_rows
    from align.models import load_tokenizer
    from align.trainer import DiffusionGRPOTrainer

    dataset = load_rows(config)
    tokenizer = load_tokenizer(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    model, ref_model = load_policy(config)
    return DiffusionGRPOTrainer(model, config, dataset, tokenizer, ref_model=ref_model)


def train_and_save(trainer, config) -> None:
    """Train (resuming when asked), then save the model or adapter, the trainer state and the tokenizer."""
    import torch.distributed as dist

    try:
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        trainer.save_model(config.output_dir)
        trainer.save_state()
        if trainer.accelerator.is_main_process:
            trainer.processing_class.save_pretrained(config.output_dir)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def recipe_main(prog: str, description: str, config_class, build, argv: list[str] | None) -> int:
    """``prog --config RECIPE.yaml [--field value ...]``: a bad config exits 2 with the reason."""
    from align.config import load_config

    parser = argparse.ArgumentParser(prog=prog, description=description, add_help=False)
    parser.add_argument("--config", default=None, help="recipe YAML; other --field value pairs override it")
    args, overrides = parser.parse_known_args(argv)
    if "-h" in overrides or "--help" in overrides:  # every config field, with its documentation
        from transformers import HfArgumentParser

        fields = HfArgumentParser(
            config_class, prog=f"{prog} [--config RECIPE.yaml]", description=description
        )
        fields.print_help()
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, overrides, cls=config_class)
    except (ValueError, OSError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    train_and_save(build(config), config)
    return 0


def main(argv: list[str] | None = None) -> int:
    from align.config import GRPOConfig

    return recipe_main("align train", "GRPO for masked diffusion LMs", GRPOConfig, build_trainer, argv)


if __name__ == "__main__":
    sys.exit(main())
