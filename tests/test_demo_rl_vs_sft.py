"""A shortened ``make demo-rl-vs-sft``: three arms with the same training-time budget from one checkpoint."""

import json
import os

import pytest
import torch

from demos.rl_vs_sft import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sudoku"])
def test_three_arms_spend_the_same_budget_and_are_scored_along_the_way(task, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "demo"
    assert main(["--task", task, "--budget-s", "6", "--limit", "40", "--output", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"task", "start", "sft", "grpo", "control"}
    curves = json.load(open(out / task / "curves.json"))
    for arm in curves["arms"]:
        # stopped by the budget at the first step that ended past it (a load-independent check: the seconds
        # the stop rule compared, not a window on the wall clock)
        assert arm["previous_step_elapsed_s"] < 6.0 <= arm["stop_elapsed_s"] <= arm["wall_s"] + 1e-3
        assert arm["steps"] >= 1
    for label, points in curves["curves"].items():
        assert points[0] == [0.0, result["start"]] and len(points) >= 2, label
    # the SFT arm trained on the solved problems, the GRPO arms on the unsolved prompt pool
    sft_args = json.load(open(out / task / "sft" / "trainer_state.json"))
    assert sft_args["global_step"] >= 1
    control = torch.load(out / task / "control" / "training_args.bin", weights_only=False)
    assert control.reward_funcs[0] == f"benchmarks/shuffled_reward.py:shuffled_{task}"
    assert torch.load(out / task / "grpo" / "training_args.bin", weights_only=False).reward_funcs[0] == task
    assert (out / task / "accuracy_vs_wall_clock.png").stat().st_size > 10_000
