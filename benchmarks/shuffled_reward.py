"""Control rewards: a verifier's scores randomly permuted within each batch.

Same reward rate, no information about which completion was right; if GRPO's gain came from anything
but the reward (the KL-free update itself, the format reward, more sampling) it would show here too:

    align train --config recipes/tiny/grpo.yaml --output_dir runs/control --report_to none \
      --reward_funcs benchmarks/shuffled_reward.py:shuffled_accuracy answer_tag_format
    align eval --model runs/control --tasks tiny=recipes/tiny/data/test.jsonl --protocol tiny \
      --output runs/control-eval --dtype float32

``shuffled_countdown`` and ``shuffled_sudoku`` do the same for the puzzle verifiers
(``python -m demos.rl_vs_sft`` runs them as its control arm), ``shuffled_code_execution`` for the sandboxed
tests (``python -m demos.code``'s control).
"""

import random

from rewards.code import code_execution
from rewards.math import math_accuracy
from rewards.puzzles import countdown, sudoku

_rng = random.Random(0)


def _shuffled(verifier):
    def shuffled(prompts, completions, **columns):
        scores = verifier(prompts, completions, **columns)
        _rng.shuffle(scores)
        return scores

    shuffled.__name__ = f"shuffled_{verifier.__name__}"
    return shuffled


shuffled_accuracy = _shuffled(math_accuracy)
shuffled_countdown = _shuffled(countdown)
shuffled_sudoku = _shuffled(sudoku)
shuffled_code_execution = _shuffled(code_execution)
