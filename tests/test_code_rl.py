"""Code RL end to end on the tiny code task (demos/tiny.py ``code``, recipes/tiny-code, demos/code.py): the task's
rows as the sandboxed judge and a plain interpreter score them, custom code tasks in ``align eval`` with a raw
prompt, a batch's repeated programs judged once, and ``make demo-code`` as the README reports it."""

import json
import os
import random
import re

import pytest

from demos import code as demo
from demos.tiny import CODE_VOCAB, build_tokenizer, code_problems, weak_code_teacher, write_puzzle_task
from rewards import get
from rewards.code import check_row_tests

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wrong_variants(completion: str) -> list[str]:
    """Programs that agree with the shown values at some points only, or do not define the function."""
    body = re.search(r"return (.*)\n", completion).group(1)
    return [
        completion.replace(f"return {body}", f"return {body}+1"),
        completion.replace(f"return {body}", f"return ({body})*(x<3)"),  # right on the prompt's points only
        completion.replace("def ", "def z"),  # another name
        completion.replace(f"return {body}", f"return {body}+(x==10)"),  # one test of three fails
        completion.replace("```python\n", "").replace("\n```", ""),  # no block: the raw text still runs
    ]


def test_every_reference_program_scores_1_and_wrong_ones_do_not_in_the_sandbox_and_a_plain_interpreter():
    """Both test forms (MBPP asserts on even rows, a HumanEval check program on odd ones): the reference
    completion scores 1 and parses as a python block; each wrong variant scores below 1 (a third for the one that
    fails one assert of three); the sandboxed judge and the plain harness agree on every program."""
    rows = code_problems(40, random.Random(3))
    assert {bool(r["entry_point"]) for r in rows} == {True, False}
    for row in rows:
        check_row_tests(
            json.loads(row["tests"]) if row["tests"].startswith("[") else row["tests"], row["entry_point"]
        )
    completions = [r["completion"] for r in rows]
    columns = {"tests": [r["tests"] for r in rows], "entry_point": [r["entry_point"] for r in rows]}
    assert get("code_execution")(None, completions, **columns) == [1.0] * len(rows)
    assert get("python_block_format")(None, completions) == [1.0] * len(rows)
    wrong = [(v, r) for r in rows[:8] for v in wrong_variants(r["completion"])]
    scores = get("code_execution")(
        None, [v for v, _ in wrong], tests=[r["tests"] for _, r in wrong], entry_point=[r["entry_point"] for _, r in wrong]
    )  # fmt: skip
    plain = [demo.plain_score(demo.plain_program(v), r) for v, r in wrong]
    assert scores == plain
    expected = []
    for row in rows[:8]:
        expected += [0.0, 0.0, 0.0, 0.0 if row["entry_point"] else 2 / 3, 1.0]
    assert scores == expected, list(zip(scores, expected))
    n, bad = demo.rejudge(
        [(c, r, 1.0) for c, r in zip(completions, rows)] + [(v, r, s) for (v, r), s in zip(wrong, scores)]
    )
    assert n == len(rows) + len(wrong) and bad == []
    n, bad = demo.rejudge([(completions[0], rows[0], 0.0)])  # a wrong verdict is caught
    assert len(bad) == 1 and bad[0]["plain"] == 1.0


def test_the_splits_are_disjoint_the_vocabulary_spells_every_completion_and_held_out_rows_carry_no_solution(
    tmp_path,
):
    paths = write_puzzle_task(str(tmp_path), "code")
    splits = {name: [json.loads(line) for line in open(path)] for name, path in paths.items()}
    assert {k: len(v) for k, v in splits.items()} == {"sft": 3500, "test": 500, "train": 1260}
    questions = [{r["question"] for r in rows} for rows in splits.values()]
    assert sum(map(len, questions)) == len(set().union(*questions)) == 5260
    assert all("completion" not in r for r in splits["test"] + splits["train"])
    tokenizer = build_tokenizer(CODE_VOCAB)
    for row in splits["sft"][:200]:
        ids = tokenizer(row["question"] + row["completion"])["input_ids"]
        assert tokenizer.mask_token_id not in ids  # nothing unknown
        assert tokenizer.decode(ids, skip_special_tokens=True) == row["question"] + row["completion"]
        assert len(tokenizer(row["completion"], add_special_tokens=False)["input_ids"]) <= 16  # canvas: 20


def test_the_weak_teacher_flips_the_sign_of_two_thirds_of_the_subtracting_functions_and_every_test_catches_it(
    tmp_path,
):
    """The SFT split of the code task comes from a teacher that writes ``+b`` for ``-b`` on about 2/3 of the
    functions subtracting a constant and copies every other row as is; each slipped program fails its own hidden
    tests (in the sandbox and in a plain interpreter) while the true one passes; the committed split is what
    ``write_puzzle_task`` writes."""
    rows = code_problems(3500, random.Random(0))
    taught = weak_code_teacher(rows)
    changed = [(r, t) for r, t in zip(rows, taught) if r != t]
    subtracting = [r for r in rows if "-" in r["completion"].split("return ")[1]]
    assert all(r["completion"] == t["completion"] for r, t in zip(rows, taught) if r not in subtracting)
    assert 0.6 < len(changed) / len(subtracting) < 0.73, (len(changed), len(subtracting))
    for right, slipped in changed:
        assert {**right, "completion": None} == {**slipped, "completion": None}
        assert slipped["completion"] == right["completion"].replace("-", "+")
    sample = changed[:16]
    programs = [r["completion"] for r, _ in sample] + [t["completion"] for _, t in sample]
    tests = [r["tests"] for r, _ in sample] * 2
    entry = [r["entry_point"] for r, _ in sample] * 2
    scores = get("code_execution")(None, programs, tests=tests, entry_point=entry)
    assert scores == [1.0] * 16 + [0.0] * 16
    plain = [demo.plain_score(demo.plain_program(p), r) for p, r in zip(programs, [r for r, _ in sample] * 2)]
    assert plain == scores
    paths = write_puzzle_task(str(tmp_path), "code")
    for name, path in paths.items():
        committed = os.path.join(REPO, "recipes/tiny-code/data", f"{name}.jsonl")
        assert open(path).read() == open(committed).read(), name


