"""``align report``: ``align eval`` folders and ``align train`` output_dirs -> Markdown with tables and PNGs.

For eval folders: one table per task (a row per run: label, model, adapter, protocol, generation length,
the main metric with its 95% interval, pass@k, n) and a bar chart of the main metric per run with the
value, n and the interval on each bar; when runs of one setting were evaluated at several generation
lengths, a line chart against length. Intervals: Wilson for accuracy (and pass@1 of one sample per
question); a bootstrap over questions for pass@k when ``samples.jsonl`` is there. Runs with different n
get a note. For training output_dirs (``trainer_state.json``): curves of reward, each reward's mean, KL,
completion length, clipped ratio, rollout tokens/s and any ``eval/...`` score against step, and the
``eval/...`` scores against training seconds (``wall_s``, evaluation excluded) when the run logged them.
Labels are ``LABEL=FOLDER`` as given, else the folder names; training runs given the same label (seeds of
one setting) are drawn as their mean per step with a min-max band.

Rows of one task evaluated under different protocol settings (beyond the generation length) are refused in one
line, or with ``--allow-mixed`` shown marked "(other protocol)". Not covered: significance tests between runs (the
intervals are per run).
"""

from __future__ import annotations

import glob
import json
import math
import os
import random
from collections import defaultdict

from align.eval.runner import pass_at_k

LOOP_METRICS = ("loop_rate", "unclosed_think_rate")  # per task, rewards/loops.py (% of answers)
TRAIN_CURVES = [  # (log key or prefix*, y label, x key)
    ("reward", "mean reward", "step"),
    ("rewards/*/mean", "mean of each reward", "step"),
    ("kl", "KL to the reference", "step"),
    ("completions/mean_length", "completion length (tokens)", "step"),
    ("completions/clipped_ratio", "clipped ratio (no EOS)", "step"),
    ("rollout/tokens_per_s", "rollout tokens/s", "step"),
    ("eval_*", "held-out score (%), eval during training", "step"),
    ("eval_*", "held-out score (%) vs training time", "wall_s"),
]
# one colour per run label in every panel; a panel's several keys differ by line style
_PALETTE = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#000000"]
_STYLES = ["-", "--", ":", "-."]
X_LABELS = {"step": "step", "wall_s": "training seconds (evaluation excluded)"}
_BLUE = "#4477aa"


def load_run(folder: str, label: str | None = None) -> dict:
    """An eval folder (``results.json``) or a training output_dir (``trainer_state.json``, else the newest
    checkpoint's)."""
    label = label or os.path.basename(os.path.normpath(folder))
    path = os.path.join(folder, "results.json")
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        return {"label": label, "kind": "eval", "folder": folder, **results}
    states = [os.path.join(folder, "trainer_state.json")] + sorted(
        glob.glob(os.path.join(folder, "checkpoint-*", "trainer_state.json")),
        key=lambda p: int(p.split("checkpoint-")[-1].split(os.sep)[0]),
        reverse=True,
    )
    for state in states:
        if os.path.exists(state):
            with open(state) as f:
                return {
                    "label": label,
                    "kind": "train",
                    "folder": folder,
                    "history": json.load(f)["log_history"],
                }
    raise FileNotFoundError(
        f"{folder}: no results.json (an `align eval --output` folder) and no trainer_state.json (an `align train` "
        "output_dir)."
    )


def main_metric(metrics: dict) -> str:
    return "accuracy" if "accuracy" in metrics else "pass@1"


