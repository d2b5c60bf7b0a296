"""``align bench``: one harness for a matrix of methods x tasks x seeds under one protocol and one budget.

    align bench --config recipes/bench/cpu.yaml [--output DIR] [--tasks a,b] [--methods x,y] [--seeds 0,1]
                [--dry-run]

The spec YAML names ``tasks`` (each: a GRPO ``recipe`` and an ``eval`` task ``NAME=FILE``), ``methods``
(each: the recipe fields that make the method: estimator, loss_type, MC samples, ...), ``seeds``, a
``budget`` applied to every cell (steps, prompts and rollouts per step: the same for every method) and
the held-out evaluation (``eval_steps``, ``eval_limit``; every cell is scored at step 0, every
``eval_steps`` and at the end, greedily with the rollouts' own prompt format). ``launch`` is the command
that starts training (default: this Python, one process; a GPU spec gives ``accelerate launch ...``).
``jobs`` (or ``--jobs``) cells run side by side, each with ``OMP_NUM_THREADS`` = cores / jobs (CPU
presets: the tiny models gain little from a second thread, the start-up and evaluation of a cell are
mostly serial); every cell then shares the machine alike, so training seconds stay comparable.

Each cell runs ``align train`` in its own process (output and log under ``DIR/<task>/<method>/seed-<s>``).
A finished cell (its ``trainer_state.json`` exists) is kept when the bench is run again, so a killed bench
resumes where it stopped; a failed cell is recorded with its log's last line and the matrix goes on.
Results: ``DIR/results.json`` (every cell), ``DIR/table.md`` (per task and method: the final held-out
accuracy's mean over seeds, a 95% Wilson interval over all scored questions of all seeds (question
sampling only; the seeds' range is shown beside it), the start accuracy, steps and training seconds),
``DIR/report-<task>/`` (``align report`` of the cells, seeds of a method drawn as one mean curve:
held-out accuracy against step and against training seconds) and ``DIR/curves-<task>.png`` (each method's mean
held-out accuracy against rollouts generated and against training seconds, a colour per method). Not
covered: paired tests between methods.

Efficiency: with ``target_accuracy`` (a held-out accuracy, e.g. 0.5) each cell also records the first evaluation at
which it scored at least that: its step, the rollouts generated until then (step x completions generated
per optimizer step: ``per_device_train_batch_size`` x ``gradient_accumulation_steps`` x ``processes`` /
``num_iterations``, read from the cell's saved arguments; ``processes``: how many the launch starts, default
1) and its training seconds; the table gives, per method, how many seeds reached it and the mean and range
over those seeds (a seed that never reached it is counted as not reached, not as the budget).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SPEC_KEYS = {
    "tasks",
    "methods",
    "seeds",
    "budget",
    "eval_steps",
    "eval_limit",
    "launch",
    "output",
    "jobs",
    "target_accuracy",
    "processes",
}


def load_spec(path: str) -> dict:
    import yaml

    if not os.path.isfile(path):
        raise FileNotFoundError(f"bench spec {path} does not exist.")
    with open(path) as f:
        spec = yaml.safe_load(f) or {}
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {sorted(unknown)}; a bench spec has {sorted(SPEC_KEYS)}.")
    for key in ("tasks", "methods"):
        if not isinstance(spec.get(key), dict) or not spec[key]:
            raise ValueError(f"{path}: '{key}' must map names to settings (none given).")
    for name, task in spec["tasks"].items():
        missing = {"recipe", "eval"} - set(task or {})
        if missing:
            raise ValueError(f"{path}: task {name!r} lacks {sorted(missing)} (a GRPO recipe and NAME=FILE).")
        if not os.path.isfile(task["recipe"]):
            raise FileNotFoundError(f"{path}: task {name!r}: recipe {task['recipe']} does not exist.")
    target = spec.get("target_accuracy")
    if target is not None and not (isinstance(target, (int, float)) and 0.0 < target <= 1.0):
        raise ValueError(f"{path}: target_accuracy is a held-out accuracy in (0, 1], got {target!r}.")
    processes = spec.setdefault("processes", 1)
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(
            f"{path}: processes (how many the launch starts) must be an integer >= 1, got {processes!r}."
        )
    spec.setdefault("seeds", [0])
    spec.setdefault("budget", {})
    spec.setdefault("launch", [sys.executable, "-m", "align.train"])
    return spec


def _select(spec: dict, key: str, names: str | None) -> list:
    if names is None:
        return list(spec[key])
    chosen = names.split(",")
    unknown = [n for n in chosen if n not in spec[key]]
    if unknown:
        raise ValueError(f"--{key}: {unknown} not in the spec's {key} {list(spec[key])}.")
    return chosen


def _fields(values: dict) -> list[str]:
    argv = []
    for name, value in values.items():
        items = value if isinstance(value, list) else [value]
        argv += [f"--{name}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in items)]
    return argv


def cell_command(spec: dict, task: str, method: str, seed: int, output: str) -> list[str]:
    """The ``align train`` command line of one cell (the same budget and evaluation for every method)."""
    t = spec["tasks"][task]
    evaluation = {
        "eval_tasks": t["eval"],
        "eval_steps": spec.get("eval_steps", 10),
        "eval_on_start": True,
        "save_strategy": "no",
        "report_to": "none",
        "log_completions": False,
    }
    if spec.get("eval_limit"):
        evaluation["eval_limit"] = spec["eval_limit"]
    return [
        *spec["launch"],
        "--config",
        t["recipe"],
        *_fields(spec["budget"]),
        *_fields(spec["methods"][method] or {}),
        *_fields(evaluation),
        "--seed",
        str(seed),
        "--output_dir",
        output,
    ]


def run_cell(command: list[str], output: str, env: dict | None = None) -> str | None:
    """Run one cell unless it already finished; None when done, else the error's last log line."""
    if os.path.exists(os.path.join(output, "trainer_state.json")):
        return None
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "log.txt"), "w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    if code == 0:
        return None
    with open(os.path.join(output, "log.txt")) as log:
        lines = [line.strip() for line in log if line.strip()]
    return f"exit {code}: {lines[-1] if lines else '(no output)'}"


