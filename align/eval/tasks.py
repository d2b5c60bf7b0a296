"""Benchmark tasks and named decoding protocols.

A task turns a dataset row into a question, and a completion into a score in [0, 1] by reusing
``rewards``: math equivalence for GSM8K / MATH500 / custom JSONL tasks, the code sandbox for HumanEval /
MBPP, a verifier for Countdown / Sudoku (``countdown=FILE`` / ``sudoku=FILE``: rows with ``question`` and
the verifier's columns, no stored answer). A protocol is a named preset of prompt and sampler settings; every field can be overridden and the
resolved settings are written with every result.

Not covered: few-shot prompting (all protocols here are zero-shot) and lm-eval-harness's exact templates.
"""

from __future__ import annotations

import dataclasses
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from align.eval import opencompass

D1_FORMAT = "Respond in the following format:\n<reasoning>\n...\n</reasoning>\n<answer>\n...\n</answer>"
MATH_INSTRUCTION = "Solve the problem step by step and put the final answer in \\boxed{}."
CODE_INSTRUCTION = "Write a Python solution in one fenced ```python block."
# The prompts of iLLaDA's evaluation tasks (gsm8k_cot_reasoning, humaneval_reasoning, mbpp_reasoning of the
# authors' lm-eval fork; MATH is lm-eval's minerva_math, zero-shot), as str.format templates over a row.
ILLADA_GSM8K = (
    "Q: {question}\n\nA: Solve the problem step by step. At the end, write the final answer on a separate line in "
    "this exact format:\n#### <number>\n"
)
MINERVA_MATH = "Problem:\n{problem}\n\nSolution:"
ILLADA_HUMANEVAL = (
    "Solve the following Python programming problem.\nKeep your reasoning concise and put it inside "
    "<think>...</think>. You must close </think>, then output only the final Python solution in a ```python code "
    "block.\n\n{prompt}"
)
ILLADA_MBPP = (
    "You are an expert Python programmer. Solve the task using the asserts as the ground truth.\n\nTask: {text}\n\n"
    "Your code must pass these tests:\n{test_list[0]}\n{test_list[1]}\n{test_list[2]}\n\nThink through the "
    "solution if needed. When you give the final answer, put the complete Python code in this exact format:\n"
    "[BEGIN]\nfinal Python code only\n[DONE]\n\nRules for the final answer: use the exact function name from the "
    "asserts. Do not write Markdown fences. Do not include tests or explanations between [BEGIN] and [DONE]."
)


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "math", "code" or "verifier" (a built-in reward of the same name scores it)
    hub: tuple[str, str | None, str] | None  # (dataset id, config, split)
    question: str  # the column holding the question (for code tasks: the prompt)

    def load(
        self, data_dir: str | None = None, path: str | None = None, rename: list[str] | None = None
    ) -> list[dict]:
        """Rows from ``path``, ``data_dir/<name>.jsonl`` or the hub (same columns as the hub dataset);
        ``rename``: ``old:new`` column renames applied first (training's ``rename_columns``)."""
        path = path or (os.path.join(data_dir, f"{self.name}.jsonl") if data_dir else None)
        if path:
            if not os.path.exists(path):
                raise FileNotFoundError(f"task {self.name}: {path} does not exist (expected JSONL rows).")
            from align.data import read_jsonl

            rows = read_jsonl(path)
        elif self.hub is None:
            raise ValueError(f"task {self.name} has no hub dataset; give it as NAME=path/to/file.jsonl.")
        else:
            from datasets import load_dataset

            unreachable = hub_unreachable()
            try:
                with offline(
                    unreachable is not None
                ):  # a cached copy still loads; nothing retries for a minute
                    rows = list(load_dataset(self.hub[0], self.hub[1], split=self.hub[2]))
            except (OSError, ConnectionError, ValueError) as exc:
                why = (
                    f"the hub is unreachable from here ({unreachable}) and {self.hub[0]} is not in the local "
                    "cache"
                    if unreachable
                    else f"could not load {self.hub[0]} from the hub "
                    f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})"
                )
                raise FileNotFoundError(
                    f"task {self.name}: {why}; offline, pass --data-dir DIR with DIR/{self.name}.jsonl."
                ) from exc
        rows = rename_columns(rows, rename or [], self.name)
        if self.name == "mbpp" and rows and "text" not in rows[0] and "prompt" in rows[0]:
            rows = [{**r, "text": r["prompt"]} for r in rows]  # the sanitized config names the task "prompt"
        if self.name == "math500" and rows and "answer" not in rows[0] and "solution" in rows[0]:
            from align.eval.opencompass import boxed_answer  # MATH's own rows: the solution's boxed answer

            rows = [{**r, "answer": boxed_answer(str(r["solution"])) or ""} for r in rows]
        missing = {self.question, *self.gold_columns()} - set(rows[0] if rows else {})
        if rows and missing:
            raise ValueError(
                f"task {self.name}: rows lack column(s) {sorted(missing)}; they have {sorted(rows[0])} (rename "
                "with --rename-columns old:new ...)."
            )
        if self.kind == "code" and self.name not in TASKS:  # a custom code task: every row's tests, now
            from rewards.code import check_row_tests

            for index, row in enumerate(rows):
                try:
                    check_row_tests(row["tests"], row.get("entry_point"))
                except ValueError as exc:
                    raise ValueError(f"task {self.name}, row {index}: {exc}") from None
        return rows

    @property
    def metric(self) -> str:
        """``accuracy`` (mean score) for math and verifier tasks, ``pass@1`` for code."""
        return "pass@1" if self.kind == "code" else "accuracy"

    def gold_columns(self) -> tuple[str, ...]:
        named = {
            "humaneval": ("test", "entry_point"),
            "mbpp": ("test_list",),
            "countdown": ("numbers", "target"),
            "sudoku": ("puzzle",),
        }
        return named.get(self.name, ("answer",) if self.kind == "math" else ("tests",))

    def messages(self, row: dict, protocol: Protocol) -> str | list[dict]:
        """A row's prompt: its user message, or with the protocol's few-shot turns the chat of those turns and
        the user message (turns of one role in a row merged with a newline, as OpenCompass merges them)."""
        message = self.user_message(row, protocol)
        if not protocol.few_shot:
            return message
        chat = []
        for role, content in (*protocol.few_shot, ("user", message)):
            if chat and chat[-1]["role"] == role:
                chat[-1]["content"] += "\n" + content
            else:
                chat.append({"role": role, "content": content})
        return chat

    def user_message(self, row: dict, protocol: Protocol) -> str:
        """The user turn: the protocol's ``prompt_template`` formatted with the row (``{NAME_lines}``: a list
        column joined by newlines), else the task's question with the protocol's instruction."""
        if protocol.prompt_template is not None:
            lines = {f"{k}_lines": "\n".join(map(str, v)) for k, v in row.items() if isinstance(v, list)}
            try:
                return protocol.prompt_template.format(**row, **lines)
            except (KeyError, IndexError) as exc:
                raise ValueError(
                    f"protocol {protocol.name!r}: task {self.name}'s prompt needs the row field {exc}; "
                    f"the row has {sorted(row)}."
                ) from None
        question = str(row[self.question])
        if self.kind in ("math", "verifier"):
            return question if protocol.instruction is None else f"{question}\n\n{protocol.instruction}"
        if self.name == "mbpp":
            tests = "\n".join(row["test_list"])
            question = f"{question}\nYour code should pass these tests:\n\n{tests}"
        elif self.name == "humaneval":
            question = f"Complete the following Python function:\n```python\n{question}\n```"
        return f"{question}\n\n{CODE_INSTRUCTION}"

    def score(
        self, rows: list[dict], completions: list[str], protocol: Protocol | None = None
    ) -> tuple[list[float], list[str | None]]:
        """(scores in [0, 1], extracted answers or programs) for completions of rows (a protocol with its own
        ``scoring`` extracts and scores as its authors do)."""
        if protocol is not None and protocol.scoring in ("illada", "opencompass"):
            import importlib

            authors = importlib.import_module(f"align.eval.{protocol.scoring}")
            return authors.score(self, rows, completions)  # (other tasks come back here without a protocol)
        if self.kind == "math":
            from rewards.math import extract_answer, math_accuracy

            scores = math_accuracy(None, completions, answer=[r["answer"] for r in rows])
            return [0.0 if s is None else float(s) for s in scores], [extract_answer(c) for c in completions]
        if self.kind == "verifier":
            from rewards import get
            from rewards.puzzles import last_answer

            columns = {c: [r[c] for r in rows] for c in self.gold_columns()}
            scores = get(self.name)(None, completions, **columns)
            return [0.0 if s is None else float(s) for s in scores], [last_answer(c) for c in completions]
        from rewards.code import extract_code, prompt_context, score_program
        from rewards.sandbox import default_sandbox

        programs = [self.program(row, extract_code(c)) for row, c in zip(rows, completions)]
        sandbox = default_sandbox()

        def run(row: dict, code: str) -> float:
            if (
                self.name == "humaneval"
            ):  # the tests call the prompt's helpers: judged from the prompt's own code
                context = prompt_context(row[self.question], row["entry_point"])
                return score_program(code, row["test"], row["entry_point"], sandbox=sandbox, context=context)
            if self.name == "mbpp":
                return score_program(
                    code, row["test_list"], setup=row.get("test_setup_code") or None, sandbox=sandbox
                )
            # a custom code task: code_execution's columns (tests, entry_point, test_setup_code, test_helpers)
            return score_program(
                code,
                row["tests"],
                row.get("entry_point"),
                sandbox=sandbox,
                setup=row.get("test_setup_code") or None,
                context=row.get("test_helpers") or None,
            )

        with ThreadPoolExecutor(sandbox.workers) as pool:  # each program waits for a free sandbox slot
            return list(pool.map(run, rows, programs)), programs

    def program(self, row: dict, code: str) -> str:
        """The program a reply is scored as: HumanEval replies that restate the function get the prompt's
        imports and helpers in front; body-only replies are appended to the prompt; MBPP gets its
        ``test_imports``."""
        if self.name == "humaneval":
            prompt, entry = row[self.question], row["entry_point"]
            if not re.search(rf"^\s*(async\s+)?def\s+{re.escape(entry)}\s*\(", code, re.M):
                return prompt + code
            from rewards.code import prompt_context

            context = prompt_context(prompt, entry)
            return f"{context}\n\n{code}" if context else code
        if self.name == "mbpp" and row.get("test_imports"):
            return "\n".join(row["test_imports"]) + "\n" + code
        return code


