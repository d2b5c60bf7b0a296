"""Preference optimisation on the embedded tiny model: its own right and wrong answers as pairs, then VRPO.

    held-out accuracy (align eval) -> sample 8 answers per training question from the tiny model at T = 1,
    keep one correct and one wrong answer per question as (chosen, rejected) -> align dpo with
    recipes/tiny/dpo.yaml -> held-out accuracy -> table -> {"before": ..., "after": ..., "pairs": ...}

    python -m demos.dpo [--output runs/demo-dpo --questions 1024] [--field value ...]

The pairs come from the same model the run starts from (on-policy preference data, as an online DPO
round would build them); the extra ``--field value`` pairs go to ``align dpo``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

from align.cli import main as align
from demos.grpo import evaluate

MODEL = "recipes/tiny/model"
TRAIN = "recipes/tiny/data/train.jsonl"


def build_pairs(path: str, questions: int, samples: int = 8, seed: int = 0) -> int:
    """Write (prompt, chosen = a correct answer, rejected = a wrong one) for the first ``questions`` training
    questions that got both among ``samples`` draws; returns how many pairs were written."""
    import torch

    from align.data import encode_prompts
    from align.models import family_spec, load_model, load_tokenizer
    from align.sampling import SamplerSettings, generate, truncate_at_stop

    tokenizer, model = load_tokenizer(MODEL), load_model(MODEL, dtype="float32").eval()
    spec = family_spec(model, tokenizer)
    rows = [json.loads(line) for line in open(TRAIN)][:questions]
    enc = encode_prompts(tokenizer, [r["question"] for r in rows], max_length=16, use_chat_template=False)
    ids = enc["input_ids"].repeat_interleave(samples, 0)
    settings = SamplerSettings(gen_length=8, steps=8, block_length=8, temperature=1.0)
    out = generate(model, ids, None, settings, spec=spec, generator=torch.Generator().manual_seed(seed))
    kept, _ = truncate_at_stop(out.completion_ids, spec.stop_token_ids, spec.eos_token_id)
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    written = 0
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            answers = texts[i * samples : (i + 1) * samples]
            right = [t for t in answers if re.fullmatch(rf"<answer>{row['answer']}</answer>", t)]
            wrong = [t for t in answers if not re.fullmatch(rf"<answer>{row['answer']}</answer>", t)]
            if right and wrong:
                f.write(
                    json.dumps({"prompt": row["question"], "chosen": right[0], "rejected": wrong[0]}) + "\n"
                )
                written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m demos.dpo")
    parser.add_argument("--output", default="runs/demo-dpo")
    parser.add_argument("--config", default="recipes/tiny/dpo.yaml")
    parser.add_argument("--questions", type=int, default=1024, help="training questions sampled for pairs")
    parser.add_argument("--limit", type=int, default=None, help="held-out questions (default: all 500)")
    args, overrides = parser.parse_known_args(argv)
    start = time.monotonic()
    os.makedirs(args.output, exist_ok=True)
    pairs = os.path.join(args.output, "pairs.jsonl")
    count = build_pairs(pairs, args.questions)
    before = evaluate(MODEL, os.path.join(args.output, "before"), args.limit)
    run = os.path.join(args.output, "dpo")
    code = align(["dpo", "--config", args.config, "--dataset_files", pairs, "--output_dir", run, *overrides])
    if code != 0:
        raise SystemExit("align dpo failed")
    after = evaluate(run, os.path.join(args.output, "after"), args.limit)
    minutes = (time.monotonic() - start) / 60
    print("\n| model | held-out accuracy |\n|---|---|")
    print(
        f"| {MODEL} (SFT) | {100 * before:.1f}% |\n| after DPO on {count} self-generated pairs | {100 * after:.1f}% |"
    )
    print(f"{minutes:.1f} min")
    print(json.dumps({"before": before, "after": after, "pairs": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
