"""The judge: runs a candidate program in the sandbox and its tests *here*, outside it (stdlib only).

A judge is a worker process of our own (started by ``rewards.sandbox.Sandbox`` as ``python -I judge.py``,
so it never imports the caller's program). It reads jobs from stdin and answers on stdout, both as a
4-byte length and a ``marshal`` payload (trusted on both sides). For each job it starts the sandboxed
interpreter with the command line the caller built and speaks to ``rewards._inside`` over a socket pair.

What is judged where:

* The candidate's code (and MBPP-style ``setup`` code the candidate's functions receive objects from)
  runs in the sandbox. The tests, the expected values, the dataset's helpers (``context``: HumanEval's
  prompt helpers such as ``encode_cyclic``) and stdlib modules the tests use live only in this process.
* Every call of a candidate function crosses as plain data: None, bool, int, float, complex, str, bytes
  and tuples, lists, dicts, sets of those (bounded in size and depth). Objects that are not plain data
  (instances of the candidate's classes, generators, functions) stay in the sandbox and appear here as
  ``Remote`` handles that can only be passed back, called, have an attribute read or be iterated:
  comparing one, hashing it, taking its truth value or length raises, so "always equal" objects of any
  kind (C-level, stdlib-borrowed, metaclass-made) fail the test. Arguments mutated in place are copied
  back (lists, dicts, sets).
* A test passes when its code finishes here without an exception and the sandbox neither died nor
  broke the protocol while it ran. There is no secret to steal: the verdict is computed here.
* The judge's own work is bounded: its address space (``JUDGE_MEMORY_BYTES``; a reply that would need more
  fails the program) and its CPU per program (``judge_cpu_s``, set by the caller; past it the judge is
  ended, the program scores 0 and the slot gets a fresh judge).
* The judge computes everything from the row and from plain-data answers to its own calls. A test's
  namespace is built here from data the judge owns: its builtins are the judge's own, set last; the
  stdlib modules and dataset helpers it uses are the judge's; the candidate's functions come in only as
  handles under names that are not dunder names, builtins, modules, helpers or names the test binds; the
  setup code's objects only as handles, only for a row that has setup code, only under names this process
  finds bound in that setup source (read with ``ast``). Whatever else the sandbox reports is dropped, and
  a message outside the protocol's shape at its point in the exchange fails the candidate.

Out of scope: a test that is itself weak (``assert candidate(x)`` with a truthy wrong value, answers the
prompt shows) passes wrong programs in any harness; the judge does not defend against the tests.
"""

from __future__ import annotations

import ast
import builtins
import marshal
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__" and os.path.dirname(_HERE) not in sys.path:
    # started as ``python -I judge.py`` from a source checkout (PYTHONPATH ignored): the package beside this file,
    # after the standard library and site-packages (an installed project resolves there first, to this same file)
    sys.path.append(os.path.dirname(_HERE))

from rewards import pyast  # noqa: E402

_PLAIN = (type(None), bool, int, float, complex, str, bytes)
MAX_MESSAGE_BYTES = 8 << 20
MAX_NODES = 200_000
MAX_DEPTH = 100
SECCOMP_PLACEHOLDER = "@SECCOMP_FD@"


def frame(message) -> bytes:
    """One protocol message: a 4-byte big-endian length, then the marshal payload."""
    data = marshal.dumps(message, 4)
    return len(data).to_bytes(4, "big") + data


class SandboxBroken(BaseException):
    """The sandboxed process died, timed out or broke the protocol (a BaseException: tests that catch
    ``Exception`` around a call must not turn a dead candidate into a pass)."""


class CandidateError(Exception):
    """An exception the candidate raised whose type is not a builtin exception."""


class Remote:
    """An object living in the sandbox. It can be passed back, called, read or iterated; nothing else."""

    __slots__ = ("_session", "_id")

    def __init__(self, session, handle: int):
        object.__setattr__(self, "_session", session)
        object.__setattr__(self, "_id", handle)

    def __call__(self, *args, **kwargs):
        return self._session.call(self, args, kwargs)

    def __getattr__(self, name: str):
        return self._session.request(("getattr", self._id, name))

    def __iter__(self):
        iterator = self._session.request(("iter", self._id))
        while True:
            try:
                yield self._session.request(("next", iterator._id))
            except StopIteration:
                return

    def _refuse(self, *_args, **_kwargs):
        raise TypeError("an object that is not plain data came back from the sandbox; it cannot be compared")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __hash__ = _refuse
    __contains__ = __getitem__ = __int__ = __float__ = __index__ = __str__ = __format__ = _refuse

    def __repr__(self) -> str:
        return f"<sandbox object {self._id}>"


