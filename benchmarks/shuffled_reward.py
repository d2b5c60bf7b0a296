"""Control reward for the demo: math_accuracy's scores randomly permuted within each batch.

Same reward rate, no information about which completion was right; if GRPO's gain came from anything
but the reward (the KL-free update itself, the format reward, more sampling) it would show here too:

    align train --config recipes/tiny/grpo.yaml --output_dir runs/control --report_to none \
      --reward_funcs benchmarks/shuffled_reward.py:shuffled_accuracy answer_tag_format
    align eval --model runs/control --tasks tiny=recipes/tiny/data/test.jsonl --protocol tiny \
      --output runs/control-eval --dtype float32
"""

import random

from rewards.math import math_accuracy

_rng = random.Random(0)


def shuffled_accuracy(prompts, completions, **columns):
    scores = math_accuracy(prompts, completions, **columns)
    _rng.shuffle(scores)
    return scores
