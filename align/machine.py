"""What this machine and process offer a run, checked before anything heavy loads.

``check_device`` (a ``--device`` that this process cannot use), ``check_report_to`` (a logging
integration whose package is missing), ``check_launch_env`` (distributed variables left in the shell with no
launcher behind them) raise ``UsageError`` with one line that says what to change. ``cpu_threads`` picks the
kernel thread count of a single-process CPU run from the cores this process may use and how busy they are.

Not covered: GPUs that exist but are busy or too small (``align plan`` and the trainer's memory preflight
answer those), and network reachability (the evaluator's hub loading checks it where it needs it).
"""

from __future__ import annotations

import importlib.util
import logging
import os

from align.errors import UsageError

logger = logging.getLogger(__name__)

# transformers' report_to names -> the importable module(s) each needs (any one of them)
INTEGRATION_MODULES = {
    "wandb": ("wandb",),
    "tensorboard": ("tensorboard", "tensorboardX"),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "clearml": ("clearml",),
    "neptune": ("neptune",),
    "dvclive": ("dvclive",),
    "codecarbon": ("codecarbon",),
    "azure_ml": ("azureml",),
    "dagshub": ("dagshub",),
    "flyte": ("flytekit",),
    "swanlab": ("swanlab",),
    "trackio": ("trackio",),
}
PACKAGE_NAMES = {"azureml": "azureml-core", "tensorboard": "tensorboard", "flytekit": "flytekit"}


def check_report_to(report_to) -> None:
    """Every named integration's package is importable here (``all`` and ``none`` need nothing)."""
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    for name in names:
        modules = INTEGRATION_MODULES.get(str(name))
        if modules is None or any(importlib.util.find_spec(m) is not None for m in modules):
            continue  # "none", "all" or a name transformers itself judges
        package = PACKAGE_NAMES.get(modules[0], modules[0])
        others = [n for n in names if n != name]
        rest = f"--report_to {' '.join(map(str, others))}" if others else "--report_to none"
        raise UsageError(
            f"report_to {name} needs the {package} package, which is not installed here; pip install {package}, "
            f"or log elsewhere ({rest})."
        )


def check_device(device: str | None, flag: str = "--device") -> None:
    """A ``cuda`` device exists for this process (``None`` and ``cpu`` always do)."""
    if device is None or device == "cpu":
        return
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UsageError(f"{flag} {device!r} is not a device; give cpu, cuda or cuda:N.") from None
    if parsed.type != "cuda":
        return
    if not torch.cuda.is_available():
        why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device is visible"
        raise UsageError(
            f"{flag} {device}: {why} (torch {torch.__version__}); use --device cpu or leave {flag} out."
        )
    count = torch.cuda.device_count()
    if parsed.index is not None and parsed.index >= count:
        raise UsageError(
            f"{flag} {device}: this process sees {count} CUDA device(s) (cuda:0..cuda:{count - 1})."
        )


def check_launch_env(environ=None) -> None:
    """``WORLD_SIZE`` / ``RANK`` in the environment mean a launcher started this process; alone (left over in
    a shell, copied from a SLURM script) they would make the run wait for ranks that never come."""
    env = os.environ if environ is None else environ
    stray = {k: env[k] for k in ("WORLD_SIZE", "RANK") if k in env}
    if not stray:
        return
    shown = ", ".join(f"{k}={v}" for k, v in stray.items())
    try:
        world, rank = int(env.get("WORLD_SIZE", "1")), int(env.get("RANK", "0"))
    except ValueError:
        raise UsageError(
            f"{shown} in the environment is not a number; unset it or start the run with accelerate launch."
        ) from None
    launched = "LOCAL_RANK" in env and "MASTER_ADDR" in env
    if world > 1 and not launched:
        raise UsageError(
            f"{shown} in the environment, but no launcher started this process (LOCAL_RANK and "
            "MASTER_ADDR are unset); unset them for a single-process run (env -u WORLD_SIZE -u RANK "
            "...), or start it with accelerate launch."
        )
    if not 0 <= rank < max(world, 1):
        raise UsageError(
            f"{shown} in the environment: RANK must be in 0..WORLD_SIZE-1; unset them or start the "
            "run with accelerate launch."
        )


def check_cpu_launch(environ=None) -> None:
    """A DeepSpeed launch that asks for bf16 / fp16 on a machine without a GPU (a GPU recipe's accelerate
    config run on CPU as is) fails deep inside DeepSpeed's config check; say which launch flags to add."""
    env = os.environ if environ is None else environ
    precision = env.get("ACCELERATE_MIXED_PRECISION", "no")
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true" or precision not in ("bf16", "fp16"):
        return
    import torch

    if torch.cuda.is_available():
        return
    raise UsageError(
        f"this DeepSpeed launch asks for {precision} mixed precision on a machine without a GPU; on "
        "CPU add --mixed_precision no to accelerate launch (DS_ACCELERATOR=cpu accelerate launch "
        "--config_file ... --mixed_precision no -m align.train ... --use_cpu true)."
    )


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_threads(cores: int | None = None, load_1min: float | None = None) -> int:
    """Kernel threads for a single-process CPU run: the cores not already busy (the 1-minute load average
    counts runnable processes), at least 1. On a busy 2-core machine, torch's default of one thread per core
    ran a tiny GRPO step in 58 s against 6 s with one thread: threads that wait for a core spin in every
    parallel region."""
    cores = usable_cores() if cores is None else cores
    if load_1min is None:
        try:
            load_1min = os.getloadavg()[0]
        except OSError:
            load_1min = 0.0
    return max(1, min(cores, cores - int(load_1min + 0.5)))


def actor_device(requested: str | None = None) -> str:
    """Where a Ray actor (rollout server, verl worker) puts its model: ``requested``, else the GPU Ray gave it
    (Ray sets the actor's CUDA_VISIBLE_DEVICES to its own GPUs, so ``cuda`` is that GPU), else the CPU."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def threads_for_cpu_run(cpu_asked: bool) -> int | None:
    """When this process computes on CPU (asked, or no CUDA): ``set_cpu_threads`` shared by the processes of
    this machine's launch (``LOCAL_WORLD_SIZE``); the count set, or None (a GPU run, or the user's choice)."""
    import torch

    if cpu_asked or not torch.cuda.is_available():
        return set_cpu_threads(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return None


def set_cpu_threads(world_size: int = 1) -> int | None:
    """Choose and set torch's thread count for a CPU run unless the user chose (``OMP_NUM_THREADS``); returns
    the count set, or None when the user's choice stands. Several processes on one machine share its cores."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    import torch

    threads = max(1, cpu_threads() // max(1, world_size))
    torch.set_num_threads(threads)
    logger.info(
        "CPU run: %d kernel thread(s) per process (%d usable cores, load %.1f); set OMP_NUM_THREADS to choose.",
        threads,
        usable_cores(),
        os.getloadavg()[0],
    )
    return threads