class Session:
    """One sandboxed candidate process and the channel to it, bounded by a wall-clock deadline."""

    def __init__(self, spec: dict, code: str, setup: str | None):
        self.deadline = time.monotonic() + spec["timeout_s"]
        self.broken: str | None = None
        self.stderr = tempfile.TemporaryFile()
        ours, theirs = socket.socketpair()
        self.sock = ours
        try:
            self.proc = spawn(
                spec, theirs.fileno(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr
            )
        finally:
            theirs.close()
        try:
            self._start(code, setup)
        except (
            BaseException
        ):  # whatever stops the start-up (a malformed ready message included) ends the process
            self.close()
            raise

    def _start(self, code: str, setup: str | None) -> None:
        self._send(("serve", code, setup or ""))
        reply = self._recv()
        if type(reply) is not tuple or len(reply) != 3 or reply[0] != "ready":
            self._break("the sandbox did not start the program")
        if type(reply[1]) is not dict or type(reply[2]) is not dict:
            self._break("the sandbox sent names that are not a dict")
        for names in reply[1:]:
            if any(type(k) is not str or not k.isidentifier() for k in names):
                self._break("the sandbox sent a name that is not an identifier")
        self.setup_names, self.names = self.decode(reply[1]), self.decode(reply[2])

    def call(self, target: Remote, args: tuple, kwargs: dict):
        encoded_args = [encode(a) for a in args]
        reply = self.request(
            ("call", target._id, encoded_args, {k: encode(v) for k, v in kwargs.items()}), raw=True
        )
        value, changed = reply
        if type(changed) is dict:
            for index, tree in changed.items():
                if type(index) is int and 0 <= index < len(args):
                    _copy_back(args[index], self.decode(tree))
        return value

    def request(self, message: tuple, raw: bool = False):
        if self.broken:
            raise SandboxBroken(self.broken)
        self._send(message)
        reply = self._recv()
        if type(reply) is not tuple or not reply:
            self._break("malformed reply")
        if reply[0] == "ok" and len(reply) == 3:
            value = self.decode(reply[1])
            return (value, reply[2]) if raw else value
        if reply[0] == "raise" and len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
            if (
                reply[1] == "StopIteration" and message[0] != "next"
            ):  # would end the test's map() or loop early
                raise CandidateError(f"StopIteration from a call: {reply[2]}")
            raise _exception(reply[1], reply[2])
        self._break("malformed reply")

    def decode(self, tree, depth: int = 0, budget: list | None = None):
        """A reply's tree as fresh plain objects (handles as ``Remote``); anything else breaks the session."""
        budget = budget if budget is not None else [MAX_NODES]
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            self._break("a reply is too large or too deeply nested")
        kind = type(tree)
        if kind in _PLAIN:
            return tree
        if kind is tuple and len(tree) == 2 and tree[0] is Ellipsis and type(tree[1]) is int:
            return Remote(self, tree[1])
        try:
            if kind in (tuple, list, set, frozenset):
                return kind(self.decode(v, depth + 1, budget) for v in tree)
            if kind is dict:
                return {
                    self.decode(k, depth + 1, budget): self.decode(v, depth + 1, budget)
                    for k, v in tree.items()
                }
        except TypeError:  # a handle (unhashable here) as a set item or dict key
            self._break("a reply holds a set item or dict key that is not plain data")
        self._break(f"a reply holds a {kind.__name__}, which is not plain data")

    def _break(self, why: str):
        self.broken = self.broken or why
        self.close()
        raise SandboxBroken(self.broken)

    def _send(self, message) -> None:
        try:
            data = frame(message)
        except ValueError as exc:
            raise TypeError(f"a test argument cannot be sent to the candidate: {exc}") from None
        try:
            self.sock.settimeout(max(0.001, self.deadline - time.monotonic()))
            self.sock.sendall(data)
        except OSError:
            self._break("the sandboxed program stopped reading (it died or timed out)")

    def _recv(self):
        size = int.from_bytes(self._read(4), "big")
        if size > MAX_MESSAGE_BYTES:
            self._break(f"a reply of {size} bytes is over the {MAX_MESSAGE_BYTES}-byte bound")
        try:
            return marshal.loads(self._read(size))
        except (ValueError, EOFError, TypeError):
            self._break("a reply is not valid marshal data")

    def _read(self, n: int) -> bytes:
        chunks = []
        while n:
            left = self.deadline - time.monotonic()
            if left <= 0:
                self._break("timeout")
            try:
                self.sock.settimeout(left)
                chunk = self.sock.recv(min(n, 1 << 20))
            except (TimeoutError, OSError):
                self._break("timeout")
            if not chunk:
                self._break("the sandboxed program exited")
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()
        kill_group(self.proc)

    def stderr_text(self, cap: int) -> str:
        if self.stderr.closed:
            return ""
        self.stderr.seek(0)
        return self.stderr.read(cap).decode("utf-8", errors="replace")


def _exception(name: str, text: str) -> BaseException:
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(text)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError wants five arguments
            pass
    return CandidateError(f"{name}: {text}")


def encode(value, depth: int = 0):
    """A test's argument as plain data for the sandbox (``Remote`` handles as ``(Ellipsis, id)``)."""
    if depth > MAX_DEPTH:
        raise TypeError("a test argument is too deeply nested to send to the candidate")
    if type(value) in _PLAIN:
        return value
    if type(value) is Remote:
        return (Ellipsis, value._id)
    for base in (list, tuple, set, frozenset):
        if isinstance(value, base):
            return base(encode(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {encode(k, depth + 1): encode(v, depth + 1) for k, v in value.items()}
    for base in (bool, int, float, complex, str, bytes):
        if isinstance(value, base):
            return base(value)
    raise TypeError(f"a test argument of type {type(value).__name__} cannot be sent to the candidate")


def _copy_back(original, new) -> None:
    """The sandbox's final state of an argument mutated in place, written into the test's own object."""
    if type(original) is list and type(new) is list:
        original[:] = new
    elif type(original) in (dict, set) and type(new) is type(original):
        original.clear()
        original.update(new)


def spawn(spec: dict, channel_fd: int | None, stdin, stdout, stderr):
    """Start the sandboxed interpreter (``spec["argv"]`` + the stub + the channel fd) in its own group, or, for a
    warm slot (``spec["warm"]``), fork the program from the slot's resident sandbox."""
    if spec.get("warm"):
        return warm_slot(spec).start(stdin, stdout, stderr, channel_fd)
    argv, keep = list(spec["argv"]), [] if channel_fd is None else [channel_fd]
    filter_r = None
    if spec.get("seccomp"):
        filter_r, filter_w = os.pipe()
        os.write(filter_w, spec["seccomp"])  # a few hundred bytes: fits the pipe buffer
        os.close(filter_w)
        argv = [str(filter_r) if a == SECCOMP_PLACEHOLDER else a for a in argv]
        keep.append(filter_r)
    argv += ["-c", _stub_source(), str(channel_fd if channel_fd is not None else -1)]
    if spec.get("cgroup_procs"):  # the whole run (every process it starts) joins the slot's memory cgroup
        argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', spec["cgroup_procs"], *argv]
    try:
        return subprocess.Popen(
            argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=keep,
            start_new_session=True,
            cwd=spec.get("cwd") or "/",
            env={},
        )
    finally:
        if filter_r is not None:
            os.close(filter_r)


_STUB: list[str] = []


def _stub_source() -> str:
    if not _STUB:
        with open(os.path.join(_HERE, "_inside.py")) as f:
            _STUB.append(f.read())
    return _STUB[0]


def kill_group(proc) -> None:
    if isinstance(proc, WarmProcess):
        proc.kill()
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def run_program(spec: dict, code: str, stdin: str) -> dict:
    """Run ``code`` as a plain program on ``stdin``: status ok / error / timeout, return code, output."""
    start = time.monotonic()
    ours, theirs = socket.socketpair()
    files = [tempfile.TemporaryFile() for _ in range(3)]  # not in the sandbox's file system: no links
    files[0].write(stdin.encode())
    files[0].seek(0)
    try:
        proc = spawn(spec, theirs.fileno(), stdin=files[0], stdout=files[1], stderr=files[2])
    except OSError as exc:
        return {
            "status": "sandbox_error",
            "returncode": None,
            "stdout": "",
            "wall_s": 0.0,
            "stderr": f"could not start the sandbox: {exc}",
        }
    finally:
        theirs.close()
    try:
        ours.sendall(frame(("run", code)))
    except OSError:
        pass
    ours.close()
    try:
        proc.wait(timeout=spec["timeout_s"])
        status = "ok" if proc.returncode == 0 else "error"
        if proc.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU):  # the CPU limit (bwrap adds 128)
            status = "timeout"
    except subprocess.TimeoutExpired:
        status = "timeout"
    kill_group(proc)
    out = []
    for f in files[1:]:
        f.seek(0)
        out.append(f.read(spec["cap"]).decode("utf-8", errors="replace"))
        f.close()
    files[0].close()
    return {
        "status": status,
        "returncode": proc.returncode,
        "stdout": out[0],
        "stderr": out[1],
        "wall_s": time.monotonic() - start,
    }


class WarmSlot:
    """A slot's resident sandbox (``rewards/_zygote.py``): one bwrap sandbox started once, which forks each
    program in new mount, IPC, PID and network namespaces (its own ``/tmp``, ``/proc``, devpts, loopback and
    System V objects), with its limits, no capability and the seccomp filter set before its code is read. The program's start-up
    costs a fork instead of bwrap and an interpreter; nothing of one program reaches the next (the module's
    docstring says why). The slot's own processes are recorded when it starts: after each program, any
    other process of the slot's cgroup (or uid) is a leftover and is killed, and the slot is rebuilt."""

    def __init__(self, spec: dict):
        self.key = _warm_key(spec)
        self.spec = spec
        self.stderr = tempfile.TemporaryFile()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with open(os.path.join(_HERE, "_zygote.py")) as f:
            source = f.read()
        argv = [*spec["argv"], "-c", source, str(theirs.fileno())]
        if spec.get("cgroup_procs"):
            argv = ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', spec["cgroup_procs"], *argv]
        try:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.stderr,
                pass_fds=[theirs.fileno()], start_new_session=True, cwd="/", env={},
            )  # fmt: skip
        finally:
            theirs.close()
        self.sock = ours
        try:
            self._ask(("init", spec["warm"], _stub_source()), WARM_START_S, expect="ready")
        except OSError:
            self.close()
            raise
        self.own = set(slot_pids(spec.get("uid"), spec.get("cgroup_procs")))
        self.memory = held_memory(spec.get("cgroup_procs"))

    def _ask(self, message: tuple, wait_s: float, fds: tuple = (), expect: str = "") -> tuple:
        """Send one message (with descriptors) and read its reply within ``wait_s``; OSError when the
        resident process does not answer as the protocol says (the caller rebuilds the slot)."""
        try:
            socket.send_fds(self.sock, [marshal.dumps(message)], list(fds)) if fds else self.sock.send(
                marshal.dumps(message)
            )
            self.sock.settimeout(wait_s)
            reply = marshal.loads(self.sock.recv(1 << 16))
        except (OSError, ValueError, EOFError, TypeError) as exc:
            raise OSError(f"the warm sandbox did not answer ({exc}; {self.stderr_tail()!r})") from None
        if type(reply) is not tuple or not reply or reply[0] != expect:
            raise OSError(f"the warm sandbox answered {str(reply)[:200]} ({self.stderr_tail()!r})")
        return reply

    def start(self, stdin, stdout, stderr, channel_fd: int | None) -> WarmProcess:
        descriptors, opened = [], []
        for stream in (stdin, stdout, stderr):
            if stream is None or stream == subprocess.DEVNULL:
                opened.append(os.open(os.devnull, os.O_RDWR))
                descriptors.append(opened[-1])
            else:
                descriptors.append(stream if type(stream) is int else stream.fileno())
        if channel_fd is None:
            opened.append(os.open(os.devnull, os.O_RDWR))
            channel_fd = opened[-1]
        try:
            reply = self._ask(("start",), WARM_REPLY_S, fds=(*descriptors, channel_fd), expect="started")
        except OSError:
            self.close()
            raise
        finally:
            for fd in opened:
                os.close(fd)
        return WarmProcess(self, reply[1])

    def end(self, pid: int, wait_s: float) -> tuple[int, bool]:
        """(status, timed out) of the program once its whole PID namespace is gone; leftovers are killed."""
        try:
            _, status, timed_out = self._ask(("end", wait_s), wait_s + WARM_REPLY_S, expect="ended")
        except (OSError, ValueError):
            self.close()
            return -signal.SIGKILL, False
        if (
            set(slot_pids(self.spec.get("uid"), self.spec.get("cgroup_procs"))) - self.own
        ):  # nothing of a program may outlive it: rebuild the slot
            self.close()
        settle_memory(self.spec.get("cgroup_procs"), self.memory if _WARM is self else 0)
        return status, timed_out

    def alive(self) -> bool:
        return self.proc.poll() is None and self.sock.fileno() >= 0

    def close(self) -> None:
        global _WARM
        self.sock.close()
        kill_group(self.proc)
        kill_slot_processes(
            self.spec.get("uid"), self.spec.get("cgroup_procs")
        )  # the cgroup / uid is the slot's
        if _WARM is self:
            _WARM = None

    def stderr_tail(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-300:].decode(errors="replace").strip()


class WarmProcess:
    """A program forked by a ``WarmSlot``: the parts of ``subprocess.Popen`` the judge uses."""

    def __init__(self, slot: WarmSlot, pid: int):
        self.slot, self.pid, self.returncode = slot, pid, None

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode, timed_out = self.slot.end(self.pid, 3600.0 if timeout is None else timeout)
            if timed_out:
                raise subprocess.TimeoutExpired("warm sandbox program", timeout)
        return self.returncode

    def poll(self):
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            self.returncode, _ = self.slot.end(self.pid, 0.0)


WARM_START_S = 30.0  # the resident sandbox's own start-up
WARM_REPLY_S = 10.0  # a fork or a kill-and-reap by the resident process, beyond a program's own time
_WARM: WarmSlot | None = None


def _warm_key(spec: dict) -> tuple:
    return tuple(spec["argv"]), repr(spec["warm"]), spec.get("cgroup_procs"), spec.get("uid")


def warm_slot(spec: dict) -> WarmSlot:
    """This judge's resident sandbox for ``spec`` (started, or restarted when it died or the spec changed)."""
    global _WARM
    if _WARM is not None and (_WARM.key != _warm_key(spec) or not _WARM.alive()):
        _WARM.close()
    if _WARM is None:
        _WARM = WarmSlot(spec)
    return _WARM


# memory a program left in flight (descriptors sent and never received) is freed within ~1 s
MEMORY_SETTLE_S = 5.0
MEMORY_MARGIN_BYTES = 16 << 20


def held_memory(cgroup_procs: str | None) -> int:
    """Anonymous and shared-memory (tmpfs, memfd) bytes charged to a slot's memory cgroup; page cache is not
    counted (the kernel reclaims it under the cap)."""
    if not cgroup_procs:
        return 0
    try:
        with open(os.path.join(os.path.dirname(cgroup_procs), "memory.stat")) as f:
            stat = dict(line.split() for line in f if line.count(" ") == 1)
    except OSError:
        return 0
    return int(stat.get("rss", 0)) + int(stat.get("shmem", 0))


def settle_memory(cgroup_procs: str | None, baseline: int, wait_s: float = MEMORY_SETTLE_S) -> bool:
    """Wait (up to ``wait_s``) until the slot's cgroup holds no more than ``baseline`` plus a margin: a program's
    memory that outlives it (memfd pages sent in flight over a unix socket) would otherwise count against the
    next program's cap. Whether it settled."""
    deadline = time.monotonic() + wait_s
    while cgroup_procs and held_memory(cgroup_procs) > baseline + MEMORY_MARGIN_BYTES:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def slot_pids(uid: int | None, cgroup_procs: str | None) -> list[int]:
    """A slot's processes: its memory cgroup's ``cgroup.procs`` (every process a run starts joins it and cannot
    leave it: the files are root's and not in the sandbox), else those of its uid (every process's status in
    /proc is read: 7 ms of CPU on a quiet machine), else none."""
    if cgroup_procs:
        try:
            with open(cgroup_procs) as f:
                return [int(line) for line in f if line.strip()]
        except OSError:
            return []
    return live_pids_of_uids(range(uid, uid + 1)) if uid is not None else []


def kill_slot_processes(uid: int | None, cgroup_procs: str | None, wait_s: float = 5.0) -> list[int]:
    """SIGKILL the slot's processes until none is left; those still there after ``wait_s`` (normally none)."""
    deadline = time.monotonic() + wait_s
    while pids := slot_pids(uid, cgroup_procs):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if time.monotonic() > deadline:
            return pids
        time.sleep(0.005)
    return []


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


_SIDE_EFFECT_MODULES = {"this", "antigravity"}  # importing them prints or opens a browser


def _identifiers(source: str) -> tuple[set[str], list[str]]:
    """(every name the source mentions, the names it calls in source order); nothing for code that does not
    parse (the caller refuses tests that do not compile)."""
    try:
        tree = pyast.parse(source)
    except SyntaxError:
        return set(), []
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    calls = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)),
        key=lambda n: (n.lineno, n.col_offset),
    )
    return names, [c.func.id for c in calls]