def rollouts_per_step(output: str, processes: int = 1) -> float:
    """Completions generated per optimizer step of a finished cell, from its saved arguments."""
    import torch

    args = torch.load(os.path.join(output, "training_args.bin"), weights_only=False)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
    return per_step / args.num_iterations


def cell_result(output: str, task_name: str, target: float | None = None, processes: int = 1) -> dict:
    """Held-out accuracy at the start and the end, steps and training seconds of a finished cell; with a
    target accuracy, the first evaluation at or above it (``reached``: step, rollouts, training seconds; None
    when no evaluation got there)."""
    with open(os.path.join(output, "trainer_state.json")) as f:
        history = json.load(f)["log_history"]
    key = f"eval_{task_name}/accuracy"
    evals = [h for h in history if key in h]
    if not evals:
        raise ValueError(f"{output}: no {key} in trainer_state.json (was eval_tasks set?).")
    result = {
        "start": evals[0][key],
        "final": evals[-1][key],
        "steps": max(h.get("step", 0) for h in history),
        "wall_s": max(h.get("wall_s", 0.0) for h in history),
        "curve": [[h["step"], h[key], h.get("wall_s", 0.0)] for h in evals],
    }
    if target is not None:
        per_step = rollouts_per_step(output, processes)
        first = next(((step, s) for step, acc, s in result["curve"] if acc >= target), None)
        result["rollouts_per_step"] = per_step
        result["reached"] = (
            None if first is None else {"step": first[0], "rollouts": first[0] * per_step, "wall_s": first[1]}
        )
    return result


