"""The recipe runner every training command shares (``align train`` / ``align sft`` / ``align dpo``).

    recipe YAML + --field value -> checks before torch loads -> config -> build(config) -> train -> save

``recipe_command(name, argv)`` runs one of ``RECIPES``: its light field class (``align.fields``) answers
help, unknown names, bad values, cross-field arithmetic and missing local paths in one line before torch
or transformers load; then the config is built and the command's ``build_trainer`` makes the trainer,
which ``train_and_save`` trains (resuming when asked) and saves. Model loading (``load_policy``, LoRA
through ``add_lora``) lives here too, so the entry scripts hold only what is their own.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

logger = logging.getLogger(__name__)

# command: (prog, description, light fields in align.fields, config class in align.config, builder)
RECIPES = {
    "train": (
        "align train",
        "GRPO for masked diffusion LMs",
        "GRPOFields",
        "GRPOConfig",
        "align.train:build_trainer",
    ),
    "sft": ("align sft", "masked-diffusion SFT", "SFTFields", "SFTConfig", "align.sft:build_trainer"),
    "dpo": (
        "align dpo",
        "DPO / VRPO for masked diffusion LMs",
        "DPOFields",
        "DPOConfig",
        "align.dpo:build_trainer",
    ),
}


def recipe_command(name: str, argv: list[str] | None) -> int:
    """``align NAME --config RECIPE.yaml [--field value ...]`` (torch loads after help and the checks)."""
    import align.fields

    prog, description, fields, config_class, build = RECIPES[name]
    return recipe_main(prog, description, getattr(align.fields, fields), config_class, build, argv)


def load_policy(config):
    """(policy, reference or None): LoRA-wrapped under use_peft (reference = adapter disabled)."""
    from align.models import load_model

    def load():
        return load_model(
            config.model_name_or_path,
            dtype=config.dtype,
            trust_remote_code=config.trust_remote_code,
            attn_implementation=config.attn_implementation,
        )

    model = load()
    if config.use_peft:
        return add_lora(model, config), None
    return model, (load() if config.beta != 0.0 else None)


def add_lora(model, config):
    """The model wrapped with the config's LoRA adapter (never on the LM head). Its initial weights are drawn
    from ``config.seed`` alone (not from whatever the global RNG holds), and the global RNG is left as it was."""
    import torch
    from peft import LoraConfig, get_peft_model

    from align.errors import UsageError
    from align.models.loading import quiet_checkpointing_renames

    head = model.get_output_embeddings()  # LLaDA's untied head is also named ff_out: keep LoRA off it
    exclude = [name for name, module in model.named_modules() if head is not None and module is head]
    leaves = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name not in exclude
    }
    from align.models.family import family_for

    targets = config.lora_target_modules
    if targets is None:  # the family's linear layers
        targets = list(family_for(str(getattr(model.config, "model_type", "")).lower()).lora_targets)
    elif list(targets) in (["all-linear"], ["all_linear"]):  # PEFT's name: every linear layer but the head
        targets = sorted(leaves)
    unknown = [t for t in targets if t not in leaves]
    if unknown:
        raise UsageError(
            f"lora_target_modules {unknown} name no linear layer of this model; its linear layers are "
            f"{sorted(leaves)}."
        )
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        exclude_modules=exclude or None,
        bias="none",
    )
    seed = getattr(config, "seed", None)  # a run's config has one; a bare namespace (the planner's) may not
    with quiet_checkpointing_renames(), torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return get_peft_model(model, lora)


def train_and_save(trainer, config) -> None:
    """Train (resuming when asked), then save the model or adapter, the trainer state and the tokenizer."""
    import torch.distributed as dist

    from align.callbacks import WallClock

    trainer.add_callback(WallClock(getattr(config, "max_time_s", None)))
    try:
        trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
        trainer.save_model(config.output_dir)
        trainer.save_state()
        if trainer.accelerator.is_main_process:
            trainer.processing_class.save_pretrained(config.output_dir)
        trainer.accelerator.wait_for_everyone()  # no rank tears the process group down while another still saves
    except BaseException:
        for callback in trainer.callback_handler.callbacks:  # end the progress bar's line before the error's
            bar = getattr(callback, "training_bar", None)
            if bar is not None:
                bar.close()
        raise
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def recipe_main(prog: str, description: str, fields, config_class: str, build, argv: list[str] | None) -> int:
    """``prog --config RECIPE.yaml [--field value ...]``.

    ``fields`` is the light field class (``align.fields``): help, unknown names, bad values, cross-field
    arithmetic and missing local paths are answered in one line before torch or transformers load. Then
    ``align.config.<config_class>`` is built and ``build(config)`` (a callable or "module:function")
    trains. User errors exit 2, failures while running (a reward that raises) exit 1; ``--debug`` or
    ``ALIGN_DEBUG=1`` shows tracebacks.
    """
    from align.errors import main_guard
    from align.recipe import preflight, recipe_values, render_help

    parser = argparse.ArgumentParser(prog=prog, add_help=False, allow_abbrev=False)
    parser.add_argument("--config", action="append", default=None)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    args, overrides = parser.parse_known_args(argv)
    if args.help:
        print(render_help(fields, prog, description), end="")
        return 0
    configs, args.config = args.config or [], (args.config or [None])[-1]

    def run() -> int:
        if len(configs) > 1:
            from align.errors import UsageError

            raise UsageError(
                f"--config given {len(configs)} times ({', '.join(configs)}); give one recipe and "
                "override its fields with --field value."
            )
        from align.machine import check_cpu_launch, check_launch_env

        check_launch_env()
        check_cpu_launch()
        values = recipe_values(fields, args.config, overrides, prog)
        preflight(fields, values)
        if values.get("output_dir"):
            from align.output_dir import check_not_committed

            resuming = str(values.get("resume_from_checkpoint") or "false").lower() != "false"
            check_not_committed(str(values["output_dir"]), bool(values.get("overwrite_output_dir")), resuming)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        _quiet_cpu_deepspeed()
        import align.config

        config = align.config.load_config(
            args.config, overrides, cls=getattr(align.config, config_class), prog=prog
        )
        _choose_cpu_threads(config)
        from align.output_dir import OutputLock

        lock = OutputLock(config.output_dir)
        if os.environ.get("RANK", "0") == "0":  # the launch's main process holds the folder for the whole run
            lock.acquire()
        try:
            builder = build
            if isinstance(build, str):
                module, _, name = build.partition(":")
                builder = getattr(importlib.import_module(module), name)
            train_and_save(builder(config), config)
        finally:
            lock.release()  # (a later run in this process, e.g. a demo's next step, takes it again)
        return 0

    return main_guard(prog, run, debug=args.debug)


def exit_process(code: int) -> None:
    """``sys.exit(code)`` for the ``python -m align.train / sft / dpo`` entry points. Under a multi-process
    launch (WORLD_SIZE > 1) Python's exit handlers run and stdio and logging are flushed, then ``os._exit``
    skips interpreter finalization: there a native thread of the distributed stack has aborted a rank after
    the run had saved everything ("terminate called without an active exception", no Python frame; 2 of ~60
    two-process CPU runs beside CPU load), which the launcher turns into a failed job."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        sys.exit(code)
    import atexit

    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _choose_cpu_threads(config) -> None:
    """A run on CPU takes the cores that are not busy (``align.machine.set_cpu_threads``) unless
    OMP_NUM_THREADS says otherwise; processes of one launch share the machine's cores."""
    from align.machine import threads_for_cpu_run

    threads_for_cpu_run(config.use_cpu)


def _quiet_cpu_deepspeed() -> None:
    """Without a GPU, tell DeepSpeed (imported by TRL) it is on CPU instead of letting it warn that it guessed."""
    import torch

    if "DS_ACCELERATOR" not in os.environ and not torch.cuda.is_available():
        os.environ["DS_ACCELERATOR"] = "cpu"
