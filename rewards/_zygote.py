"""The warm slot's resident process, run inside the slot's bwrap sandbox (stdlib only, started as
``python3 -I -c <this source> FD``): it forks one fresh process per candidate program and never runs
candidate code itself.

It is the sandbox's uid 0 with three capabilities in the sandbox's own user namespace (CAP_SYS_ADMIN,
CAP_NET_ADMIN and CAP_SETPCAP: to build namespaces, bring up their loopback and drop capabilities), no
capability outside it, and no seccomp filter. Per program it forks a helper that enters new mount, IPC, PID
and network namespaces and forks the namespace's init (pid 1), which, before any candidate byte runs:

* mounts a fresh tmpfs on ``/tmp`` (its working directory, ``tmpfs_bytes`` in all), a fresh ``/proc`` that
  shows only its own PID namespace (the resident process and earlier programs are not in it: no pid to
  signal, no ``/proc`` entry to open) and a devpts instance of its own, and brings up its own loopback;
* gives up root for good: securebits ``NOROOT``, ``NO_SETUID_FIXUP``, ``NO_CAP_AMBIENT_RAISE`` (locked), an
  empty bounding set, no ambient, effective, permitted or inheritable capability, ``no_new_privs``;
* loads the sandbox's seccomp filter (the same program a cold run gets from bwrap; any failure ends the
  process before the candidate's code is read);
* keeps only the descriptors the judge sent (stdin, stdout, stderr, the protocol channel) and forks the
  program's process (pid 2, as under bwrap's init), which sets its rlimits (CPU seconds, address space,
  file size, open files, processes, no core dumps) and runs the stub; the init reaps orphans and exits with
  the program's status.

What one program leaves behind cannot reach the next: its processes die with its PID namespace (the
resident process kills its pid 1 and waits until the kernel has reaped every process of that namespace),
its files with its tmpfs, its pseudo-terminals with its own devpts, its System V and POSIX IPC objects with
its IPC namespace, its sockets, abstract names and network counters with its network namespace, its
environment with its processes. What the kernel frees late (descriptors left in flight in a unix socket)
lives on in namespaces no later program joins; its memory is waited for by the judge, until the slot's
memory cgroup is back to what the slot itself holds. The resident process is not
dumpable and holds no descriptor a program inherits. The judge (``rewards.judge``) drives it over a SEQPACKET socket: ``init`` once, then ``start``
(with the program's four descriptors) and ``end`` per program.
"""

import ctypes
import marshal
import os
import resource
import select
import signal
import socket
import sys
import time

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x08000000, 0x20000000, 0x40000000
SIOCSIFFLAGS, IFF_UP_LOOPBACK_RUNNING = 0x8914, 0x1 | 0x8 | 0x40
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_CAPBSET_DROP = 1, 4, 22, 24
PR_SET_SECUREBITS, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT = 28, 36, 38, 47
PR_CAP_AMBIENT_CLEAR_ALL, SECCOMP_MODE_FILTER = 4, 2
# NOROOT, NO_SETUID_FIXUP, KEEP_CAPS (off), NO_CAP_AMBIENT_RAISE, each with its lock bit
SECUREBITS = 0b1 | 0b10 | 0b100 | 0b1000 | 0b100000 | 0b1000000 | 0b10000000
MAX_MESSAGE = 1 << 16

libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(libc.prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_root() -> None:
    """No capability now or after any exec, and no way to get one back."""
    _prctl(PR_SET_SECUREBITS, SECUREBITS)
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3: all zero
    _check(libc.capset(ctypes.byref(header), data), "capset")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)


def _loopback_up() -> None:
    """The program's own network namespace has only ``lo``, down: bring it up, as bwrap does for a cold run."""
    import fcntl
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        fcntl.ioctl(probe, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", IFF_UP_LOOPBACK_RUNNING))


def _load_seccomp(program: bytes) -> None:
    count = len(program) // 8
    filters = (_SockFilter * count).from_buffer_copy(program)
    fprog = _SockFprog(count, ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "seccomp")


def _init(config: dict, fds: list[int], stub) -> None:
    """The program's namespace init (pid 1 of a fresh PID namespace, as bwrap's init is for a cold run): its
    mounts, then no privilege, then the program's process (pid 2, so the signals it sends itself act as in a
    plain interpreter: a namespace's init ignores those it has no handler for), reaped with every orphan; it
    exits with the program's status (128 + signal when killed, as bwrap reports). Never returns."""
    try:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        options = f"size={config['tmpfs_bytes']},mode=0755".encode()
        _check(libc.mount(b"tmpfs", b"/tmp", b"tmpfs", MS_NOSUID | MS_NODEV, options), "mount /tmp")
        _check(libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None), "mount /proc")
        # its own pseudo-terminals: the sandbox's devpts is the program's to chmod, and would stay so for the next
        options = b"newinstance,ptmxmode=0666,mode=0620"
        _check(
            libc.mount(b"devpts", b"/dev/pts", b"devpts", MS_NOSUID | MS_NOEXEC, options), "mount /dev/pts"
        )
        os.chdir("/tmp")
        _loopback_up()
        _drop_root()
        if config["seccomp"]:
            _load_seccomp(config["seccomp"])
        stdin, stdout, stderr, channel = fds
        channel = os.dup(channel)  # it may sit at 0-2, which the next lines replace
        for target, fd in ((0, stdin), (1, stdout), (2, stderr)):
            os.dup2(fd, target)
        os.dup2(channel, 3)
        os.closerange(4, os.sysconf("SC_OPEN_MAX"))  # the resident process's socket included
        program = os.fork()
    except BaseException as exc:  # noqa: BLE001 - nothing of the candidate has run yet
        os.write(2, f"warm sandbox: could not prepare the program: {exc!r}\n".encode()[:400])
        os._exit(125)
    if program == 0:
        _run_program(config, stub)
    os.closerange(0, 4)
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            os._exit(125)
        if pid == program:
            code = os.waitstatus_to_exitcode(raw)
            os._exit(code if code >= 0 else 128 - code)


