import time

import pytest

import rewards
from rewards.code import extract_code
from rewards.format import length_penalty, python_block_format, reasoning_answer_format, think_answer_format
from rewards.math import extract_answer, math_accuracy

GSM8K_GOLD = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nAltogether she sold 48+24 = <<48+24=72>>72 clips.\n#### 72"
MATH_GOLD = "We have $\\frac{1}{2} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$."

CASES = [  # (gold, completion, expected score)
    ("72", "#### 72", 1.0),
    ("72", "The answer is 72.", 1.0),
    ("72", "<answer>72</answer>", 1.0),
    (GSM8K_GOLD, "She sold 72 in total.\n#### 72", 1.0),
    (GSM8K_GOLD, "so \\boxed{72}", 1.0),
    ("1000", "#### 1,000", 1.0),
    ("18", "The answer is $18.00", 1.0),
    ("\\$18", "#### $18", 1.0),
    ("50\\%", "#### 50%", 1.0),
    (MATH_GOLD, "\\boxed{0.75}", 1.0),
    (MATH_GOLD, "<answer>\\dfrac{3}{4}</answer>", 1.0),
    ("\\frac{1}{2}", "\\boxed{0.5}", 1.0),
    ("(1,2)", "\\boxed{(1, 2)}", 1.0),
    ("[0,1)", "\\boxed{[0, 1)}", 1.0),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}", 1.0),
    ("x^2+2x", "\\boxed{x(x+2)}", 1.0),
    ("3", "first \\boxed{1}, then finally \\boxed{3}", 0.0),  # different boxed values: a hedge, wrong
    ("3", "so \\boxed{3}. Checking: \\boxed{3}", 1.0),  # the same value boxed twice
    ("1", "first \\boxed{1}, then finally \\boxed{3}", 0.0),
    ("72", "#### 73", 0.0),
    ("72", "I think it is 72 but I am not sure", 0.0),  # no final-answer marker
    ("72", "", 0.0),
    ("\\frac{1}{2}", "\\boxed{\\frac{1}{3}}", 0.0),
    ("5", "\\boxed{9^{9^{9^{9^9}}}}", 0.0),  # pathological: must come back bounded
]


def test_answer_equivalence_table():
    scores = math_accuracy(None, [c for _, c, _ in CASES], answer=[g for g, _, _ in CASES])
    assert scores == [s for _, _, s in CASES]
    # bounded by the graders' CPU limit, not the wall clock: only the tower of powers ran out of CPU (once, then
    # once more on a fresh worker), every other answer was graded on its first try
    assert math_accuracy.last_metrics["timeouts"] <= 1 and math_accuracy.last_metrics["retries"] <= 1


def test_unparseable_gold_gives_none_and_warns(caplog):
    scores = math_accuracy(None, ["#### 1", "#### 1"], answer=["", "1"])
    assert scores == [None, 1.0]
    assert "cannot be parsed" in caplog.text


def test_solution_column_and_chat_completions():
    chat = [
        [{"role": "assistant", "content": "It is \\boxed{4}."}],
        [{"role": "assistant", "content": "\\boxed{5}"}],
    ]
    assert math_accuracy(None, chat, solution=["$\\boxed{4}$", "$\\boxed{4}$"]) == [1.0, 0.0]
    with pytest.raises(KeyError, match="'answer' or 'solution'"):
        math_accuracy(None, ["#### 1"], question=["q"])


