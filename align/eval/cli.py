"""Argument parsing for ``align eval`` and ``align report``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def flag(parser, name: str, **kwargs):
    """``--gen-length`` and ``--gen_length`` alike: every subcommand accepts both spellings."""
    spellings = dict.fromkeys([f"--{name}", f"--{name.replace('-', '_')}"])
    return parser.add_argument(*spellings, **kwargs)


def add_sampler_flags(p) -> None:
    """Protocol overrides shared by ``eval`` and ``generate`` (default: the protocol's value)."""
    p.add_argument(
        "--protocol",
        default="d1",
        help="named preset: d1, llada, llada-fast, llada-opencompass, illada, dream, diffucoder, tiny (prompt + sampler settings)",
    )
    for name, kind in (
        ("gen-length", int),
        ("block-length", int),
        ("steps", int),
        ("temperature", float),
        ("threshold", float),
        ("cfg-scale", float),
        ("max-prompt-length", int),
        ("cache-refresh", int),
        ("boost", float),
        ("boost-power", float),
        ("top-p", float),
        ("top-k", int),
        ("alg-temp", float),
    ):
        flag(p, name, type=kind, default=None, help="override the protocol's value")
    from align.sampling.settings import BLOCK_SCHEDULES, DREAM_ALGS, REMASKING

    p.add_argument(
        "--remasking",
        default=None,
        choices=[*REMASKING, *DREAM_ALGS, *BLOCK_SCHEDULES],
        help="LLaDA's schedule (low_confidence, random), Dream's (origin, maskgit_plus, topk_margin, "
        "entropy; one block) or SDAR's for block-diffusion models (low_confidence_static, "
        "low_confidence_dynamic with --threshold, sequential)",
    )
    p.add_argument("--cache", default=None, choices=["prefix", "dual"])
    flag(p, "system-prompt", default=None)
    flag(
        p,
        "prompt-template",
        default=None,
        help="the user message as str.format over each row, e.g. '{question}' for a raw prompt",
    )
    flag(
        p,
        "boost-token",
        default=None,
        help="end-of-thinking token to boost (illada: </think>; --boost 0: off)",
    )
    flag(p, "chat-template", action=argparse.BooleanOptionalAction, default=None)
    flag(p, "variable-length", action=argparse.BooleanOptionalAction, default=None)
    flag(p, "batch-size", type=int, default=8, help="prompts decoded together (diffusion)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--device", default=None, help="default: this process's GPU when there is one, else cpu")
    flag(p, "trust-remote-code", action="store_true")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def resolve_protocol(args):
    """The named protocol with the command line's overrides applied."""
    from align.errors import UsageError
    from align.eval import PROTOCOLS
    from align.eval.tasks import check_protocol

    if args.protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {args.protocol!r}; choose from {sorted(PROTOCOLS)}.")
    protocol = PROTOCOLS[args.protocol].with_overrides(
        gen_length=args.gen_length,
        block_length=args.block_length,
        steps=args.steps,
        temperature=args.temperature,
        threshold=args.threshold,
        cfg_scale=args.cfg_scale,
        max_prompt_length=args.max_prompt_length,
        remasking=args.remasking,
        cache=args.cache,
        cache_refresh=args.cache_refresh,
        system_prompt=args.system_prompt,
        prompt_template=args.prompt_template,
        use_chat_template=args.chat_template,
        variable_length=args.variable_length,
        boost=args.boost,
        boost_power=args.boost_power,
        boost_token=args.boost_token,
        top_p=args.top_p,
        top_k=args.top_k,
        alg_temp=args.alg_temp,
    )
    try:
        check_protocol(protocol)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return protocol


def add_eval_parser(sub) -> None:
    from align.eval.tasks import PROTOCOLS, TASKS

    epilog = (
        "built-in tasks: " + ", ".join(sorted(TASKS)) + " (or NAME=file.jsonl)\n\nprotocols (--protocol; "
        "each flag above overrides its value):\n"
        + "\n".join(f"  {name}: {p.describe()}" for name, p in PROTOCOLS.items())
    )
    p = sub.add_parser(
        "eval",
        help="score a checkpoint or an endpoint on GSM8K / MATH500 / HumanEval / MBPP",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusion checkpoint: hub id or local path")
    src.add_argument("--endpoint", help="OpenAI-compatible server URL, e.g. http://localhost:8000/v1")
    p.add_argument("--adapter", default=None, help="PEFT adapter on top of --model")
    flag(p, "served-model", default=None, help="model name the endpoint serves (with --endpoint)")
    p.add_argument(
        "--tasks", required=True, help="comma list: gsm8k,math500,humaneval,mbpp or NAME=file.jsonl"
    )
    flag(p, "data-dir", default=None, help="read DATA_DIR/<task>.jsonl instead of the hub")
    flag(
        p,
        "rename-columns",
        nargs="+",
        default=None,
        metavar="OLD:NEW",
        help="rename the data's columns first (e.g. q:question a:answer), as training's rename_columns",
    )
    p.add_argument("--limit", type=int, default=None, help="first N questions per task")
    flag(p, "num-samples", type=int, default=1, help="answers per question (pass@k with k = this)")
    flag(
        p,
        "loop-unit",
        choices=("words", "chars"),
        default="words",
        help="loop_rate reads answers in words, or in chars (text without spaces: the tiny tasks)",
    )
    p.add_argument(
        "--output",
        required=True,
        help="folder for results.json and <task>/samples.jsonl; a rerun "
        "with the same settings skips finished tasks and continues an unfinished one",
    )
    p.add_argument("--overwrite", action="store_true", help="rerun every task even if --output holds results")
    p.add_argument("--concurrency", type=int, default=8, help="parallel requests (endpoint)")
    p.add_argument("--retries", type=int, default=3, help="retries per request (endpoint)")
    add_sampler_flags(p)


def add_report_parser(sub) -> None:
    p = sub.add_parser(
        "report", help="Markdown report with tables and plots from eval folders and training runs"
    )
    p.add_argument(
        "runs",
        nargs="+",
        help="align eval --output folders or align train output_dirs, optionally LABEL=FOLDER",
    )
    p.add_argument("--output", required=True, help="folder for report.md and the PNGs")
    p.add_argument(
        "--allow-mixed",
        action="store_true",
        help="put runs decoded or prompted with different "
        "protocol settings in one table (their rows are marked); refused by default",
    )


def run_eval(args) -> int:
    """Check everything cheap first (protocol, tasks, data, paths, endpoint), then load and decode."""
    from align.errors import UsageError, check_model_path
    from align.eval import EndpointSource
    from align.eval.tasks import load_tasks

    protocol = resolve_protocol(args)
    if args.num_samples > 1 and protocol.temperature == 0:
        raise UsageError("--num-samples > 1 needs sampling; set --temperature > 0 (greedy repeats itself).")
    if args.endpoint and not args.served_model:
        raise UsageError("--endpoint needs --served-model (the name the server knows the model by).")
    if args.model:
        check_model_path(args.model, "--model", adapter_flag="--adapter")
    from align.machine import check_device, check_launch_env

    check_device(args.device)
    check_launch_env()
    if args.adapter:
        check_model_path(args.adapter, "--adapter", adapter=True)
    tasks = load_tasks(args.tasks, args.data_dir, args.limit, args.rename_columns)
    if args.endpoint:
        source = EndpointSource(
            args.endpoint, args.served_model, args.concurrency, args.retries, seed=args.seed
        )
        first_task, first_rows = tasks[0]
        first = protocol.for_task(first_task.name)
        source.probe(first_task.messages(first_rows[0], first), first)
        return _evaluate_all(
            args, source.description, lambda: source, tasks, protocol, provenance=source.provenance()
        )
    return _run_diffusion(args, tasks, protocol)


def _run_diffusion(args, tasks, protocol) -> int:

    from align.eval.runner import DiffusionSource, diffusion_description, end_processes, process_state
    from align.machine import threads_for_cpu_run
    from align.sampling.family_checks import check_checkpoint_settings

    threads_for_cpu_run(args.device == "cpu")  # the idle cores, as a CPU training run takes

    for task, _ in tasks:  # a setting the model's family cannot run: one line before any weights are read
        p = protocol.for_task(task.name)
        check_checkpoint_settings(
            args.model,
            trust_remote_code=args.trust_remote_code,
            cache=p.cache,
            remasking=p.remasking,
            block_length=p.block_length,
        )
    if any(protocol.for_task(task.name).use_chat_template for task, _ in tasks):
        from align.models import load_tokenizer

        load_tokenizer(args.model, trust_remote_code=args.trust_remote_code, chat_off="--no-chat-template")

    state = process_state(args.device)
    loaded = []

    def load():
        if not loaded:
            loaded.append(
                DiffusionSource.load(
                    args.model,
                    adapter=args.adapter,
                    dtype=args.dtype,
                    device=args.device,
                    batch_size=args.batch_size,
                    seed=args.seed,
                    trust_remote_code=args.trust_remote_code,
                    state=state,
                )
            )
        return loaded[0]

    description = {
        **diffusion_description(args.model, args.adapter, args.dtype),
        "processes": state.num_processes,
    }
    try:
        from align.eval.runner import device_name

        status = _evaluate_all(
            args,
            description,
            load,
            tasks,
            protocol,
            state=state,
            provenance={"engine": "dllm-align sampler", "device": device_name(state.device)},
        )
    except BaseException:
        end_processes(state, wait=False)  # the others are stopped by the launcher; waiting here would hang
        raise
    end_processes(state, wait=True)
    return status


def _evaluate_all(args, description: dict, make_source, tasks, protocol, state=None, provenance=None) -> int:
    """Every task in turn; each is written as it finishes and skipped when an earlier run finished it.
    ``provenance`` (engine, device) is recorded with the package versions, not compared on resume."""
    from align.eval.runner import OutputFolder, evaluate_task, run_provenance

    is_main = state is None or state.is_main_process
    from align.eval.runner import folder_identity, settings_hash

    settings = protocol.as_dict()
    loop_unit = getattr(args, "loop_unit", "words")
    config = {
        "source": description,
        "protocol": settings,
        "protocol_hash": settings_hash(settings),
        "num_samples": args.num_samples,
        "seed": args.seed,
        "limit": args.limit,
        **({"loop_unit": loop_unit} if loop_unit != "words" else {}),  # the default left unrecorded
        "task_hashes": {
            task.name: settings_hash({"task": dataclasses.asdict(task), "rows": rows}) for task, rows in tasks
        },
    }
    identity = {}
    if is_main and description.get("model") and getattr(args, "model", None):
        identity = {
            "model_identity": folder_identity(description["model"]),
            "adapter_identity": folder_identity(description.get("adapter")),
        }
    record = run_provenance(
        {**(provenance or {}), **identity, "seed": args.seed, "num_samples": args.num_samples}
    )
    folder = _on_main(
        state, lambda: OutputFolder(args.output, config, overwrite=args.overwrite, provenance=record)
    )
    for task, rows in tasks:
        finished = _broadcast(state, folder.finished(task.name) if is_main else None)
        if finished is not None:
            if is_main:
                print(
                    f"align eval: {task.name} is already complete in {args.output} (n={finished['n']}); "
                    "skipping it (--overwrite reruns it).",
                    file=sys.stderr,
                )
                print(json.dumps({"task": task.name, **finished}))
            continue
        own = protocol.for_task(task.name)  # the prompts evaluate_task writes (the task's own settings)
        messages = [task.messages(r, own) for r in rows for _ in range(args.num_samples)]
        done = _broadcast(state, folder.resume(task.name, messages, args.num_samples) if is_main else None)
        if done and is_main:
            print(
                f"align eval: {task.name}: continuing after {len(done)} of {len(messages)} answers kept in "
                f"{args.output}.",
                file=sys.stderr,
            )
        try:
            metrics, _ = evaluate_task(
                make_source(),
                task,
                rows,
                protocol,
                args.num_samples,
                done=done,
                on_chunk=(lambda new, name=task.name: folder.append(name, new)) if is_main else None,
                loop_unit=loop_unit,
            )
        except KeyboardInterrupt:
            if is_main:
                print(
                    f"align eval: interrupted; finished answers are kept in {args.output}/{task.name}/samples.jsonl "
                    "and the same command continues from them.",
                    file=sys.stderr,
                )
            return 130
        if is_main:
            folder.finish(task.name, metrics)
            print(json.dumps({"task": task.name, **metrics}))
    return 0


def _on_main(state, make):
    """``make()`` on the main process; its error (e.g. settings that differ) stops every process alike."""
    if state is None or state.num_processes == 1:
        return make()
    error, value = None, None
    if state.is_main_process:
        try:
            value = make()
        except ValueError as exc:
            error = str(exc)
    error = _broadcast(state, error)
    if error is not None:
        raise ValueError(error)
    return value


def _broadcast(state, obj):
    if state is None or state.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj])[0]


def run_report(args) -> int:
    from align.eval.report import load_run, write_report

    runs = []
    for item in args.runs:
        label, _, folder = item.rpartition("=")
        runs.append(load_run(folder, label or None))
    print(write_report(runs, args.output, allow_mixed=args.allow_mixed))
    return 0
