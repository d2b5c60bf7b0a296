"""The embedded tiny task: 3-digit addition in a character-level vocabulary, answered in ``<answer>`` tags.

A prompt is ``"456+789="`` and the reference completion ``"<answer>1245</answer>"`` followed by EOS
padding, so ``math_accuracy`` (which reads ``<answer>``) and ``answer_tag_format`` score it unchanged.
``build_tokenizer`` writes a standard ``PreTrainedTokenizerFast`` (one token per character, the two tags
and ``<|bos|>``/``<|eos|>``/``<|mask|>`` as single tokens) and ``tiny_config`` the LLaDA-architecture
config of the embedded model (~0.9M parameters). ``write_task`` writes the fixed train / held-out split as
JSONL with ``question`` / ``answer`` / ``completion`` columns.

The *long* variant (``--task long``, committed under ``recipes/tiny-long``) exists to measure the fast
decoding modes on a trained model with a long answer: 4-digit addition worked column by column, right to
left, each column written ``a+b+c=ss`` (digits, incoming carry, two-digit sum), then the tagged result.
``"4567+8912="`` -> ``"7+2+0=096+1+0=075+9+0=144+8+1=13<answer>13479</answer>"``: 39 tokens, where
every column depends on the one before it through its carry.

The *mixed* variant (``recipes/tiny-mixed``) alternates the two: a 3-digit question is answered directly (6
tokens), a 4-digit one worked (39 tokens), so answer lengths differ by question on one 48-token canvas; it
measures variable-length rollouts against fixed canvases (benchmarks/variable_length_cost.py).

The *loops* variant (``recipes/tiny-loops``) is addition of two numbers from 100 to 499 whose traces, like real
long-reasoning data, sometimes never stop checking: an easy question (first number under 300) is answered
directly; a *hard* one is checked (``"745="``) 1 to ``LOOP_CHECKS`` times before its tagged answer, and in
``LOOP_SHARE`` of its traces the check repeats until the 128-token budget runs out, never answering. Every sum
has 3 digits, which the tiny model adds well, so a loop hides an answer the model could give. The model
fine-tuned on it loops on hard held-out questions (demos/loops.py measures how often, and what RL does about it).

The *verifier-only* tasks (``countdown``, ``sudoku``; committed under ``recipes/tiny-countdown`` and
``recipes/tiny-sudoku``) have many valid answers and are scored by ``rewards.puzzles``, never against a
stored answer: ``"3,7,5:26="`` -> ``<answer>3*7+5</answer>`` (three numbers in 1..20, binary + - * / and
brackets, each number at most once) and ``"1030001020030300="`` -> ``<answer>1234341221434321</answer>``
(4x4 Sudoku, 0 = blank, 6-10 blanks; the SFT answers come from a weak solver, ``greedy_fill``, right on
58% of puzzles). Their vocabulary (``PUZZLE_VOCAB``) adds ``- * / ( ) , :``. Their
data comes in three disjoint splits (``PUZZLE_SPLITS``): ``sft`` (one solution per problem), ``train`` (RL
prompts, no solution) and ``test``. The *code* task (``recipes/tiny-code``, ``code_problems``) is split the
same way; its SFT solutions come from a weak teacher (``weak_code_teacher``) that writes ``+`` for ``-`` on 2/3
of the functions subtracting a constant, and only the hidden tests know better. Not covered: anything beyond
these tasks.
"""

from __future__ import annotations

import itertools
import json
import os
import random
from fractions import Fraction

from align.models import LLaDAConfig

SPECIALS = ["<|bos|>", "<|eos|>", "<|mask|>", "<answer>", "</answer>"]
CHARS = list("0123456789+=")
VOCAB = SPECIALS + CHARS
PUZZLE_VOCAB = SPECIALS + list("0123456789+-*/(),:=")  # countdown and sudoku
# The code task: a fenced block, ``def`` and the return line are single tokens, the rest characters.
CODE_TOKENS = ["```python\n", "\n```", "def ", ":\n", "    return "]
CODE_VOCAB = SPECIALS + CODE_TOKENS + list("0123456789+-*=(),fghpqx")


