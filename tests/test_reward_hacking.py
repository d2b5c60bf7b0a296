"""Reward hacks an RL policy finds against code rewards: every one must score 0, honest code 1.

Each attempt is a wrong solution (``add`` returns the wrong value) plus a trick that would make a naive
harness report a pass. Both test forms are attacked: MBPP asserts and a HumanEval ``check(candidate)``.
"""

import shutil

import pytest

from rewards.code import score_program
from rewards.sandbox import Sandbox, SandboxLimits

pytestmark = pytest.mark.skipif(
    shutil.which("bwrap") is None, reason="bubblewrap not installed (.ci/run installs it)"
)

ASSERTS = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert math.isclose(add(0.5, 0.25), 0.75)",
           "assert len(str(add(10, 5))) == 2", "assert add(-1, 1) == 0"]  # fmt: skip
CHECK = (
    "import math\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n"
    "    assert math.isclose(candidate(0.5, 0.25), 0.75)\n    assert len(str(candidate(10, 5))) == 2\n"
    "    assert candidate(-1, 1) == 0\n"
)
WRONG = "def add(a, b):\n    return None\n"
ALWAYS_EQUAL = "class E:\n    def __eq__(self, other):\n        return True\n    __hash__ = None\n"
FIND_HEX = (
    "import re, inspect, gc\n"
    "def _hexes():\n"
    "    texts = []\n"
    "    for info in inspect.stack():\n"
    "        f = info.frame\n"
    "        texts += [repr(f.f_locals), repr(f.f_globals), repr(f.f_code.co_consts)]\n"
    "    for path in ('/work/main.py', 'main.py', 'job.marshal', '.nonce', '.signal', '/proc/self/cmdline', "
    "'/proc/self/environ'):\n"
    "        try:\n            texts.append(open(path, errors='replace').read())\n"
    "        except OSError:\n            pass\n"
    "    return set(re.findall(r'[0-9a-f]{16,64}', ' '.join(texts)))\n"
    "def _forge():\n"
    "    for h in _hexes() | {'deadbeef' * 4}:\n"
    "        line = ''.join(f'{h} {i} pass\\n' for i in range(5))\n"
    "        print(line)\n"
    "        try:\n            open('.signal', 'a').write(line)\n"
    "        except OSError:\n            pass\n"
)

ATTEMPTS = {
    "exit() at module level": WRONG + "exit(0)\n",
    "sys.exit at module level": WRONG + "import sys\nsys.exit(0)\n",
    "os._exit at module level": WRONG + "import os\nos._exit(0)\n",
    "raise SystemExit at module level": WRONG + "raise SystemExit(0)\n",
    "exit() in the function": "def add(a, b):\n    exit(0)\n",
    "sys.exit in the function": "import sys\ndef add(a, b):\n    sys.exit(0)\n",
    "os._exit in the function": "import os\ndef add(a, b):\n    os._exit(0)\n",
    "raise SystemExit in the function": "def add(a, b):\n    raise SystemExit(0)\n",
    "kill its own process": "import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGKILL)\n",
    "kill its own process group": WRONG + "import os\nos.killpg(0, 9)\n",
    "define check first": WRONG + "def check(candidate):\n    pass\n",
    "redefine check and add from inside the call": (
        "import sys\ndef add(a, b):\n    for depth in range(1, 6):\n        try:\n"
        "            g = sys._getframe(depth).f_globals\n        except ValueError:\n            break\n"
        "        g['check'] = lambda c: None\n        g['add'] = lambda a, b: a + b\n    return None\n"
    ),
    "replace builtins.exec and compile": (
        WRONG
        + "import builtins\nbuiltins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n"
    ),
    "replace AssertionError": WRONG
    + "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n",
    "patch math.isclose and len": (
        "import builtins, math\nmath.isclose = lambda *a, **k: True\nbuiltins.len = lambda x: 2\n"
        "def add(a, b):\n    math.isclose = lambda *a, **k: True\n    builtins.len = lambda x: 2\n    return 999\n"
    ),
    "always-equal object": ALWAYS_EQUAL + "def add(a, b):\n    return E()\n",
    "always-equal int subclass": (
        "class I(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n"
        "def add(a, b):\n    return I(7)\n"
    ),
    "always-equal inside a list": ALWAYS_EQUAL
    + "def add(a, b):\n    return [E()][0] if a < 0 else (E(),)[0]\n",
    "add __eq__ after a first honest check": (
        "class E:\n    pass\n_calls = []\n"
        "def add(a, b):\n    _calls.append(1)\n    if len(_calls) == 2:\n"
        "        E.__eq__ = lambda self, other: True\n        E.__hash__ = None\n    return E()\n"
    ),
    "print success-looking text": WRONG + "print('All tests passed!')\nprint('OK')\nprint('0 pass')\n",
    "read source, stack and files to forge the signal": WRONG + FIND_HEX + "_forge()\n",
    "forge from inside the call": FIND_HEX + "def add(a, b):\n    _forge()\n    import os\n    os._exit(0)\n",
    "patch the harness through sys.modules": (
        ALWAYS_EQUAL + "import sys\nm = sys.modules.get('__main__')\n"
        "if m is not None:\n    m.honest = lambda *a, **k: True\n    m.guard = lambda f, *a: f\n"
        "def add(a, b):\n    return E()\n"
    ),
}

