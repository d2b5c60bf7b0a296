"""The suite's own settings (tests/conftest.py), run on small test files in a pytest of their own: a Ctrl-C stops
pytest even when the code under test has turned SIGINT into a graceful stop, and the collection order can be
reversed or shuffled to show that no test depends on what ran before it."""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

SWALLOWS_CTRL_C = """
import os, signal, time

def test_interrupted({fixture}):
    def finish_the_step_then_stop(signum, frame):  # what the trainer does with SIGINT
        open("handler_ran", "w").close()
    old = signal.signal(signal.SIGINT, finish_the_step_then_stop)
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)
    finally:
        signal.signal(signal.SIGINT, old)

def test_after():
    open("after_ran", "w").close()
"""

ORDERED = """
def test_a():
    open("order", "a").write("a")

def test_b():
    open("order", "a").write("b")

def test_c():
    open("order", "a").write("c")
"""


def _pytest(tmp_path, source: str, **env) -> int:
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_case.py").write_text(source)
    outer = {
        k: v for k, v in os.environ.items() if k != "ALIGN_TEST_ORDER"
    }  # the outer suite's order is its own
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_case.py"],
                          cwd=tmp_path, capture_output=True, text=True, env={**outer, **env}, timeout=300)  # fmt: skip
    return proc.returncode


def test_ctrl_c_stops_the_suite_even_when_the_code_catches_sigint(tmp_path):
    assert _pytest(tmp_path, SWALLOWS_CTRL_C.format(fixture="")) == 2  # pytest's "interrupted"
    assert (tmp_path / "handler_ran").exists()  # the code under test still got its signal
    assert not (tmp_path / "after_ran").exists()


def test_a_test_that_signals_itself_on_purpose_does_not_stop_the_suite(tmp_path):
    assert _pytest(tmp_path, SWALLOWS_CTRL_C.format(fixture="sends_sigint")) == 0
    assert (tmp_path / "handler_ran").exists() and (tmp_path / "after_ran").exists()


def test_collection_order_can_be_reversed_or_shuffled(tmp_path):
    orders = []
    for order in ("", "reverse", "random:3"):
        (tmp_path / "order").unlink(missing_ok=True)
        assert _pytest(tmp_path, ORDERED, ALIGN_TEST_ORDER=order) == 0
        orders.append((tmp_path / "order").read_text())
    assert orders[:2] == ["abc", "cba"] and sorted(orders[2]) == ["a", "b", "c"]
    assert (
        _pytest(tmp_path, ORDERED, ALIGN_TEST_ORDER="backwards") == 4
    )  # a usage error, not a silent default
