"""`make demo` as the README reports it: the committed tiny model, GRPO on CPU, reward and held-out
accuracy rise, and the figures the README quotes are the ones the demo prints."""

import json
import os
import re

import pytest

from demos.grpo import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_demo_prints_the_figures_the_readme_quotes(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    out = tmp_path / "demo"
    assert main(["--output", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    readme = open(os.path.join(REPO, "README.md")).read()
    quoted = re.search(r"The last line the demo prints is `(\{.*?\})`", readme)
    assert quoted, "the README no longer quotes the demo's last line"
    result = json.loads(printed[-1])
    assert result == json.loads(quoted.group(1)), (result, quoted.group(1))
    rows = [line for line in printed if line.startswith(("| recipes/tiny/model (SFT) |", "| after GRPO ("))]
    assert len(rows) == 2 and all(row in readme for row in rows), rows
    assert result["after"] > result["before"] + 0.1
    history = json.load(open(out / "grpo" / "trainer_state.json"))["log_history"]
    rewards = [h["reward"] for h in history if "reward" in h]
    assert len(rewards) == 24 and sum(rewards[-4:]) / 4 > sum(rewards[:4]) / 4 + 0.05
    report = (out / "report" / "report.md").read_text()
    assert "| before |" in report and "| after |" in report and "| GRPO | 120 |" in report
    assert (out / "report" / "tiny.png").exists() and (out / "report" / "training.png").exists()


def test_the_demo_goes_on_from_the_checkpoint_a_ctrl_c_left(tmp_path, capsys, monkeypatch):
    """A demo stopped during GRPO (SIGINT saves a checkpoint and writes no final model): the same command
    resumes from that checkpoint instead of starting over."""
    import shutil

    from align.cli import main as align

    monkeypatch.chdir(REPO)
    out = tmp_path / "demo"
    grpo = out / "grpo"
    common = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1"]
    assert align(["train", "--config", "recipes/tiny/grpo.yaml", "--output_dir", str(grpo), "--report_to", "none",
                  "--log_completions", "false", *common[:1], "1", *common[2:]]) == 0  # fmt: skip
    for name in os.listdir(grpo):  # what a stop after step 1 leaves: the checkpoint, no final model
        if not name.startswith("checkpoint-") and not name.startswith("."):
            (shutil.rmtree if (grpo / name).is_dir() else os.remove)(grpo / name)
    first = json.load(open(grpo / "checkpoint-1" / "trainer_state.json"))["log_history"]
    assert main(["--output", str(out), "--limit", "8", *common]) == 0
    history = json.load(open(grpo / "trainer_state.json"))["log_history"]
    assert [h["step"] for h in history if "reward" in h] == [1, 2]
    assert [h["reward"] for h in history if h.get("step") == 1 and "reward" in h] == [
        h["reward"] for h in first if "reward" in h
    ]