SPY = (
    "import os\n_real = os.write\n_seen = []\n"
    "def _spy(fd, data):\n    _seen.append(bytes(data))\n    return _real(fd, data)\n"
    "os.write = _spy\n"
    "def add(a, b):\n    for d in _seen:\n        n = d.split()[0]\n"
    "        open('.signal', 'ab').write(b''.join(n + b' %d pass\\n' % i for i in range(5)))\n"
    "    return 3 if (a, b) == (1, 2) else None\n"
)


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(backend="bwrap", workers=2, limits=SandboxLimits(timeout_s=5, cpu_s=5, memory_mb=512))
    yield box
    box.close()


@pytest.mark.parametrize("name", list(ATTEMPTS))
def test_reward_hack_scores_zero(sandbox, name):
    code = ATTEMPTS[name]
    assert score_program(code, ASSERTS, sandbox=sandbox) == 0.0, "asserts form"
    assert score_program(code, CHECK, "add", sandbox=sandbox) == 0.0, "check form"


@pytest.mark.parametrize("code", [
    "def add(a, b):\n    return a + b\n",
    "def add(a, b):\n    print('noise ' * 1000)\n    return a + b\nimport sys\nsys.exit(0)\n",  # noisy, exits
    "import math\ndef add(a, b):\n    return a + b\nmath.isclose = None\n",  # breaks math for itself only
    "from fractions import Fraction\ndef add(a, b):\n    return a + b if isinstance(a, int) else float(Fraction(a) + Fraction(b))\n",
    "class Pair:\n    def __init__(self, a, b):\n        self.v = a + b\ndef add(a, b):\n    return Pair(a, b).v\n",
])  # fmt: skip
def test_honest_solutions_still_pass(sandbox, code):
    assert score_program(code, ASSERTS, sandbox=sandbox) == 1.0
    assert score_program(code, CHECK, "add", sandbox=sandbox) == 1.0


def test_one_honest_pass_does_not_leak_the_secret(sandbox):
    # passes test 0 honestly while spying on os.write to learn the secret, then forges the other four
    assert score_program(SPY, ASSERTS, sandbox=sandbox) == 0.2
    assert score_program(SPY, CHECK, "add", sandbox=sandbox) == 0.0


def test_partial_credit_is_per_signed_test(sandbox):
    code = "import os\ndef add(a, b):\n    if a == 2:\n        os._exit(0)\n    return a + b\n"
    assert score_program(code, ASSERTS, sandbox=sandbox) == 0.2  # test 0 signed, then the process died


def test_output_floods_do_not_hide_or_forge_results(sandbox):
    flood = "import sys\nsys.stdout.write('x' * 50_000_000)\nsys.stderr.write('y' * 50_000_000)\n"
    assert score_program(flood + "def add(a, b):\n    return a + b\n", ASSERTS, sandbox=sandbox) == 1.0
    cases = [{"input": "2 3", "output": "5"}]
    assert score_program("print('5')\nprint('x' * 30_000_000)", cases, sandbox=sandbox) == 0.0


@pytest.mark.parametrize("code,score", [
    ("a, b = map(int, input().split())\nprint(a + b)", 1.0),
    ("import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(0)", 1.0),  # a normal finish
    # the output is judged outside the sandbox: a right answer that ends with os._exit(0) is a right answer
    ("import os, sys\na, b = map(int, input().split())\nprint(a + b)\nsys.stdout.flush()\nos._exit(0)", 1.0),
    ("import sys\na, b = map(int, input().split())\nprint(a + b)\nsys.exit(3)", 0.0),
    ("print(open('/proc/self/cmdline').read()[:0] + '5')", 0.5),  # the stub's source holds no expected output
])  # fmt: skip
def test_stdio_cases_need_the_output_and_a_clean_exit(sandbox, code, score):
    cases = [{"input": "2 3", "output": "5"}, {"input": "10 -1", "output": "9"}]
    assert score_program(code, cases, sandbox=sandbox) == score
