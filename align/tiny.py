"""The embedded tiny task: 3-digit addition in a character-level vocabulary, answered in ``<answer>`` tags.

A prompt is ``"456+789="`` and the reference completion ``"<answer>1245</answer>"`` followed by EOS
padding, so ``math_accuracy`` (which reads ``<answer>``) and ``answer_tag_format`` score it unchanged.
``build_tokenizer`` writes a standard ``PreTrainedTokenizerFast`` (one token per character, the two tags
and ``<|bos|>``/``<|eos|>``/``<|mask|>`` as single tokens) and ``tiny_config`` the LLaDA-architecture
config of the embedded model (~0.9M parameters). ``write_task`` writes the fixed train / held-out split as
JSONL with ``question`` / ``answer`` / ``completion`` columns.

The *long* variant (``--task long``, committed under ``recipes/tiny-long``) exists to measure the fast
decoding modes on a trained model with a long answer: 4-digit addition worked column by column, right to
left, each column written ``a+b+c=ss`` (digits, incoming carry, two-digit sum), then the tagged result.
``"4567+8912="`` -> ``"7+2+0=096+1+0=075+9+0=144+8+1=13<answer>13479</answer>"``: 39 tokens, where
every column depends on the one before it through its carry. Not covered: anything beyond these tasks.
"""

from __future__ import annotations

import json
import os
import random

from align.models import LLaDAConfig

SPECIALS = ["<|bos|>", "<|eos|>", "<|mask|>", "<answer>", "</answer>"]
CHARS = list("0123456789+=")
VOCAB = SPECIALS + CHARS


def build_tokenizer():
    """The tiny task's tokenizer: BOS prepended, pad = EOS, left padding, ``decode`` joins characters."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<|mask|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.add_special_tokens(SPECIALS[:3])
    core.add_tokens(SPECIALS[3:])
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A $B", special_tokens=[("<|bos|>", 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|eos|>",
        mask_token="<|mask|>", padding_side="left", chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
    )  # fmt: skip


def tiny_config(**overrides) -> LLaDAConfig:
    fields = dict(
        d_model=128, n_heads=4, n_layers=4, mlp_hidden_size=384, vocab_size=len(VOCAB), max_sequence_length=64,
        rope_theta=10000.0, mask_token_id=VOCAB.index("<|mask|>"), eos_token_id=VOCAB.index("<|eos|>"),
        pad_token_id=VOCAB.index("<|eos|>"), bos_token_id=VOCAB.index("<|bos|>"), weight_tying=True,
    )  # fmt: skip
    fields.update(overrides)
    return LLaDAConfig(**fields)


TASKS = ("short", "long")


def worked_sum(a: int, b: int) -> str:
    """Column-by-column working of a + b, right to left: ``a_i+b_i+carry=ss`` per column (no separators)."""
    da, db = str(a)[::-1], str(b)[::-1]
    carry, columns = 0, []
    for x, y in zip(da, db, strict=True):
        total = int(x) + int(y) + carry
        columns.append(f"{x}+{y}+{carry}={total:02d}")
        carry = total // 10
    return "".join(columns)


def problems(n: int, seed: int, task: str = "short") -> list[dict]:
    """n distinct addition problems ``a+b=``: 3-digit operands (short) or 4-digit with working (long)."""
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}.")
    low, high = (100, 999) if task == "short" else (1000, 9999)
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n:
        a, b = rng.randint(low, high), rng.randint(low, high)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        working = worked_sum(a, b) if task == "long" else ""
        rows.append(
            {
                "question": f"{a}+{b}=",
                "answer": str(a + b),
                "completion": f"{working}<answer>{a + b}</answer>",
            }
        )
    return rows


def write_task(
    folder: str, num_train: int = 20000, num_test: int = 500, seed: int = 0, task: str = "short"
) -> dict[str, str]:
    """Write ``train.jsonl`` and ``test.jsonl`` (disjoint problems) under folder; returns their paths."""
    rows = problems(num_train + num_test, seed, task)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, part in (("train", rows[:num_train]), ("test", rows[num_train:])):
        paths[name] = os.path.join(folder, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return paths


def prepare(folder: str = "recipes/tiny", task: str = "short") -> None:
    """Write the task data and the untrained starting point (tokenizer + config) that ``align sft`` reads."""
    write_task(os.path.join(folder, "data"), num_train=20000 if task == "short" else 50000, task=task)
    init = os.path.join(folder, "init")
    build_tokenizer().save_pretrained(init)
    tiny_config().to_json_file(os.path.join(init, "config.json"))


if __name__ == "__main__":
    import sys

    prepare(*sys.argv[1:])