def test_extract_answer_forms():
    assert extract_answer("<answer>\\boxed{7}</answer>") == "7"
    assert extract_answer("\\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"
    assert extract_answer("nothing") is None


def test_format_rewards():
    cases = {
        "<think>hmm</think>\n<answer>4</answer>": 1.0,
        "hmm, 2+2</think>\n<answer>4</answer>": 1.0,  # the template opened <think> in the prompt
        "<answer>4</answer>": 0.0,
        "<think>a</think><think>b</think><answer>4</answer>": 0.0,
        "<think>hmm</think>\n<answer>4</answer> and more": 0.0,
        "<think>hmm</think>\n<answer> \n </answer>": 0.0,  # an empty answer
    }
    assert think_answer_format(None, list(cases)) == list(cases.values())
    strict = "<reasoning>\n2+2\n</reasoning>\n<answer>\n4\n</answer>"
    assert reasoning_answer_format(None, [strict, "x <reasoning>a</reasoning> <answer>4</answer>", "4"]) == [
        1.0,
        0.5,
        0.0,
    ]
    assert python_block_format(None, ["```python\nx = 1\n```", "```python\nx = = 1\n```", "x = 1"]) == [
        1.0,
        0.0,
        0.0,
    ]
    assert extract_code("text\n```python\na = 1\n```\nmore\n```python\nb = 2\n```") == "b = 2\n"


def test_length_penalty_hits_long_and_looping_outputs():
    short, long = "fine answer", "x" * 3000
    loop = "\n".join(["Wait, let me check again."] * 9 + ["So 4."])
    scores = length_penalty(None, [short, long, loop], soft_limit=2000, hard_limit=4000)
    assert scores[0] == 0.0 and scores[1] == pytest.approx(-0.5) and scores[2] == pytest.approx(-0.8)


def test_reward_specs_by_name_module_and_path():
    assert rewards.get("math_accuracy") is math_accuracy
    assert rewards.get("rewards.format:think_answer_format") is think_answer_format
    shout = rewards.get("tests/fixtures/my_reward.py:shout")
    assert shout(None, ["HI", "hi"]) == [1.0, 0.0]
    assert rewards.name_of("tests/fixtures/my_reward.py:shout") == "shout"


@pytest.mark.parametrize("spec,message", [
    ("no_such_reward", "unknown reward 'no_such_reward'"),
    ("tests/fixtures/missing.py:f", "does not exist"),
    ("tests/fixtures/my_reward.py:nope", "has no function 'nope'"),
    ("no_such_pkg.mod:f", "cannot import module 'no_such_pkg.mod'"),
])  # fmt: skip
def test_bad_reward_specs_say_what_to_fix(spec, message):
    with pytest.raises(ValueError, match=message):
        rewards.get(spec)


def test_code_execution_reward_on_chat_completions():
    from rewards.code import code_execution

    good = [{"role": "assistant", "content": "Here:\n```python\ndef add(a, b):\n    return a + b\n```"}]
    half = [{"role": "assistant", "content": "```python\ndef add(a, b):\n    return 3\n```"}]
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
    assert code_execution(None, [good, half, "def add(a, b) return"], tests=[tests] * 3) == [1.0, 0.5, 0.0]
    with pytest.raises(KeyError, match="'tests'"):
        code_execution(None, ["x"])


def test_answer_tag_format():
    from rewards.format import answer_tag_format

    cases = {
        "<answer>12</answer>": 1.0,
        "carry the one <answer>12</answer>\n": 1.0,
        "<answer></answer>": 0.0,
        "<answer>1</answer>5": 0.0,
        "<answer>1</answer><answer>2</answer>": 0.0,
        "12": 0.0,
    }
    assert answer_tag_format(None, list(cases)) == list(cases.values())


def test_reasoning_format_equals_the_regex_it_replaced_and_is_linear():
    """The d1 layout checks were lazy regexes (6-7 s on 100 kB of repeated tags); the linear versions
    must agree with them everywhere."""
    import random
    import re

    from rewards.format import reasoning_answer_format

    strict = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n?$", re.S)
    soft = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.S)
    parts = ["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "x"]
    rng = random.Random(0)
    texts = ["".join(rng.choice(parts) for _ in range(rng.randint(0, 9))) for _ in range(20_000)]
    layout = ["<reasoning>", "\n", "x", "\n", "</reasoning>", "\n", "<answer>", "\n", "x", "\n", "</answer>"]
    for _ in range(5_000):  # near-misses of the strict layout: parts dropped, doubled or swapped
        doc = list(layout)
        for _ in range(rng.randint(0, 2)):
            i = rng.randrange(len(doc))
            doc[i] = rng.choice(["", doc[i] * 2, rng.choice(parts)])
        texts.append("".join(doc))
    expected = [
        1.0 if strict.match(t.strip() + "\n") else 0.5 if soft.search(t.strip()) else 0.0 for t in texts
    ]
    assert reasoning_answer_format(None, texts) == expected
    assert sorted(set(expected)) == [0.0, 0.5, 1.0]
    start = time.process_time()
    reasoning_answer_format(
        None, ["<reasoning>" * 9_000, "<reasoning>\n" * 8_000 + "</reasoning>\n<answer>\n"]
    )
    assert time.process_time() - start < 1.0


def test_reward_watchdog_lets_a_call_that_returns_in_time_through():
    from align.watchdog import RewardWatchdog

    exits = []
    slow = lambda prompts, completions, **kw: time.sleep(0.2) or [1.0] * len(completions)  # noqa: E731
    with RewardWatchdog(slow, "slow", ["p"], ["c"], [[1]], {}, None, timeout_s=2.0, exit=exits.append):
        slow(["p"], ["c"])
    time.sleep(0.1)
    assert exits == []
    stuck_until = time.monotonic() + 1.5
    stuck = lambda prompts, completions, **kw: [time.sleep(max(0, stuck_until - time.monotonic())), 1.0][1:]  # noqa: E731
    watchdog = RewardWatchdog(stuck, "stuck", ["p"], ["c"], [[1]], {}, None, timeout_s=0.3, exit=exits.append)
    watchdog.PROBE_S = 0.2
    with watchdog:
        time.sleep(1.0)  # the main thread is "inside" the call past its timeout
    watchdog.thread.join(5)
    assert exits == [1]


@pytest.mark.parametrize("text,score", [
    ("Here:\n```python\ndef f(x):\n    return x\n```\nDone.", 1.0),
    ("```py\nx = 1\n```", 1.0),
    ("```\nprint(1)\n```", 1.0),  # a bare fence
    ("```python\n```", 0.0),  # no code
    ("```python\n# only a comment\n```", 0.0),
    ("```python\n\"\"\"```python\nx = 1\n```\"\"\"", 0.0),  # the only closing fence sits inside a string
    ("# ```python\nx = 1\n# ```", 0.0),  # fences in comments
    ("x = '```python\nprint(1)\n```'", 0.0),  # a string holding a fence
    ("```javascript\nx = 1\n```", 0.0),  # another language's block, even one that parses as Python
    ("```c\nint x;\n```", 0.0),
    ("x = 1", 0.0),
    ("```python\nx = = 1\n```", 0.0),
    ("```js\nlet a = 1\n```\n```python\na = 1\n```", 1.0),  # a python block beside another
])  # fmt: skip
def test_python_block_format_means_a_python_block(text, score):
    assert python_block_format(None, [text]) == [score]


def test_parsing_from_scoring_threads_never_raises_the_311_ast_race():
    """The code rewards parse tests and prompts from a thread pool. On CPython 3.11 two threads in ast.parse
    at once can raise "SystemError: AST constructor recursion depth mismatch" when a finaliser lets the other
    thread run mid-construction (python/cpython#106905; once in tests/test_eval.py). rewards.pyast.parse
    serialises them: 4 threads x 4 x 164 HumanEval programs with such finalisers, no error."""
    import gc
    import threading
    import time

    from rewards import benchdata, pyast

    sources = [r["prompt"] + r["canonical_solution"] for r in benchdata.load("humaneval")]

    class Finaliser:
        def __init__(self):
            self.me = self  # a cycle: freed by the collector, which may switch threads in __del__

        def __del__(self):
            time.sleep(0.0002)

    errors = []

    def work():
        try:
            for _ in range(4):
                for source in sources:
                    Finaliser()
                    pyast.parse(source)
        except SystemError as exc:
            errors.append(str(exc))

    before = gc.get_threshold()
    gc.set_threshold(50, 1, 1)
    try:
        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.set_threshold(*before)
    assert errors == []
