"""Run untrusted (model-generated) Python in a real sandbox.

Backend ``bwrap`` (bubblewrap): every program runs as

    setpriv --reuid U --regid U --clear-groups -- prlimit <limits> -- bwrap <namespaces> python3 -I main.py

* its own user, network, PID, IPC and UTS namespaces (``--unshare-all``): no network at all, not even
  the host's loopback; it sees only its own processes, and every process it started dies with it;
* a read-only ``/usr`` (and the ``/lib*``, ``/bin`` links), a private tmpfs ``/tmp``, a fresh ``/proc``
  and ``/dev``, its work dir as the only writable host path, nothing of ``$HOME`` or ``/etc``;
* an empty environment (``--clearenv``), a new terminal session, killed when the caller dies;
* rlimits set in the exec chain (not ``preexec_fn``): CPU seconds, address space, file size, open files,
  processes, no core dumps; when the caller is root each run gets a fresh non-root uid from its slot's
  range, because RLIMIT_NPROC is not enforced for root (and counts unreaped zombies of earlier runs);
* a wall-clock timeout that kills the whole process group; stdout/stderr go to files capped by the
  file-size limit and are read back truncated to ``max_output_bytes``.

Backend ``process`` (used when bwrap is missing or fails to start): the same rlimits, uid switch,
cleared environment and process-group kill, but **no filesystem, network or PID isolation**: the
program can read every file its uid can read, open network connections, and signal processes of its
uid. A warning saying so is logged once. ``backend="auto"`` picks bwrap when it works here.

Not covered: seccomp syscall filtering, cgroup memory accounting (address space is the memory limit),
GPU access control. Whether a program *passed* is not this module's business: ``rewards.harness`` signs
each test it saw finish into ``.signal`` with a per-run secret (see its docstring for what that stops).
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

logger = logging.getLogger(__name__)

BASE_UID = (
    61000  # when the caller is root, slot i's runs use uids block + i * UIDS_PER_SLOT + (n % UIDS_PER_SLOT)
)
UIDS_PER_SLOT = 1000  # a fresh uid per run: zombies of earlier runs must not count against RLIMIT_NPROC
MAX_SLOTS = 64  # slots per sandbox; a uid block (one per live Sandbox on the machine) spans MAX_SLOTS slots
MAX_BLOCKS = 64  # Sandboxes alive at once on one machine (e.g. 8 training processes x a few pools)
LOCK_DIR = os.path.join(tempfile.gettempdir(), "dllm-align-sandbox-uids")
_SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")


@dataclass
class ExecResult:
    """What a sandboxed program did: ``status`` is ok / error / timeout / sandbox_error."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    signal: str = ""  # contents of the work dir's ``.signal`` file (where the test harness signs passes)


@dataclass
class SandboxLimits:
    timeout_s: float = 10.0
    cpu_s: int = 10
    memory_mb: int = 1024
    file_size_mb: int = 16
    open_files: int = 64
    processes: int = 32
    tmpfs_mb: int = 64
    max_output_bytes: int = 64_000


