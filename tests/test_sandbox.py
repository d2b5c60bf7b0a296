"""The hostile-program suite: zero breaches, the caller alive, bounded time."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards.code import code_execution, score_program
from rewards.sandbox import MAX_SLOTS, UIDS_PER_SLOT, Sandbox, SandboxLimits, live_pids_of_uids

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module", params=["warm", "cold"])
def sandbox(request):
    """Every hostile program here runs in warm slots (one resident sandbox per slot forking each program into
    namespaces of its own, the default) and in cold ones (a bwrap sandbox and an interpreter per program)."""
    box = Sandbox(
        backend="bwrap",
        workers=2,
        limits=SandboxLimits(timeout_s=3, cpu_s=3, memory_mb=512),
        warm=request.param == "warm",
    )
    assert box.warm == (request.param == "warm")
    yield box
    box.close()


LEAVE_TRACES = r"""
import ctypes, os, socket, sys, time
libc = ctypes.CDLL(None, use_errno=True)
open("/tmp/trace", "w").write("left by the previous program")
os.environ["TRACE"] = "1"; os.putenv("TRACE", "1")
shm = libc.shmget(4711, 4096, 0o1666)  # IPC_CREAT | 0666: a System V segment outlives its creator
queue = libc.msgget(4712, 0o1666)
server = socket.socket(socket.AF_UNIX); server.bind("\0trace-4711"); server.listen(1)
if os.fork() == 0:  # a daemon holding the socket, out of the program's session
    os.setsid()
    if os.fork() == 0:
        time.sleep(30)
    os._exit(0)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(42):  # the network namespace's counters are a store a later program could read
    udp.sendto(b"x", ("127.0.0.1", 9))
os.chmod("/dev/pts", 0)  # the slot's devpts would stay unusable
a, b = socket.socketpair()
for i in range(58):  # 928 MiB of memfd pages, sent in flight in a cycle: they outlive the program for a while
    held = os.memfd_create(f"m{i}"); os.write(held, b"\1" * (16 << 20))
    socket.send_fds(a, [b"x"], [held]); os.close(held)
name = socket.socket(socket.AF_UNIX); name.bind("\0inflight-4711"); name.listen(1)
socket.send_fds(a, [b"y"], [name.fileno(), a.fileno(), b.fileno()])
print(shm >= 0, queue >= 0, flush=True)
"""

FIND_TRACES = r"""
import socket
found = []
try:  # first: what the kernel frees late is looked for at once
    socket.socket(socket.AF_UNIX).bind("\0inflight-4711")
except OSError:
    found.append("abstract name")
held = bytearray(300 << 20); held[::4096] = b"x" * len(held[::4096])  # killed if the memory left is still held
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
if os.path.exists("/tmp/trace"): found.append("file")
if "TRACE" in os.environ: found.append("env")
if libc.shmget(4711, 0, 0) >= 0: found.append("shm")
if libc.msgget(4712, 0) >= 0: found.append("msg")
try:
    socket.socket(socket.AF_UNIX).connect("\0trace-4711"); found.append("socket")
except OSError:
    pass
others = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, os.getpid()))
if others: found.append(f"processes {others}")
try:
    os.close(os.openpty()[0])
except OSError:
    found.append("pty")
