"""``align eval``: decode a benchmark with a diffusion checkpoint or an OpenAI-compatible endpoint, score it.

Writes ``OUTPUT/results.json`` (``{"tasks": {name: {metric: value, "n": ...}}, "config": {...}}``) and
``OUTPUT/<task>/samples.jsonl`` (prompt, completion, extracted answer, score). With ``num_samples`` K > 1
every question is answered K times and pass@k (the unbiased estimator of Chen et al., 2021) is reported
for k in {1, K}; math tasks report ``accuracy`` (= mean score), code tasks ``pass@1``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from align.eval.tasks import Protocol, Task

logger = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (drawn from n with c correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


class DiffusionSource:
    """Completions from a diffusion checkpoint, decoded with ``align.sampling`` in batches.

    Under ``accelerate launch`` (one process per GPU) each process decodes every n-th question and the
    completions are gathered back in order; only the main process scores and writes (``is_main``).
    """

    def __init__(self, model: str, *, adapter: str | None = None, dtype: str = "bfloat16", device: str | None = None,
                 batch_size: int = 8, seed: int = 0, trust_remote_code: bool = False):  # fmt: skip
        import torch
        from accelerate import PartialState

        from align.models import family_spec, load_model, load_tokenizer

        self.state = PartialState(cpu=device == "cpu" or not torch.cuda.is_available())
        self.is_main = self.state.is_main_process
        device = device or str(self.state.device)
        self.tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        self.model = load_model(model, dtype=dtype, adapter=adapter, trust_remote_code=trust_remote_code)
        self.model.eval().to(device)
        self.spec = family_spec(self.model, self.tokenizer)
        self.device, self.batch_size, self.seed = device, batch_size, seed
        self.description = {"source": "diffusion", "model": model, "adapter": adapter, "dtype": dtype,
                            "processes": self.state.num_processes}  # fmt: skip

    def prompt(self, message: str, protocol: Protocol) -> str:
        from align.data import prompt_text

        return prompt_text(self.tokenizer, message, system_prompt=protocol.system_prompt,
                           use_chat_template=protocol.use_chat_template)  # fmt: skip

    def complete(self, messages: list[str], protocol: Protocol, progress=None) -> list[str]:
        n, rank = self.state.num_processes, self.state.process_index
        if n == 1:
            return self._decode(messages, protocol, progress)
        from accelerate.utils import gather_object

        parts = gather_object([self._decode(messages[rank::n], protocol, progress)])
        return [parts[i % n][i // n] for i in range(len(messages))]

    def _decode(self, messages: list[str], protocol: Protocol, progress=None) -> list[str]:
        import torch

        from align.data import encode_prompts
        from align.sampling import generate, truncate_at_stop

        generator = torch.Generator(self.device).manual_seed(self.seed)
        out = []
        for start in range(0, len(messages), self.batch_size):
            prompts = [self.prompt(m, protocol) for m in messages[start : start + self.batch_size]]
            enc = encode_prompts(self.tokenizer, prompts, max_length=protocol.max_prompt_length,
                                 use_chat_template=protocol.use_chat_template)  # fmt: skip
            with torch.no_grad():
                result = generate(
                    self.model, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device),
                    gen_length=protocol.gen_length, steps=protocol.resolved_steps(),
                    block_length=protocol.block_length, temperature=protocol.temperature,
                    remasking=protocol.remasking, threshold=protocol.threshold, cache=protocol.cache,
                    cfg_scale=protocol.cfg_scale, variable_length=protocol.variable_length, spec=self.spec,
                    generator=generator,
                )  # fmt: skip
            kept, _ = truncate_at_stop(
                result.completion_ids, self.spec.stop_token_ids, self.spec.eos_token_id
            )
            out += self.tokenizer.batch_decode(kept, skip_special_tokens=True)
            if progress is not None:
                progress.update(len(prompts))
        return out


@dataclass
class EndpointSource:
    """Completions from an OpenAI-compatible ``/v1/chat/completions`` server (e.g. ``vllm serve``)."""

    url: str
    served_model: str
    concurrency: int = 8
    retries: int = 3
    timeout_s: float = 600.0
    seed: int = 0

    @property
    def description(self) -> dict:
        return {"source": "endpoint", "url": self.url, "served_model": self.served_model}

    def _post(self, body: dict) -> str:
        url = (
            self.url.rstrip("/")
            + ("" if self.url.rstrip("/").endswith("/v1") else "/v1")
            + "/chat/completions"
        )
        data = json.dumps(body).encode()
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    return json.loads(response.read())["choices"][0]["message"]["content"] or ""
            except (urllib.error.URLError, TimeoutError, KeyError, json.JSONDecodeError) as exc:
                if attempt == self.retries:
                    raise RuntimeError(
                        f"endpoint {url}: request failed {self.retries + 1} times ({exc})."
                    ) from exc
                time.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")

    def complete(self, messages: list[str], protocol: Protocol, progress=None) -> list[str]:
        def one(message: str) -> str:
            chat = (
                [{"role": "system", "content": protocol.system_prompt}] if protocol.system_prompt else []
            ) + [{"role": "user", "content": message}]
            body = {"model": self.served_model, "messages": chat, "max_tokens": protocol.gen_length,
                    "temperature": protocol.temperature, "seed": self.seed}  # fmt: skip
            text = self._post(body)
            if progress is not None:
                progress.update(1)
            return text

        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, messages))


def evaluate_task(
    source, task: Task, rows: list[dict], protocol: Protocol, num_samples: int = 1
) -> tuple[dict, list]:
    """(metrics, samples) of one task: every row answered ``num_samples`` times and scored."""
    from tqdm.auto import tqdm

    messages = [task.user_message(r, protocol) for r in rows for _ in range(num_samples)]
    with tqdm(total=len(messages), desc=task.name, disable=None) as progress:
        completions = source.complete(messages, protocol, progress)
    if not getattr(source, "is_main", True):
        return {}, []  # another process of a data-parallel run: the main process scores
    expanded = [r for r in rows for _ in range(num_samples)]
    scores, extracted = task.score(expanded, completions)
    samples = [
        {
            "index": i // num_samples,
            "sample": i % num_samples,
            "prompt": m,
            "completion": c,
            "extracted": e,
            "score": s,
        }
        for i, (m, c, e, s) in enumerate(zip(messages, completions, extracted, scores))
    ]
    correct = [sum(s >= 1.0 for s in scores[i : i + num_samples]) for i in range(0, len(scores), num_samples)]
    metrics = {"n": len(rows), "num_samples": num_samples}
    main_metric = "accuracy" if task.kind == "math" else "pass@1"
    metrics[main_metric] = (
        sum(scores) / max(len(scores), 1)
        if task.kind == "math"
        else _mean(pass_at_k(num_samples, c, 1) for c in correct)
    )
    if num_samples > 1:
        metrics[f"pass@{num_samples}"] = _mean(pass_at_k(num_samples, c, num_samples) for c in correct)
    return metrics, samples


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def write_results(output: str, results: dict, samples: dict[str, list]) -> None:
    os.makedirs(output, exist_ok=True)
    with open(os.path.join(output, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    for name, rows in samples.items():
        os.makedirs(os.path.join(output, name), exist_ok=True)
        with open(os.path.join(output, name, "samples.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
