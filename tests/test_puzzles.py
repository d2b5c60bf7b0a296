"""The Countdown and Sudoku verifiers: valid, invalid, malformed and hostile answers; the tiny task data."""

import json
import time

import pytest

import rewards
from demos.tiny import countdown_space, greedy_fill, problems, sudoku_grids, write_puzzle_task
from rewards.puzzles import countdown, countdown_value, sudoku, sudoku_valid


def tagged(answer: str) -> str:
    return f"<answer>{answer}</answer>"


def score_countdown(answer, numbers=(3, 7, 5), target=26):
    return countdown(None, [answer], numbers=[list(numbers)], target=[target])[0]


@pytest.mark.parametrize(
    "answer",
    [
        "3*7+5",
        "5+3*7",
        "(7*3)+5",
        " 7 * 3 + 5 ",
        "3*7+5 = 26",
        "Let me think. <answer>1</answer> " + tagged("5+7*3"),
    ],
)
def test_countdown_accepts_any_valid_expression(answer):
    assert score_countdown(answer if "<answer>" in answer else tagged(answer)) == 1.0


@pytest.mark.parametrize(
    "answer",
    [
        "3*7+4",  # 4 was not given
        "3*7+5+5",  # 5 given once, used twice
        "7*3+5+0",  # 0 was not given
        "26",  # a number that was not given
        "3*7+5 = 27",  # the claimed value is wrong
        "3*7+5)",  # unbalanced
        "(3*7+5",
        "3**2",  # not an operator here
        "3*7+",  # ends early
        "",
        "3 7 5",
    ],
)
def test_countdown_refuses_invalid_and_malformed_answers(answer):
    assert score_countdown(tagged(answer)) == 0.0


def test_countdown_rules_details():
    assert score_countdown("3*7+5") == 0.0  # no answer tag
    assert score_countdown(tagged("(10-2)*3"), numbers=(10, 2, 3), target=24) == 1.0
    assert score_countdown(tagged("7/2*4"), numbers=(7, 2, 4), target=14) == 1.0  # exact division
    assert score_countdown(tagged("7/2"), numbers=(7, 2, 4), target=3) == 0.0  # 3.5 is not 3
    assert score_countdown(tagged("7/(4-4)"), numbers=(7, 4, 4), target=1) == 0.0  # division by zero
    assert score_countdown(tagged("4+4"), numbers=(4, 4, 9), target=8) == 1.0  # a repeated number, twice
    assert score_countdown(tagged("9-4"), numbers=(4, 4, 9), target=5) == 1.0  # a subset is fine
    assert score_countdown(tagged("7*5-3"), target=32) == 1.0
    assert score_countdown(tagged("-3+7*5"), target=32) == 0.0  # no unary signs
    # columns as strings (CSV / JSON files) read the same way
    assert countdown(None, [tagged("3*7+5")], numbers=["3,7,5"], target=["26"]) == [1.0]
    assert countdown(None, [tagged("3*7+5")], numbers=["[3, 7, 5]"], target=[26]) == [1.0]
    # chat-format completions
    assert countdown(
        None, [[{"role": "assistant", "content": tagged("3*7+5")}]], numbers=[[3, 7, 5]], target=[26]
    ) == [1.0]


def test_countdown_unreadable_problem_is_not_a_reward(caplog):
    assert countdown(None, [tagged("1+1")], numbers=["three,seven"], target=[26]) == [None]
    assert "unreadable problem" in caplog.text


@pytest.mark.parametrize(
    "answer",
    [
        "__import__('os').system('touch /tmp/pwned_countdown')",
        "().__class__.__bases__[0].__subclasses__()",
        "open('/etc/passwd').read()",
        "3*7+5; import os",
        "9" * 100_000,  # a huge literal
        "(" * 10_000 + "3" + ")" * 10_000,  # deep nesting
        "3*7+5 = " + "9" * 5000,
    ],
)
def test_countdown_hostile_answers_score_zero_fast_and_run_nothing(answer, tmp_path):
    start = time.process_time()  # this process's CPU: other load on the machine adds none
    assert score_countdown(tagged(answer)) == 0.0
    assert time.process_time() - start < 0.05  # measured at most 3.5 ms (the 1 MB answer)
    assert not (tmp_path / "pwned_countdown").exists()


def test_countdown_parser_values():
    assert countdown_value("2+3*4", [2, 3, 4]) == 14
    assert countdown_value("(2+3)*4", [2, 3, 4]) == 20
    assert countdown_value("8-4-2", [8, 4, 2]) == 2  # left-associative
    assert countdown_value("8/4/2", [8, 4, 2]) == 1


SOLVED = "1234341221434321"


def score_sudoku(answer, puzzle="1030001020030300"):  # givens of SOLVED
    return sudoku(None, [answer], puzzle=[puzzle])[0]