udp = open("/proc/net/snmp").read().split("Udp:")[2].split()
if udp[1] != "0" or udp[2] != "0": found.append(f"udp counters {udp[1:3]}")  # NoPorts, InErrors... of lo
print(found)
"""


def test_nothing_one_program_leaves_reaches_the_next_in_the_same_slot(sandbox):
    """A file in /tmp, an environment variable, System V shared memory and a message queue (they outlive their
    creator), an abstract unix socket held by a setsid daemon, 42 datagrams counted by the network namespace, a
    devpts made unusable, an abstract name and 928 MiB of memfd pages left in flight in a unix socket (the kernel frees those up to a second after the program):
    none of it is there for the next program in the slot (one slot: the next program surely reuses it), whose
    /proc shows only its own init and itself, which opens a pty, binds the name and gets 300 MiB of its 1,104."""
    box = Sandbox(
        backend="bwrap",
        workers=1,
        limits=SandboxLimits(timeout_s=10, cpu_s=10, memory_mb=1024),
        warm=sandbox.warm,
    )
    try:
        assert box.run(LEAVE_TRACES).stdout.split() == ["True", "True"]  # each trace was really made
        assert box.run(FIND_TRACES).stdout.strip() == "[]"
    finally:
        box.close()


def test_a_program_holds_no_privilege_and_cannot_reach_the_resident_process(sandbox):
    """No capability (none in the bounding set either), no_new_privs, the seccomp filter on; signals to every pid
    it can name (its own namespace only) leave the slot working."""
    code = (
        "import os, signal\nstatus = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
        "print([status[k].strip() for k in ('CapEff', 'CapPrm', 'CapBnd', 'CapAmb', 'NoNewPrivs', 'Seccomp')])\n"
        "for pid in range(-1, 4000):\n    try:\n        os.kill(pid, signal.SIGKILL) if pid not in (0, os.getpid()) else None\n"
        "    except OSError:\n        pass\n"
    )  # fmt: skip
    result = sandbox.run(code)
    capabilities = result.stdout.strip()
    assert capabilities.startswith("['0000000000000000', '0000000000000000'"), capabilities
    if sandbox.warm:  # bwrap keeps the bounding set of a cold run; a warm program drops it too
        assert capabilities == str(["0000000000000000"] * 4 + ["1", "2"]), capabilities
    assert [sandbox.run("print(7)").stdout.strip() for _ in range(3)] == ["7"] * 3


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    server.settimeout(0.5)
    yield server
    server.close()


def accepted(server) -> bool:
    try:
        conn, _ = server.accept()
        conn.close()
        return True
    except OSError:
        return False


def test_benign_program_runs(sandbox):
    result = sandbox.run("import sys; print(sum(int(x) for x in sys.stdin.read().split()))", "1 2 3")
    assert result.status == "ok" and result.stdout.strip() == "6"


@pytest.mark.parametrize("code", ["while True: pass", "import time; time.sleep(60)"])
def test_loops_and_sleeps_time_out(sandbox, code):
    start = time.monotonic()
    result = sandbox.run(code)
    # a hang guard under the 60 s sleep: the 3 s timeout ended it (measured 3.1 s idle)
    assert result.status == "timeout" and time.monotonic() - start < 40


def test_fork_bomb_is_contained(sandbox):
    start = time.monotonic()
    result = sandbox.run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    assert result.status in ("timeout", "error") and time.monotonic() - start < 60  # hang guard; 3.1 s idle
    assert sandbox.run("print('after')").stdout.strip() == "after"


def test_writes_outside_the_work_dir_do_not_land(sandbox, tmp_path):
    targets = [
        tmp_path / "escape.txt",
        "/tmp/align-escape.txt",
        os.path.expanduser("~/align-escape.txt"),
        "/usr/align-escape",
    ]
    code = "\n".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass" for t in targets
    )
    sandbox.run(code + "\nopen('inside.txt', 'w').write('ok')\nprint(open('inside.txt').read())")
    assert not any(os.path.exists(t) for t in targets)


def test_no_network_even_to_the_callers_loopback(sandbox, listener):
    port = listener.getsockname()[1]
    result = sandbox.run(
        f"import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\nprint('connected')"
    )
    assert "connected" not in result.stdout and not accepted(listener)


def test_secrets_of_the_caller_are_unreadable(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGN_TEST_SECRET", "env-secret-4711")
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret-4711")
    secret_file.chmod(0o600)
    code = f"import os\nprint(dict(os.environ))\ntry:\n    print(open({str(secret_file)!r}).read())\nexcept OSError as e:\n    print(e)"
    result = sandbox.run(code)
    assert "env-secret-4711" not in result.stdout and "file-secret-4711" not in result.stdout


def test_huge_allocation_fails_inside(sandbox):
    result = sandbox.run("x = bytearray(8 * 2**30)\nprint('allocated')")
    assert result.status == "error" and "MemoryError" in result.stderr


def test_killing_parent_and_group_leaves_caller_alive(sandbox):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        code = "import os, signal\nfor f in (lambda: os.kill(os.getppid(), 9), lambda: os.killpg(0, 9), lambda: os.kill(-1, 9), lambda: os.kill(1, 9)):\n    try:\n        f()\n    except OSError:\n        pass\n"
        sandbox.run(code)
        assert bystander.poll() is None  # a process of the caller's uid, outside the sandbox
        assert sandbox.run("print(2)").stdout.strip() == "2"
    finally:
        bystander.kill()


def test_setsid_daemon_does_not_outlive_the_call(sandbox, listener):
    port = listener.getsockname()[1]
    code = (
        "import os, time, socket\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(1)\n"
        f"    s = socket.socket(); s.connect(('127.0.0.1', {port}))\n    os._exit(0)\nprint('parent done')"
    )
    assert sandbox.run(code).stdout.strip() == "parent done"
    time.sleep(1.5)
    assert not accepted(listener)
    if os.geteuid() == 0:
        base = sandbox._uid_base
        assert (
            program_processes(sandbox, live_pids_of_uids(range(base, base + sandbox.workers * UIDS_PER_SLOT)))
            == []
        )


def program_processes(sandbox, pids: list[int]) -> list[int]:
    """The pids that belong to a program: all of them for cold slots; for warm slots, every process in a PID
    namespace below the slot's sandbox (a warm slot itself is bwrap, its init and the resident process: at most
    three processes per slot, none deeper than the sandbox's own namespace)."""
    if not sandbox.warm:
        return pids
    depth = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                depth[pid] = len(next(line for line in f if line.startswith("NSpid:")).split()) - 1
        except (OSError, StopIteration):
            continue
    resident = [pid for pid, d in depth.items() if d <= 2]
    assert len(resident) <= 3 * sandbox.workers, resident
    return [pid for pid, d in depth.items() if d > 2]