def _named_modules(names: set[str]) -> dict:
    """Stdlib modules the tests use by name (``math`` in ``math.isclose``), imported here."""
    modules = {}
    for name in sorted(names & set(sys.stdlib_module_names) - _SIDE_EFFECT_MODULES):
        try:
            modules[name] = __import__(name)
        except Exception:  # noqa: BLE001 - a module this interpreter lacks is simply not provided
            continue
    return modules


def _bound_by(source: str) -> set[str]:
    """The names a source binds at module level (assignments, defs, classes, imports, loop and ``with``
    targets), read with ``ast`` here; nothing for a source that does not parse."""
    try:
        tree = pyast.parse(source)
    except SyntaxError:
        return set()
    bound, todo = set(), [tree]
    while todo:
        for node in ast.iter_child_nodes(todo.pop()):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                bound.add(node.name)  # its body is a scope of its own
            elif isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
                continue
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
            else:
                todo.append(node)
    return bound


def _bound_names(called: list[str], names: dict, reserved: set[str]) -> dict:
    """The candidate's functions a test sees (handles only), given the names it calls in order. Never a
    dunder name or a ``reserved`` one (the test's modules, helpers and own names). Names of builtins
    (``len``, ``str``, ``sum``) are the judge's own unless every name the test calls is a builtin's:
    then the first of them the candidate defines is the function under test (MBPP 126 tests a function
    named ``sum``), and only that one."""
    usable = {
        k: v for k, v in names.items() if type(v) is Remote and not k.startswith("__") and k not in reserved
    }
    own = {k: v for k, v in usable.items() if not hasattr(builtins, k)}
    if any(not hasattr(builtins, name) for name in called):
        return own
    shadowing = [name for name in called if name in usable]
    return {**own, shadowing[0]: usable[shadowing[0]]} if shadowing else own


