"""Trainer callbacks every entry point adds (``align train``, ``align sft``, ``align dpo``)."""

from __future__ import annotations

import time

from transformers import TrainerCallback


class WallClock(TrainerCallback):
    """Adds ``wall_s`` (training seconds, evaluation excluded) to every log entry and stops training once
    ``max_time_s`` seconds of this process's training have passed (checked after each optimizer step, so the
    step in progress finishes; that stop is logged as ``max_time/elapsed_s`` beside the elapsed seconds at the
    step before, ``max_time/previous_step_elapsed_s``). A resumed run continues ``wall_s`` from the checkpoint's last logged value
    (the seconds between that log and the save are not counted), so time curves never run backwards. A
    trainer's ``evaluate`` reports its own duration through ``exclude``."""

    def __init__(self, max_time_s: float | None = None):
        self.max_time_s, self.start, self.excluded_s, self.offset_s = max_time_s, None, 0.0, 0.0
        self.previous_step_s = 0.0

    def elapsed_s(self) -> float:
        return 0.0 if self.start is None else time.monotonic() - self.start - self.excluded_s

    def exclude(self, seconds: float) -> None:
        self.excluded_s += seconds

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        self.offset_s = max((h["wall_s"] for h in state.log_history if "wall_s" in h), default=0.0)

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = self.elapsed_s()
        if self.max_time_s is not None and elapsed >= self.max_time_s:
            control.should_training_stop = True
            state.log_history.append(
                {
                    "step": state.global_step,
                    "wall_s": round(self.offset_s + elapsed, 3),
                    "max_time/elapsed_s": round(elapsed, 3),
                    "max_time/previous_step_elapsed_s": round(self.previous_step_s, 3),
                }
            )
        self.previous_step_s = elapsed
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.log_history:  # the Trainer appended a copy of logs before calling us
            state.log_history[-1]["wall_s"] = round(self.offset_s + self.elapsed_s(), 3)
