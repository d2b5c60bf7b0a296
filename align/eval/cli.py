"""Argument parsing for ``align eval`` and ``align report``."""

from __future__ import annotations

import argparse
import json
import sys


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a checkpoint or an endpoint on GSM8K / MATH500 / HumanEval / MBPP")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusion checkpoint: hub id or local path")
    src.add_argument("--endpoint", help="OpenAI-compatible server URL, e.g. http://localhost:8000/v1")
    p.add_argument("--adapter", default=None, help="PEFT adapter on top of --model")
    p.add_argument("--served-model", default=None, help="model name the endpoint serves (with --endpoint)")
    p.add_argument(
        "--tasks", required=True, help="comma list: gsm8k,math500,humaneval,mbpp or NAME=file.jsonl"
    )
    p.add_argument("--protocol", default="d1", help="named preset: d1, llada, illada, tiny")
    p.add_argument("--data-dir", default=None, help="read DATA_DIR/<task>.jsonl instead of the hub")
    p.add_argument("--limit", type=int, default=None, help="first N questions per task")
    p.add_argument("--num-samples", type=int, default=1, help="answers per question (pass@k with k = this)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="folder for results.json and <task>/samples.jsonl")
    p.add_argument("--batch-size", type=int, default=8, help="prompts decoded together (diffusion)")
    p.add_argument("--concurrency", type=int, default=8, help="parallel requests (endpoint)")
    p.add_argument("--retries", type=int, default=3, help="retries per request (endpoint)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default=None, help="default: this process's GPU when there is one, else cpu")
    p.add_argument("--trust-remote-code", action="store_true")
    for name, kind in (("gen-length", int), ("block-length", int), ("steps", int), ("temperature", float),
                       ("threshold", float), ("cfg-scale", float), ("max-prompt-length", int)):  # fmt: skip
        p.add_argument(f"--{name}", type=kind, default=None, help="override the protocol's value")
    p.add_argument("--remasking", default=None, choices=["low_confidence", "random"])
    p.add_argument("--cache", default=None, choices=["prefix", "dual"])
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--variable-length", action=argparse.BooleanOptionalAction, default=None)


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="Markdown report with tables and plots from several eval folders")
    p.add_argument("runs", nargs="+", help="eval output folders, optionally LABEL=FOLDER")
    p.add_argument("--output", required=True, help="folder for report.md and the PNGs")


def run_eval(args) -> int:
    from align.eval import (
        PROTOCOLS,
        DiffusionSource,
        EndpointSource,
        evaluate_task,
        resolve_tasks,
        write_results,
    )

    if args.protocol not in PROTOCOLS:
        print(
            f"align eval: unknown protocol {args.protocol!r}; choose from {sorted(PROTOCOLS)}.",
            file=sys.stderr,
        )
        return 2
    protocol = PROTOCOLS[args.protocol].with_overrides(
        gen_length=args.gen_length, block_length=args.block_length, steps=args.steps, temperature=args.temperature,
        threshold=args.threshold, cfg_scale=args.cfg_scale, max_prompt_length=args.max_prompt_length,
        remasking=args.remasking, cache=args.cache, system_prompt=args.system_prompt,
        use_chat_template=args.chat_template, variable_length=args.variable_length,
    )  # fmt: skip
    if args.num_samples > 1 and protocol.temperature == 0:
        print("align eval: --num-samples > 1 needs sampling; set --temperature > 0 (greedy repeats itself).",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.endpoint and not args.served_model:
        print(
            "align eval: --endpoint needs --served-model (the name the server knows the model by).",
            file=sys.stderr,
        )
        return 2
    tasks = resolve_tasks(args.tasks)
    if args.endpoint:
        source = EndpointSource(
            args.endpoint, args.served_model, args.concurrency, args.retries, seed=args.seed
        )
    else:
        source = DiffusionSource(args.model, adapter=args.adapter, dtype=args.dtype, device=args.device,
                                 batch_size=args.batch_size, seed=args.seed, trust_remote_code=args.trust_remote_code)  # fmt: skip
    results = {"tasks": {}, "config": {"source": source.description, "protocol": protocol.as_dict(),
                                       "num_samples": args.num_samples, "seed": args.seed, "limit": args.limit}}  # fmt: skip
    samples = {}
    for task, path in tasks:
        rows = task.load(args.data_dir, path)[: args.limit]
        results["tasks"][task.name], samples[task.name] = evaluate_task(
            source, task, rows, protocol, args.num_samples
        )
        if getattr(source, "is_main", True):
            print(json.dumps({"task": task.name, **results["tasks"][task.name]}))
    if getattr(source, "is_main", True):
        write_results(args.output, results, samples)
    return 0


def run_report(args) -> int:
    from align.eval.report import load_run, write_report

    runs = []
    for item in args.runs:
        label, _, folder = item.rpartition("=")
        runs.append(load_run(folder, label or None))
    print(write_report(runs, args.output))
    return 0
