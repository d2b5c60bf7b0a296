"""``align`` commands in processes of their own, for demos that train several arms side by side."""

from __future__ import annotations

import os
import subprocess
import sys

ALIGN = "import sys; from align.cli import main; sys.exit(main(sys.argv[1:]))"


def start_align(argv: list[str], run: str, demo: str) -> subprocess.Popen | None:
    """``align *argv`` in its own process with one kernel thread (the tiny models gain nothing from a second, and
    the figures do not depend on how many arms run at once), its console in ``run/console.log``; None when
    ``run`` already holds a finished model (delete it to train again)."""
    if os.path.exists(os.path.join(run, "model.safetensors")):
        print(f"{demo}: reusing the finished run in {run} (delete it to train again)", file=sys.stderr)
        return None
    os.makedirs(run, exist_ok=True)
    with open(os.path.join(run, "console.log"), "w") as log:
        return subprocess.Popen(
            [sys.executable, "-c", ALIGN, *argv], stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip


def finish(runs: dict[str, subprocess.Popen | None]) -> None:
    """Wait for every started run; the first that failed stops the demo with its console's path."""
    for run, proc in runs.items():
        if proc is not None and proc.wait() != 0:
            raise SystemExit(f"align failed in {run} (its console: {run}/console.log)")