def build_tokenizer(vocab: list[str] = VOCAB):
    """The tiny task's tokenizer: BOS prepended, pad = EOS, left padding, ``decode`` joins characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<|mask|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.add_special_tokens(SPECIALS[:3])
    core.add_tokens([t for t in vocab[3:] if len(t) > 1])  # tags, the code task's keywords
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|eos|>",
        mask_token="<|mask|>", padding_side="left", chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )  # fmt: skip


def tiny_config(vocab: list[str] = VOCAB, **overrides) -> LLaDAConfig:
    fields = dict(
        d_model=128, n_heads=4, n_layers=4, mlp_hidden_size=384, vocab_size=len(vocab), max_sequence_length=64,
        rope_theta=10000.0, mask_token_id=vocab.index("<|mask|>"), eos_token_id=vocab.index("<|eos|>"),
        pad_token_id=vocab.index("<|eos|>"), bos_token_id=vocab.index("<|bos|>"), weight_tying=True,
    )  # fmt: skip
    fields.update(overrides)
    return LLaDAConfig(**fields)


TASKS = ("short", "long", "mixed", "loops", "countdown", "sudoku", "code")
LOOP_BUDGET = 128  # the loops task's completion budget (tokens)
LOOP_NUMBERS = (100, 499)  # the loops task's numbers: every sum has 3 digits, which the tiny model adds well
LOOP_FROM = 300  # a question is hard when its first number is at least this (its first character: 3 or 4)
LOOP_SHARE = 0.75  # traces of a hard question that repeat their check to the budget
LOOP_CHECKS = 10  # the other hard traces check 1 to LOOP_CHECKS times (uniform) before they answer


def worked_sum(a: int, b: int) -> str:
    """Column-by-column working of a + b, right to left: ``a_i+b_i+carry=ss`` per column (no separators)."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, columns = 0, []
    for x, y in zip(da, db, strict=True):
        total = int(x) + int(y) + carry
        columns.append(f"{x}+{y}+{carry}={total:02d}")
        carry = total // 10
    return "".join(columns)


def addition_problems(n: int, rng: random.Random, task: str) -> list[dict]:
    low, high = (100, 999) if task == "short" else (1000, 9999)
    seen, rows = set(), []
    while len(rows) < n:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        working = worked_sum(a, b) if task == "long" else ""
        rows.append(
            {
                "question": f"{a}+{b}=",
                "answer": str(a + b),
                "completion": f"{working}<answer>{a + b}</answer>",
            }
        )
    return rows