def test_output_flood_is_capped(sandbox):
    start = time.monotonic()
    result = sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    assert (
        len(result.stdout) <= sandbox.limits.max_output_bytes and time.monotonic() - start < 60
    )  # hang guard
    assert result.status in ("error", "timeout")


MBPP_TESTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]


@pytest.mark.parametrize("code,score", [
    ("def add(a, b):\n    return a + b", 1.0),
    ("def add(a, b):\n    return 3", 0.5),
    ("def add(a, b) return a + b", 0.0),
    ("import sys\ndef add(a, b):\n    return 0\nsys.exit(0)", 0.0),  # exiting early does not skip the tests
])  # fmt: skip
def test_correct_half_and_broken_programs(sandbox, code, score):
    assert score_program(code, MBPP_TESTS, sandbox=sandbox) == score


def test_humaneval_and_stdio_formats(sandbox):
    check = "def check(candidate):\n    assert candidate(2) == 4\n    assert candidate(3) == 9\n"
    assert score_program("def square(x):\n    return x * x", check, "square", sandbox=sandbox) == 1.0
    assert score_program("def square(x):\n    return x + x", check, "square", sandbox=sandbox) == 0.0
    cases = [{"input": "2 3", "output": "5"}, {"input": "10 -1", "output": "9"}]
    assert score_program("a, b = map(int, input().split())\nprint(a + b)", cases, sandbox=sandbox) == 1.0
    assert score_program("a, b = map(int, input().split())\nprint(a * b)", cases, sandbox=sandbox) == 0.0


def test_forged_result_lines_do_not_count(sandbox):
    code = "def add(a, b):\n    return 0\nprint('deadbeefdeadbeef 0 1')\nprint('deadbeefdeadbeef 1 1')"
    assert score_program(code, MBPP_TESTS, sandbox=sandbox) == 0.0


def test_process_backend_warns_and_still_enforces_limits(caplog):
    box = Sandbox(backend="process", workers=1, limits=SandboxLimits(timeout_s=2, cpu_s=2, memory_mb=512))
    assert "WITHOUT filesystem, network, PID or syscall isolation" in caplog.text
    assert box.run("while True: pass").status == "timeout"
    assert "MemoryError" in box.run("x = bytearray(8 * 2**30)").stderr
    assert box.run("print(6 * 7)").stdout.strip() == "42"


