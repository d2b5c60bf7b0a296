"""GRPO entry point: config -> dataset -> tokenizer -> model (+LoRA) -> rewards -> trainer -> train -> save.

accelerate launch --config_file recipes/accelerate/zero3.yaml -m align.train --config RECIPE.yaml [--field value ...]
align train --config RECIPE.yaml [--field value ...]
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger(__name__)


def load_prompts(config):
    """The training split as a ``datasets.Dataset`` (hub id or local files); checks the prompt column."""
    from datasets import load_dataset

    if config.dataset_files:
        ext = config.dataset_files[0].rsplit(".", 1)[-1]
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
        if builder is None:
            raise ValueError(f"dataset_files: cannot read .{ext} files; use .jsonl, .json, .csv or .parquet.")
        dataset = load_dataset(builder, data_files=config.dataset_files, split="train")
    else:
        dataset = load_dataset(config.dataset_name, config.dataset_config, split=config.dataset_split)
    for item in config.rename_columns or []:
        old, new = item.split(":")
        if old not in dataset.column_names:
            raise ValueError(
                f"rename_columns: no column {old!r} to rename; the data has {dataset.column_names}."
            )
        dataset = dataset.rename_column(old, new)
    if config.prompt_column not in dataset.column_names:
        raise ValueError(
            f"prompt_column {config.prompt_column!r} is not a column of the training data; it has "
            f"{dataset.column_names}. Set --prompt_column."
        )
    return dataset


def load_policy(config):
    """(policy, reference or None): LoRA-wrapped under use_peft (reference = adapter disabled)."""
    from align.models import load_model

    def load():
        return load_model(
            config.model_name_or_path, dtype=config.dtype, trust_remote_code=config.trust_remote_code
        )

    model = load()
    if config.use_peft:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.lora_target_modules, bias="none",
        )  # fmt: skip
        return get_peft_model(model, lora), None
    return model, (load() if config.beta != 0.0 else None)


def build_trainer(config):
    from align.models import load_tokenizer
    from align.trainer import DiffusionGRPOTrainer

    dataset = load_prompts(config)
    tokenizer = load_tokenizer(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    model, ref_model = load_policy(config)
    return DiffusionGRPOTrainer(model, config, dataset, tokenizer, ref_model=ref_model)


def run(config) -> None:
    import torch.distributed as dist

    trainer = build_trainer(config)
    try:
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        trainer.save_model(config.output_dir)
        if trainer.accelerator.is_main_process:
            trainer.processing_class.save_pretrained(config.output_dir)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    from align.config import load_config

    parser = argparse.ArgumentParser(prog="align train", description="GRPO for masked diffusion LMs")
    parser.add_argument("--config", default=None, help="recipe YAML; other --field value pairs override it")
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, overrides)
    except (ValueError, OSError) as exc:
        print(f"align train: {exc}", file=sys.stderr)
        return 2
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