def _setup_handles(setup: str | None, sent: dict, reserved: set[str]) -> dict:
    """The setup code's objects a test sees: handles, only under names the setup source binds (found here),
    never dunder names, builtins or ``reserved`` names; nothing when the row has no setup code."""
    if not setup:
        return {}
    allowed = {n for n in _bound_by(setup) if not n.startswith("__") and not hasattr(builtins, n)} - reserved
    return {k: v for k, v in sent.items() if k in allowed and type(v) is Remote}


def judge_functions(spec: dict, job: dict) -> tuple[list[bool], str]:
    """(passed per test, notes) for the asserts / check forms."""
    tests = job["tests"] if job["form"] == "asserts" else [job["tests"]]
    session = Session(spec, job["code"], job.get("setup"))
    notes = []
    try:
        parsed = [_identifiers(source) for source in tests]
        context = job.get("context") or ""
        mentioned = set().union(*(names for names, _ in parsed), _identifiers(context)[0])
        modules = _named_modules(mentioned)
        helpers = _bound_by(context) | set(modules)
        entry = session.names.get(job.get("entry_point") or "")
        passed = []
        for index, (test, (_, called)) in enumerate(zip(tests, parsed)):
            reserved = helpers | _bound_by(test)  # the test's own names and what it imports or defines
            ns = {}
            if job["form"] == "asserts":
                ns.update(_bound_names(called, session.names, reserved))
            elif type(entry) is Remote:  # HumanEval/33's test calls the entry point by its name too
                ns[job["entry_point"]] = entry
            ns.update(_setup_handles(job.get("setup"), session.setup_names, reserved))
            ns.update(modules)
            ns.update(
                {"__builtins__": builtins, "__name__": "__main__"}
            )  # last: nothing sent can replace them
            try:
                if job.get("context"):  # trusted dataset helpers, defined here and never by the candidate
                    exec(compile(job["context"], "context.py", "exec"), ns)
                exec(compile(test, f"test_{index}.py", "exec"), ns)
                if job["form"] == "check":
                    if type(entry) is not Remote:
                        raise NameError(f"the candidate does not define {job.get('entry_point')!r}")
                    ns["check"](entry)
                ok = session.broken is None
            except BaseException as exc:  # noqa: BLE001 - any failure of a test fails that test
                notes.append(f"test {index}: {type(exc).__name__}: {str(exc)[:200]}")
                ok = False
            passed.append(ok)
        return passed, "\n".join(notes)
    finally:
        notes.append(session.stderr_text(2000))
        session.close()
        session.stderr.close()  # a Session is in a cycle with its handles: the file must not wait for the GC


