"""The embedded tiny task: 3-digit addition in a character-level vocabulary, answered in ``<answer>`` tags.

A prompt is ``"456+789="`` and the reference completion ``"<answer>1245</answer>"`` followed by EOS
padding, so ``math_accuracy`` (which reads ``<answer>``) and ``answer_tag_format`` score it unchanged.
``build_tokenizer`` writes a standard ``PreTrainedTokenizerFast`` (one token per character, the two tags
and ``<|bos|>``/``<|eos|>``/``<|mask|>`` as single tokens) and ``tiny_config`` the LLaDA-architecture
config of the embedded model (~0.9M parameters). ``write_task`` writes the fixed train / held-out split as
JSONL with ``question`` / ``answer`` / ``completion`` columns. Not covered: anything beyond this task.
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


def problems(n: int, seed: int) -> list[dict]:
    """n distinct addition problems ``a+b=`` with a, b in [100, 999]."""
    rng = random.Random(seed)
    seen, rows = set(), []
    while len(rows) < n:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        if (a, b) in seen:
            continue
        seen.add((a, b))
        rows.append(
            {"question": f"{a}+{b}=", "answer": str(a + b), "completion": f"<answer>{a + b}</answer>"}
        )
    return rows


def write_task(folder: str, num_train: int = 20000, num_test: int = 500, seed: int = 0) -> dict[str, str]:
    """Write ``train.jsonl`` and ``test.jsonl`` (disjoint problems) under folder; returns their paths."""
    rows = problems(num_train + num_test, seed)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, part in (("train", rows[:num_train]), ("test", rows[num_train:])):
        paths[name] = os.path.join(folder, f"{name}.jsonl")
        with open(paths[name], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in part)
    return paths


def prepare(folder: str = "recipes/tiny") -> None:
    """Write the task data and the untrained starting point (tokenizer + config) that ``align sft`` reads."""
    write_task(os.path.join(folder, "data"))
    init = os.path.join(folder, "init")
    build_tokenizer().save_pretrained(init)
    tiny_config().to_json_file(os.path.join(init, "config.json"))


if __name__ == "__main__":
    import sys

    prepare(*sys.argv[1:])
