"""The tiny AR baseline: a Qwen2-architecture causal LM on the tiny task, for ``align eval --endpoint``.

    python -m demos.tiny_ar recipes/tiny-ar        (make tiny-ar-model; ~0.5M parameters, a few minutes on CPU)

The same data (``recipes/tiny/data``), tokenizer and answer format as the tiny diffusion model: the prompt
``"<|bos|>456+789="``, the target ``"<answer>1245</answer><|eos|>"``, trained with next-token cross-entropy
on the target tokens only (AdamW, seeded). Its config is a stock ``Qwen2ForCausalLM`` (head_dim 64, tied
embeddings), so that transformers and vLLM both load it; ``generation_config.json`` says greedy with the
EOS id. ``held_out_accuracy`` scores it with transformers' ``generate`` on the held-out split.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from demos.tiny import VOCAB, build_tokenizer


def ar_config():
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(VOCAB), hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=64, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=VOCAB.index("<|bos|>"), eos_token_id=VOCAB.index("<|eos|>"), pad_token_id=VOCAB.index("<|eos|>"),
    )  # fmt: skip


def _rows(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def encode(tokenizer, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, labels) [N, L], right-padded; labels -100 except the target and its EOS."""
    ids, labels = [], []
    for r in rows:
        prompt = tokenizer(r["question"])["input_ids"]  # BOS + question
        target = tokenizer(r["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids.append(prompt + target)
        labels.append([-100] * len(prompt) + target)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    attn = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    return (torch.tensor([x + [pad] * (width - len(x)) for x in ids]), attn,
            torch.tensor([y + [-100] * (width - len(y)) for y in labels]))  # fmt: skip


@torch.no_grad()
def greedy_completions(model, tokenizer, questions: list[str], max_new_tokens: int = 8) -> list[list[int]]:
    """transformers' greedy ``generate`` for each question (left-padded batch): the new token ids, cut after EOS."""
    tokenizer.padding_side = "left"
    enc = tokenizer(questions, return_tensors="pt", padding=True)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    new = out[:, enc["input_ids"].shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    return [row[: row.index(eos) + 1] if eos in row else row for row in new]


def held_out_accuracy(model, tokenizer, rows: list[dict]) -> float:
    texts = tokenizer.batch_decode(greedy_completions(model, tokenizer, [r["question"] for r in rows]),
                                   skip_special_tokens=True)  # fmt: skip
    return sum(f"<answer>{r['answer']}</answer>" in t for r, t in zip(rows, texts, strict=True)) / len(rows)


def train(folder: str, data: str = "recipes/tiny/data", steps: int = 3000, batch_size: int = 256,
          lr: float = 2e-3, warmup: int = 100, num_train: int = 200000, seed: int = 0) -> float:  # fmt: skip
    """Train and save ``folder/model`` (AdamW, ``warmup`` linear steps then cosine to 0) on ``num_train`` fresh
    problems of the tiny task (``demos.tiny.problems``, seeded; the held-out questions left out: 20,000 rows
    let it memorise, 6.8% held-out after 2,000 steps); returns the held-out accuracy (greedy, transformers)."""
    import math

    from transformers import GenerationConfig, Qwen2ForCausalLM

    from demos.tiny import problems

    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    model = Qwen2ForCausalLM(ar_config())
    test_rows = _rows(os.path.join(data, "test.jsonl"))
    held_out = {r["question"] for r in test_rows}
    train_rows = [r for r in problems(num_train, seed + 1) if r["question"] not in held_out]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / steps))))  # fmt: skip
    order = torch.Generator().manual_seed(seed)
    all_ids, all_attn, all_labels = encode(tokenizer, train_rows)
    model.train()
    for step in range(steps):
        picks = torch.randint(len(train_rows), (batch_size,), generator=order)
        loss = model(input_ids=all_ids[picks], attention_mask=all_attn[picks], labels=all_labels[picks]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 500 == 0:
            print(f"step {step + 1}: loss {loss.item():.4f}", file=sys.stderr)
    model.eval()
    model.generation_config = GenerationConfig(do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, max_new_tokens=8)  # fmt: skip
    out = os.path.join(folder, "model")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return held_out_accuracy(model, tokenizer, test_rows)


if __name__ == "__main__":
    accuracy = train(*sys.argv[1:2])
    print(json.dumps({"held_out_accuracy": accuracy}))
