"""The loop detector (rewards/loops.py): constructed loops, near-loops that are not loops, long reasoning,
and equality with a brute-force reading of its definition on random sequences."""

import random

import pytest

from rewards.loops import MIN_COPIES, MIN_SEGMENT, find_loop, loops, trailing_loop, unclosed_think

REASONING = (
    "We need the total cost. Each notebook costs 3 dollars and she buys 12 , so that is 36 dollars . The pens "
    "cost 2 dollars each and she buys 5 , which adds 10 dollars . Together 36 + 10 = 46 dollars . She pays with "
    "a 50 dollar bill , so her change is 50 - 46 = 4 dollars . Let me verify : 12 * 3 = 36 , 5 * 2 = 10 , "
    "36 + 10 = 46 , 50 - 46 = 4 . So the answer is 4"
).split()
CHECK = "Wait , let me check again : 36 + 10 = 46 and 50 - 46 = 4 , so the change is 4 dollars .".split()


def _brute(items, min_segment, min_copies, max_period):
    """The definition read literally: the earliest start s (then the shortest period p) such that the stretch
    of min_copies * (smallest multiple of p >= min_segment) tokens from s has every token equal to the one p
    before it."""
    n = len(items)
    for s in range(n):
        for p in range(1, max_period + 1):
            segment = p * -(-min_segment // p)
            end = s + min_copies * segment
            if end <= n and all(items[j] == items[j - p] for j in range(s + p, end)):
                return s, p
    return None


def test_a_checking_step_repeated_until_the_budget_is_a_loop_that_starts_at_its_first_copy():
    text = (
        REASONING + CHECK * 12
    )  # (REASONING does not end as CHECK does: the loop starts at CHECK's first word)
    found = find_loop(text)
    assert found is not None and found.start == len(REASONING) and found.period == len(CHECK)
    assert found.copies == pytest.approx(12.0)
    assert len(CHECK) >= MIN_SEGMENT  # the shortest checking step of the tests is a segment on its own


def test_degenerate_repetition_is_a_loop_and_two_copies_are_not():
    assert find_loop(REASONING + ["7"] * 60).start == len(REASONING)
    assert find_loop(REASONING + ["7"] * (MIN_COPIES * MIN_SEGMENT - 1)) is None  # one token short
    assert not loops(REASONING + CHECK * 2 + ["The", "answer", "is", "4", "."])  # a restatement


def test_near_loops_lists_tables_and_code_are_not_loops():
    listing = " ".join(f"{i} . buy item number {i} from the shop ." for i in range(1, 30)).split()
    table = ("| step | value |\n| --- | --- |\n" + "".join(f"| {i} | {i * i} |\n" for i in range(40))).split()
    code = ("def f ( x ) :\n" + "    x += 1\n" * 5 + "    return x\n").split()
    steps = [
        w for i in range(20) for w in f"Step {i} : add {i} to the total , giving {i * (i + 1) // 2} .".split()
    ]
    for text in (listing, table, code, steps, REASONING * 2):
        assert not loops(text), text[:20]


def test_the_detector_equals_its_definition_on_random_sequences():
    rng = random.Random(0)
    for _ in range(400):
        alphabet = rng.choice([2, 3, 5])
        base = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 12))]
        unit = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 6))]
        items = (
            base + unit * rng.randrange(0, 8) + [rng.randrange(alphabet) for _ in range(rng.randrange(0, 6))]
        )
        settings = dict(
            min_segment=rng.randrange(1, 7), min_copies=rng.randrange(2, 4), max_period=rng.randrange(1, 9)
        )
        found = find_loop(items, **settings)
        expected = _brute(items, **settings)
        assert (None if found is None else (found.start, found.period)) == expected, (items, settings)