@pytest.mark.skipif(os.geteuid() != 0, reason="uid blocks are used when the caller is root")
def test_concurrent_sandboxes_get_disjoint_uids_and_do_not_kill_each_other(sandbox):
    # Two training processes on one node each own a Sandbox: one's cleanup of its uid must not kill the
    # other's running program (they used to share uids slot by slot).
    other = Sandbox(backend=sandbox.backend, workers=2, limits=sandbox.limits)
    try:
        assert abs(other._uid_base - sandbox._uid_base) >= MAX_SLOTS * UIDS_PER_SLOT
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(other.run, "import time\ntime.sleep(1.5)\nprint('survived')")
            time.sleep(0.3)
            fast = [sandbox.run("print(3)") for _ in range(3)]
        assert [r.stdout.strip() for r in fast] == ["3"] * 3
        assert slow.result().stdout.strip() == "survived"
    finally:
        other.close()


def test_uid_blocks_are_claimed_and_released(tmp_path, monkeypatch):
    from rewards import sandbox as module

    monkeypatch.setattr(module, "LOCK_DIR", str(tmp_path))
    (base0, lock0), (base1, lock1) = module._claim_uid_block(), module._claim_uid_block()
    assert base1 - base0 == MAX_SLOTS * UIDS_PER_SLOT
    lock0.close()  # what Sandbox.close() and process exit do
    base2, lock2 = module._claim_uid_block()
    assert base2 == base0
    lock1.close()
    lock2.close()


@pytest.mark.parametrize("backend", ["bwrap", "process"])
def test_cpu_limit_reports_timeout_in_both_backends(backend):
    """A program stopped by its CPU limit timed out (it used to read "error", and the process-backend test
    raced its 2 s CPU limit against its 2 s wall limit)."""
    if backend == "bwrap" and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap not installed")
    box = Sandbox(backend=backend, workers=1, limits=SandboxLimits(timeout_s=30, cpu_s=1, memory_mb=512))
    result = box.run("while True: pass")
    # ended by the CPU limit's SIGXCPU (bwrap adds 128), not by the 30 s wall timeout, however busy the machine
    assert result.status == "timeout" and result.returncode in (-signal.SIGXCPU, 128 + signal.SIGXCPU)


def test_no_process_in_the_sandbox_holds_the_callers_environment(sandbox, monkeypatch):
    """bwrap's own init (pid 1) used to hold the caller's whole environment (HF_TOKEN and the like)."""
    monkeypatch.setenv("ALIGN_TEST_TOKEN", "hf_token_4711")
    code = (
        "import os\nfor pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n    try:\n"
        "        print(pid, open(f'/proc/{pid}/environ', 'rb').read())\n    except OSError as e:\n        print(pid, e)\n"
    )
    out = sandbox.run(code).stdout
    assert "1 " in out and "hf_token_4711" not in out and "ALIGN_TEST_TOKEN" not in out


