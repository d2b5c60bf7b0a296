"""The ``align`` command: ``train`` (GRPO), ``sft``, ``dpo``, ``plan``, ``bench``, ``eval``, ``report``, ``generate``, ``export`` (merge LoRA)."""

from __future__ import annotations

import argparse
import json
import sys

from align.errors import main_guard
from align.eval.cli import (
    add_eval_parser,
    add_report_parser,
    add_sampler_flags,
    flag,
    resolve_protocol,
    run_eval,
    run_report,
)


def _generate(args) -> int:
    """Decode each --prompt with a protocol's prompt format and sampler settings; one JSON line each."""
    from align.errors import check_model_path
    from align.eval.runner import DiffusionSource

    protocol = resolve_protocol(args)
    check_model_path(args.model, "--model", adapter_flag="--adapter")
    from align.machine import check_device

    check_device(args.device)
    if args.adapter:
        check_model_path(args.adapter, "--adapter", adapter=True)
    from align.sampling.family_checks import check_checkpoint_settings

    check_checkpoint_settings(
        args.model,
        trust_remote_code=args.trust_remote_code,
        cache=protocol.cache,
        remasking=protocol.remasking,
        block_length=protocol.block_length,
    )
    source = DiffusionSource.load(
        args.model,
        adapter=args.adapter,
        dtype=args.dtype,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        trust_remote_code=args.trust_remote_code,
    )
    print(f"align generate: protocol {args.protocol}: {protocol.describe()}", file=sys.stderr)
    source.progress = True
    texts = source.complete(args.prompt, protocol)
    for prompt, text in zip(args.prompt, texts):
        print(json.dumps({"prompt": prompt, "completion": text, "nfe": source.forward_passes}))
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dllm-align")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _export(args) -> int:
    """Merge the adapter into its base model; the base's own dtype unless --dtype says otherwise."""
    from align.errors import check_model_path

    check_model_path(args.model, "--model")
    check_model_path(args.adapter, "--adapter", adapter=True)
    from align.models import load_model, load_tokenizer

    model = load_model(
        args.model, dtype=args.dtype, adapter=args.adapter, trust_remote_code=args.trust_remote_code
    )
    model = model.merge_and_unload()
    model.save_pretrained(args.output)
    load_tokenizer(args.adapter if _has_tokenizer(args.adapter) else args.model).save_pretrained(args.output)
    print(
        json.dumps(
            {
                "merged": args.output,
                "base": args.model,
                "adapter": args.adapter,
                "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
            }
        )
    )
    return 0


def _has_tokenizer(path: str) -> bool:
    import os

    return os.path.exists(os.path.join(path, "tokenizer_config.json"))


class OneLineParser(argparse.ArgumentParser):
    """argparse with exact option names only and usage errors in one line (``align eval: ...``), exit 2."""

    def __init__(self, *args, **kwargs):
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help.\n")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["train"], ["sft"], ["dpo"]):
        from align.runner import recipe_command

        return recipe_command(argv[0], argv[1:])
    if argv[:1] == ["plan"]:
        from align.plan import main as plan_main

        return plan_main(argv[1:])
    if argv[:1] == ["bench"]:
        from align.bench import main as bench_main

        return bench_main(argv[1:])
    parser = OneLineParser(
        prog="align", description="RL alignment for masked diffusion LMs", allow_abbrev=False
    )
    parser.add_argument("--version", action="version", version=f"align {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    gen = sub.add_parser(
        "generate",
        help="decode prompts with the diffusion sampler; one JSON line each",
        description="Decode prompts with a protocol's prompt format and sampler (default protocol: "
        "llada); one JSON line per prompt on stdout, the protocol and a progress bar on stderr.",
    )
    gen.add_argument("--model", required=True, help="hub id or local path (LLaDA family loads natively)")
    gen.add_argument("--adapter", default=None, help="optional PEFT adapter path")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    add_sampler_flags(gen)
    gen.set_defaults(protocol="llada")
    exp = sub.add_parser("export", help="merge a LoRA adapter into its base model and save a full checkpoint")
    exp.add_argument("--model", required=True, help="base model (hub id or path)")
    exp.add_argument("--adapter", required=True, help="adapter folder (a GRPO output_dir or checkpoint)")
    exp.add_argument("--output", required=True, help="folder for the merged model and tokenizer")
    exp.add_argument("--dtype", default="auto", help="default: the base model's own dtype")
    flag(exp, "trust-remote-code", action="store_true")
    exp.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub.add_parser("train", help="GRPO training: align train --config RECIPE.yaml [--field value ...]")
    sub.add_parser("sft", help="masked-diffusion SFT: align sft --config RECIPE.yaml [--field value ...]")
    sub.add_parser("dpo", help="DPO / VRPO preference optimisation: align dpo --config RECIPE.yaml [...]")
    sub.add_parser(
        "plan", help="per-GPU memory by phase and work per step of a recipe: align plan RECIPE.yaml"
    )
    sub.add_parser("bench", help="methods x tasks x seeds under one budget: align bench --config SPEC.yaml")
    add_eval_parser(sub)
    add_report_parser(sub)
    args = parser.parse_args(argv)
    commands = {"export": _export, "generate": _generate, "eval": run_eval, "report": run_report}
    return main_guard(
        f"align {args.command}", lambda: commands[args.command](args), debug=getattr(args, "debug", False)
    )


if __name__ == "__main__":
    sys.exit(main())