def test_a_batch_judges_each_distinct_program_once_and_gives_every_copy_its_score(monkeypatch):
    from rewards.sandbox import default_sandbox

    rows = code_problems(4, random.Random(5))
    sandbox = default_sandbox()
    calls = []
    real = sandbox.judge
    monkeypatch.setattr(sandbox, "judge", lambda job, runs=1: calls.append(job["code"]) or real(job, runs))
    right, wrong = rows[0]["completion"], wrong_variants(rows[0]["completion"])[0]
    completions = [right, wrong, right, right, wrong, rows[1]["completion"], right]
    tests = [rows[0]["tests"]] * 5 + [rows[1]["tests"], rows[1]["tests"]]  # the last: right code, another row
    entries = [rows[0]["entry_point"]] * 5 + [rows[1]["entry_point"]] * 2
    scores = get("code_execution")(None, completions, tests=tests, entry_point=entries)
    assert scores == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert len(calls) == 4  # (right, row 0), (wrong, row 0), (row 1's program, row 1), (right, row 1)


def test_why_programs_scored_0_is_counted_in_the_training_metrics():
    """``code_execution.last_metrics`` (logged as rewards/code_execution/<key>): a completion with no fenced block
    (its raw text is run), one that does not compile, one that defines another name than the entry point."""
    check = "def check(candidate):\n    assert candidate(1) == 1\n"
    completions = ["def f(x):\n    return 1", "```python\ndef f(:\n```", "```python\ndef g(x):\n    return 1\n```",
                   "```python\ndef f(x):\n    return 1\n```", "```python\ndef f(:\n```"]  # fmt: skip
    scores = get("code_execution")(None, completions, tests=[check] * 5, entry_point=["f"] * 5)
    assert scores == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert get("code_execution").last_metrics == {  # the program that does not compile is never run
        "no_code_block": 1.0, "compile_errors": 2.0, "entry_point_missing": 1.0, "programs_run": 3.0
    }  # fmt: skip


def test_a_custom_code_task_evaluates_with_a_raw_prompt_and_pass_at_k(tmp_path):
    """``align eval`` on the held-out file with ``--prompt-template '{question}'`` (the model sees the row's
    question only), greedy and with several samples: pass@1 and pass@k from the sandbox's verdicts."""
    from align.cli import main as align

    out = tmp_path / "eval"
    argv = ["eval", "--model", demo.MODEL, "--tasks", f"code={demo.TEST}", "--protocol", "tiny", "--gen-length", "20",
            "--block-length", "20", "--max-prompt-length", "28", "--prompt-template", "{question}", "--output", str(out),
            "--dtype", "float32", "--device", "cpu", "--limit", "24", "--batch-size", "24"]  # fmt: skip
    assert align(argv) == 0
    samples = [json.loads(line) for line in open(out / "code" / "samples.jsonl")]
    rows = [json.loads(line) for line in open(demo.TEST)][:24]
    assert [s["prompt"] for s in samples] == [r["question"] for r in rows]  # the raw question, nothing added
    assert all(s["completion"].startswith("```python\n") for s in samples)
    result = json.load(open(out / "results.json"))["tasks"]["code"]
    assert result["pass@1"] == sum(s["score"] >= 1.0 for s in samples) / 24
    _, bad = demo.rejudge([(s["completion"], rows[s["index"]], s["score"]) for s in samples])
    assert bad == []
    sampled = tmp_path / "sampled"
    argv = [a if a != str(out) else str(sampled) for a in argv] + ["--num-samples", "4", "--temperature", "1"]
    assert align(argv) == 0
    result = json.load(open(sampled / "results.json"))["tasks"]["code"]
    assert result["pass@4"] >= result["pass@1"]
    assert len(open(sampled / "code" / "samples.jsonl").readlines()) == 96


def test_wilson_interval_matches_its_closed_form():
    low, high = demo.wilson(20, 100)
    assert (round(low, 4), round(high, 4)) == (0.1334, 0.2888)  # 13.34% - 28.88%, the textbook example
    assert demo.wilson(0, 50)[0] == 0.0 and demo.wilson(50, 50)[1] == 1.0


@pytest.mark.slow
def test_the_code_demo_prints_the_figures_the_readme_quotes(tmp_path, capsys, monkeypatch):
    """The GRPO arm of ``make demo-code``'s seed 0 from the committed model (the control and seed 1 are left to
    the demo: ~10 more minutes each): the start and GRPO rows of the held-out table the README quotes, GRPO at
    least 10 points above the start, and no disagreement between the sandboxed judge and the plain interpreter on anything the run
    sampled in its last 10 steps or answered on the held-out set."""
    monkeypatch.chdir(REPO)
    assert demo.main(["--output", str(tmp_path / "demo"), "--seeds", "0", "--arms", "grpo"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    readme = open(os.path.join(REPO, "README.md")).read()
    rows = [line for line in printed if line.startswith(("| start |", "| grpo-seed0 |"))]
    assert len(rows) == 2 and all(row in readme for row in rows), rows
    result = json.loads(printed[-1])
    assert result["disagreements"] == 0 and result["rejudged"] > 500
    assert result["grpo-seed0"] >= result["start"] + 0.10
