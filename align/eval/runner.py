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

from align.errors import RunError
from align.eval.tasks import Protocol, Task
from align.rollout.engine import InProcessEngine

logger = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples (drawn from n with c correct) is correct."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


class DiffusionSource:
    """Completions from a diffusion model, decoded with ``align.sampling`` in batches.

    Under ``accelerate launch`` (one process per GPU) each process decodes every n-th question of a chunk
    and the completions are gathered back in order; only the main process scores and writes
    (``is_main``). Each batch's sampler is seeded from (seed, position of its first question, process), so
    a resumed run and an uninterrupted one decode the same questions alike. ``model_context`` (default: the
    model itself) yields the module to sample from, e.g. an unwrapped ZeRO-3 model inside training.
    """

    unit = "tok"  # progress counts canvas tokens decoded per second

    def __init__(
        self,
        model,
        tokenizer,
        spec,
        *,
        state,
        batch_size: int = 8,
        seed: int = 0,
        description: dict | None = None,
        model_context=None,
    ):
        self.model, self.tokenizer, self.spec, self.state = model, tokenizer, spec, state
        self.is_main = state.is_main_process
        self.device = str(state.device) if model_context is not None else str(next(model.parameters()).device)
        self.batch_size, self.seed = batch_size, seed
        self.progress = False  # a progress bar over the decoded blocks (``align generate`` turns it on)
        self.chunk_size = batch_size * state.num_processes
        self.engine = InProcessEngine(spec, model=model, model_context=model_context)
        self.forward_passes = 0
        self.description = {**(description or {}), "processes": state.num_processes}

    @classmethod
    def load(
        cls,
        model: str,
        *,
        adapter: str | None = None,
        dtype: str = "bfloat16",
        device: str | None = None,
        batch_size: int = 8,
        seed: int = 0,
        trust_remote_code: bool = False,
        state=None,
    ):
        """Load a checkpoint (optionally with a PEFT adapter) onto this process's device."""
        from align.models import family_spec, load_model, load_tokenizer

        state = state or process_state(device)
        tokenizer = load_tokenizer(model, trust_remote_code=trust_remote_code)
        net = load_model(model, dtype=dtype, adapter=adapter, trust_remote_code=trust_remote_code)
        net.eval().to(device or str(state.device))
        return cls(
            net,
            tokenizer,
            family_spec(net, tokenizer),
            state=state,
            batch_size=batch_size,
            seed=seed,
            description=diffusion_description(model, adapter, dtype),
        )

    def prompt(self, message: str | list[dict], protocol: Protocol) -> str:
        from align.data import prompt_text

        return prompt_text(
            self.tokenizer,
            message,
            system_prompt=protocol.system_prompt,
            use_chat_template=protocol.use_chat_template,
            system_in_user=protocol.system_in_user,
        )

    def logits_hook(self, protocol: Protocol):
        """The protocol's sampler hook: iLLaDA's end-of-thinking boost when it boosts a token, else None (one
        line when this vocabulary cannot write the token)."""
        from align.sampling.boost import end_of_thinking_boost

        unwritable = ValueError(
            f"protocol {protocol.name!r} boosts {protocol.boost_token!r}, which this tokenizer cannot write; pass "
            "--boost 0 to decode without the boost."
        )
        return end_of_thinking_boost(
            self.tokenizer,
            protocol.boost_token,
            protocol.boost,
            protocol.boost_power,
            protocol.gen_length,
            unwritable=unwritable,
        )

    def end_of_text_rules(self, protocol: Protocol) -> dict:
        """The sampler hooks of LLaDA's end-of-text rules (``logits_eos_inf``, ``confidence_eos_eot_inf``) with
        this family's EOS and EoT ids; one line when the model lacks one."""
        rules = {}
        eos, eot = self.spec.eos_token_id, self.spec.eot_token_id
        for flag, ids, hook in (
            ("logits_eos_inf", (eos,), "suppress_token_ids"),
            ("confidence_eos_eot_inf", (eos, eot), "confidence_excluded_ids"),
        ):
            if getattr(protocol, flag):
                if None in ids:
                    raise ValueError(
                        f"protocol {protocol.name!r} sets {flag}, but this model has no "
                        f"{'EOS' if ids[0] is None else 'EoT'} token id (config eos_token_id, tokenizer "
                        "<|eot_id|>); use a protocol without it."
                    )
                rules[hook] = ids
        return rules

    def stop_strings(self, protocol: Protocol) -> list[str]:
        """The protocol's stop strings and the tokenizer's EOS text (iLLaDA's ``generate_until``)."""
        stops = list(protocol.stop_strings)
        eos = getattr(self.tokenizer, "eos_token", None)
        if eos and eos not in stops:
            stops.append(eos)
        return stops

    def stop_check(self, protocol: Protocol):
        """A sampler ``stop_check``: after each block, a row is done when its text so far (special tokens kept)
        holds one of the stop strings; None for protocols that stop at stop token ids."""
        if not protocol.stop_strings:
            return None
        stops = self.stop_strings(protocol)

        def done(completions):
            import torch

            texts = self.tokenizer.batch_decode(completions, skip_special_tokens=False)
            return torch.tensor([any(s in t for s in stops) for t in texts])

        return done

    def stop_rule(self, protocol: Protocol) -> dict:
        """The sampler's variable-length stop arguments of this protocol (none in fixed-length decoding)."""
        if not protocol.variable_length:
            return {}
        rule = {"stop_check": self.stop_check(protocol)} if protocol.stop_strings else {}
        return {**rule, "max_length": protocol.max_length} if protocol.max_length else rule

    def cut_texts(self, completions, commit_step, protocol: Protocol) -> list[str]:
        """Stop-string protocols: each row's decoded blocks as text (special tokens kept), cut before the
        first occurrence of each stop string in turn."""
        stops = self.stop_strings(protocol)
        texts = []
        for row, steps in zip(completions, commit_step):
            unused = (steps < 0).nonzero()  # the filler after a row's last block was never decoded
            n = int(unused[0]) if len(unused) else len(row)
            text = self.tokenizer.decode(row[:n], skip_special_tokens=False)
            for stop in stops:
                text = text.split(stop)[0]
            texts.append(text)
        return texts

    def complete(self, messages: list[str], protocol: Protocol, offset: int = 0) -> list[str]:
        """Completions of ``messages`` (questions ``offset``.. of the task), on every process.

        Every process enters the model context once per chunk, even with no question of its own (under
        ZeRO-3 gathering the weights is collective)."""
        import torch

        from align.sampling.family_checks import check_family_settings

        check_family_settings(
            self.spec, cache=protocol.cache, remasking=protocol.remasking, block_length=protocol.block_length
        )
        n, rank = self.state.num_processes, self.state.process_index
        with torch.no_grad(), self.engine.model_context() as model:
            local = self._decode(model, messages[rank::n], protocol, offset, rank)
        if n == 1:
            return local
        from accelerate.utils import gather_object

        parts = gather_object([local])
        return [parts[i % n][i // n] for i in range(len(messages))]

    def _decode(self, model, messages: list[str], protocol: Protocol, offset: int, rank: int) -> list[str]:
        import torch

        from align.data import encode_prompts
        from align.rollout.stages import cut

        out = []
        bar = None
        if self.progress:  # ``align generate``: blocks decoded, so a long decode visibly moves
            from tqdm.auto import tqdm

            batches = -(-len(messages) // self.batch_size)
            bar = tqdm(
                total=batches * (protocol.gen_length // protocol.block_length),
                desc="decoding",
                unit="block",
                disable=protocol.variable_length,
            )
        for start in range(0, len(messages), self.batch_size):
            prompts = [self.prompt(m, protocol) for m in messages[start : start + self.batch_size]]
            enc = encode_prompts(
                self.tokenizer,
                prompts,
                max_length=protocol.max_prompt_length,
                use_chat_template=protocol.use_chat_template,
                add_special_tokens=protocol.encode_special_tokens,
            )
            generator = torch.Generator(self.device).manual_seed(
                hash((self.seed, offset + start, rank)) % 2**63
            )
            result = self.engine.decode(
                model,
                enc["input_ids"].to(self.device),
                enc["attention_mask"].to(self.device),
                protocol.sampler(),
                generator=generator,
                on_block=None if bar is None else (lambda done, total: bar.update()),
                logits_hook=self.logits_hook(protocol),
                **self.stop_rule(protocol),
                **self.end_of_text_rules(protocol),
            )
            if protocol.whole_canvas:
                out += self.tokenizer.batch_decode(result.completion_ids.cpu(), skip_special_tokens=True)
            elif protocol.stop_strings:
                out += self.cut_texts(result.completion_ids.cpu(), result.commit_step.cpu(), protocol)
            else:  # the trainer's cut (align.rollout.stages)
                out += cut(result.completion_ids, self.spec, self.tokenizer, result.decoded).texts
            self.forward_passes = result.nfe  # of the last batch (``align generate`` reports it)
        if bar is not None:
            bar.close()
        return out


def process_state(device: str | None = None):
    """accelerate's PartialState for this process (CPU when asked or when there is no GPU)."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu" or not torch.cuda.is_available())


def end_processes(state, wait: bool) -> None:
    """End a data-parallel run's process group (a rank that just exits while others still work may abort
    them); ``wait`` first for every process to finish (not after a failure: the others may never arrive)."""
    import torch.distributed as dist

    if state.num_processes > 1 and dist.is_initialized():
        if wait:
            state.wait_for_everyone()
        dist.destroy_process_group()


def device_name(device) -> str:
    """``cpu``, or ``cuda:0 (NVIDIA H100 80GB HBM3)``: what the numbers were computed on."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def run_provenance(source: dict) -> dict:
    """What produced a result, so that two that disagree can be told apart: the source's engine and device
    (or the server's engine and version), the versions of this project and its key packages, Python, the
    host's architecture and the time."""
    import platform
    from importlib import metadata

    packages = {}
    for name in ("dllm-align", "torch", "transformers", "accelerate", "peft", "deepspeed"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        **source,
        "packages": packages,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def settings_hash(settings: dict) -> str:
    """sha256 of settings as sorted JSON (the same settings give the same hash on any machine)."""
    import hashlib

    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


def comparable_key(protocol: dict) -> str:
    """The hash ``align report`` compares rows by: the protocol's settings except the generation length and
    step count (the report shows the length in a column and plots scores against it)."""
    return settings_hash({k: v for k, v in protocol.items() if k not in ("gen_length", "steps")})


def folder_identity(path: str | None) -> dict | None:
    """What a model or adapter folder is: a local folder's content hash (XXH3-128 of every file, with its
    name), a hub id's revision when the local cache knows it; None for no path."""
    if path is None:
        return None
    if os.path.isdir(path):
        from align.checkpoints import _checksums

        names = sorted(
            os.path.relpath(os.path.join(root, n), path)
            for root, _, files in os.walk(path)
            for n in files
            if not n.startswith(".")
        )
        sums = _checksums(path, names)
        return {
            "path": path,
            "content": settings_hash(sums),
            "algorithm": sums["algorithm"],
            "files": len(names),
        }
    revision = None
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(path, "config.json")
        if isinstance(found, str) and "/snapshots/" in found:
            revision = found.split("/snapshots/")[1].split("/")[0]
    except Exception:  # noqa: BLE001 - no cache, no hub library: the revision is unknown
        revision = None
    return {"hub_id": path, "revision": revision}


def diffusion_description(model: str, adapter: str | None, dtype: str) -> dict:
    return {"source": "diffusion", "model": model, "adapter": adapter, "dtype": dtype}


@dataclass
class EndpointSource:
    """Completions from an OpenAI-compatible server (e.g. ``vllm serve``): ``/v1/chat/completions`` when the
    protocol uses the chat template (the server applies its own), else ``/v1/completions`` with the
    protocol's raw prompt text (``use_chat_template: false``: the system prompt, a newline, the question).
    Each request carries its own seed (``seed`` + the answer's index in the task), so the samples of one
    question differ at T > 0 and a rerun draws the same ones."""

    url: str
    served_model: str
    concurrency: int = 8
    retries: int = 3
    timeout_s: float = 600.0
    seed: int = 0
    unit = "req"  # progress counts requests per second

    @property
    def description(self) -> dict:
        return {"source": "endpoint", "url": self.url, "served_model": self.served_model}

    @property
    def chunk_size(self) -> int:
        return 4 * self.concurrency

    @property
    def base_url(self) -> str:
        base = self.url.rstrip("/")
        return base if base.endswith("/v1") else base + "/v1"

    @property
    def chat_url(self) -> str:
        return self.base_url + "/chat/completions"

    def _url(self, protocol: Protocol) -> str:
        return self.chat_url if protocol.use_chat_template else self.base_url + "/completions"

    def probe(self, message: str, protocol: Protocol) -> None:
        """The eval's first request with ``max_tokens`` 1 before any work: an unreachable server, an unknown
        model or a prompt the server refuses fails at once, with the server's own message."""
        body = {**self._body(message, protocol, 0), "max_tokens": 1}
        try:
            self._request(self._url(protocol), body, timeout_s=min(self.timeout_s, 30.0))
        except _REQUEST_ERRORS as exc:
            raise EndpointError(
                f"endpoint {self._url(protocol)} did not answer a 1-token request for model {self.served_model!r} "
                f"({_reason(exc)}); check --endpoint and --served-model (the server's /v1/models lists its names)."
            ) from exc

    def provenance(self) -> dict:
        """What the server says it is: the engine (``owned_by`` of its model list) and its version (vLLM's
        ``/version``); None for what it does not say."""
        root = self.base_url[: -len("/v1")]
        info = {"engine": None, "engine_version": None, "served_model": self.served_model}
        for url, read in (
            (
                self.base_url + "/models",
                lambda r: {
                    "engine": next(
                        (m.get("owned_by") for m in r.get("data", []) if m.get("id") == self.served_model),
                        None,
                    )
                },
            ),
            (root + "/version", lambda r: {"engine_version": r.get("version")}),
        ):
            try:
                with urllib.request.urlopen(url, timeout=min(self.timeout_s, 10.0)) as response:
                    info.update(read(json.loads(response.read())))
            except (*_REQUEST_ERRORS, AttributeError, TypeError):
                pass
        return info

    def _body(self, message: str, protocol: Protocol, index: int) -> dict:
        body = {
            "model": self.served_model,
            "max_tokens": protocol.gen_length,
            "temperature": protocol.temperature,
            "seed": self.seed + index,
        }
        if not protocol.use_chat_template:
            from align.data import prompt_text

            return {
                **body,
                "prompt": prompt_text(
                    None, message, system_prompt=protocol.system_prompt, use_chat_template=False
                ),
            }
        chat = [{"role": "user", "content": message}] if isinstance(message, str) else list(message)
        if protocol.system_prompt and protocol.system_in_user:
            chat[0] = {**chat[0], "content": f"{protocol.system_prompt}\n\n{chat[0]['content']}"}
        elif protocol.system_prompt:
            chat = [{"role": "system", "content": protocol.system_prompt}, *chat]
        return {**body, "messages": chat}

    def _request(self, url: str, body: dict, timeout_s: float) -> str:
        data = json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            choice = json.loads(response.read())["choices"][0]
        return (choice["message"]["content"] if "messages" in body else choice["text"]) or ""

    def _post(self, url: str, body: dict) -> str:
        for attempt in range(self.retries + 1):
            try:
                return self._request(url, body, self.timeout_s)
            except _REQUEST_ERRORS as exc:
                if attempt == self.retries or _client_error(exc):  # a 4xx will not go away by asking again
                    raise EndpointError(
                        f"endpoint {url}: request failed {attempt + 1} time(s) ({_reason(exc)})."
                    ) from exc
                time.sleep(min(2.0**attempt, 30.0))
        raise AssertionError("unreachable")

    def complete(self, messages: list[str], protocol: Protocol, offset: int = 0) -> list[str]:
        url = self._url(protocol)
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(
                pool.map(
                    lambda im: self._post(url, self._body(im[1], protocol, offset + im[0])),
                    enumerate(messages),
                )
            )


# what a failed or garbled request raises (URLError and timeouts are OSErrors; a reply without choices)
_REQUEST_ERRORS = (OSError, KeyError, IndexError, json.JSONDecodeError)


class EndpointError(RunError):
    """The endpoint could not be reached or answered something that is not a completion."""


def _client_error(exc: Exception) -> bool:
    return isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in (408, 429)


def _server_message(exc: urllib.error.HTTPError) -> str:
    """The error message in an HTTP error's body (OpenAI / vLLM: {"error": {"message": ...}} or
    {"message": ...}), else its first 300 characters."""
    try:
        text = exc.read().decode(errors="replace")
    except (OSError, AttributeError):
        return ""
    try:
        body = json.loads(text)
        error = body.get("error", body) if isinstance(body, dict) else body
        text = error.get("message", text) if isinstance(error, dict) else str(error)
    except (json.JSONDecodeError, AttributeError):
        pass
    return " ".join(str(text).split())[:300]


def _reason(exc: Exception) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        message = _server_message(exc)
        return f"HTTP {exc.code} {exc.reason}" + (f": {message}" if message else "")
    if isinstance(exc, urllib.error.URLError):
        return str(exc.reason)
    if isinstance(exc, (KeyError, IndexError, json.JSONDecodeError)):
        return f"the reply is not a completion: {type(exc).__name__} {exc}"
    return f"{type(exc).__name__}: {exc}"


# ---- one task: decode chunk by chunk, score as we go --------------------------------------------------
def evaluate_task(
    source,
    task: Task,
    rows: list[dict],
    protocol: Protocol,
    num_samples: int = 1,
    *,
    done: list[dict] | None = None,
    on_chunk=None,
    progress: bool = True,
    loop_unit: str = "words",
) -> tuple[dict, list]:
    """(metrics, samples) of one task: every row answered ``num_samples`` times and scored.

    Questions are decoded ``source.chunk_size`` at a time; each chunk is scored at once and handed to
    ``on_chunk(new_samples)`` (the folder writer), so an interrupted run keeps every finished chunk.
    ``done`` holds samples of an earlier run to continue from (their questions are not decoded again).
    Processes other than the main one of a data-parallel run return ``({}, [])``.
    """
    from tqdm.auto import tqdm

    protocol = protocol.for_task(task.name)
    messages = [task.messages(r, protocol) for r in rows for _ in range(num_samples)]
    expanded = [r for r in rows for _ in range(num_samples)]
    samples = list(done or [])
    is_main = getattr(source, "is_main", True)
    chunk = getattr(source, "chunk_size", None) or max(len(messages), 1)
    bar = tqdm(
        total=len(messages),
        initial=len(samples),
        desc=task.name,
        disable=not (progress and is_main),
        dynamic_ncols=True,
    )
    unit = getattr(source, "unit", "req")
    per_item = protocol.gen_length if unit == "tok" else 1  # canvas tokens per answer, or one request
    start_time, decoded = time.perf_counter(), 0
    metric = task.metric
    solved = _solved(samples, task)  # kept as a running sum, not recounted at every chunk
    with bar:
        for start in range(len(samples), len(messages), chunk):
            completions = source.complete(messages[start : start + chunk], protocol, start)
            decoded += len(completions)
            if not is_main:
                continue
            scores, extracted = task.score(expanded[start : start + chunk], completions, protocol)
            new = [
                {
                    "index": i // num_samples,
                    "sample": i % num_samples,
                    "prompt": messages[i],
                    "completion": c,
                    "extracted": e,
                    "score": s,
                }
                for i, c, e, s in zip(range(start, start + chunk), completions, extracted, scores)
            ]
            samples += new
            solved += _solved(new, task)
            if on_chunk is not None:
                on_chunk(new)
            rate = decoded * per_item / max(time.perf_counter() - start_time, 1e-9)
            bar.set_postfix(
                {metric: f"{solved / len(samples):.3f}", f"{unit}/s": f"{rate:.1f}"}, refresh=False
            )
            bar.update(len(new))
    if not is_main:
        return {}, []
    return task_metrics(task, samples, len(rows), num_samples, loop_unit), samples


def _solved(samples: list[dict], task: Task) -> float:
    """Sum of the running metric's terms: scores (math) or fully passed answers (code)."""
    if task.metric == "accuracy":
        return sum(s["score"] for s in samples)
    return sum(float(s["score"] >= 1.0) for s in samples)


def task_metrics(task: Task, samples: list[dict], n: int, num_samples: int, loop_unit: str = "words") -> dict:
    """``accuracy`` (math, verifier: mean score) or ``pass@1`` (code), plus ``pass@K`` for K samples per question."""
    scores = [s["score"] for s in samples]
    correct = [sum(s >= 1.0 for s in scores[i : i + num_samples]) for i in range(0, len(scores), num_samples)]
    metrics = {"n": n, "num_samples": num_samples}
    if task.metric == "accuracy":
        metrics["accuracy"] = _mean(scores)
    else:
        metrics["pass@1"] = _mean(pass_at_k(num_samples, c, 1) for c in correct)
    if num_samples > 1:
        metrics[f"pass@{num_samples}"] = _mean(pass_at_k(num_samples, c, num_samples) for c in correct)
    from rewards.loops import completion_loop, unclosed_think

    texts = [str(s.get("completion") or "") for s in samples]
    metrics["loop_rate"] = _mean(
        completion_loop(t, unit=loop_unit) is not None for t in texts
    )  # rewards/loops.py
    metrics["unclosed_think_rate"] = _mean(unclosed_think(t) for t in texts)
    return metrics


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


# ---- the output folder: results.json + <task>/samples.jsonl, written as work finishes -------------------
class OutputFolder:
    """``results.json`` (settings + finished tasks) and ``<task>/samples.jsonl`` (scored answers, appended
    chunk by chunk). Reopening a folder keeps its finished tasks and the finished answers of an unfinished
    one when the settings match; other settings are refused unless ``overwrite``."""

    def __init__(self, output: str, config: dict, overwrite: bool = False, provenance: dict | None = None):
        self.output, self.config, self.overwrite = output, config, overwrite
        self.results = {"tasks": {}, "config": config, "provenance": []}
        path = os.path.join(output, "results.json")
        if os.path.exists(path) and not overwrite:
            with open(path) as f:
                old = json.load(f)
            diff = _differences(old.get("config", {}), config)
            if diff:
                raise ValueError(
                    f"{output} holds results made with other settings ({diff}); pass --overwrite to replace "
                    "them or choose another --output."
                )
            self.results["tasks"] = old.get("tasks", {})
            self.results["provenance"] = old.get("provenance", [])
        if provenance is not None:  # one entry per run into this folder (a resumed task may span two)
            self.results["provenance"].append(provenance)
        self._write_results()

    def finished(self, name: str) -> dict | None:
        return self.results["tasks"].get(name)

    def resume(self, name: str, messages: list[str], num_samples: int) -> list[dict]:
        """Scored answers of ``name`` kept from an earlier run of these settings (a prefix of the task)."""
        path = self._samples_path(name)
        kept = []
        if os.path.exists(path) and not self.overwrite:
            with open(path) as f:
                for i, line in enumerate(f):
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a kill
                        break
                    if (
                        i >= len(messages)
                        or row.get("prompt") != messages[i]
                        or row.get("sample") != i % num_samples
                    ):
                        break
                    kept.append(row)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        return kept

    def append(self, name: str, samples: list[dict]) -> None:
        with open(self._samples_path(name), "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in samples)
            f.flush()

    def finish(self, name: str, metrics: dict) -> None:
        self.results["tasks"][name] = metrics
        self._write_results()

    def _samples_path(self, name: str) -> str:
        return os.path.join(self.output, name, "samples.jsonl")

    def _write_results(self) -> None:
        os.makedirs(self.output, exist_ok=True)
        path = os.path.join(self.output, "results.json")
        with open(path + ".tmp", "w") as f:
            json.dump(self.results, f, indent=2)
        os.replace(path + ".tmp", path)


def _differences(old: dict, new: dict, prefix: str = "") -> str:
    """'protocol.gen_length 256 -> 512, ...' for settings that differ (the process count may differ)."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in ("processes", "protocol_hash"):  # (the protocol's own fields say what changed)
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _differences(a, b, f"{prefix}{key}.")
            out += [inner] if inner else []
        elif a != b:
            out.append(f"{prefix}{key} {a!r} -> {b!r}")
    return ", ".join(out)
