"""``--protocol illada`` against an independent transcription of iLLaDA's evaluation code.

The reference below is written in this test from the authors' ``var_generate``, ``generate`` and
``apply_end_think_logit_boost`` (the ``generate.py`` shipped with ML-GSAI/LLaDA PR #134's evaluation code) and
``eval_illada.py``'s ``generate_until``: one unpadded prompt at a time, the canvas grown one block of masks at
a time, one token per step, the boost ``100 * progress ** power`` at the block's leftmost masked position on the
next piece of a multi-token ``</think>``, the text decoded with special tokens after each block and checked for
the stop strings and the EOS text, the budget ``min(gen_length, max_length - prompt)`` in whole blocks, and
the final text cut before each stop string. The project's path is the one ``align eval`` takes: a batch of
prompts of different lengths, left-padded, decoded together (``DiffusionSource.complete``).

The model is iLLaDA-shaped (mask id 5, grouped-query attention, tied embeddings) and its tokenizer writes
``</think>`` as eight tokens. Its mask-token logit is pushed far down in its forward, so that neither side
ever proposes the mask token (the project's sampler never emits it; the official one could).
"""

import pytest
import torch
import torch.nn.functional as F

from align.eval.runner import DiffusionSource, process_state
from align.eval.tasks import Protocol
from align.models import LLaDAConfig, LLaDAModelLM, family_spec

MASK = 5
SPECIALS = ["<|bos|>", "<|eos|>", "<|r2|>", "<|r3|>", "<|r4|>", "<|mdm_mask|>"]
CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789 :#<>/\n")
BLOCK = 8
PROMPTS = ["ab", "the quick brown fox 7", "q", "hello world: 12 # x"]


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = SPECIALS + CHARS
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="<|r2|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.add_special_tokens(SPECIALS)
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|eos|>", mask_token="<|mdm_mask|>", padding_side="left")  # fmt: skip


