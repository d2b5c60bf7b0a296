"""The hostile-program suite: zero breaches, the caller alive, bounded time."""

import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from rewards.code import score_program
from rewards.sandbox import MAX_SLOTS, UIDS_PER_SLOT, Sandbox, SandboxLimits, live_pids_of_uids

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(backend="bwrap", workers=2, limits=SandboxLimits(timeout_s=3, cpu_s=3, memory_mb=512))
    yield box
    box.close()


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
    assert result.status == "timeout" and time.monotonic() - start < 6


def test_fork_bomb_is_contained(sandbox):
    start = time.monotonic()
    result = sandbox.run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    assert result.status in ("timeout", "error") and time.monotonic() - start < 8
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
        assert live_pids_of_uids(range(base, base + sandbox.workers * UIDS_PER_SLOT)) == []


def test_output_flood_is_capped(sandbox):
    start = time.monotonic()
    result = sandbox.run("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)")
    assert len(result.stdout) <= sandbox.limits.max_output_bytes and time.monotonic() - start < 6
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
    assert result.status == "timeout" and result.wall_s < 10