def _run_program(config: dict, stub) -> None:
    """The program's process (descriptors 0-3 set by its init): its limits, then the stub; never returns."""
    try:
        for name, value in config["rlimits"].items():
            resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))
    except BaseException as exc:  # noqa: BLE001 - nothing of the candidate has run yet
        os.write(2, f"warm sandbox: could not prepare the program: {exc!r}\n".encode()[:400])
        os._exit(125)
    sys.argv = ["-c", "3"]
    status = 1
    try:
        exec(stub, {"__name__": "__inside__", "__builtins__": __builtins__})
        status = 0
    except SystemExit as exc:  # the status a plain ``python -c`` would exit with
        code = exc.code
        if code is None:
            status = 0
        elif type(code) is int:
            status = code & 0xFF
        else:
            try:
                print(code, file=sys.stderr)
            except BaseException:  # noqa: BLE001
                pass
            status = 1
    except BaseException:  # noqa: BLE001 - a traceback on stderr and status 1, as the interpreter does
        try:
            import traceback

            traceback.print_exc()
        except BaseException:  # noqa: BLE001
            pass
        status = 1
    try:
        import atexit
        import threading

        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001
        pass
    os._exit(status)


def _start(config: dict, fds: list[int], stub) -> int:
    """Fork the helper that makes the namespaces and the program's process; the program's pid here."""
    read_end, write_end = os.pipe()
    helper = os.fork()
    if helper == 0:
        try:
            os.close(read_end)
            _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID | CLONE_NEWNET), "unshare")
            program = os.fork()
            if program == 0:
                os.close(write_end)
                _init(config, fds, stub)
            os.write(write_end, program.to_bytes(4, "big"))
            os._exit(0)
        except BaseException as exc:  # noqa: BLE001
            os.write(2, f"warm sandbox: {exc!r}\n".encode()[:400])
            os._exit(1)
    os.close(write_end)
    data = b""
    while len(data) < 4:
        chunk = os.read(read_end, 4 - len(data))
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    os.waitpid(helper, 0)
    if len(data) < 4:
        raise OSError("the namespace helper did not start the program")
    return int.from_bytes(data, "big")


def _end(pid: int, wait_s: float) -> tuple[int, bool]:
    """Wait up to ``wait_s`` for the program to exit, then kill its PID namespace; (status, timed out).
    The status reads as ``subprocess`` reports it: the exit code, or minus the signal."""
    timed_out = False
    try:
        handle = os.pidfd_open(pid)
    except OSError:
        handle = None
    if handle is not None:
        if wait_s > 0 and not select.select([handle], [], [], wait_s)[0]:
            timed_out = True
        os.close(handle)
    else:  # no pidfd (Linux < 5.3): poll
        deadline = time.monotonic() + wait_s
        while (
            time.monotonic() < deadline
            and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        ):
            time.sleep(0.002)
        timed_out = wait_s > 0 and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
    try:
        os.kill(pid, signal.SIGKILL)  # pid 1 of its namespace: the kernel kills and reaps all of it first
    except ProcessLookupError:
        pass
    _, raw = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(raw), timed_out


def main() -> None:
    control = socket.socket(fileno=int(sys.argv[1]))
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.set_inheritable(control.fileno(), False)
    data, _, _, _ = control.recvmsg(MAX_MESSAGE)
    kind, config, stub_source = marshal.loads(data)
    if kind != "init":
        raise SystemExit("warm sandbox: expected init")
    stub = compile(stub_source, "<inside>", "exec")
    control.send(marshal.dumps(("ready",)))
    running = None
    while True:
        data, fds, _, _ = socket.recv_fds(control, MAX_MESSAGE, 4)
        if not data:
            return
        message = marshal.loads(data)
        try:
            if message[0] == "start" and running is None and len(fds) == 4:
                running = _start(config, fds, stub)
                reply = ("started", running)
            elif message[0] == "end" and running is not None:
                status, timed_out = _end(running, float(message[1]))
                running = None
                reply = ("ended", status, timed_out)
            else:
                reply = ("error", f"unexpected {message[0]!r}")
        except OSError as exc:
            reply = ("error", str(exc)[:300])
        finally:
            for fd in fds:
                os.close(fd)
        control.send(marshal.dumps(reply))


if __name__ == "__main__":  # python3 -I -c <this source> FD
    main()