def test_sudoku_accepts_any_valid_grid_in_common_layouts():
    assert score_sudoku(tagged(SOLVED), puzzle="1234341221434321".replace("3", "0")) == 1.0
    assert score_sudoku(tagged("1 2 3 4\n3 4 1 2\n2 1 4 3\n4 3 2 1"), puzzle="1000000000000000") == 1.0
    assert score_sudoku(tagged("[[1,2,3,4],[3,4,1,2],[2,1,4,3],[4,3,2,1]]"), puzzle="1...............") == 1.0
    # a puzzle with several solutions: both are valid
    other = "1234432121433412"
    blank = "0" * 16
    assert score_sudoku(tagged(SOLVED), blank) == score_sudoku(tagged(other), blank) == 1.0
    # givens as a list of rows
    assert sudoku(None, [tagged(SOLVED)], puzzle=[[[1, 0, 0, 0], [0] * 4, [0] * 4, [0] * 4]]) == [1.0]


@pytest.mark.parametrize(
    "answer",
    [
        "1234341221434312",  # a column repeats
        "1234123412341234",  # columns and boxes repeat
        "2134341221434321",  # column 0 repeats
        "123434122143432",  # 15 digits
        "12343412214343211",  # 17 digits
        "1234341221434325",  # 5 is not a 4x4 digit
        "Row 1: 1234341221434321",  # prose inside the answer
        "",
    ],
)
def test_sudoku_refuses_invalid_and_malformed_grids(answer):
    assert score_sudoku(tagged(answer), puzzle="0" * 16) == 0.0
    assert score_sudoku(tagged(answer)) == 0.0


def test_sudoku_keeps_the_givens_and_needs_tags():
    assert score_sudoku(tagged(SOLVED)) == 1.0
    assert score_sudoku(tagged(SOLVED), puzzle="2000000000000000") == 0.0  # valid grid, wrong given
    assert score_sudoku(SOLVED) == 0.0  # no tag
    assert sudoku(None, [tagged(SOLVED)], puzzle=["12"]) == [None]  # not a 4x4 or 9x9 puzzle


@pytest.mark.parametrize(
    "answer",
    ["__import__('os').system('touch /tmp/pwned_sudoku')", "1" * 1_000_000, "١٢٣٤" * 4, "9" * 81],
)
def test_sudoku_hostile_answers_score_zero_fast(answer):
    start = time.process_time()  # this process's CPU: other load on the machine adds none
    assert score_sudoku(tagged(answer)) == 0.0
    assert time.process_time() - start < 0.05  # measured at most 3.5 ms (the 1 MB answer)


def test_nine_by_nine():
    grid = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
    assert score_sudoku(tagged(grid), puzzle=grid[:40] + "0" * 41) == 1.0
    assert score_sudoku(tagged(grid[::-1]), puzzle="0" * 81) == 1.0  # rotated 180 degrees: still valid
    assert score_sudoku(tagged(grid[1] + grid[0] + grid[2:]), puzzle="0" * 81) == 0.0  # two cells swapped


def test_builtin_names():
    assert rewards.get("countdown") is countdown and rewards.get("sudoku") is sudoku


def test_tiny_puzzle_data_is_solved_by_its_own_completions_and_splits_are_disjoint():
    assert len(sudoku_grids()) == 288
    assert len(countdown_space()) == 15126
    rows = problems(600, seed=0, task="countdown")
    completions = [r["completion"] for r in rows]
    assert (
        countdown(None, completions, numbers=[r["numbers"] for r in rows], target=[r["target"] for r in rows])
        == [1.0] * 600
    )
    rows = problems(600, seed=0, task="sudoku")
    puzzles = [r["puzzle"] for r in rows]
    assert sudoku(None, [tagged(r["solution"]) for r in rows], puzzle=puzzles) == [1.0] * 600
    teacher = (
        sum(sudoku(None, [r["completion"] for r in rows], puzzle=puzzles)) / 600
    )  # the weak solver's answers
    assert 0.5 < teacher < 0.66
    for task in ("countdown", "sudoku"):
        assert len({r["question"] for r in problems(600, seed=0, task=task)}) == 600


def test_greedy_fill_ignores_boxes():
    assert greedy_fill("1030001020030300") == "1234341221434321"  # solvable by rows and columns alone
    assert not sudoku_valid(
        [int(c) for c in greedy_fill("0" * 16)], [0] * 16
    )  # 1234/2143/3412/4321: boxes repeat


def test_puzzle_splits_are_disjoint_and_only_sft_has_answers(tmp_path):
    paths = write_puzzle_task(str(tmp_path), "sudoku", {"sft": 30, "test": 20, "train": 50})
    rows = {name: [json.loads(line) for line in open(path)] for name, path in paths.items()}
    assert [len(rows[k]) for k in ("sft", "test", "train")] == [30, 20, 50]
    questions = [{r["question"] for r in part} for part in rows.values()]
    assert sum(map(len, questions)) == len(set.union(*questions)) == 100
    assert "completion" in rows["sft"][0] and not {"completion", "solution"} & set(
        rows["train"][0] | rows["test"][0]
    )