class NoMaskLM(LLaDAModelLM):
    """The tiny model with its mask-token logit pushed to -1e4 (a property of the model both sides share)."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits[..., MASK] = -1e4
        return out


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    config = LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, vocab_size=len(tok),
                         max_sequence_length=256, weight_tying=True, mask_token_id=MASK, eos_token_id=1,
                         pad_token_id=1, bos_token_id=0, rope_theta=10000.0)  # fmt: skip
    torch.manual_seed(3)
    model = NoMaskLM(config).eval()
    with torch.no_grad():  # weights 4x their initial scale: varied text instead of one repeated character
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    assert tok.encode("</think>", add_special_tokens=False) == [
        tok.convert_tokens_to_ids(c) for c in "</think>"
    ]
    return model, tok


# ---------------------------------------------------------------- the reference, from the authors' code


def _contains(tokens: list[int], seq: list[int]) -> bool:
    return any(tokens[i : i + len(seq)] == seq for i in range(len(tokens) - len(seq) + 1))


@torch.no_grad()
def reference_block(model, x, context_start, total, steps, seq, boost, power):
    """``generate`` called by ``var_generate`` on one block: B masks appended, ``steps`` steps."""
    x = torch.cat([x, torch.full((1, BLOCK), MASK, dtype=torch.long)], 1)
    start, end = x.shape[1] - BLOCK, x.shape[1]
    n = int((x[:, start:] == MASK).sum())
    transfer = [n // steps + (1 if i < n % steps else 0) for i in range(steps)]
    for i in range(steps):
        mask_index = x == MASK
        candidates = mask_index.clone()
        candidates[:, :start] = False
        candidates[:, end:] = False
        logits = model(x).logits
        if boost > 0 and candidates.any() and not _contains(x[0, context_start:].tolist(), seq):
            pos = int(candidates.int().argmax(dim=1))
            token = seq[0]
            for prefix in range(len(seq) - 1, 0, -1):
                if pos - context_start >= prefix and x[0, pos - prefix : pos].tolist() == seq[:prefix]:
                    token = seq[prefix]
                    break
            progress = (torch.tensor(pos - context_start + 1, dtype=torch.float64) / float(total)).clamp(0, 1)
            logits = logits.clone()
            logits[0, pos, token] += (boost * progress.pow(power)).to(logits.dtype)
        x0 = torch.argmax(logits, dim=-1)
        p = F.softmax(logits, dim=-1)
        x0_p = torch.gather(p, dim=-1, index=x0.unsqueeze(-1)).squeeze(-1)
        x0_p[:, end:] = -float("inf")
        x0 = torch.where(mask_index, x0, x)
        confidence = torch.where(mask_index, x0_p, torch.tensor(-float("inf")))
        _, chosen = torch.topk(confidence[0], k=transfer[i])
        x[0, chosen] = x0[0, chosen]
    return x


def reference_text(model, tok, prompt, gen_length, max_length, stops, boost, power):
    """``generate_until`` for one request: budget, ``var_generate``, decode, cut."""
    ids = torch.tensor([tok(prompt)["input_ids"]])  # the tokenizer's special tokens, as theirs
    length = ids.shape[1]
    budget = min(gen_length, max_length - length) // BLOCK * BLOCK
    stops = list(stops) + ([tok.eos_token] if tok.eos_token not in stops else [])
    seq = tok.encode("</think>", add_special_tokens=False)
    x = ids.clone()
    for _ in range(budget // BLOCK):
        x = reference_block(model, x, length, budget, BLOCK, seq, boost, power)
        text = tok.decode(x[0, length:], skip_special_tokens=False)
        if any(s in text for s in stops):
            break
    text = tok.decode(x[0, length:], skip_special_tokens=False)
    for s in stops:
        text = text.split(s)[0]
    return text, tok.decode(x[0, length:], skip_special_tokens=False)


# ---------------------------------------------------------------- the project's path


def ours(model, tok, gen_length, max_length, stops, boost, power):
    protocol = Protocol("illada-test", instruction=None, use_chat_template=False, gen_length=gen_length,
                        block_length=BLOCK, steps_per_token=1.0, variable_length=True, boost_token="</think>",
                        boost=boost, boost_power=power, stop_strings=tuple(stops), max_length=max_length,
                        encode_special_tokens=True, max_prompt_length=64)  # fmt: skip
    source = DiffusionSource(
        model, tok, family_spec(model, tok), state=process_state("cpu"), batch_size=len(PROMPTS)
    )
    return source.complete(PROMPTS, protocol)


def _stops_inside_and_at_the_end_of_a_block(texts):
    """Two stop strings the unstopped reference writes: one first seen inside a block, one ending a block."""
    inside = at_end = None
    for text in texts:
        for i in range(BLOCK, len(text) - 2):
            piece = text[i : i + 2]
            if inside is None and "<" not in piece and text.find(piece) == i and (i + 2) % BLOCK != 0:
                inside = piece
            for n in (1, 2, 3, 4):  # a piece whose first occurrence ends a block
                piece = text[i + 1 - n : i + 1]
                if (
                    at_end is None
                    and (i + 1) % BLOCK == 0
                    and text.find(piece) == i + 1 - n
                    and "<" not in piece
                ):
                    at_end = piece
    assert inside and at_end and inside != at_end, texts
    return [inside, at_end]


@pytest.mark.parametrize("power,max_length", [(3.0, 200), (1.0, 200), (3.0, 30)])
def test_illada_decoding_equals_the_authors_code_token_for_text(setup, power, max_length):
    """T = 0, prompts of different lengths in one batch: the same text as the official code gives each prompt
    alone, for both boost powers, stop strings met inside a block and at its end, and (max_length 30) budgets
    that differ per row (24, 8, 24, 8 tokens) and end before the boost has written all of ``</think>``."""
    model, tok = setup
    gen_length = 64
    free = [reference_text(model, tok, p, gen_length, max_length, [], 100.0, power)[1] for p in PROMPTS]
    stops = _stops_inside_and_at_the_end_of_a_block(free)
    want = [reference_text(model, tok, p, gen_length, max_length, stops, 100.0, power)[0] for p in PROMPTS]
    got = ours(model, tok, gen_length, max_length, stops, 100.0, power)
    assert got == want
    assert any(s in f for s in stops for f in free)  # the stop strings did cut
    assert got != [
        reference_text(model, tok, p, gen_length, max_length, stops, 0.0, power)[0] for p in PROMPTS
    ]
    if max_length == 30:
        assert sorted({len(tok(f, add_special_tokens=False)["input_ids"]) for f in free}) == [8, 24]
        assert any("</think>" not in f and "</" in f for f in free)  # the budget ran out mid-sequence
    else:
        assert any("</think>" in f for f in free)  # the boost wrote the whole multi-token sequence


def test_the_budget_and_a_missing_end_of_thinking_text_are_one_line(setup, tmp_path):
    model, tok = setup
    with pytest.raises(ValueError, match="less than one block of 8 tokens before max_length 20"):
        ours(model, tok, 64, 20, [], 100.0, 3.0)
    protocol = Protocol("x", instruction=None, use_chat_template=False, variable_length=True,
                        boost_token="</THINK>", boost=100.0)  # fmt: skip
    source = DiffusionSource(model, tok, family_spec(model, tok), state=process_state("cpu"))
    with pytest.raises(
        ValueError, match="boosts '</THINK>', which this tokenizer cannot write; pass --boost 0"
    ):
        source.logits_hook(protocol)


# ---------------------------------------------------------------- the tasks' prompts and answer extraction


def test_the_tasks_prompts_are_the_authors_yamls_rendered():
    from align.eval.tasks import PROTOCOLS, TASKS
    from rewards import benchdata

    illada = PROTOCOLS["illada"]
    gsm = TASKS["gsm8k"].user_message(
        {"question": "Tom has 3 apples.", "answer": "#### 3"}, illada.for_task("gsm8k")
    )
    assert gsm == ("Q: Tom has 3 apples.\n\nA: Solve the problem step by step. At the end, write the final answer on a "
                   "separate line in this exact format:\n#### <number>\n")  # fmt: skip
    math = TASKS["math500"].user_message(
        {"problem": "Compute $1+1$.", "answer": "2"}, illada.for_task("math500")
    )
    assert math == "Problem:\nCompute $1+1$.\n\nSolution:"
    row = next(r for r in benchdata.load("humaneval") if r["task_id"] == "HumanEval/0")
    text = TASKS["humaneval"].user_message(row, illada.for_task("humaneval"))
    assert text.startswith("Solve the following Python programming problem.\nKeep your reasoning concise and put it "
                           "inside <think>...</think>. You must close </think>, then output only the final Python "
                           "solution in a ```python code block.\n\n") and text.endswith(row["prompt"])  # fmt: skip
    mbpp = next(r for r in benchdata.load("mbpp") if r["task_id"] == 11)  # the full config's row
    text = TASKS["mbpp"].user_message(mbpp, illada.for_task("mbpp"))
    assert text.startswith(f"You are an expert Python programmer. Solve the task using the asserts as the ground "
                           f"truth.\n\nTask: {mbpp['text']}\n\nYour code must pass these tests:\n"
                           + "\n".join(mbpp["test_list"]) + "\n\nThink through the solution if needed.")  # fmt: skip
    assert text.endswith("Do not include tests or explanations between [BEGIN] and [DONE].")
    settings = {t: illada.for_task(t) for t in ("gsm8k", "math500", "humaneval", "mbpp")}
    assert {t: (p.gen_length, p.block_length, p.resolved_steps() // (p.gen_length // p.block_length), p.boost_power)
            for t, p in settings.items()} == {"gsm8k": (2048, 32, 32, 3.0), "math500": (4096, 32, 32, 3.0),
                                              "humaneval": (2048, 32, 32, 1.0), "mbpp": (2048, 16, 16, 3.0)}  # fmt: skip
    assert settings["gsm8k"].stop_strings == ("Q:", "</s>", "<|im_end|>") and settings[
        "mbpp"
    ].stop_strings == ("[DONE]",)


@pytest.mark.parametrize("completion,gold,extracted,score", [
    ("<think>2+3 is 5\n#### 4</think>\nSo the total is:\n#### 5", "... #### 5", "5", 1.0),
    ("<think>#### 7</think> The answer is 7.", "#### 7", "[invalid]", 0.0),  # only inside the thinking
    ("#### $1,234.00", "#### 1,234", "1234", 1.0),
    ("#### 3.50.", "#### 3.5", "3.5", 1.0),
    ("#### 12\n#### 13", "#### 12", "13", 0.0),  # the last one counts
    ("no final line", "#### 2", "[invalid]", 0.0),
])  # fmt: skip
def test_gsm8k_extraction_and_exact_match_as_their_utils(completion, gold, extracted, score):
    from align.eval.illada import gsm8k_answer, gsm8k_exact_match

    assert gsm8k_answer(completion) == extracted
    assert gsm8k_exact_match(extracted, gold) == score


def test_code_extraction_as_their_utils():
    from align.eval.illada import humaneval_code, mbpp_code, mbpp_entry_point

    think = "<think>try:\n```python\ndef add(a, b):\n    return a - b\n```\n</think>\n"
    assert humaneval_code(think + "Final:\n```python\ndef add(a, b):\n    return a + b\n```\n", "add") == (
        "def add(a, b):\n    return a + b\n"
    )
    assert (
        humaneval_code(think + "```py\ndef add(a, b):\n    return a + b", "add")
        == "def add(a, b):\n    return a + b"
    )
    assert humaneval_code("import math\ndef add(a, b):\n    return a + b", "add").startswith(
        "import math\ndef add"
    )
    tests = ['assert remove_Occ("hello","l") == "heo"']
    assert mbpp_entry_point(tests) == "remove_Occ"
    # the stop string [DONE] already cut the reply: the last [BEGIN] runs to the end
    reply = "<think>[BEGIN]\ndef remove_Occ(s, c): pass\n[DONE]</think>\n[BEGIN]\ndef remove_Occ(s, c):\n    return s\n"
    assert (
        mbpp_code(reply, "remove_Occ") == "def remove_Occ(s, c):\n    return s"
    )  # (their `$` stops before the last \n)
    assert mbpp_code("Here:\n```python\ndef remove_Occ(s, c):\n    return s\n```", "remove_Occ").startswith(
        "def remove_Occ"
    )
    assert mbpp_code("<think> no answer yet", "remove_Occ") == ""