def _mean_range(values: list[float], fmt: str) -> str:
    mean = sum(values) / len(values)
    return f"{mean:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def efficiency(cells: list[dict]) -> list[str]:
    """The efficiency columns of one table row: seeds that reached the target, then the mean [range] of
    their rollouts and training seconds to reach it ('-' when none did)."""
    reached = [c["reached"] for c in cells if c.get("reached")]
    if not reached:
        return [f"0/{len(cells)}", "-", "-"]
    return [
        f"{len(reached)}/{len(cells)}",
        _mean_range([r["rollouts"] for r in reached], ",.0f"),
        _mean_range([r["wall_s"] for r in reached], ".0f"),
    ]


def table(spec: dict, results: dict, tasks: list, methods: list, n_questions: dict) -> list[str]:
    from align.eval.report import wilson

    target = spec.get("target_accuracy")
    extra = (
        []
        if target is None
        else [f"seeds reaching {100 * target:g}%", "rollouts to reach it", "training s to reach it"]
    )
    header = [
        "task",
        "method",
        "held-out accuracy, mean over seeds (95% CI)",
        "seeds' range",
        "start",
        "steps",
        "training s",
        *extra,
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for task in tasks:
        for method in methods:
            cells = [c for c in results.values() if c["task"] == task and c["method"] == method]
            done = [c for c in cells if "final" in c]
            if not done:
                lines.append(
                    f"| {task} | {method} | failed: {cells[0].get('error', '?') if cells else '-'} |"
                    + "|" * (len(header) - 3)
                )
                continue
            n = n_questions[task]
            mean = sum(c["final"] for c in done) / len(done)
            lo, hi = wilson(mean, n * len(done))
            finals = [c["final"] for c in done]
            note = "" if len(done) == len(cells) else f" ({len(cells) - len(done)} seed(s) failed)"
            lines.append(
                f"| {task} | {method} | {100 * mean:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]{note} | "
                f"{100 * min(finals):.1f}-{100 * max(finals):.1f} | {100 * done[0]['start']:.1f} | {done[0]['steps']} | "
                f"{sum(c['wall_s'] for c in done) / len(done):.0f} |"
                + "".join(f" {x} |" for x in (efficiency(done) if target is not None else []))
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    from align.errors import main_guard

    parser = argparse.ArgumentParser(prog="align bench", allow_abbrev=False)
    parser.add_argument("--config", required=True, help="bench spec YAML (e.g. recipes/bench/cpu.yaml)")
    parser.add_argument("--output", default=None, help="default: the spec's output, else runs/bench")
    parser.add_argument("--tasks", default=None, help="comma-separated subset of the spec's tasks")
    parser.add_argument("--methods", default=None, help="comma-separated subset of the spec's methods")
    parser.add_argument("--seeds", default=None, help="comma-separated subset of the spec's seeds")
    parser.add_argument(
        "--jobs", type=int, default=None, help="cells run side by side (default: the spec's, else 1)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print every cell's command and stop")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    return main_guard("align bench", lambda: run(args), debug=args.debug)


def run(args) -> int:
    spec = load_spec(args.config)
    out = args.output or spec.get("output") or "runs/bench"
    tasks, methods = _select(spec, "tasks", args.tasks), _select(spec, "methods", args.methods)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(spec["seeds"])
    cells = [(t, m, s) for t in tasks for m in methods for s in seeds]
    if args.dry_run:
        for t, m, s in cells:
            print(" ".join(cell_command(spec, t, m, s, os.path.join(out, t, m, f"seed-{s}"))))
        return 0
    from align.eval.tasks import load_tasks

    n_questions = {
        t: len(load_tasks(spec["tasks"][t]["eval"], limit=spec.get("eval_limit"))[0][1]) for t in tasks
    }
    jobs = args.jobs or spec.get("jobs") or 1
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}.")
    env = None
    if jobs > 1:
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or jobs) // jobs))}
    results, started, finished = {}, time.monotonic(), [0]

    def one(cell: tuple) -> None:
        t, m, s = cell
        output = os.path.join(out, t, m, f"seed-{s}")
        error = run_cell(cell_command(spec, t, m, s, output), output, env)
        name = spec["tasks"][t]["eval"].partition("=")[0]
        shown = {
            "task": t,
            "method": m,
            "seed": s,
            **(
                {"error": error}
                if error
                else cell_result(output, name, spec.get("target_accuracy"), spec["processes"])
            ),
        }
        results[f"{t}/{m}/{s}"] = shown
        finished[0] += 1
        status = (
            f"failed ({error})" if error else f"{100 * shown['start']:.1f}% -> {100 * shown['final']:.1f}%"
        )
        if not error and "reached" in shown:
            reached = shown["reached"]
            status += f", {100 * spec['target_accuracy']:g}% " + (
                "not reached"
                if reached is None
                else f"at step {reached['step']} ({reached['rollouts']:,.0f} rollouts)"
            )
        line = f"[{finished[0]}/{len(cells)}] {t} {m} seed {s}: {status}  ({(time.monotonic() - started) / 60:.1f} min)"
        sys.stdout.write(line + "\n")  # one write: two cells finishing together keep their own lines
        sys.stdout.flush()

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, cells))
    results = {f"{t}/{m}/{s}": results[f"{t}/{m}/{s}"] for t, m, s in cells}  # the matrix's order
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump({"spec": args.config, "cells": results, "n_questions": n_questions}, f, indent=1)
    lines = table(spec, results, tasks, methods, n_questions)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    _reports(out, tasks, methods, seeds, results)
    for task in tasks:
        curves(out, task, methods, results, spec.get("target_accuracy"))
    failed = [k for k, c in results.items() if "error" in c]
    print(
        f"{len(cells) - len(failed)}/{len(cells)} cells finished in {(time.monotonic() - started) / 60:.1f} min; "
        f"table: {out}/table.md; curves: {out}/report-<task>/report.md"
    )
    return 1 if failed else 0


