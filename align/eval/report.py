"""``align report``: several ``align eval`` output folders -> a Markdown report with tables and PNG plots.

One table per task (a row per run: its label, model, protocol, generation length, metrics, n) and, per
task, a bar chart of the main metric per run; when runs of one model were evaluated at several
generation lengths, a line chart of the metric against length. Labels default to the folder names.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict


def load_run(folder: str, label: str | None = None) -> dict:
    path = os.path.join(folder, "results.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{folder}: no results.json (is it an `align eval --output` folder?).")
    with open(path) as f:
        results = json.load(f)
    return {"label": label or os.path.basename(os.path.normpath(folder)), **results}


def main_metric(metrics: dict) -> str:
    return "accuracy" if "accuracy" in metrics else "pass@1"


def _model_name(run: dict) -> str:
    source = run["config"].get("source", {})
    return source.get("served_model") or source.get("model") or "?"


def write_report(runs: list[dict], output: str) -> str:
    """Write ``output/report.md`` and its PNGs; returns the report's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(output, exist_ok=True)
    tasks = sorted({t for run in runs for t in run["tasks"]})
    lines = ["# Evaluation report", ""]
    for task in tasks:
        entries = [(run, run["tasks"][task]) for run in runs if task in run["tasks"]]
        extra = sorted({k for _, m in entries for k in m if k.startswith("pass@") and k != "pass@1"})
        metric = main_metric(entries[0][1])
        lines += [f"## {task}", "", f"| run | model | protocol | gen length | {metric} | " + " | ".join(extra) +
                  (" | " if extra else "") + "n |", "|---" * (6 + len(extra)) + "|"]  # fmt: skip
        for run, m in entries:
            protocol = run["config"].get("protocol", {})
            cells = [run["label"], _model_name(run), protocol.get("name", "?"), str(protocol.get("gen_length", "?")),
                     f"{100 * m[metric]:.1f}", *(f"{100 * m[k]:.1f}" for k in extra), str(m["n"])]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(entries)), 3))
        ax.bar([run["label"] for run, _ in entries], [100 * m[metric] for _, m in entries], color="#4477aa")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(task)
        fig.autofmt_xdate(rotation=20)
        fig.tight_layout()
        fig.savefig(os.path.join(output, f"{task}.png"), dpi=100)
        plt.close(fig)
        lines += [f"![{task}]({task}.png)", ""]
        lines += _length_plot(plt, task, entries, metric, output)
    path = os.path.join(output, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _length_plot(plt, task: str, entries, metric: str, output: str) -> list[str]:
    by_model = defaultdict(dict)
    for run, m in entries:
        length = run["config"].get("protocol", {}).get("gen_length")
        by_model[_model_name(run)][length] = 100 * m[metric]
    if all(len(points) < 2 for points in by_model.values()):
        return []
    fig, ax = plt.subplots(figsize=(5, 3))
    for model, points in by_model.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=model)
    ax.set_xlabel("generation length (tokens)")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{task} by generation length")
    ax.legend(fontsize=7)
    fig.tight_layout()
    name = f"{task}_by_length.png"
    fig.savefig(os.path.join(output, name), dpi=100)
    plt.close(fig)
    return [f"![{task} by length]({name})", ""]