def _brute_trailing(items, since, min_segment, min_copies, max_period):
    """trailing_loop's definition read literally: the shortest period p for which items[:len - since] ends in
    min_copies segments of p's length, each token equal to the one p before it, and so does every token after."""
    n = len(items)
    for p in range(1, max_period + 1):
        first = n - since - min_copies * p * -(-min_segment // p)  # where the loop had to start by n - since
        if first >= 0 and all(items[j] == items[j - p] for j in range(first + p, n)):
            return p
    return None


def test_the_trailing_loop_equals_its_definition_and_since_counts_blocks():
    rng = random.Random(1)
    for _ in range(600):
        alphabet = rng.choice([2, 3, 5, 40])
        items = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 30))]
        items += [rng.randrange(alphabet) for _ in range(rng.randrange(1, 7))] * rng.randrange(0, 12)
        items += [rng.randrange(alphabet) for _ in range(rng.choice([0, 0, 1, 3]))]
        since = rng.randrange(0, 12)
        settings = dict(
            min_segment=rng.randrange(1, 9), min_copies=rng.randrange(2, 4), max_period=rng.randrange(1, 12)
        )
        found = trailing_loop(items, since, **settings)
        assert (None if found is None else found.period) == _brute_trailing(items, since, **settings), (
            items,
            since,
        )
    # a checking step repeated to the end: a loop once 3 copies are written, K - 1 blocks later for K blocks
    text = REASONING + CHECK * 3
    assert trailing_loop(text) is not None and trailing_loop(text, since=1) is None
    assert (
        trailing_loop(text + CHECK[:10], since=10) is not None
        and trailing_loop(text + CHECK[:10], since=11) is None
    )
    assert (
        trailing_loop(REASONING + CHECK * 6 + REASONING) is None
    )  # it looped, then moved on: not looping now
    assert trailing_loop(REASONING) is None and trailing_loop([]) is None
    long = list(range(5000)) + [7, 8, 9] * 40  # reads only the tail, whatever the length
    assert trailing_loop(long).period == 3 and trailing_loop(long).start == 5000
    with pytest.raises(ValueError, match="since >= 0"):
        trailing_loop(long, since=-1)


def test_ids_words_and_bad_settings():
    ids = [5, 6] + [1, 2, 3, 4] * 20
    assert find_loop(ids).start == 2 and find_loop(ids).period == 4
    with pytest.raises(TypeError, match="split a text first"):
        find_loop("abc" * 50)
    with pytest.raises(ValueError, match="min_segment >= 1"):
        find_loop(ids, min_segment=0)


def test_unclosed_thinking():
    assert unclosed_think("<think>Let me see ... and so on")
    assert not unclosed_think("<think>short</think>```python\nx = 1\n```")
    assert unclosed_think("still thinking", opened=True)  # the prompt opened it
    assert not unclosed_think("done</think> 4", opened=True)
    assert not unclosed_think("no thinking at all")
    assert unclosed_think("<think>a</think> b <think>again")  # reopened, never closed


def _open_r1_repetition(completion: str, ngram_size: int, max_penalty: float) -> float:
    """huggingface/open-r1 ``get_repetition_penalty_reward`` (language "en") for one completion, written out."""
    if completion == "" or len(completion.split()) < ngram_size:
        return 0.0
    words = completion.lower().split()
    ngrams, total = set(), 0
    for ng in zip(*[words[i:] for i in range(ngram_size)]):
        ngrams.add(ng)
        total += 1
    return (1 - len(ngrams) / total) * max_penalty


def test_repetition_penalty_by_name_with_parameters_equals_open_r1():
    import rewards

    texts = ["", "one two", " ".join(REASONING), " ".join(REASONING + CHECK * 6), "The the THE the the the"]
    completions = [[{"role": "assistant", "content": t}] for t in texts]  # open-r1's conversational shape
    for spec, n, penalty in [
        ("repetition_penalty", 3, -1.0),
        ("repetition_penalty(ngram_size=2, max_penalty=-0.5)", 2, -0.5),
    ]:
        fn = rewards.get(spec)
        assert rewards.name_of(spec) == "repetition_penalty"
        assert fn(None, completions) == [_open_r1_repetition(t, n, penalty) for t in texts]
    assert (
        rewards.get("repetition_penalty")(None, completions)[3]
        < rewards.get("repetition_penalty")(None, completions)[2]
    )
    with pytest.raises(ValueError, match="ngram_size must be a whole number >= 1, got 0"):
        rewards.get("repetition_penalty(ngram_size=0)")
    with pytest.raises(ValueError, match="should not be positive"):
        rewards.get("repetition_penalty(max_penalty=0.5)")