def _ro_system_binds() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for path in ("/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def default_python() -> str:
    """An interpreter the sandbox uid can read (not one under root's home directory)."""
    for candidate in _SYSTEM_PYTHONS:
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError(
        "No system python3 found for the sandbox (looked in " + ", ".join(_SYSTEM_PYTHONS) + "); install the "
        "python3 package or pass Sandbox(python=...) pointing at an interpreter readable by every user."
    )


class Sandbox:
    """A pool of ``workers`` slots that run Python programs under the chosen backend."""

    def __init__(
        self,
        backend: str = "auto",
        workers: int | None = None,
        limits: SandboxLimits | None = None,
        python: str | None = None,
    ):
        self.limits = limits or SandboxLimits()
        self.python = python or default_python()
        self.workers = workers or max(1, os.cpu_count() or 1)
        if backend not in ("auto", "bwrap", "process"):
            raise ValueError(f"sandbox backend {backend!r} is not one of 'auto', 'bwrap', 'process'.")
        if backend == "bwrap" and shutil.which("bwrap") is None:
            raise RuntimeError(
                "sandbox backend 'bwrap' requested but bwrap is not installed (apt-get install bubblewrap)."
            )
        self.switch_uid = os.geteuid() == 0 and shutil.which("setpriv") is not None
        if self.workers > MAX_SLOTS:
            raise ValueError(f"sandbox workers {self.workers} > {MAX_SLOTS}; use at most {MAX_SLOTS} slots.")
        self._uid_base, self._lock = _claim_uid_block() if self.switch_uid else (None, None)
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)
        self._runs = [0] * self.workers
        self.backend = "bwrap" if backend == "auto" else backend
        if backend == "auto" and self.run("print(1)").stdout.strip() != "1":  # probe the real command chain
            self.backend = "process"
        if self.backend == "process":
            logger.warning(
                "Code sandbox backend 'process': generated code runs with rlimits, a cleared environment%s and a "
                "timeout, but WITHOUT filesystem, network or PID isolation: it can read any file its uid can "
                "read, open network connections and signal processes of its uid. Install bubblewrap "
                "(apt-get install bubblewrap) for the isolated backend.",
                " and a separate uid" if self.switch_uid else "",
            )
        else:
            logger.info("Code sandbox backend: bwrap (%d slots)", self.workers)
        self._executor = ThreadPoolExecutor(self.workers)

    def run_many(self, programs: list[tuple]) -> list[ExecResult]:
        """Run (code, stdin[, files]) tuples in parallel; results in order."""
        return list(self._executor.map(lambda prog: self.run(*prog), programs))

    def run(self, code: str, stdin: str = "", files: dict[str, str | bytes] | None = None) -> ExecResult:
        """Run ``code`` as ``main.py`` with ``files`` (name -> text or bytes) beside it in its work dir."""
        slot = self._slots.get()
        try:
            return self._run_in_slot(slot, code, stdin, files or {})
        finally:
            self._slots.put(slot)

    def _command(self, workdir: str, uid: int | None) -> list[str]:
        lim = self.limits
        nproc = lim.processes
        if uid is None and os.geteuid() != 0:  # shared uid: RLIMIT_NPROC counts the caller's processes too
            nproc += len(live_pids_of_uids(range(os.geteuid(), os.geteuid() + 1)))
        limits = [
            "prlimit", f"--cpu={lim.cpu_s}:{lim.cpu_s + 1}", f"--as={lim.memory_mb * 2**20}",
            f"--fsize={lim.file_size_mb * 2**20}", f"--nofile={lim.open_files}", f"--nproc={nproc}",
            "--core=0", "--",
        ]  # fmt: skip
        prefix = []
        if uid is not None:
            prefix = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        if self.backend == "process":
            return [*prefix, *limits, "env", "-i", "PATH=/usr/bin:/bin", "HOME=" + workdir,
                    self.python, "-I", os.path.join(workdir, "main.py")]  # fmt: skip
        sandbox = [
            "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
            *_ro_system_binds(), "--proc", "/proc", "--dev", "/dev",
            "--size", str(lim.tmpfs_mb * 2**20), "--tmpfs", "/tmp",
            "--bind", workdir, "/work", "--chdir", "/work",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work",
        ]  # fmt: skip
        return [*prefix, *limits, *sandbox, self.python, "-I", "/work/main.py"]

    def _run_in_slot(self, slot: int, code: str, stdin: str, files: dict) -> ExecResult:
        uid = None
        if self.switch_uid:
            uid = self._uid_base + slot * UIDS_PER_SLOT + self._runs[slot] % UIDS_PER_SLOT
            self._runs[slot] += 1
        workdir = tempfile.mkdtemp(prefix=f"align-sbx{slot}-")
        start = time.monotonic()
        try:
            for name, content in {**files, "main.py": code}.items():
                with open(os.path.join(workdir, name), "wb" if isinstance(content, bytes) else "w") as f:
                    f.write(content)
                if uid is not None:
                    os.chown(os.path.join(workdir, name), uid, uid)
            if uid is not None:
                os.chown(workdir, uid, uid)
            os.chmod(workdir, 0o700)
            out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    self._command(workdir, uid), stdin=subprocess.PIPE, stdout=out, stderr=err,
                    start_new_session=True, cwd=workdir,
                )  # fmt: skip
                status = self._wait(proc, stdin)
            cap = self.limits.max_output_bytes
            return ExecResult(status, proc.returncode, _read_capped(out_path, cap), _read_capped(err_path, cap),
                              time.monotonic() - start, _read_capped(os.path.join(workdir, ".signal"), cap))  # fmt: skip
        except OSError as exc:
            return ExecResult(
                "sandbox_error", None, "", f"could not start the sandbox: {exc}", time.monotonic() - start
            )
        finally:
            _kill_uid_leftovers(uid)
            shutil.rmtree(workdir, ignore_errors=True)

    def _wait(self, proc: subprocess.Popen, stdin: str) -> str:
        try:
            try:
                proc.stdin.write(stdin.encode())
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            proc.wait(timeout=self.limits.timeout_s)
        except subprocess.TimeoutExpired:
            _killpg(proc)
            proc.wait()
            return "timeout"
        _killpg(proc)  # anything it left in its group
        if proc.returncode in (
            -signal.SIGXCPU,
            128 + signal.SIGXCPU,
        ):  # the CPU limit (soft: SIGXCPU; bwrap adds 128)
            return "timeout"
        return "ok" if proc.returncode == 0 else "error"

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._lock is not None:
            self._lock.close()  # releases the uid block
            self._lock = None


def _claim_uid_block():
    """(first uid, open lock file) of a uid block no other live Sandbox on this machine holds.

    Every process that runs generated code (each of 8 training processes, an evaluation next to them)
    gets its own block, so one process's cleanup of "its" uid never kills another's program and
    RLIMIT_NPROC never counts another's processes. The flock is released when the holder exits.
    """
    import fcntl

    os.makedirs(LOCK_DIR, mode=0o700, exist_ok=True)
    for block in range(MAX_BLOCKS):
        handle = open(os.path.join(LOCK_DIR, f"block{block}.lock"), "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        return BASE_UID + block * MAX_SLOTS * UIDS_PER_SLOT, handle
    raise RuntimeError(
        f"all {MAX_BLOCKS} sandbox uid blocks are in use on this machine; close unused Sandboxes."
    )


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass


def live_pids_of_uids(uids: range) -> list[int]:
    """Pids whose real uid is in ``uids``, zombies excluded (they cannot act and are reaped by init)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1").split()[0]) in uids and not fields.get("State", "").strip().startswith(
            "Z"
        ):
            pids.append(int(entry))
    return pids


def _kill_uid_leftovers(uid: int | None) -> None:
    """A slot's uid is used by one program at a time: anything still running under it is a leftover."""
    if uid is None:
        return
    deadline = time.monotonic() + 5.0
    while pids := live_pids_of_uids(range(uid, uid + 1)):
        for pid in pids:
            try:
                os.kill(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            logger.warning("sandbox: processes %s of uid %d survived SIGKILL for 5 s", pids, uid)
            return
        time.sleep(0.005)


def _read_capped(path: str, cap: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(cap).decode("utf-8", errors="replace")
    except OSError:
        return ""


_DEFAULT: Sandbox | None = None


def default_sandbox() -> Sandbox:
    """The process-wide sandbox used by the code rewards (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Sandbox()
    return _DEFAULT