def wilson(p: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``p`` observed on ``n`` trials."""
    if n == 0:
        return 0.0, 1.0
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def bootstrap_pass_at_k(correct: list[int], num_samples: int, k: int, draws: int = 2000, seed: int = 0):
    """95% percentile interval of pass@k, resampling questions (``correct``: right answers per question)."""
    rng = random.Random(seed)
    per_question = [pass_at_k(num_samples, c, k) for c in correct]
    means = sorted(
        sum(rng.choices(per_question, k=len(per_question))) / len(per_question) for _ in range(draws)
    )
    return means[int(0.025 * draws)], means[int(0.975 * draws) - 1]


def interval(run: dict, task: str, metric: str) -> tuple[float, float] | None:
    m = run["tasks"][task]
    samples = m.get("num_samples", 1)
    if metric == "accuracy" or (metric == "pass@1" and samples == 1):
        return wilson(m[metric], m["n"] * samples)
    correct = _correct_per_question(run, task)
    if correct is None:
        return None
    return bootstrap_pass_at_k(correct, samples, int(metric.split("@")[1]))


def _correct_per_question(run: dict, task: str) -> list[int] | None:
    path = os.path.join(run["folder"], task, "samples.jsonl")
    if not os.path.exists(path):
        return None
    counts = defaultdict(int)
    with open(path) as f:
        for line in f:
            row = json.loads(line)
            counts[row["index"]] += row["score"] >= 1.0
    return [counts[i] for i in sorted(counts)]


def _engine(run: dict) -> str:
    """What decoded the run's answers, from its newest provenance record: ``vllm 0.32.0`` or
    ``dllm-align sampler, cuda:0 (NVIDIA H100 ...)``; ``?`` for folders written before provenance was kept."""
    records = run.get("provenance") or [{}]
    record = records[-1]
    name = record.get("engine") or "?"
    detail = record.get("engine_version") or record.get("device")
    return f"{name} {detail}" if record.get("engine_version") else f"{name}, {detail}" if detail else name


def _source(run: dict) -> tuple[str, str]:
    source = run["config"].get("source", {})
    return source.get("served_model") or source.get("model") or "?", source.get("adapter") or ""


def check_comparable(runs: list[dict], allow_mixed: bool) -> dict[str, set[str]]:
    """{task: labels of rows whose protocol differs from the task's first run} (beyond the generation length and
    step count); a difference is refused in one line unless ``allow_mixed``."""
    from align.eval.runner import comparable_key

    marked = {}
    for task in sorted({t for run in runs for t in run["tasks"]}):
        rows = [run for run in runs if task in run["tasks"]]
        keys = [comparable_key(run["config"].get("protocol", {})) for run in rows]
        odd = {run["label"] for run, key in zip(rows, keys) if key != keys[0]}
        if odd and not allow_mixed:
            from align.errors import UsageError

            first = rows[0]["config"].get("protocol", {})
            other = next(run for run in rows if run["label"] in odd)["config"].get("protocol", {})
            fields = sorted(
                k
                for k in set(first) | set(other)
                if first.get(k) != other.get(k) and k not in ("gen_length", "steps")
            )
            raise UsageError(
                f"task {task}: {rows[0]['label']} and {', '.join(sorted(odd))} were evaluated under different "
                f"protocol settings ({', '.join(fields)}); their scores do not compare. Report them apart, "
                "or pass --allow-mixed to put them in one table, marked."
            )
        marked[task] = odd
    return marked


def write_report(runs: list[dict], output: str, allow_mixed: bool = False) -> str:
    """Write ``output/report.md`` and its PNGs; returns the report's path. Rows of one task must share their
    protocol settings (beyond the length) unless ``allow_mixed``, which marks the odd ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output, exist_ok=True)
    evals = [r for r in runs if r["kind"] == "eval"]
    trains = [r for r in runs if r["kind"] == "train"]
    marked = check_comparable(evals, allow_mixed)
    for run in evals:  # the odd rows carry a mark in every table they appear in
        if any(run["label"] in labels for labels in marked.values()):
            run["label"] += " (other protocol)"
    lines = ["# Report", ""]
    for task in sorted({t for run in evals for t in run["tasks"]}):
        lines += _task_section(plt, task, [run for run in evals if task in run["tasks"]], output)
    if trains:
        lines += _training_section(plt, trains, output)
    path = os.path.join(output, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _task_section(plt, task: str, runs: list[dict], output: str) -> list[str]:
    metric = main_metric(runs[0]["tasks"][task])
    extra = sorted({k for r in runs for k in r["tasks"][task] if k.startswith("pass@") and k != metric})
    extra += [k for k in LOOP_METRICS if any(k in r["tasks"][task] for r in runs)]  # beside the score
    lines = [
        f"## {task}",
        "",
        f"| run | model | adapter | engine | protocol | gen length | {metric} (95% CI) | "
        + "".join(f"{k} | " for k in extra)
        + "n |",
        "|---" * (8 + len(extra)) + "|",
    ]
    bars = []
    for run in runs:
        m, protocol = run["tasks"][task], run["config"].get("protocol", {})
        ci = interval(run, task, metric)
        bars.append((run["label"], m[metric], ci, m["n"]))
        shown = f"{100 * m[metric]:.1f}" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")
        model, adapter = _source(run)
        cells = [
            run["label"],
            model,
            adapter or "-",
            _engine(run),
            protocol.get("name", "?"),
            str(protocol.get("gen_length", "?")),
            shown,
            *(f"{100 * m[k]:.1f}" if k in m else "-" for k in extra),
            str(m["n"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    sizes = sorted({r["tasks"][task]["n"] for r in runs})
    if len(sizes) > 1:
        lines += [
            "",
            f"Note: these runs scored different numbers of questions (n = {', '.join(map(str, sizes))}); "
            "compare them with care (the intervals show how much n matters).",
        ]
    lines += ["", f"![{task}]({_bar_chart(plt, task, metric, bars, output)})", ""]
    return lines + _length_plot(plt, task, runs, metric, output)


def _yerr(points: list) -> list[list[float]]:
    """matplotlib's [below, above] in percent for (value, (lo, hi) or None) pairs of fractions; never negative
    (an interval's rounding can leave p a hair outside it: at p = 1 Wilson's upper bound is 0.99999...)."""
    return [
        [max(0.0, 100 * (v - ci[0])) if ci else 0.0 for v, ci in points],
        [max(0.0, 100 * (ci[1] - v)) if ci else 0.0 for v, ci in points],
    ]


def _bar_chart(plt, task: str, metric: str, bars: list, output: str) -> str:
    fig, ax = plt.subplots(figsize=(max(4.5, 1.4 * len(bars)), 3.4))
    xs = range(len(bars))
    values = [100 * v for _, v, _, _ in bars]
    errors = _yerr([(v, ci) for _, v, ci, _ in bars])
    ax.bar(xs, values, color=_BLUE, yerr=errors, capsize=4, ecolor="#333333")
    for x, (_, v, ci, n) in zip(xs, bars):
        top = 100 * (ci[1] if ci else v)
        ax.text(x, top + 1.5, f"{100 * v:.1f}\nn={n}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(
        list(xs),
        [label for label, *_ in bars],
        rotation=20 if len(bars) > 3 else 0,
        ha="right" if len(bars) > 3 else "center",
    )
    ax.set_ylim(0, max(100 * (ci[1] if ci else v) for _, v, ci, _ in bars) + 18)  # room for the labels
    ax.set_yticks([t for t in range(0, 101, 20) if t <= ax.get_ylim()[1]])
    ax.set_ylabel(f"{metric} (%), 95% CI")
    ax.set_title(task)
    fig.tight_layout()
    name = f"{task}.png"
    fig.savefig(os.path.join(output, name), dpi=110)
    plt.close(fig)
    return name


def _length_plot(plt, task: str, runs: list[dict], metric: str, output: str) -> list[str]:
    """Runs that differ only in generation length form one series, named after their labels."""
    series = defaultdict(list)
    for run in runs:
        protocol = dict(run["config"].get("protocol", {}))
        length = protocol.pop("gen_length", None)
        protocol.pop("steps", None)
        key = json.dumps([_source(run), protocol, run["config"].get("num_samples", 1)], sort_keys=True)
        series[key].append((length, run))
    if all(len({length for length, _ in points}) < 2 for points in series.values()):
        return []
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for points in series.values():
        points.sort(key=lambda p: p[0])
        ys = [100 * run["tasks"][task][metric] for _, run in points]
        cis = [interval(run, task, metric) or (v / 100, v / 100) for (_, run), v in zip(points, ys)]
        errors = _yerr([(v / 100, ci) for v, ci in zip(ys, cis)])
        ax.errorbar(
            [p[0] for p in points],
            ys,
            yerr=errors,
            marker="o",
            capsize=3,
            label=_series_name([run["label"] for _, run in points]),
        )
    ax.set_xlabel("generation length (tokens)")
    ax.set_ylabel(f"{metric} (%), 95% CI")
    ax.set_title(f"{task} by generation length")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"{task}_by_length.png"
    fig.savefig(os.path.join(output, name), dpi=110)
    plt.close(fig)
    return [f"![{task} by length]({name})", ""]


def _series_name(labels: list[str]) -> str:
    prefix = os.path.commonprefix(labels).rstrip("-_ @=:")
    return prefix if len(labels) > 1 and len(prefix) >= 2 else ", ".join(labels)


def training_panels(runs: list[dict]) -> list[tuple[str, str, str, list[str]]]:
    """(pattern, title, x key, the logged keys it matches) of every ``TRAIN_CURVES`` panel with data."""
    panels = []
    for key, ylabel, xkey in TRAIN_CURVES:
        keys = sorted(
            {
                k
                for r in runs
                for h in r["history"]
                for k in h
                if _matches(k, key) and xkey in h and not k.endswith(("/n", *(f"/{m}" for m in LOOP_METRICS)))
            }
        )
        if keys:
            panels.append((key, ylabel, xkey, keys))
    return panels


def _training_section(plt, runs: list[dict], output: str) -> list[str]:
    panels = training_panels(runs)
    lines = ["## Training", "", "| run | steps | reward first -> last |", "|---|---|---|"]
    for run in runs:
        rewards = [h["reward"] for h in run["history"] if "reward" in h]
        steps = max((h.get("step", 0) for h in run["history"]), default=0)
        shown = f"{rewards[0]:.3f} -> {rewards[-1]:.3f}" if rewards else "-"
        lines.append(f"| {run['label']} | {steps} | {shown} |")
    if not panels:
        return lines + ["", "(no training metrics logged)", ""]
    groups = defaultdict(list)  # label -> its runs (seeds of one setting share a label)
    for run in runs:
        groups[run["label"]].append(run)
    colours = {label: _PALETTE[i % len(_PALETTE)] for i, label in enumerate(groups)}
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.3 * rows), squeeze=False)
    for ax, (key, ylabel, xkey, keys) in zip(axes.flat, panels):
        held_out = key == "eval_*"
        scale = 100.0 if held_out else 1.0  # held-out scores in percent, as the bar charts
        for label, members in groups.items():
            for j, k in enumerate(keys):
                xs, ys, lows, highs = _mean_curve(members, k, xkey)
                if not xs:
                    continue
                style = dict(
                    color=colours[label],
                    linestyle=_STYLES[j % len(_STYLES)],
                    marker="." if len(xs) < 40 else None,
                )
                ax.plot(
                    xs,
                    [scale * y for y in ys],
                    label=_short(k, key) if len(keys) > 1 and label == next(iter(groups)) else None,
                    **style,
                )
                if len(members) > 1:
                    ax.fill_between(
                        xs,
                        [scale * y for y in lows],
                        [scale * y for y in highs],
                        color=colours[label],
                        alpha=0.15,
                        linewidth=0,
                    )
                if held_out:  # a 95% Wilson interval per point over the questions scored (all seeds)
                    spans = [_held_out_interval(members, k, xkey, x) for x in xs]
                    ax.errorbar(
                        xs,
                        [scale * y for y in ys],
                        yerr=_yerr(list(zip(ys, spans))),
                        fmt="none",
                        ecolor=colours[label],
                        capsize=2,
                        linewidth=0.8,
                    )
        ax.set_title(ylabel, fontsize=9)
        ax.set_ylabel(ylabel.split(",")[0].replace(" vs training time", ""), fontsize=8)
        ax.set_xlabel(X_LABELS[xkey], fontsize=8)
        ax.tick_params(labelsize=7)
        if held_out:
            ax.set_ylim(0, 100)
        if ax.get_legend_handles_labels()[1]:  # the keys' line styles, below the axes
            ax.legend(
                fontsize=6,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.22),
                ncol=min(3, len(keys)),
                frameon=False,
            )
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if len(groups) > 1:  # the runs' colours, once, above the panels
        handles = [plt.Line2D([], [], color=colours[label], label=label) for label in groups]
        fig.legend(handles=handles, loc="upper center", ncol=min(6, len(groups)), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    else:
        fig.tight_layout()
    fig.savefig(os.path.join(output, "training.png"), dpi=110)
    plt.close(fig)
    return lines + ["", "![training curves](training.png)", ""]


def _held_out_interval(runs: list[dict], key: str, xkey: str, x: float) -> tuple[float, float] | None:
    """Wilson 95% interval of a held-out score at one step over every seed's questions, from the logged
    ``.../n`` beside it; None when the count was not logged."""
    n_key = key.rsplit("/", 1)[0] + "/n"
    scored = []
    for run in runs:
        for h in run["history"]:
            if key in h and n_key in h and xkey in h:
                scored.append((h["step"], h[xkey], h[key], h[n_key]))
    by_step = defaultdict(list)
    for step, xv, value, n in scored:
        by_step[step].append((xv, value, n))
    for entries in by_step.values():
        if abs(sum(e[0] for e in entries) / len(entries) - x) < 1e-9:
            total = sum(e[2] for e in entries)
            mean = sum(e[1] * e[2] for e in entries) / total if total else 0.0
            return wilson(mean, int(total)) if total else None
    return None


def _mean_curve(runs: list[dict], key: str, xkey: str) -> tuple[list, list, list, list]:
    """Per step logged by any of ``runs``: mean x (the step or its mean wall_s), mean, min and max of key."""
    by_step = defaultdict(list)
    for run in runs:
        for h in run["history"]:
            if key in h and xkey in h and "step" in h:
                by_step[h["step"]].append((h[xkey], h[key]))
    steps = sorted(by_step)
    xs = [sum(x for x, _ in by_step[s]) / len(by_step[s]) for s in steps]
    values = [[y for _, y in by_step[s]] for s in steps]
    return xs, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def _matches(name: str, pattern: str) -> bool:
    if "*" not in pattern:
        return name == pattern
    head, tail = pattern.split("*")
    return name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)


def _short(name: str, pattern: str) -> str:
    head, _, tail = pattern.partition("*")
    return name[len(head) : len(name) - len(tail)] if "*" in pattern else name
