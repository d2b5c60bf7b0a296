"""Entry point of a math grading worker (started by ``rewards.math.GradingPool``; not for direct use).

Runs as ``python -c "...; main()"`` in a fresh interpreter, so it never imports the caller's program
(a training script, a notebook, an unguarded script). Protocol, one JSON object per line:
it prints ``{"ready": true}`` once math-verify is imported and warm, then reads
``{"gold": str, "pred": str | null}`` lines from stdin and answers each with ``{"score": 1.0 | 0.0 | null}``
or ``{"error": "..."}``. Only the protocol goes to the real stdout; anything a library prints is sent to
stderr. Time limits are the parent's job (it watches this process's CPU time and kills it).
"""

from __future__ import annotations

import json
import os
import sys


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    from rewards.math import grade, raw_math_verify

    modes = {"grade": grade, "math_verify": raw_math_verify}

    grade("1", "1")  # import sympy / math-verify and warm their caches before saying ready
    protocol.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        job = json.loads(line)
        try:
            reply = {"score": modes[job.get("mode", "grade")](job["gold"], job["pred"])}
        except Exception as exc:  # a deterministic failure of this answer, reported to the parent
            reply = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        protocol.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