def curves(out: str, task: str, methods: list, results: dict, target: float | None) -> str | None:
    """``DIR/curves-<task>.png``: each method's held-out accuracy (mean over its seeds at each evaluation)
    against rollouts generated (steps when the cells do not count them) and against training seconds, one
    colour per method, the target accuracy as a dotted line; None when no cell of the task finished."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    colours, drawn, by_rollouts = plt.get_cmap("tab20").colors, 0, True
    for i, method in enumerate(methods):
        done = [c for c in results.values() if c["task"] == task and c["method"] == method and "curve" in c]
        if not done:
            continue
        steps = sorted({p[0] for c in done for p in c["curve"]})
        at = [[p for c in done for p in c["curve"] if p[0] == step] for step in steps]
        accuracy = [100 * sum(p[1] for p in points) / len(points) for points in at]
        seconds = [sum(p[2] for p in points) / len(points) for points in at]
        per_step = [c.get("rollouts_per_step") for c in done]
        by_rollouts = by_rollouts and None not in per_step
        x = [step * (sum(per_step) / len(per_step) if by_rollouts else 1) for step in steps]
        style = dict(color=colours[i % len(colours)], marker=".", linewidth=1.2, label=method)
        axes[0].plot(x, accuracy, **style)
        axes[1].plot(seconds, accuracy, **style)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    for ax, label in zip(axes, ("rollouts generated" if by_rollouts else "step", "training seconds")):
        if target is not None:
            ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(label, fontsize=9)
        ax.set_ylabel(f"held-out accuracy of {task} (%), mean over seeds", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    fig.tight_layout()
    path = os.path.join(out, f"curves-{task}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _reports(out: str, tasks: list, methods: list, seeds: list, results: dict) -> None:
    from align.eval.report import load_run, write_report

    for task in tasks:
        runs = [
            load_run(os.path.join(out, task, m, f"seed-{s}"), label=m)
            for m in methods
            for s in seeds
            if "error" not in results[f"{task}/{m}/{s}"]
        ]
        if runs:
            write_report(runs, os.path.join(out, f"report-{task}"))


if __name__ == "__main__":
    sys.exit(main())
