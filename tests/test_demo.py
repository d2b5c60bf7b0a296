"""A shortened `make demo`: the committed tiny model, GRPO on CPU, reward rises."""

import json
import os

import pytest

from align.demo import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_short_demo_raises_reward(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "demo"
    assert main(["--output", str(out), "--limit", "100", "--max_steps", "30", "--logging_steps", "5"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert set(result) == {"before", "after"} and all(0.0 <= v <= 1.0 for v in result.values())
    history = json.load(open(out / "grpo" / "trainer_state.json"))["log_history"]
    rewards = [h["reward"] for h in history if "reward" in h]
    assert len(rewards) == 6 and rewards[-1] > rewards[0] + 0.03
    report = (out / "report" / "report.md").read_text()
    assert "| before |" in report and "| after |" in report and "| GRPO | 30 |" in report
    assert (out / "report" / "tiny.png").exists() and (out / "report" / "training.png").exists()
