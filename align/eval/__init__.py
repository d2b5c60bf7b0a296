"""Benchmark evaluation of diffusion checkpoints and OpenAI-compatible endpoints (``align eval`` / ``align report``).
Names resolve lazily."""

from align import lazy_face

_HOMES = {
    **{
        name: "runner"
        for name in (
            "DiffusionSource",
            "EndpointSource",
            "OutputFolder",
            "evaluate_task",
            "pass_at_k",
            "task_metrics",
        )
    },
    **{name: "tasks" for name in ("PROTOCOLS", "TASKS", "Protocol", "Task", "resolve_tasks")},
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_face(__name__, _HOMES)
