"""The README's table of every committed GRPO recipe as ``align plan`` plans it (8 x 80 GiB, the ZeRO stage of
each recipe's own launch command). The table is computed, never typed: ``tests/test_plan.py`` fails when the
README's copy differs from what this prints. Offline, the models' published shapes are used (no weights).

    HF_HUB_OFFLINE=1 python benchmarks/plan_table.py            # print the table
    HF_HUB_OFFLINE=1 python benchmarks/plan_table.py --write    # replace it in README.md
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADER = [
    "| recipe | sharding | completion tokens | rollout | estimate | policy step | static | forward calls / step | PFLOP / step |",
    "|---|---|---|---|---|---|---|---|---|",
]


def recipes() -> list[str]:
    """Every GRPO recipe for a hub model (``recipes/<model>/grpo/*.yaml``; the tiny CPU recipes are not here)."""
    return sorted(
        os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "recipes", "*", "grpo", "*.yaml"))
    )


def row(recipe: str, gpus: int = 8, gpu_memory_gb: float = 80.0) -> str:
    from align.config import load_config
    from align.plan import GIB, launch_zero, load_shape, make_plan

    config = load_config(recipe, ["--use_cpu", "true"], prog="align plan")
    zero = launch_zero(recipe)
    zero = zero if zero is not None else (2 if config.use_peft else 3)
    plan = make_plan(
        load_shape(config.model_name_or_path, config.trust_remote_code), config, processes=gpus, zero=zero
    )
    sharding = ("DDP" if zero == 0 else f"ZeRO-{zero}") + (" LoRA" if config.use_peft else "")
    tokens = f"{config.max_completion_length}" + (", variable" if config.variable_length else "")
    phases = [f"{plan.peak(p) / GIB:.1f}" for p in ("rollout", "estimate", "policy step")]
    name = os.path.relpath(recipe, "recipes")
    return (f"| `{name}` | {sharding} | {tokens} | {' | '.join(phases)} | {plan.static_bytes / GIB:.1f} | "
            f"{plan.forward_passes} | {plan.flops / 1e15:.1f} |")  # fmt: skip


def table() -> list[str]:
    cwd = os.getcwd()
    os.chdir(REPO)  # recipes name repo-relative paths
    try:
        return HEADER + [row(r) for r in recipes()]
    finally:
        os.chdir(cwd)


def readme_table(text: str) -> list[str]:
    """The README's copy: the lines from the header to the first line that is not a table row."""
    lines = text.splitlines()
    start = lines.index(HEADER[0])
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="replace the table in README.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    lines = table()
    if not args.write:
        print("\n".join(lines))
        return 0
    path = os.path.join(REPO, "README.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    old = "\n".join(readme_table(text))
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, "\n".join(lines), 1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, REPO)
    sys.exit(main())
