"""Benchmark evaluation of diffusion checkpoints and OpenAI-compatible endpoints (``align eval`` / ``align report``)."""

from align.eval.runner import DiffusionSource, EndpointSource, evaluate_task, pass_at_k, write_results
from align.eval.tasks import PROTOCOLS, TASKS, Protocol, Task, resolve_tasks

__all__ = [
    "PROTOCOLS", "TASKS", "DiffusionSource", "EndpointSource", "Protocol", "Task", "evaluate_task", "pass_at_k",
    "resolve_tasks", "write_results",
]  # fmt: skip
