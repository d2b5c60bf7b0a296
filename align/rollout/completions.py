"""The rollout sample as TRL shows it: ``OUTPUT_DIR/completions.jsonl`` (one row per sample and logging
step), a console table (rich), a wandb table and a TensorBoard text table; rows logged after a checkpoint
are dropped when a run resumes from it (the resumed run logs them again)."""

from __future__ import annotations

import json
import math
import os
from itertools import islice

FILE = "completions.jsonl"


def keep_samples(
    rows, prompt_column: str, texts, per_func, rewards, advantages, reward_names, keep: int, looping=None
) -> list:
    """The first ``keep`` samples of a rollout as logged rows (prompt, completion, reward, advantage, each
    function's reward, None where it returned None; ``loop``: whether it loops, rewards/loops.py)."""
    looping = looping if looping is not None else [None] * len(texts)
    return [
        {
            "prompt": str(r[prompt_column]),
            "completion": t,
            "reward": float(rw),
            "advantage": float(a),
            **{n: _num(v) for n, v in zip(reward_names, pf.tolist())},
            **({} if lp is None else {"loop": bool(lp)}),
        }
        for r, t, pf, rw, a, lp in islice(zip(rows, texts, per_func, rewards, advantages, looping), keep)
    ]


def log_completions(
    samples: list[dict], step: int, output_dir: str, reward_names: list[str], report_to, tb_writer=None
) -> None:
    from transformers.utils import is_rich_available
    from trl.trainer.utils import print_prompt_completions_sample

    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, FILE), "a") as f:
        f.writelines(json.dumps({"step": step, **sample}) + "\n" for sample in samples)
    rewards = {name: [s[name] for s in samples] for name in reward_names}
    if samples and "loop" in samples[0]:  # the table marks looping samples (1 = loops)
        rewards["loop"] = [float(s["loop"]) for s in samples]
    prompts, texts = [s["prompt"] for s in samples], [s["completion"] for s in samples]
    if is_rich_available():
        print_prompt_completions_sample(prompts, texts, rewards, [s["advantage"] for s in samples], step)
    if "wandb" in (report_to or []):
        import wandb

        if wandb.run is not None:
            import pandas as pd

            wandb.log(
                {"completions": wandb.Table(dataframe=pd.DataFrame([{"step": step, **s} for s in samples]))}
            )
    if tb_writer is not None:
        tb_writer.add_text("completions", completions_markdown(samples, reward_names), step)


def drop_after(output_dir: str, checkpoint: str) -> None:
    """completions.jsonl rows logged after ``checkpoint`` (and lines cut by a kill) are removed."""
    path = os.path.join(output_dir, FILE)
    state = os.path.join(checkpoint, "trainer_state.json")
    if not (os.path.exists(path) and os.path.exists(state)):
        return
    with open(state) as f:
        step = json.load(f)["global_step"]
    with open(path) as f:
        kept = [line for line in f if line.strip() and _complete_row_at_or_before(line, step)]
    with open(path, "w") as f:
        f.writelines(kept)


def completions_markdown(samples: list[dict], reward_names: list[str]) -> str:
    """A Markdown table of the rollout sample (prompt, completion, each reward, advantage)."""

    def cell(v) -> str:
        if v is None:
            return "-"
        return f"{v:.3f}" if isinstance(v, float) else str(v).replace("|", "\\|").replace("\n", "<br>")

    columns = ["prompt", "completion", *reward_names, "advantage"]
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    rows += ["| " + " | ".join(cell(s.get(c)) for c in columns) + " |" for s in samples]
    return "\n".join(rows)


def _complete_row_at_or_before(line: str, step: int) -> bool:
    try:
        return json.loads(line)["step"] <= step
    except (json.JSONDecodeError, KeyError):  # a line cut by the kill
        return False


def _num(v: float) -> float | None:
    return None if math.isnan(v) else v