SYSCALLS = {  # x86-64 numbers; each must fail inside the sandbox
    "ptrace(PTRACE_ATTACH, 1)": "libc.syscall(101, 16, 1, 0, 0)",
    "unshare(CLONE_NEWUSER)": "libc.syscall(272, 0x10000000)",
    "unshare(CLONE_NEWNS)": "libc.syscall(272, 0x00020000)",
    "setns": "libc.syscall(308, 0, 0)",
    "mount tmpfs": "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)",
    "keyctl": "libc.syscall(250, 0, 0, 0, 0, 0)",
    "bpf": "libc.syscall(321, 0, 0, 0)",
    "perf_event_open": "libc.syscall(298, 0, 0, -1, -1, 0)",
    "process_vm_readv": "libc.syscall(310, 1, 0, 0, 0, 0, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
    "io_uring_setup": "libc.syscall(425, 1, 0)",
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp filter is x86-64 only")
def test_syscalls_a_test_never_needs_are_blocked(sandbox):
    lines = "\n".join(f"print({name!r}, {call}, ctypes.get_errno())" for name, call in SYSCALLS.items())
    out = sandbox.run(f"import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n{lines}\n").stdout
    results = {line.rsplit(" ", 2)[0]: line.rsplit(" ", 2)[1:] for line in out.splitlines()}
    assert sorted(results) == sorted(SYSCALLS), out
    assert all(ret == "-1" and err == "1" for ret, err in results.values()), (
        out
    )  # EPERM: the filter, not bad args
    # unshare -r as a user would type it
    again = sandbox.run(
        "import subprocess\nprint(subprocess.run(['unshare', '-r', 'id'], capture_output=True).returncode)"
    )
    assert again.stdout.strip() not in ("", "0")


def test_threads_and_subprocesses_still_work(sandbox):
    """clone3 answers ENOSYS so glibc falls back to clone: threads and fork/exec keep working."""
    code = (
        "import threading, subprocess\nout = []\nt = threading.Thread(target=lambda: out.append(1))\nt.start()\n"
        "t.join()\nprint(out, subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())"
    )
    assert sandbox.run(code).stdout.strip() == "[1] child"


def test_writable_space_is_one_bounded_tmpfs_that_vanishes(sandbox):
    before = set(os.listdir(tempfile.gettempdir()))
    code = (
        "import os\nfor d in ('/', '/dev', '/dev/shm', '/usr', '/proc'):\n    try:\n"
        "        open(os.path.join(d, 'x'), 'w').write('x')\n        print('wrote', d)\n    except OSError:\n        pass\n"
        "n = 0\ntry:\n    for i in range(8):\n        open(f'/tmp/f{i}', 'wb').write(b'x' * (15 << 20))\n        n += 1\n"
        "except OSError:\n    pass\nfor i in range(20000):\n    open(f'/tmp/i{i}', 'w').close()\nprint('files', n, os.getcwd())\n"
    )
    result = sandbox.run(code)
    assert "wrote" not in result.stdout and result.stdout.split()[:3] == ["files", "4", "/tmp"], result
    assert set(os.listdir(tempfile.gettempdir())) - before == set()  # nothing of it on the host


def test_links_and_fifos_in_the_work_dir_cannot_hang_or_leak_to_the_caller(sandbox, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("host-secret-4711")
    secret.chmod(0o600)
    code = (
        "import os\nfor name in ('.stdout', '.stderr', '.signal', 'main.py'):\n    try:\n        os.mkfifo(name)\n"
        f"    except OSError:\n        pass\n    try:\n        os.symlink({str(secret)!r}, name + '.ln')\n    except OSError:\n"
        "        pass\nprint('done')\n"
    )
    start = time.monotonic()
    result = sandbox.run(code)
    # a harness that opened one of those FIFOs would block until the timeout ("timeout", not "ok")
    assert result.status == "ok" and result.stdout.strip() == "done" and time.monotonic() - start < 60
    assert "host-secret-4711" not in result.stdout + result.stderr


def test_a_judge_that_hangs_is_killed_and_replaced(tmp_path):
    """Trusted tests on candidate data can still take forever (range of a huge returned int): the
    caller's watchdog kills that judge, the program scores 0 and the slot keeps working."""
    from rewards import sandbox as module

    box = Sandbox(backend="bwrap", workers=1, limits=SandboxLimits(timeout_s=2, cpu_s=2, memory_mb=512))
    old = module.JUDGE_MARGIN_S
    module.JUDGE_MARGIN_S = 1.0
    try:
        start = time.monotonic()
        hang = ["for _ in range(n()):\n    pass"]
        assert score_program("def n():\n    return 10**18\n", hang, sandbox=box) == 0.0
        assert time.monotonic() - start < 120  # hang guard: the watchdog fired at 2 s + 1 s (4 s idle)
        assert score_program("def n():\n    return 3\n", hang, sandbox=box) == 1.0
    finally:
        module.JUDGE_MARGIN_S = old
        box.close()


def test_broken_tests_are_the_rows_error_and_unparseable_code_scores_zero(sandbox):
    with pytest.raises(
        ValueError, match="row 1 of the batch: code_execution: the row's test 0 does not compile"
    ):
        code_execution(None, ["def f():\n    return 1"] * 2, tests=[["assert f() == 1"], ["assert f(("]])
    with pytest.raises(ValueError, match="test 1 does not compile"):
        score_program(
            "def add(a, b):\n    return a + b", ["assert add(1, 2) == 3", "assert add(("], sandbox=sandbox
        )
    assert score_program("def add(a, b) return", ["assert add(1, 2) == 3"], sandbox=sandbox) == 0.0


def test_memory_is_capped_for_the_whole_run_not_per_process():
    """Three children holding 200 MiB each at once stay under a 320 MiB per-process address-space limit, but not
    under the run's shared cap (memory_mb + tmpfs_mb = 384 MiB) where a memory cgroup can be made."""
    box = Sandbox(backend="bwrap", workers=1, limits=SandboxLimits(timeout_s=20, cpu_s=20, memory_mb=320))
    try:
        if not box._cgroups:
            pytest.skip("no writable cgroup-v1 memory hierarchy (or not root): memory is capped per process")
        code = (
            "import os, time\npids = []\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n"
            "        b = bytearray(200 << 20)\n        b[::4096] = b'x' * len(b[::4096])\n        time.sleep(2)\n"
            "        os._exit(0)\n"
            "    pids.append(pid)\nprint(sum(os.waitpid(p, 0)[1] == 0 for p in pids))\n"
        )
        survivors = box.run(code).stdout.strip()
        assert survivors in ("0", "1"), survivors
        assert (
            box.run(
                "b = bytearray(200 << 20)\nb[::4096] = b'x' * len(b[::4096])\nprint('one fits')"
            ).stdout.strip()
            == "one fits"
        )
        parent = os.path.dirname(os.path.dirname(box._cgroups[0]))
    finally:
        box.close()
    assert not os.path.exists(parent)  # the cgroups go with the sandbox


TUPLE_HEADERS = (  # a ready message that is 10 bytes of tuple headers: marshal sizes each tuple before its items
    "import os, sys\ndef add(a, b):\n    return a\n"
    "msg = (b'(' + (1 << 28).to_bytes(4, 'little')) * 2\nfd = int(sys.argv[1])\n"
    "os.write(fd, len(msg).to_bytes(4, 'big') + msg)\nos.read(fd, 1)\n"
)
HASH_DAG = (  # a set holding a 64-level tuple DAG: hashing it in marshal.loads never ends (2 ** 64 steps)
    "import os, sys, marshal\ndef add(a, b):\n    return a\nt = 0\nfor _ in range(64):\n    t = (t, t)\n"
    "msg = marshal.dumps(('ready', {}, {'x': [t]}), 4)\ni = msg.index(b'[\\x01\\x00\\x00\\x00')\n"
    "msg = msg[:i] + b'<' + msg[i + 1:]\nfd = int(sys.argv[1])\nos.write(fd, len(msg).to_bytes(4, 'big') + msg)\n"
    "os.read(fd, 1)\n"
)


def test_a_reply_cannot_make_the_judge_allocate_gigabytes_or_spin_past_its_cpu_budget(caplog):
    """The judge runs outside the sandbox: its address space is capped (a 10-byte reply once made it zero-fill
    2 GB per header) and its own CPU per program is bounded by a kernel limit (a hash DAG once kept it busy
    until the wall-clock watchdog, timeout + 30 s). Both programs score 0, the judge's peak memory and the
    CPU it used (kernel counters: other load adds none) stay bounded, and the slot judges the next program."""
    import resource

    from rewards import judge as judge_module

    box = Sandbox(backend="bwrap", workers=1, limits=SandboxLimits(timeout_s=2, cpu_s=2, memory_mb=512))
    tests = ["assert add(2, 3) == 5"]
    try:
        assert score_program(TUPLE_HEADERS, tests, sandbox=box) == 0.0
        with open(f"/proc/{box._judges[0].proc.pid}/status") as f:
            peak_kb = int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
        assert (
            peak_kb < 256 * 1024 < judge_module.JUDGE_MEMORY_BYTES // 1024
        )  # measured ~20 MB (it was 2 GB a header)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        assert (
            score_program(HASH_DAG, tests, sandbox=box) == 0.0
        )  # the judge is ended by SIGXCPU and replaced
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        assert spent < 2 + 5 + 4, spent  # the budget: timeout 2 s + 5 s margin (+ rounding and start-up)
        assert score_program("def add(a, b):\n    return a + b\n", tests, sandbox=box) == 1.0
    finally:
        box.close()


def test_storage_routes_stay_inside_the_sandboxs_bounds(sandbox):
    """/dev/shm is read-only; a sparse file or a mapping larger than the file-size limit is refused; /tmp fills
    up to its limits; extended attributes (kept outside the tmpfs size) cannot be set at all."""
    if sandbox.backend != "bwrap":
        pytest.skip("the isolated backend's bounds")
    probes = {
        "open('/dev/shm/x', 'wb').write(b'x' * 10**6)": "30",  # EROFS
        "f = open('/tmp/s', 'wb'); f.truncate(10**12)": "27",  # EFBIG: RLIMIT_FSIZE
        "import mmap, os\nfd = os.open('/tmp/m', os.O_RDWR | os.O_CREAT); os.ftruncate(fd, 2 * 10**9)": "27",
        "open('/tmp/f', 'w').close()\nimport os\nos.setxattr('/tmp/f', 'user.k', b'v' * 60000)": "1",  # EPERM
    }
    for code, errno in probes.items():
        wrapped = "try:\n" + "".join(f"    {line}\n" for line in code.splitlines()) + "    print('done')\n" \
                  "except OSError as e:\n    print('errno', e.errno)\n"  # fmt: skip
        result = sandbox.run(wrapped)
        assert (result.status, result.stdout.strip()) == ("ok", f"errno {errno}"), (code, result)
    fill = sandbox.run("n = 0\ntry:\n    for i in range(1000):\n        f = open(f'/tmp/b{i}', 'wb')\n"
                       "        for _ in range(16):\n            f.write(b'x' * 2**20); n += 1\n        f.close()\n"
                       "except OSError as e:\n    print(n, e.errno)")  # fmt: skip
    written, errno = fill.stdout.split()
    assert (
        fill.status == "ok" and errno == "28" and int(written) <= sandbox.limits.tmpfs_mb
    )  # ENOSPC at the tmpfs size


def test_a_slot_waits_for_the_memory_the_kernel_frees_after_a_program(tmp_path):
    """What a program leaves in flight in a unix socket (descriptors sent and never received) is freed by the
    kernel up to a second after it: the judge waits until the slot's memory cgroup holds no more than the slot
    itself (anonymous and shared memory, not page cache), and gives up after its bound."""
    import threading

    from rewards.judge import MEMORY_MARGIN_BYTES, held_memory, settle_memory

    stat = tmp_path / "memory.stat"
    stat.write_text(f"cache {1 << 30}\nrss {64 << 20}\nshmem {900 << 20}\n")
    procs = str(tmp_path / "cgroup.procs")
    assert held_memory(procs) == 964 << 20  # page cache is not counted
    threading.Timer(0.3, lambda: stat.write_text(f"cache {1 << 30}\nrss {8 << 20}\nshmem 0\n")).start()
    start = time.monotonic()
    assert settle_memory(procs, 8 << 20)
    assert time.monotonic() - start >= 0.25
    stat.write_text(f"rss {(8 << 20) + MEMORY_MARGIN_BYTES + 1}\nshmem 0\n")  # one byte over: it gives up
    assert not settle_memory(procs, 8 << 20, wait_s=0.2)
    assert settle_memory(None, 0)  # no cgroup: nothing to wait for


def test_a_program_cannot_reserve_disk_past_its_file_size_limit(sandbox):
    """fallocate(FALLOC_FL_KEEP_SIZE) on its stdout (a file of the judge, on the host's disk) reserved blocks past
    RLIMIT_FSIZE without growing the file: 1 GiB per call; it is refused now."""
    code = (
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]\n"
        "print(libc.fallocate(1, 1, 0, 1 << 30), ctypes.get_errno(), os.fstat(1).st_blocks)"
    )
    result = sandbox.run(code)
    assert result.stdout.split()[:2] == ["-1", "1"], result  # EPERM
