"""A reward call that does not return stops the run in one line instead of hanging it."""

from __future__ import annotations

import os
import sys
import threading
import time


class RewardWatchdog:
    """Stops the process when one reward call runs past ``timeout_s``.

    The reward runs in the calling (main) thread as before, so rewards that use ``signal`` keep working;
    a watchdog thread waits beside it. A call stuck in C code or a lock cannot be interrupted from
    Python, so on timeout the watchdog finds which sample hangs (each sample called alone, all at once,
    for up to 30 s), prints one line and ends the process with status 1 (``os._exit``: the stuck call
    would block a normal exit). Checkpoints already on disk are untouched; under ``accelerate launch``
    the launcher stops the other ranks.
    """

    PROBE_S = 30.0

    def __init__(self, fn, name, prompts, texts, ids, columns, state, timeout_s: float, exit=os._exit):
        self.call = (fn, prompts, texts, ids, columns, state)
        self.name, self.timeout_s, self.exit = name, timeout_s, exit
        self.done = threading.Event()

    def __enter__(self):
        self.thread = threading.Thread(target=self._watch, name=f"reward-watchdog-{self.name}", daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        return False

    def _watch(self) -> None:
        if self.done.wait(self.timeout_s):
            return
        culprit = self._hanging_sample()
        fn, prompts, texts = self.call[:3]
        where = (
            f"; on its own, sample {culprit} also did not return (prompt {str(prompts[culprit])[-120:]!r}, "
            f"completion {str(texts[culprit])[:120]!r})"
            if culprit is not None
            else "; each sample on its own returned, the batch did not"
        )
        if self.done.is_set():  # it returned while we looked: not a hang after all
            return
        print(
            f"align train: reward function {self.name!r} did not return within {self.timeout_s:g} s for a batch "
            f"of {len(texts)} completions{where}. Stopped; checkpoints already written are kept (resume with "
            "--resume_from_checkpoint true). Raise reward_timeout_s if it is only slow.",
            file=sys.stderr,
            flush=True,
        )
        self.exit(1)

    def _hanging_sample(self) -> int | None:
        fn, prompts, texts, ids, columns, state = self.call
        probes = []
        for i in range(min(len(texts), 64)):
            kwargs = {k: v[i : i + 1] for k, v in columns.items()}
            probe = threading.Thread(
                target=_quietly,
                daemon=True,
                args=(
                    fn,
                    dict(
                        prompts=prompts[i : i + 1],
                        completions=texts[i : i + 1],
                        completion_ids=ids[i : i + 1],
                        trainer_state=state,
                        **kwargs,
                    ),
                ),
            )
            probe.start()
            probes.append(probe)
        deadline = time.monotonic() + min(self.PROBE_S, self.timeout_s)
        for probe in probes:
            probe.join(max(0.0, deadline - time.monotonic()))
        return next((i for i, probe in enumerate(probes) if probe.is_alive()), None)


def _quietly(fn, kwargs) -> None:
    try:
        fn(**kwargs)
    except BaseException:  # noqa: BLE001 - a probe only asks whether the call returns
        pass
