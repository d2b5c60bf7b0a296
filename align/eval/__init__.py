"""Benchmark evaluation of diffusion checkpoints and OpenAI-compatible endpoints (``align eval`` / ``align report``)."""

from align.eval.runner import (
    DiffusionSource,
    EndpointSource,
    OutputFolder,
    evaluate_task,
    pass_at_k,
    task_metrics,
)
from align.eval.tasks import PROTOCOLS, TASKS, Protocol, Task, resolve_tasks

__all__ = [
    "PROTOCOLS", "TASKS", "DiffusionSource", "EndpointSource", "OutputFolder", "Protocol", "Task", "evaluate_task",
    "pass_at_k", "resolve_tasks", "task_metrics",
]  # fmt: skip