def loop_problems(n: int, rng: random.Random) -> list[dict]:
    """Additions of two numbers in ``LOOP_NUMBERS`` (3-digit sums); a question whose first number is from
    ``LOOP_FROM`` (a hard one) repeats its check ``"S="`` to the budget in ``LOOP_SHARE`` of its traces (the
    completion then holds no answer and no EOS), else checks 1 to ``LOOP_CHECKS`` times and answers; an easy
    one is answered at once. A looping trace is thus one that could have answered and did not."""
    seen, rows = set(), []
    while len(rows) < n:
        a, b = rng.randint(*LOOP_NUMBERS), rng.randint(*LOOP_NUMBERS)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        total = a + b
        answer = f"<answer>{total}</answer>"
        if a < LOOP_FROM:
            completion = answer
        elif rng.random() < LOOP_SHARE:
            check = f"{total}="
            completion = (check * (LOOP_BUDGET // len(check) + 1))[:LOOP_BUDGET]
        else:
            completion = f"{total}=" * rng.randint(1, LOOP_CHECKS) + answer
        rows.append({"question": f"{a}+{b}=", "answer": str(total), "completion": completion})
    return rows


_OPS = {"+": Fraction.__add__, "-": Fraction.__sub__, "*": Fraction.__mul__, "/": Fraction.__truediv__}


def _apply(op: str, x: Fraction | None, y: Fraction | None) -> Fraction | None:
    return None if x is None or y is None or (op == "/" and y == 0) else _OPS[op](x, y)


def three_number_expressions(numbers) -> list[tuple[str, Fraction | None]]:
    """(text, exact value or None for a division by zero) of every binary expression over all three
    numbers: each order (``itertools.permutations``: the given order first), operator pair and bracketing
    (``a o b o c``, ``(a o b) o c``, ``a o (b o c)``), in that nesting order."""
    out = []
    for a, b, c in itertools.permutations(numbers):
        fa, fb, fc = Fraction(a), Fraction(b), Fraction(c)
        for o1, o2 in itertools.product(_OPS, repeat=2):
            left, right = _apply(o2, _apply(o1, fa, fb), fc), _apply(o1, fa, _apply(o2, fb, fc))
            flat = left if o1 in "*/" or o2 in "+-" else right  # precedence, then left to right
            out += [
                (f"{a}{o1}{b}{o2}{c}", flat),
                (f"({a}{o1}{b}){o2}{c}", left),
                (f"{a}{o1}({b}{o2}{c})", right),
            ]
    return out


def countdown_space(high: int = 20, max_target: int = 100) -> set[tuple[tuple[int, ...], int]]:
    """Every Countdown problem of three numbers in 1..high (sorted) and an integer target in 1..max_target
    that is not one of them, reached by a binary expression over all three."""
    space = set()
    for numbers in itertools.combinations_with_replacement(range(1, high + 1), 3):
        for _, value in three_number_expressions(numbers):
            if (
                value is not None
                and value.denominator == 1
                and 1 <= value <= max_target
                and value not in numbers
            ):
                space.add((numbers, int(value)))
    return space


def countdown_problems(n: int, rng: random.Random) -> list[dict]:
    """n problems drawn from ``countdown_space()``, the numbers shown in a random order; the completion is
    the first expression of ``three_number_expressions(shown)`` that reaches the target (so the shown order
    whenever it can), one valid answer among usually several."""
    rows = []
    for numbers, target in rng.sample(sorted(countdown_space()), n):
        shown = rng.sample(numbers, 3)
        solution = next(text for text, value in three_number_expressions(shown) if value == target)
        rows.append({"question": ",".join(map(str, shown)) + f":{target}=", "numbers": shown, "target": target,
                     "completion": f"<answer>{solution}</answer>"})  # fmt: skip
    return rows


def sudoku_grids() -> list[str]:
    """All 288 valid 4x4 Sudoku grids as 16-digit strings, in lexicographic order."""
    from rewards.puzzles import sudoku_valid

    grids, cells = [], [0] * 16

    def fill(i: int) -> None:
        if i == 16:
            grids.append("".join(map(str, cells)))
            return
        for digit in range(1, 5):
            cells[i] = digit
            row, col = divmod(i, 4)
            box = [(row // 2 * 2 + r) * 4 + col // 2 * 2 + c for r in range(2) for c in range(2)]
            peers = [row * 4 + c for c in range(4)] + [r * 4 + col for r in range(4)] + box
            if all(cells[j] != digit for j in peers if j < i):
                fill(i + 1)
        cells[i] = 0

    fill(0)
    assert len(grids) == 288 and all(sudoku_valid([int(ch) for ch in g], [0] * 16) for g in grids)
    return grids


def greedy_fill(puzzle: str) -> str:
    """A weak solver's answer: blanks filled in reading order, each with the smallest digit not yet in its
    row or column (boxes ignored, no backtracking; the smallest digit missing from the row when none is
    left). Valid for 58% of the held-out puzzles: the demonstrations a weaker teacher would write."""
    cells = [int(ch) for ch in puzzle]
    for i, value in enumerate(cells):
        if value:
            continue
        row, col = divmod(i, 4)
        in_row = {cells[row * 4 + k] for k in range(4)}
        free = [d for d in range(1, 5) if d not in in_row | {cells[k * 4 + col] for k in range(4)}]
        cells[i] = (free or [d for d in range(1, 5) if d not in in_row] or [1])[0]
    return "".join(map(str, cells))


def sudoku_problems(n: int, rng: random.Random) -> list[dict]:
    """A random grid with 6-10 cells blanked (0). The completion is ``greedy_fill``'s answer (wrong for
    about 4 puzzles in 10), so SFT can only imitate a weak teacher while the verifier knows the rules;
    ``solution`` keeps the grid the puzzle came from (one valid answer; blanking many cells can leave
    several), which no reward or evaluation reads."""
    grids, seen, rows = sudoku_grids(), set(), []
    while len(rows) < n:
        grid = rng.choice(grids)
        blanks = set(rng.sample(range(16), rng.randint(6, 10)))
        puzzle = "".join("0" if i in blanks else ch for i, ch in enumerate(grid))
        if puzzle in seen:
            continue
        seen.add(puzzle)
        rows.append({"question": f"{puzzle}=", "puzzle": puzzle, "solution": grid,
                     "completion": f"<answer>{greedy_fill(puzzle)}</answer>"})  # fmt: skip
    return rows


CODE_NAMES = "fghpq"  # the function names a code prompt asks for
CODE_POINTS = (0, 1, 2)  # where a code prompt shows the function's values
CODE_TEST_POINTS = (3, 5, 10)  # where the tests check it


def code_functions() -> list[str]:
    """Every function of the code task as its return expression in x: ``a*x``, ``a*x+b``, ``a*x-b`` (a in 2..12,
    b in 1..40), ``x+b``, ``x-b``, ``x*x+b``, ``x*x-b`` and ``x*x``; no two agree on ``CODE_POINTS``."""
    out = ["x*x"]
    for a in range(2, 13):
        out += [f"{a}*x"] + [f"{a}*x{sign}{b}" for b in range(1, 41) for sign in "+-"]
    out += [f"{head}{sign}{b}" for head in ("x", "x*x") for b in range(1, 41) for sign in "+-"]
    return out


def code_problems(n: int, rng: random.Random) -> list[dict]:
    """n distinct (function, name) pairs of the code task. The prompt shows the function's values at
    ``CODE_POINTS`` (``"g(0)=3,g(1)=5,g(2)=7"``); the completion is a fenced Python block defining it
    (``"```python\\ndef g(x):\\n    return 2*x+3\\n```"``); the hidden tests check ``CODE_TEST_POINTS``, as MBPP
    asserts (``tests`` a JSON list, ``entry_point`` empty) on even rows and as a HumanEval ``check(candidate)``
    program with ``entry_point`` on odd ones."""
    space = [(body, name) for body in code_functions() for name in CODE_NAMES]
    rows = []
    for index, (body, name) in enumerate(rng.sample(space, n)):
        value = eval(f"lambda x: {body}")  # noqa: S307 - our own arithmetic, built just above
        shown = ",".join(f"{name}({x})={value(x)}" for x in CODE_POINTS)
        if index % 2 == 0:
            tests = json.dumps([f"assert {name}({x})=={value(x)}" for x in CODE_TEST_POINTS])
            entry_point = ""
        else:
            checks = "".join(f"    assert candidate({x}) == {value(x)}\n" for x in CODE_TEST_POINTS)
            tests, entry_point = f"def check(candidate):\n{checks}", name
        rows.append({"question": shown, "tests": tests, "entry_point": entry_point,
                     "completion": f"```python\ndef {name}(x):\n    return {body}\n```"})  # fmt: skip
    return rows


def problems(n: int, seed: int, task: str = "short") -> list[dict]:
    """n distinct problems of a task: additions ``a+b=`` (3-digit ``short``, 4-digit worked ``long``, the two
    alternating in ``mixed``),
    ``countdown`` (``"3,7,5:26="``) or 4x4 ``sudoku`` (``"1030020040010300="``, 0 = blank)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}.")
    rng = random.Random(seed)
    if task == "countdown":
        return countdown_problems(n, rng)
    if task == "loops":
        return loop_problems(n, rng)
    if task == "sudoku":
        return sudoku_problems(n, rng)
    if task == "code":
        return code_problems(n, rng)
    if task == "mixed":  # alternating short (6 tokens) and worked long (39 tokens) answers
        short, long = addition_problems(n - n // 2, rng, "short"), addition_problems(n // 2, rng, "long")
        return [row for pair in itertools.zip_longest(short, long) for row in pair if row is not None]
    return addition_problems(n, rng, task)


def write_task(
    folder: str, num_train: int = 20000, num_test: int = 500, seed: int = 0, task: str = "short"
) -> dict[str, str]:
    """Write ``train.jsonl`` and ``test.jsonl`` (disjoint problems) under folder; returns their paths."""
    rows = problems(num_train + num_test, seed, task)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, part in (("train", rows[:num_train]), ("test", rows[num_train:])):
        paths[name] = os.path.join(folder, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return paths


# Verifier-only tasks: a limited SFT set with one solution per problem, a prompt pool for RL (no solutions:
# RL sees the question and the verifier's columns only) and a held-out split, all disjoint. Countdown has
# 15,126 problems in all (three numbers in 1..20), most of them given to SFT: the tiny model learns little
# from fewer; Sudoku is learnt from a few hundred.
PUZZLE_SPLITS = {
    "countdown": {"sft": 10000, "test": 500, "train": 4000},
    "sudoku": {"sft": 2000, "test": 500, "train": 10000},
    "code": {"sft": 3500, "test": 500, "train": 1260},  # all 5,260 (function, name) pairs
}


CODE_SLIP_SHARE = 2 / 3  # of the functions subtracting a constant, those the SFT teacher writes with +


def weak_code_teacher(rows: list[dict], seed: int = 7) -> list[dict]:
    """The code task's SFT completions as a weak teacher writes them: on ``CODE_SLIP_SHARE`` of the functions that
    subtract a constant (``9*x-28``) it flips the sign (``9*x+28``), though the prompt shows ``g(0)=-28`` and every
    test catches it. Rows are copied; the tests stay right, so RL can learn what SFT taught wrong."""
    rng, out = random.Random(seed), []
    for row in rows:
        body = row["completion"].split("return ")[1].split("\n")[0]
        if "-" in body and rng.random() < CODE_SLIP_SHARE:
            slipped = body.replace("-", "+")
            row = {**row, "completion": row["completion"].replace(f"return {body}", f"return {slipped}")}
        out.append(row)
    return out


def write_puzzle_task(folder: str, task: str, splits: dict[str, int] | None = None, seed: int = 0) -> dict:
    """Write one JSONL file per split of a verifier-only task (``sft`` keeps its ``completion`` column,
    the RL prompts in ``train`` do not; the code task's comes from ``weak_code_teacher``); returns their paths."""
    splits = splits or PUZZLE_SPLITS[task]
    rows = problems(sum(splits.values()), seed, task)
    if task == "code":
        rows[: splits["sft"]] = weak_code_teacher(rows[: splits["sft"]])
    os.makedirs(folder, exist_ok=True)
    paths, start = {}, 0
    for name, count in splits.items():
        paths[name] = os.path.join(folder, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            for row in rows[start : start + count]:
                if name != "sft":  # RL prompts and held-out questions carry no answer
                    row = {k: v for k, v in row.items() if k not in ("completion", "solution")}
                f.write(json.dumps(row) + "\n")
        start += count
    return paths


def tiny_dream_config(vocab: list[str] = VOCAB, **overrides):
    """The Dream-architecture twin of ``tiny_config`` (Qwen2.5 layer with q/k/v biases, GQA 4 / 2 heads, tied
    embeddings; ~0.8M parameters): the same task, tokenizer and ids, logits shifted as Dream's are."""
    from align.models import DreamConfig

    fields = dict(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=4, intermediate_size=384,
        vocab_size=len(vocab), max_position_embeddings=64, rope_theta=10000.0, mask_token_id=vocab.index("<|mask|>"),
        eos_token_id=vocab.index("<|eos|>"), pad_token_id=vocab.index("<|eos|>"), bos_token_id=vocab.index("<|bos|>"),
        tie_word_embeddings=True,
    )  # fmt: skip
    fields.update(overrides)
    return DreamConfig(**fields)


def tiny_sdar_config(vocab: list[str] = VOCAB, **overrides):
    """The block-diffusion twin of ``tiny_config`` (Qwen3 layer with per-head q/k norms, GQA 4 / 2 heads,
    block-causal attention in blocks of 4, tied embeddings; ~0.8M parameters): the same task, tokenizer and
    ids, decoded block by block as SDAR / TraDo are."""
    from align.models import SDARConfig

    fields = dict(
        hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_hidden_layers=4,
        intermediate_size=384, vocab_size=len(vocab), max_position_embeddings=64, rope_theta=10000.0,
        mask_token_id=vocab.index("<|mask|>"), eos_token_id=vocab.index("<|eos|>"), pad_token_id=vocab.index("<|eos|>"),
        bos_token_id=vocab.index("<|bos|>"), tie_word_embeddings=True, block_size=4,
    )  # fmt: skip
    fields.update(overrides)
    return SDARConfig(**fields)


def prepare(folder: str = "recipes/tiny", task: str = "short", family: str = "llada") -> None:
    """Write the task data and the untrained starting point (tokenizer + config) that ``align sft`` reads;
    ``family`` dream / sdar writes only the starting point of that twin (it trains on ``recipes/tiny``'s data)."""
    if family in ("dream", "sdar"):
        init = os.path.join(folder, "init")
        build_tokenizer(VOCAB).save_pretrained(init)
        config = tiny_dream_config(VOCAB) if family == "dream" else tiny_sdar_config(VOCAB)
        config.to_json_file(os.path.join(init, "config.json"))
        return
    data = os.path.join(folder, "data")
    if task in PUZZLE_SPLITS:
        write_puzzle_task(data, task)
    else:
        write_task(data, num_train=20000 if task in ("short", "loops") else 50000, task=task)
    if task == "mixed":
        return  # fine-tuned from recipes/tiny-long/model: no starting point of its own
    if task == "loops":  # fine-tuned from recipes/tiny/model, its context long enough for the budget
        _longer_copy("recipes/tiny/model", os.path.join(folder, "init"), 16 + LOOP_BUDGET)
        return
    vocab = {"code": CODE_VOCAB, "countdown": PUZZLE_VOCAB, "sudoku": PUZZLE_VOCAB}.get(task, VOCAB)
    init = os.path.join(folder, "init")
    build_tokenizer(vocab).save_pretrained(init)
    tiny_config(vocab).to_json_file(os.path.join(init, "config.json"))


def _longer_copy(model: str, folder: str, max_sequence_length: int) -> None:
    """``model``'s weights and tokenizer with a longer context (RoPE: no weight depends on it)."""
    import shutil

    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(model):
        if name.endswith((".safetensors", ".json", ".jinja")) and name != "config.json":
            shutil.copy(os.path.join(model, name), folder)
    with open(os.path.join(model, "config.json")) as f:
        config = json.load(f)
    config["max_sequence_length"] = max_sequence_length
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    import sys

    prepare(*sys.argv[1:])
