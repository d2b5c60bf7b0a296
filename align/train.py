"""GRPO entry point: config -> dataset -> tokenizer -> model (+LoRA) -> rewards -> trainer -> train -> save.

accelerate launch --config_file recipes/accelerate/zero3.yaml -m align.train --config RECIPE.yaml [--field value ...]
align train --config RECIPE.yaml [--field value ...]

The recipe runner (``align.runner``) reads and checks the recipe, loads the model and trains and saves;
this file says what GRPO builds.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


def build_trainer(config):
    from align.data import load_rows
    from align.models import load_tokenizer
    from align.plan import GIB, preflight_memory
    from align.runner import load_policy
    from align.sampling.family_checks import check_checkpoint_settings
    from align.trainer import DiffusionGRPOTrainer

    check_checkpoint_settings(
        config.model_name_or_path,
        trust_remote_code=config.trust_remote_code,
        cache=config.cache,
        remasking=config.remasking,
        block_length=config.block_length,
        estimator=config.estimator,
    )  # settings the model's family cannot run
    dataset = load_rows(config)
    from align.rollout.rewards import check_reward_columns

    check_reward_columns(config.reward_funcs, dataset.column_names)
    plan = preflight_memory(config)  # before any weight loads: a plan that cannot fit is refused here
    if plan is not None:
        logger.info("align plan: peak per GPU %s GiB", {k: round(plan.peak(k) / GIB, 1) for k in plan.phases})
    tokenizer = load_tokenizer(
        config.model_name_or_path,
        trust_remote_code=config.trust_remote_code,
        chat_off="use_chat_template false" if config.use_chat_template else None,
    )
    model, ref_model = load_policy(config)
    return DiffusionGRPOTrainer(
        model, args=config, train_dataset=dataset, processing_class=tokenizer, ref_model=ref_model
    )


def main(argv: list[str] | None = None) -> int:
    from align.runner import recipe_command

    return recipe_command("train", argv)


if __name__ == "__main__":
    from align.runner import exit_process

    exit_process(main())