JUDGE_MEMORY_BYTES = 1 << 30  # the judge's address space: a reply cannot make it allocate more (MemoryError)


def _bound_cpu(seconds: float) -> None:
    """This process may use ``seconds`` more CPU (its own, not the sandbox's) on the job: past it the kernel's
    SIGXCPU ends the judge (a C-level loop, say hashing a reply's set, never returns to Python), the caller
    sees no answer, scores the program 0 and starts a fresh judge."""
    import resource

    used = resource.getrusage(resource.RUSAGE_SELF)
    limit = int(used.ru_utime + used.ru_stime + seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (limit, resource.RLIM_INFINITY))


def run_job(job: dict) -> dict:
    _bound_cpu(float(job.get("judge_cpu_s") or 60.0))
    spec = job["spec"]
    workdir = None
    if spec.get("make_cwd"):  # the process backend: a private work dir for the program's files
        workdir = tempfile.mkdtemp(prefix="align-sbx-")
        if spec.get("uid") is not None:
            os.chown(workdir, spec["uid"], spec["uid"])
        spec = {**spec, "cwd": workdir}
    try:
        if job["form"] == "run":
            return run_program(spec, job["code"], job.get("stdin", ""))
        if job["form"] == "stdio":
            runs = [run_program(spec, job["code"], case_input) for case_input, _ in job["cases"]]
            passed = [
                r["status"] == "ok" and r["stdout"].strip() == expected.strip()
                for r, (_, expected) in zip(runs, job["cases"])
            ]
            return {"passed": passed, "notes": "\n".join(r["stderr"][-300:] for r in runs)}
        try:
            passed, notes = judge_functions(spec, job)
        except SandboxBroken as exc:
            n = len(job["tests"]) if job["form"] == "asserts" else 1
            passed, notes = [False] * n, f"sandbox: {exc}"
        return {"passed": passed, "notes": notes}
    finally:
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _read_message(stream):
    head = stream.read(4)
    if len(head) < 4:
        return None
    return marshal.loads(stream.read(int.from_bytes(head, "big")))


def main() -> None:
    import resource

    # The judge's own bounds (its children, the sandboxes, get their own limits from their command lines):
    # memory, so a reply cannot make it allocate gigabytes (marshal sizes a tuple from its header), and CPU per
    # job (``_bound_cpu``).
    resource.setrlimit(resource.RLIMIT_AS, (JUDGE_MEMORY_BYTES, resource.RLIM_INFINITY))
    replies = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # prints of the tests must not corrupt the protocol (nor fill the caller's stderr file)
    os.close(null)
    jobs = os.fdopen(0, "rb")
    while (job := _read_message(jobs)) is not None:
        try:
            reply = run_job(job)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, who decides
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        replies.write(frame(reply))
        replies.flush()


if __name__ == "__main__":
    main()