def hub_unreachable(timeout_s: float = 5.0) -> str | None:
    """Why the dataset hub cannot be reached from here (one TCP connection to ``HF_ENDPOINT``), or None when it
    can, when offline mode is already on, or when a proxy decides (then the hub client's own errors stand)."""
    import socket
    from urllib.parse import urlparse

    env = os.environ
    if any(
        env.get(k, "").upper() in ("1", "ON", "YES", "TRUE")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    ):
        return None
    if any(
        env.get(k)
        for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
    ):
        return None
    url = urlparse(env.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        return f"{host}:{port}: {exc.strerror or type(exc).__name__}"
    return None


class offline:
    """While active (and ``on``), the hub clients read only their local caches (their offline mode, set
    in-process: the environment variables are read once, at import)."""

    def __init__(self, on: bool):
        self.on, self.saved = on, []

    def __enter__(self):
        if self.on:
            import datasets.config
            import huggingface_hub.constants

            for module in (datasets.config, huggingface_hub.constants):
                self.saved.append((module, module.HF_HUB_OFFLINE))
                module.HF_HUB_OFFLINE = True
        return self

    def __exit__(self, *exc):
        for module, value in self.saved:
            module.HF_HUB_OFFLINE = value
        return False


TASKS = {
    "gsm8k": Task("gsm8k", "math", ("openai/gsm8k", "main", "test"), "question"),
    "math500": Task("math500", "math", ("HuggingFaceH4/MATH-500", None, "test"), "problem"),
    "humaneval": Task("humaneval", "code", ("openai/openai_humaneval", None, "test"), "prompt"),
    "mbpp": Task("mbpp", "code", ("google-research-datasets/mbpp", "full", "test"), "text"),
    "countdown": Task("countdown", "verifier", None, "question"),
    "sudoku": Task("sudoku", "verifier", None, "question"),
}


def resolve_tasks(spec: str) -> list[tuple[Task, str | None]]:
    """``gsm8k,math500,mytask=path.jsonl`` -> [(Task, explicit path or None)]; custom names are math tasks
    here, and code tasks in ``load_tasks`` when their rows carry ``tests``."""
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, path = item.partition("=")
        if path:
            out.append((TASKS.get(name) or Task(name, "math", None, "question"), path))
        elif name in TASKS:
            out.append((TASKS[name], None))
        else:
            raise ValueError(f"unknown task {name!r}: use one of {sorted(TASKS)} or NAME=path/to/file.jsonl.")
    return out


def load_tasks(
    spec: str, data_dir: str | None = None, limit: int | None = None, rename: list[str] | None = None
) -> list[tuple[Task, list[dict]]]:
    """[(Task, its first ``limit`` rows)] for a ``resolve_tasks`` spec, every file read and checked now
    (``rename``: ``old:new`` column renames for every task's rows). A custom task whose rows have a ``tests``
    column and no ``answer`` is a code task, scored like ``code_execution`` (``tests``: asserts, a
    ``check(candidate)`` program with ``entry_point``, or stdin/stdout cases; ``test_setup_code``,
    ``test_helpers``) through the same sandbox as HumanEval / MBPP; every row's tests are checked at load."""
    out = []
    for task, path in resolve_tasks(spec):
        if task.name not in TASKS and os.path.exists(path):  # a custom task: code when its rows carry tests
            from align.data import read_jsonl

            first = rename_columns(read_jsonl(path)[:1], rename or [], task.name)
            if first and "tests" in first[0] and "answer" not in first[0]:
                task = dataclasses.replace(task, kind="code")
        out.append((task, task.load(data_dir, path, rename)[:limit]))
    return out


def rename_columns(rows: list[dict], renames: list[str], task: str) -> list[dict]:
    """``old:new`` renames (``--rename-columns``), each naming a column the rows have."""
    pairs = []
    for item in renames:
        if item.count(":") != 1 or "" in item.split(":"):
            raise ValueError(f"--rename-columns entry {item!r} is not 'old:new'.")
        pairs.append(tuple(item.split(":")))
    if not rows or not pairs:
        return rows
    for old, _ in pairs:
        if old not in rows[0]:
            raise ValueError(
                f"task {task}: --rename-columns {old}:...: no column {old!r}; the rows have "
                f"{sorted(rows[0])}."
            )
    mapping = dict(pairs)
    return [{mapping.get(k, k): v for k, v in row.items()} for row in rows]


@dataclass(frozen=True)
class Protocol:
    """Prompt and decoding settings; ``steps`` None means ``gen_length * steps_per_token``."""

    name: str
    system_prompt: str | None = None
    instruction: str | None = MATH_INSTRUCTION
    use_chat_template: bool = True
    gen_length: int = 256
    block_length: int = 32
    steps: int | None = None
    steps_per_token: float = 1.0
    temperature: float = 0.0
    remasking: str = "low_confidence"
    threshold: float | None = None
    cache: str | None = None
    cache_refresh: int | None = None
    cfg_scale: float = 0.0
    variable_length: bool = False
    top_p: float | None = None  # Dream's schedules (remasking origin / maskgit_plus / topk_margin / entropy)
    top_k: int | None = None
    alg_temp: float | None = None
    eps: float = 1e-3
    max_prompt_length: int = 2048
    system_in_user: bool = (
        False  # the system prompt merged into the first user turn (templates without a system role)
    )
    prompt_template: str | None = None  # the user message as a task's own prompt: str.format over the row
    scoring: str | None = None  # "illada": the tasks' own answer extraction (align.eval.illada), else ours
    boost_token: str | None = None  # end-of-thinking boost (align.sampling.boost, the sampler's logits hook)
    boost: float = 0.0
    boost_power: float = (
        3.0  # the boost is boost * progress ** boost_power (progress through the row's budget)
    )
    stop_strings: tuple = ()  # variable length: a row stops after the block whose text (special tokens kept)
    # holds one of these or the EOS text, and its text is cut before the first of them (iLLaDA's generate_until)
    max_length: int | None = (
        None  # variable length: each row's budget is min(gen_length, max_length - prompt)
    )
    encode_special_tokens: bool | None = (
        None  # tokenize chat text with the tokenizer's special tokens (None: no)
    )
    # chat turns before the user message, ((role, text), ...): few-shot examples as OpenCompass renders them
    few_shot: tuple = ()
    # LLaDA's generate.py end-of-text rules (its OpenCompass evaluation sets them per task): the EOS logit -inf
    # before the choice; the EOS and EoT logits -inf in the confidence softmax after it (the family's ids)
    logits_eos_inf: bool = False
    confidence_eos_eot_inf: bool = False
    whole_canvas: bool = False  # the completion is the whole canvas decoded without special tokens (LLaDA's
    # OpenCompass model), not the text before the first stop token
    per_task: tuple = ()  # ((task name, ((field, value), ...)), ...): per-task settings over the above

    def resolved_steps(self) -> int:
        return self.steps if self.steps is not None else max(1, int(self.gen_length * self.steps_per_token))

    @classmethod
    def from_sampler(cls, name: str, settings, **prompt) -> Protocol:
        """A protocol decoding with ``settings`` (an ``align.sampling.SamplerSettings``); ``prompt``: the
        prompt-format fields (system_prompt, instruction, use_chat_template, max_prompt_length, ...)."""
        return cls(name, **settings.as_kwargs(), **prompt)

    def sampler(self):
        """The sampler's settings of this protocol (``align.sampling.SamplerSettings``)."""
        from align.sampling.settings import SamplerSettings

        return SamplerSettings(
            gen_length=self.gen_length,
            steps=self.resolved_steps(),
            block_length=self.block_length,
            temperature=self.temperature,
            remasking=self.remasking,
            cfg_scale=self.cfg_scale,
            threshold=self.threshold,
            cache=self.cache,
            cache_refresh=self.cache_refresh,
            variable_length=self.variable_length,
            top_p=self.top_p,
            top_k=self.top_k,
            alg_temp=self.alg_temp,
            eps=self.eps,
        )

    def with_overrides(self, **fields) -> Protocol:
        """These fields set (None = keep); a field set here also wins over the per-task settings."""
        unknown = set(fields) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown protocol field(s) {sorted(unknown)}.")
        given = {k: v for k, v in fields.items() if v is not None}
        per_task = tuple(
            (task, kept)
            for task, settings in self.per_task
            if (kept := tuple((k, v) for k, v in settings if k not in given))
        )
        return dataclasses.replace(self, **{"per_task": per_task, **given})

    def for_task(self, task: str) -> Protocol:
        """The protocol a task is decoded with (its per-task settings applied)."""
        settings = dict(dict(self.per_task).get(task, ()))
        return dataclasses.replace(self, per_task=(), **settings) if settings else self

    def describe(self) -> str:
        """One line of the decoding settings (``align generate`` and ``align eval --help`` print it)."""
        text = (
            f"gen_length {self.gen_length}, block_length {self.block_length}, steps {self.resolved_steps()}, "
            f"temperature {self.temperature:g}, remasking {self.remasking}, threshold {self.threshold}, "
            f"cache {self.cache}, chat_template {self.use_chat_template}"
            + (", variable_length" if self.variable_length else "")
            + (f", {len(self.few_shot) // 2}-shot" if self.few_shot else "")
            + (", logits_eos_inf" if self.logits_eos_inf else "")
            + (", confidence_eos_eot_inf" if self.confidence_eos_eot_inf else "")
            + "".join(f", {n} {getattr(self, n)}" for n in _DREAM_FIELDS if self._dream())
        )
        shown = lambda k, v: f"{len(v) // 2}-shot" if k == "few_shot" else f"{k} {v}"  # noqa: E731
        per_task = "; ".join(f"{t}: " + ", ".join(shown(k, v) for k, v in kv) for t, kv in self.per_task)
        return text + (f" (per task: {per_task})" if per_task else "")

    def as_dict(self) -> dict:
        """JSON-ready (results.json compares it with the next run's): per_task as {task: {field: value}}."""
        per_task = {task: dict(settings) for task, settings in self.per_task}
        fields = dataclasses.asdict(self)
        if not self._dream() and all(dict(kv).keys().isdisjoint(_DREAM_FIELDS) for _, kv in self.per_task):
            for name in _DREAM_FIELDS:  # as before Dream's schedules existed, so older eval folders resume
                fields.pop(name)
        for name, default in _LATER_FIELDS.items():  # likewise for fields added since, while unused
            if fields[name] == default and all(name not in dict(kv) for _, kv in self.per_task):
                fields.pop(name)
        import json

        return json.loads(
            json.dumps({**fields, "per_task": per_task, "steps": self.resolved_steps()})
        )  # lists

    def _dream(self) -> bool:
        """Whether the schedule reads the cut fields (Dream's and SDAR's schedules)."""
        from align.sampling.settings import BLOCK_SCHEDULES, DREAM_ALGS

        return self.remasking in DREAM_ALGS + BLOCK_SCHEDULES


def check_protocol(protocol) -> None:
    """A decoding protocol's sampler settings (``align eval`` / ``align generate`` before loading), with
    each task's own settings."""
    for task, _ in getattr(protocol, "per_task", ()):
        try:
            check_protocol(protocol.for_task(task))
        except ValueError as e:
            raise ValueError(f"{e} (protocol {protocol.name!r}, task {task})") from None
    protocol.sampler().check(("--gen-length", "--steps", "--block-length"))
    if protocol.scoring not in SCORINGS:
        raise ValueError(
            f"protocol {protocol.name!r}: scoring {protocol.scoring!r} is not one of {SCORINGS}."
        )
    if protocol.few_shot and not protocol.use_chat_template:
        raise ValueError(
            f"protocol {protocol.name!r} has few-shot chat turns, which need the chat template; drop "
            "--no-chat-template (or the few-shot turns)."
        )
    if protocol.cache_refresh is not None and (protocol.cache is None or protocol.cache_refresh < 1):
        raise ValueError(
            f"--cache-refresh {protocol.cache_refresh} needs --cache prefix or dual and a value >= 1."
        )


_DREAM_FIELDS = ("top_p", "top_k", "alg_temp", "eps")
_LATER_FIELDS = {
    "few_shot": (),
    "logits_eos_inf": False,
    "confidence_eos_eot_inf": False,
    "whole_canvas": False,
}
SCORINGS = (None, "illada", "opencompass")

PROTOCOLS = {
    # d1: zero-shot <reasoning>/<answer> prompt, block 32, steps = length / 2, greedy; lengths 128/256/512.
    "d1": Protocol("d1", system_prompt=D1_FORMAT, instruction=None, gen_length=256, steps_per_token=0.5),
    # The LLaDA-8B-Instruct setting most public evaluations use (LLaDA / Fast-dLLM scripts): chat template,
    # 256 tokens, block 32, one token per step, greedy. Not the per-task settings of the LLaDA paper.
    "llada": Protocol("llada", gen_length=256, steps_per_token=1.0),
    # llada's prompts and budget, decoded fast: Fast-dLLM's threshold 0.9 with the prefix cache. On the
    # trained long-answer tiny model (benchmarks/sampler_speed.py, greedy, 500 questions) this kept the
    # reference accuracy (98.2%) at 9-11x its speed (two runs). Not a published protocol: check it on your
    # model before comparing its scores with papers' llada numbers.
    "llada-fast": Protocol("llada-fast", gen_length=256, steps_per_token=1.0, threshold=0.9, cache="prefix"),
    # LLaDA-8B-Instruct as its authors evaluate it (the OpenCompass configs of ML-GSAI/LLaDA's EVAL.md,
    # align/eval/opencompass.py has the details): one block of 512 tokens decoded one token per step (256 for
    # MBPP), greedy; EOS and EoT excluded from the confidence (logits_eos_inf instead for HumanEval); the configs'
    # prompts (GSM8K 4-shot, MBPP 3-shot, as chat turns) tokenized with the tokenizer's special tokens; the whole
    # canvas decoded without special tokens; the configs' answer extraction and scoring.
    "llada-opencompass": Protocol(
        "llada-opencompass",
        instruction=None,
        gen_length=512,
        block_length=512,
        steps_per_token=1.0,
        max_prompt_length=4096 - 512,
        encode_special_tokens=True,
        confidence_eos_eot_inf=True,
        whole_canvas=True,
        scoring="opencompass",
        per_task=(
            (
                "gsm8k",
                (("few_shot", opencompass.GSM8K_SHOTS), ("prompt_template", opencompass.GSM8K_QUESTION)),
            ),
            ("math500", (("prompt_template", opencompass.MATH_PROBLEM),)),
            (
                "humaneval",
                (
                    ("prompt_template", opencompass.HUMANEVAL_PROMPT),
                    ("confidence_eos_eot_inf", False),
                    ("logits_eos_inf", True),
                ),
            ),
            (
                "mbpp",
                (
                    ("gen_length", 256),
                    ("block_length", 256),
                    ("few_shot", opencompass.MBPP_SHOTS),
                    ("prompt_template", opencompass.MBPP_TASK),
                ),
            ),
        ),
    ),
    # iLLaDA-8B-Instruct as its authors evaluate it (eval_illada.sh / eval_illada.py of ML-GSAI/LLaDA PR #134,
    # align/eval/illada.py has the details): variable-length decoding block by block, one token per step
    # (blocks of 32; 16 for MBPP), greedy; each row's budget min(gen_length, 4096 - its prompt) in whole blocks
    # (2048; 4096 for MATH); after each block the row stops when its text, special tokens kept, holds one of
    # the task's stop strings or the EOS text, and the text is cut before them; the end-of-thinking boost
    # 100 * progress ** 3 (** 1 for HumanEval); the tasks' own prompts, the chat text tokenized with the
    # tokenizer's special tokens, and the tasks' own answer extraction.
    "illada": Protocol(
        "illada",
        instruction=None,
        gen_length=2048,
        variable_length=True,
        steps_per_token=1.0,
        system_in_user=True,
        boost_token="</think>",
        boost=100.0,
        boost_power=3.0,
        max_length=4096,
        encode_special_tokens=True,
        scoring="illada",
        per_task=(
            ("gsm8k", (("prompt_template", ILLADA_GSM8K), ("stop_strings", ("Q:", "</s>", "<|im_end|>")))),
            (
                "math500",
                (("gen_length", 4096), ("prompt_template", MINERVA_MATH), ("stop_strings", ("Problem:",))),
            ),
            (
                "humaneval",
                (
                    ("boost_power", 1.0),
                    ("prompt_template", ILLADA_HUMANEVAL),
                    (
                        "stop_strings",
                        ("\nTest the above solution", "\nNow test the solution", "\nThe above solution"),
                    ),
                ),
            ),
            ("mbpp", (("block_length", 16), ("prompt_template", ILLADA_MBPP), ("stop_strings", ("[DONE]",)))),
        ),
    ),
    # Dream-v0-Instruct-7B as DARE's OpenCompass configs evaluate it (yjyddq/DARE
    # opencompass/dream_examples/dream_instruct_gen_*): Dream's entropy schedule, temperature 0.2, top_p 0.95,
    # one token per step, 256 tokens for GSM8K and 512 for MATH, HumanEval and MBPP, the Qwen chat template.
    # The prompts are this project's (the math instruction, the code tasks' own), not OpenCompass's.
    "dream": Protocol(
        "dream",
        gen_length=256,
        block_length=256,
        steps_per_token=1.0,
        remasking="entropy",
        temperature=0.2,
        top_p=0.95,
        per_task=tuple(
            (t, (("gen_length", 512), ("block_length", 512))) for t in ("math500", "humaneval", "mbpp")
        ),
    ),
    # DiffuCoder-7B-Instruct as its README decodes (apple/ml-diffucoder): 256 tokens in 256 steps, the entropy
    # schedule, temperature 0.2, top_p 0.95, alg_temp 0, system prompt "You are a helpful assistant.". Its
    # paper's code evaluation (Qwen2.5-Coder's harness) is not reproduced here.
    "diffucoder": Protocol(
        "diffucoder",
        system_prompt="You are a helpful assistant.",
        gen_length=256,
        block_length=256,
        steps_per_token=1.0,
        remasking="entropy",
        temperature=0.2,
        top_p=0.95,
    ),
    # TraDo / SDAR as dLLM-RL evaluates them (Gen-Verse/dLLM-RL configs/trado_eval.yaml): blocks of 4 decoded in 4
    # steps each with the exact block cache, low_confidence_dynamic at threshold 0.9, temperature 1, no top-k /
    # top-p cut, 2000 tokens, stopping at EOS; the Qwen chat template, its CoT instruction after the question
    # (theirs follows a single newline, ours the project's blank line).
    "trado": Protocol(
        "trado",
        instruction="Please reason step by step, and put your final answer within \\boxed{}.",
        gen_length=2000,
        block_length=4,
        steps_per_token=1.0,
        temperature=1.0,
        remasking="low_confidence_dynamic",
        threshold=0.9,
    ),
    # The embedded tiny block-diffusion model (recipes/tiny-sdar): the tiny prompt, two blocks of 4, greedy.
    "tiny-block": Protocol(
        "tiny-block",
        instruction=None,
        use_chat_template=False,
        gen_length=8,
        block_length=4,
        steps_per_token=1.0,
        remasking="low_confidence_static",
        max_prompt_length=16,
    ),
    # The embedded tiny model: raw "abc+def=" prompt, an 8-token canvas decoded in 8 greedy steps.
    "tiny": Protocol(
        "tiny",
        instruction=None,
        use_chat_template=False,
        gen_length=8,
        block_length=8,
        steps_per_token=1.0,
        max_prompt_length=16,
    ),
}


def _llada_15(base: Protocol) -> Protocol:
    """LLaDA 1.5 (GSAI-ML/LLaDA-1.5) as its authors evaluate it (the same OpenCompass configs, EVAL.md's table):
    ``llada-opencompass``'s prompts and scoring, blocks decoded one token per step, EOS and EoT excluded from the
    confidence on every task; GSM8K 256 tokens in blocks of 16, MATH 1024 / 128, HumanEval and MBPP 512 / 32."""
    lengths = {"gsm8k": (256, 16), "math500": (1024, 128), "humaneval": (512, 32), "mbpp": (512, 32)}
    per_task = tuple(
        (task, (*(kv for kv in settings if kv[0] not in _DECODING), ("gen_length", lengths[task][0]),
                ("block_length", lengths[task][1])))
        for task, settings in base.per_task
    )  # fmt: skip
    return dataclasses.replace(
        base, name="llada-1.5-opencompass", per_task=per_task, confidence_eos_eot_inf=True
    )


_DECODING = ("gen_length", "block_length", "logits_eos_inf", "confidence_eos_eot_inf")
PROTOCOLS["llada-1.5-opencompass"] = _llada_15(PROTOCOLS["llada-opencompass"])