def test_loop_penalty_is_the_share_of_the_completion_inside_its_loop():
    import rewards

    looping = REASONING + CHECK * 8
    texts = [" ".join(REASONING), " ".join(looping)]
    fn = rewards.get("loop_penalty(penalty=-2.0)")
    scores = fn(None, texts)
    assert scores[0] == 0.0
    assert scores[1] == pytest.approx(-2.0 * 8 * len(CHECK) / len(looping))
    ids = [[1, 2, 3], [9, 10] + [1, 2, 3, 4, 5, 6, 7, 8] * 10]  # words, whatever ids the trainer also passes
    assert fn(None, texts, completion_ids=ids) == scores
    chars = rewards.get("loop_penalty(unit='chars')")  # text without spaces (the character-level tiny tasks)
    assert chars(None, ["12", "7+" + "1245=" * 20]) == [0.0, pytest.approx(-100 / 102)]
    assert fn(None, ["7+" + "1245=" * 20]) == [0.0]  # one word: no loop in words
    with pytest.raises(ValueError, match="unit 'lines' is not one of words, chars"):
        rewards.get("loop_penalty(unit='lines')")


@pytest.mark.parametrize("unit", ["words", "chars"])
def test_training_logs_the_loop_ratio_marks_looping_samples_and_scores_them(tmp_path, unit):
    """A scripted rollout engine: half the completions repeat a 4-word phrase to the end of the canvas, half
    do not. One GRPO step logs completions/loop_ratio 0.5 (unclosed_think_ratio 0), the completions table marks
    the looping rows, and loop_penalty by name scores them -1 (the whole completion inside the loop); the same
    read in characters (``loop_unit``), where the plain rows' two copies of 32 words are no loop either. A
    quarter of the rows end in 14 copies of a 2-word phrase: too short a stretch to loop in words (48 words
    needed), a loop in characters (56 of 48), so the ratio tells which unit the trainer really read."""
    import json

    import torch
    from test_cli import save_tiny_checkpoint

    from align.config import load_config
    from align.data import load_rows
    from align.models import load_model, load_tokenizer
    from align.rollout.engine import RolloutEngine
    from align.sampling import GenerationOutput
    from align.trainer import DiffusionGRPOTrainer

    save_tiny_checkpoint(tmp_path / "m")
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "w3 w4", "answer": "w5"}\n' * 8)
    length = 64

    class Scripted(RolloutEngine):
        name = "scripted"

        def sync_weights(self, model):
            pass

        def generate(self, prompt_ids, attention_mask, settings, *, generator=None, on_block=None, **hooks):
            rows = prompt_ids.shape[0]
            loop, plain = [5, 6, 7, 8] * (length // 4), list(range(3, 35)) * (length // 32)
            spelled = list(range(3, 39)) + [5, 6] * 14  # "w3 w4" x 14: 28 words, 56 characters
            canvas = torch.tensor(
                [loop if i % 2 == 0 else plain if i % 4 == 1 else spelled for i in range(rows)]
            )
            return GenerationOutput(sequences=torch.cat([prompt_ids, canvas], 1),
                                    attention_mask=torch.cat([attention_mask, torch.ones_like(canvas)], 1),
                                    commit_step=torch.zeros_like(canvas), nfe=1, prompt_length=prompt_ids.shape[1])  # fmt: skip

    args = load_config(None, [
        "--model_name_or_path", str(tmp_path / "m"), "--dataset_files", str(data), "--output_dir", str(tmp_path / "out"),
        "--use_chat_template", "false", "--max_completion_length", str(length), "--block_length", str(length),
        "--diffusion_steps", "1", "--num_generations", "4", "--per_device_train_batch_size", "8", "--max_steps", "1",
        "--logging_steps", "1", "--dtype", "float32", "--reward_funcs", "loop_penalty", "--report_to", "none",
        "--save_strategy", "no", "--use_cpu", "true", "--log_completions", "true", "--num_completions_to_print", "8",
        "--loop_unit", unit,
    ])  # fmt: skip
    trainer = DiffusionGRPOTrainer(load_model(args.model_name_or_path, dtype="float32"), args=args,
                                   train_dataset=load_rows(args), processing_class=load_tokenizer(args.model_name_or_path),
                                   engine=Scripted())  # fmt: skip
    trainer.train()
    [logged] = [h for h in trainer.state.log_history if "completions/loop_ratio" in h]
    assert logged["completions/loop_ratio"] == {"words": 0.5, "chars": 0.75}[unit]
    assert logged["completions/unclosed_think_ratio"] == 0.0
    assert logged["rewards/loop_penalty/mean"] == -0.5  # the reward reads words in both runs
    rows = [json.loads(line) for line in open(tmp_path / "out" / "completions.jsonl")]
    assert len(rows) == 8 and sum(r["loop"] for r in rows) == {"words": 4, "chars": 6}[unit]
    assert all(r["loop"] for r in rows if r["loop_penalty"] == -1.0)
    assert all(r["loop"] == (r["loop_penalty"] == -1.0) for r in rows) == (unit == "words")


def test_eval_results_and_the_report_carry_the_loop_rates(tmp_path):
    import json

    from align.eval.report import load_run, write_report
    from align.eval.runner import task_metrics
    from align.eval.tasks import TASKS

    samples = [{"completion": " ".join(REASONING + CHECK * 5), "score": 0.0},
               {"completion": "<think>" + " ".join(REASONING), "score": 0.0},
               {"completion": " ".join(REASONING), "score": 1.0}, {"completion": "4", "score": 1.0}]  # fmt: skip
    metrics = task_metrics(TASKS["gsm8k"], samples, 4, 1)
    assert (metrics["accuracy"], metrics["loop_rate"], metrics["unclosed_think_rate"]) == (0.5, 0.25, 0.25)
    spelled = [
        {"completion": "1245=" * 25, "score": 0.0},
        {"completion": "1245=<answer>1245</answer>", "score": 1.0},
    ]
    assert task_metrics(TASKS["gsm8k"], spelled, 2, 1)["loop_rate"] == 0.0  # one word: no loop in words
    assert task_metrics(TASKS["gsm8k"], spelled, 2, 1, loop_unit="chars")["loop_rate"] == 0.5
    folder = tmp_path / "run"
    folder.mkdir()
    config = {"protocol": {"name": "d1", "gen_length": 256}, "source": {"model": "m"}}
    (folder / "results.json").write_text(
        json.dumps({"tasks": {"gsm8k": metrics}, "config": config, "provenance": []})
    )
    write_report([load_run(str(folder))], str(tmp_path / "report"))
    table = open(tmp_path / "report" / "report.md").read()
    assert "| loop_rate | unclosed_think_rate |" in table and "| 25.0 | 25.0 |" in table


def test_the_looping_tiny_task_loops_where_it_says():
    """demos/tiny.py's loops task: every trace that repeats its check fills the 128-token budget, loops in
    characters (rewards/loops.py) and holds no answer; every other trace answers and does not loop; about
    LOOP_SHARE of the hard traces (first number from LOOP_FROM) loop, no other one does; the other hard traces
    check 1 to LOOP_CHECKS times before they answer (every count occurs), the easy ones answer at once; every
    sum has 3 digits."""
    from demos.tiny import LOOP_BUDGET, LOOP_CHECKS, LOOP_FROM, LOOP_SHARE, build_tokenizer, problems
    from rewards.loops import completion_loop

    rows = problems(2000, 3, "loops")
    tok = build_tokenizer()
    assert all(100 <= int(r["answer"]) < 1000 for r in rows)
    hard = [r for r in rows if int(r["question"].partition("+")[0]) >= LOOP_FROM]
    assert 0.4 < len(hard) / len(rows) < 0.6
    looping = [r for r in rows if completion_loop(r["completion"], unit="chars") is not None]
    assert all("<answer>" not in r["completion"] for r in looping)
    assert all(
        len(tok(r["completion"], add_special_tokens=False)["input_ids"]) == LOOP_BUDGET for r in looping
    )
    assert all(f"<answer>{r['answer']}</answer>" in r["completion"] for r in rows if r not in looping)
    assert all(r in hard for r in looping) and abs(len(looping) / len(hard) - LOOP_SHARE) < 0.03
    checks = {r["completion"].count(r["answer"] + "=") for r in hard if r not in looping}
    assert checks == set(range(1, LOOP_CHECKS + 1))
    assert all(r["completion"] == f"<answer>{r['answer']}</answer>" for r in rows if r not in hard)


@pytest.mark.slow
def test_the_loops_demo_prints_the_sft_and_boost_rows_the_readme_quotes(tmp_path, capsys, monkeypatch):
    """``make demo-loops``' first two rows from the committed looping model (the GRPO arms are left to the
    demo: ~40 more minutes): the SFT model loops on at least 20% of the 500 held-out questions, and the rows
    printed are the ones the README quotes."""
    import json
    import os

    from demos import loops as demo

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.chdir(repo)
    assert demo.main(["--output", str(tmp_path / "demo"), "--seeds"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    readme = open(os.path.join(repo, "README.md")).read()
    rows = [line for line in printed if line.startswith(("| SFT |", "| SFT + end-of-thinking boost |"))]
    assert len(rows) == 2 and all(row in readme for row in rows), rows
    assert json.loads(printed[-1])["SFT"]["loop_rate"] >= 0.2
