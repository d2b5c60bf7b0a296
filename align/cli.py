"""The ``align`` command: ``train`` (GRPO), ``sft``, ``eval``, ``report``, ``generate``, ``export`` (merge LoRA)."""

from __future__ import annotations

import argparse
import json
import sys

from align.eval.cli import add_eval_parser, add_report_parser, run_eval, run_report


def _generate(args) -> int:
    import torch

    from align.models import family_spec, load_model, load_tokenizer
    from align.sampling import generate

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.model, trust_remote_code=args.trust_remote_code)
    model = load_model(
        args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code, adapter=args.adapter
    )
    model.eval().to(args.device)
    spec = family_spec(model, tokenizer)
    prompts = args.prompt
    if args.chat_template:
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
            )
            for p in prompts
        ]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=not args.chat_template)
    out = generate(
        model,
        batch["input_ids"].to(args.device),
        batch["attention_mask"].to(args.device),
        gen_length=args.gen_length,
        steps=args.steps,
        block_length=args.block_length,
        temperature=args.temperature,
        remasking=args.remasking,
        cfg_scale=args.cfg_scale,
        threshold=args.threshold,
        cache=args.cache,
        spec=spec,
        generator=torch.Generator(args.device).manual_seed(args.seed),
    )
    texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    for prompt, text in zip(args.prompt, texts):
        print(json.dumps({"prompt": prompt, "completion": text, "nfe": out.nfe}))
    return 0


def _export(args) -> int:
    from align.models import load_model, load_tokenizer

    model = load_model(
        args.model, dtype=args.dtype, adapter=args.adapter, trust_remote_code=args.trust_remote_code
    )
    model = model.merge_and_unload()
    model.save_pretrained(args.output)
    load_tokenizer(args.adapter if _has_tokenizer(args.adapter) else args.model).save_pretrained(args.output)
    print(json.dumps({"merged": args.output, "base": args.model, "adapter": args.adapter}))
    return 0


def _has_tokenizer(path: str) -> bool:
    import os

    return os.path.exists(os.path.join(path, "tokenizer_config.json"))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        from align.train import main as train_main

        return train_main(argv[1:])
    if argv[:1] == ["sft"]:
        from align.sft import main as sft_main

        return sft_main(argv[1:])
    parser = argparse.ArgumentParser(prog="align", description="RL alignment for masked diffusion LMs")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="decode prompts with the diffusion sampler; one JSON line each")
    gen.add_argument("--model", required=True, help="hub id or local path (LLaDA family loads natively)")
    gen.add_argument("--adapter", default=None, help="optional PEFT adapter path")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    gen.add_argument("--gen_length", type=int, default=256)
    gen.add_argument("--steps", type=int, default=256)
    gen.add_argument("--block_length", type=int, default=32)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    gen.add_argument("--cfg_scale", type=float, default=0.0)
    gen.add_argument("--threshold", type=float, default=None)
    gen.add_argument("--cache", default=None, choices=["prefix", "dual"])
    gen.add_argument("--chat_template", action=argparse.BooleanOptionalAction, default=True)
    gen.add_argument("--dtype", default="bfloat16")
    gen.add_argument("--device", default=None, help="default: cuda when a GPU is visible, else cpu")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--trust_remote_code", action="store_true")
    exp = sub.add_parser("export", help="merge a LoRA adapter into its base model and save a full checkpoint")
    exp.add_argument("--model", required=True, help="base model (hub id or path)")
    exp.add_argument("--adapter", required=True, help="adapter folder (a GRPO output_dir or checkpoint)")
    exp.add_argument("--output", required=True, help="folder for the merged model and tokenizer")
    exp.add_argument("--dtype", default="bfloat16")
    exp.add_argument("--trust_remote_code", action="store_true")
    sub.add_parser("train", help="GRPO training: align train --config RECIPE.yaml [--field value ...]")
    sub.add_parser("sft", help="masked-diffusion SFT: align sft --config RECIPE.yaml [--field value ...]")
    add_eval_parser(sub)
    add_report_parser(sub)
    args = parser.parse_args(argv)
    commands = {"export": _export, "generate": _generate, "eval": run_eval, "report": run_report}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
