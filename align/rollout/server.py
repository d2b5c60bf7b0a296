"""A rollout server for dense diffusion LMs: the project's sampler behind a request API with weight updates.

``DiffusionServer`` holds a model and decodes token-in / token-out requests with ``align.sampling`` (every
mode the sampler has; temperature honoured). Requests that arrive while a batch is being decoded queue and
are decoded together (cross-request batching: rows of one batch are independent, each left-padded and masked,
so a request's greedy tokens do not depend on its batch-mates). Each result's ``token_ids`` end at its stop
token; ``extra_fields`` carry the whole decoded canvas (``canvas``: a fixed canvas also holds the tokens the
sampler wrote after the stop token, which later steps saw), its step map (``commit_step``: the step at which
each canvas token was committed, -1 never), from which the ``trace`` estimator's passes are rebuilt, the
weights version it was decoded with and its batch's forward calls (``nfe``).

Two faces: ``generate(prompt_ids, sampling_params, request_id)`` (async, one request: verl's server
contract, the field names of its ``TokenOutput``) and ``generate_batch(prompts, sampling_params)`` (async,
one call for many rows: what ``ServerEngine`` sends). ``update_weights(named_tensors)`` joins the same queue
and copies weights between batches in arrival order: requests sent before it are decoded with the old weights,
requests sent after it with the new (each result names its ``weights_version``); a name the model lacks or a
shape it disagrees with is refused before any weight changes. A request with a ``seed`` decodes alone (its own
generator over its own canvas), so its tokens do not depend on what else was queued. ``decode_batch`` / ``load_weights`` are the same, synchronous, in the caller's thread.

Under Ray (``ray_server(...)``: the class as a Ray actor, made on demand) the same methods are remote; the
actor is async, so ``generate`` calls from many clients overlap and batch. ``ServerEngine`` (registered as
rollout engine ``server``) lets the project's trainer roll out on such a server: ``sync_weights(model)``
pushes the policy's weights before each rollout phase.

sampling_params: any ``SamplerSettings`` field by name (``temperature``, ``steps``, ``remasking``, ...), a
``seed`` (else the server's own generator; ``generator_state``: a generator's state to draw with), and vLLM / verl names that have a meaning here: ``max_tokens``
(must be at least the canvas: a diffusion canvas is not cut short), ``logprobs`` (none are returned: a
diffusion LM has no left-to-right token log-probabilities; the estimators compute likelihoods), and the
penalties / nucleus settings verl's agent loop always sends, at their off values (``repetition_penalty`` 1.0,
``top_p`` 1.0, ``top_k`` -1, ...: dropped; another value of a penalty is refused, naming it). Any other
key is refused in one line naming it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from dataclasses import dataclass, field

import torch

from align.rollout.engine import RolloutEngine, register_engine
from align.sampling.settings import SamplerSettings

_SETTING_NAMES = {f.name for f in dataclasses.fields(SamplerSettings)}
_IGNORED = {"logprobs", "detokenize", "skip_special_tokens", "spaces_between_special_tokens"}
# vLLM / verl sampling names and the values that switch them off (verl's agent loop always sends these): an off
# value means nothing to the diffusion sampler and is dropped; any other value is refused, naming it
_OFF = {"repetition_penalty": (1.0,), "presence_penalty": (0.0,), "frequency_penalty": (0.0,), "min_p": (0.0,),
        "top_p": (1.0,), "top_k": (-1, 0)}  # fmt: skip
_HONOURED = {"top_p", "top_k"}  # SamplerSettings fields (Dream's schedules) when not off


@dataclass
class TokenOutput:
    """One request's result, with verl's field names: the completion up to and including its stop token. Where
    verl is installed the server returns verl's own ``TokenOutput`` (``token_output``) with the same fields."""

    token_ids: list[int]
    log_probs: list[float] | None = None
    routed_experts: object = None
    stop_reason: str | None = None  # "completed" (a stop token), "length" (the canvas filled) or "aborted"
    num_preempted: int | None = 0  # a diffusion batch is never preempted
    extra_fields: dict = field(
        default_factory=dict
    )  # commit_step, weights_version, nfe (of its batch), decoded


def token_output(**fields):
    """verl's ``TokenOutput`` (what its agent loop reads) when verl is installed, else this module's twin."""
    try:
        from verl.workers.rollout.replica import TokenOutput as VerlTokenOutput
    except ImportError:
        return TokenOutput(**fields)
    return VerlTokenOutput(**fields)


class DiffusionServer:
    """The server (module docstring). ``model`` / ``tokenizer`` in this process, or ``model_path`` to load."""

    def __init__(
        self,
        model_path: str | None = None,
        *,
        model=None,
        tokenizer=None,
        settings=None,
        dtype: str = "float32",
        device: str | None = None,
        max_batch_rows: int = 256,
        seed: int = 0,
        trust_remote_code: bool = False,
    ):
        from align.machine import actor_device
        from align.models import family_spec, load_model, load_tokenizer

        device = actor_device(device)  # None: the GPU Ray gave this actor, else the CPU
        if model is None:
            if model_path is None:
                raise ValueError("DiffusionServer needs a model_path or a model.")
            model = load_model(model_path, dtype=dtype, trust_remote_code=trust_remote_code)
            tokenizer = tokenizer or load_tokenizer(model_path, trust_remote_code=trust_remote_code)
        self.model = model.to(device).eval()
        self.spec = family_spec(model, tokenizer)
        if not self.spec.stop_token_ids:
            raise ValueError("the model has no EOS / EoT id: a server cannot tell where a completion ends.")
        if isinstance(settings, dict):
            settings = SamplerSettings(**settings)
        if settings is None:
            raise ValueError(
                "DiffusionServer needs the default sampler settings (gen_length, steps, block_length)."
            )
        self.settings, self.device, self.max_batch_rows = settings, device, max_batch_rows
        self.pad_id = (
            self.spec.pad_token_id if self.spec.pad_token_id is not None else self.spec.stop_token_ids[0]
        )
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.version = 0
        self.stats = {"batches": 0, "rows": 0, "nfe": 0}
        self._lock = threading.Lock()  # one decode or weight update at a time
        self._pending: list = []  # _Request (generate) and _Update (update_weights), in arrival order
        self._runner: asyncio.Task | None = None
        self._paused: asyncio.Event | None = None  # set by abort_all_requests until resume_generation
        self._reject = False  # abort_all_requests(reject_request=True): refuse requests while paused

    # ---- settings -------------------------------------------------------------------------------------------
    def settings_for(self, sampling_params: dict | None) -> tuple[SamplerSettings, int | None]:
        """The sampler settings and seed a request asks for (module docstring); one-line errors otherwise."""
        params = dict(sampling_params or {})
        seed = params.pop("seed", None)
        if "generator_state" in params:  # the caller's generator itself (ServerEngine): its exact draws
            seed = params.pop("generator_state")
        max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", None))
        for key in _IGNORED:
            params.pop(key, None)
        for key, off in _OFF.items():
            if key in params and params[key] in off:
                params.pop(key)
        changing = sorted(k for k in set(params) & set(_OFF) if k not in _HONOURED)
        if changing:
            shown = ", ".join(f"{k} {params[k]!r}" for k in changing)
            offs = ", ".join(f"{k} {_OFF[k][0]!r}" for k in changing)
            raise ValueError(
                f"sampling_params {shown} would change the distribution in a way the diffusion sampler cannot "
                f"honour; send the off value ({offs}) or leave it out."
            )
        unknown = sorted(set(params) - _SETTING_NAMES)
        if unknown:
            raise ValueError(
                f"sampling_params {unknown} mean nothing to the diffusion sampler; it takes "
                f"{sorted(_SETTING_NAMES)}, seed, max_tokens."
            )
        settings = self.settings.replace(**params)
        if max_tokens is not None and int(max_tokens) < settings.gen_length:
            raise ValueError(
                f"max_tokens {max_tokens} is below the canvas (gen_length {settings.gen_length}): a "
                "diffusion canvas is decoded whole; lower gen_length (with steps / block_length)."
            )
        return settings, seed

    # ---- synchronous core -----------------------------------------------------------------------------------
    def decode_batch(self, prompts: list[list[int]], sampling_params: dict | None = None, *, hooks=None):
        """``TokenOutput`` per prompt, decoded as one batch (chunks of ``max_batch_rows``)."""
        settings, seed = self.settings_for(sampling_params)
        return self._decode(prompts, settings, seed, hooks or {})

    def _decode(self, prompts, settings: SamplerSettings, seed, hooks) -> list[TokenOutput]:
        from align.sampling import generate_in_chunks, truncate_at_stop
        from align.sampling.hooks import SamplerHooks

        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("every request needs a non-empty prompt_ids.")
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attn[i, width - len(p) :] = 1
        if seed is None:
            generator = self.generator
        elif isinstance(seed, torch.Tensor):
            generator = torch.Generator(device=self.device)
            generator.set_state(seed)
        else:
            generator = torch.Generator(device=self.device).manual_seed(int(seed))
        with self._lock, torch.no_grad():
            out = generate_in_chunks(
                self.model,
                ids.to(self.device),
                attn.to(self.device),
                settings,
                rows_per_call=self.max_batch_rows,
                spec=self.spec,
                generator=generator,
                hooks=SamplerHooks.of(**hooks),
            )
            version = self.version
            self.stats["batches"] += 1
            self.stats["rows"] += len(prompts)
            self.stats["nfe"] += out.nfe
        canvas = out.completion_ids.cpu()
        decoded = None if out.decoded is None else out.decoded.cpu()
        _, kept = truncate_at_stop(canvas, self.spec.stop_token_ids, self.pad_id, decoded)
        stopped = (torch.isin(canvas, torch.tensor(self.spec.stop_token_ids)) & kept.bool()).any(1)
        written = [None] * len(canvas) if decoded is None else decoded.tolist()
        results = []
        for row, steps, end, done, wrote in zip(
            canvas, out.commit_step.cpu(), kept.sum(1).tolist(), stopped, written, strict=True
        ):
            results.append(
                token_output(
                    token_ids=row[:end].tolist(),
                    stop_reason="completed" if done else "length",
                    num_preempted=0,
                    extra_fields={
                        "canvas": row.tolist(),
                        "commit_step": steps.tolist(),
                        "weights_version": version,
                        "nfe": out.nfe,
                        "decoded": wrote,
                    },
                )
            )
        if isinstance(seed, torch.Tensor):  # hand the advanced state back
            results[0].extra_fields["generator_state"] = generator.get_state()
        return results

    def load_weights(self, weights) -> int:
        """Copy ``(name, tensor)`` pairs (or a state dict) into the model between batches; returns the new
        weights version. Every name and shape is checked before anything is copied."""
        pairs = list(weights.items() if isinstance(weights, dict) else weights)
        own = dict(self.model.state_dict(keep_vars=True))
        for name, tensor in pairs:
            if name not in own:
                raise ValueError(
                    f"update_weights: the served model has no tensor {name!r} (it has e.g. "
                    f"{next(iter(own))!r}); send the policy's own state_dict names."
                )
            if tuple(tensor.shape) != tuple(own[name].shape):
                raise ValueError(
                    f"update_weights: {name} has shape {tuple(tensor.shape)}, the served model's is "
                    f"{tuple(own[name].shape)}."
                )
        with self._lock, torch.no_grad():
            for name, tensor in pairs:
                own[name].copy_(tensor.to(own[name].device, own[name].dtype))
            self.version += 1
            return self.version

    # ---- async faces (verl's contract; Ray actor methods) -----------------------------------------------------
    async def generate(
        self, prompt_ids: list[int], sampling_params: dict | None = None, request_id: str = "", **unused
    ) -> TokenOutput:
        """One request (verl's token-in / token-out contract). Queued and decoded with the requests that
        arrive while the previous batch runs and ask for the same settings. ``unused`` takes verl's
        multimodal and priority arguments."""
        if "generator_state" in (sampling_params or {}):
            raise ValueError(
                "generate takes a seed, not a generator_state (that is generate_batch's, one caller's)."
            )
        settings, seed = self.settings_for(sampling_params)
        prompt = self.check_prompt(prompt_ids, settings)  # a bad request is refused alone, before any batch
        if self._paused is not None:  # between abort_all_requests and resume_generation (a weight sync)
            if self._reject:
                raise RuntimeError(
                    "the server is paused (abort_all_requests with reject_request); retry later."
                )
            await self._paused.wait()
        return await self._enqueue(
            _Request(prompt, settings, seed, asyncio.get_running_loop().create_future())
        )

    async def _enqueue(self, entry):
        self._pending.append(entry)
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run_pending())
        return await entry.future

    def _next_batch(self) -> list:
        """The queue's head: a weight update alone, or the requests that batch with the first one. Requests
        batch only with requests queued before the next update (an update never jumps a request, nor a
        request an update), and a seeded request decodes alone: its own generator over its own canvas, so
        its tokens do not depend on batch-mates."""
        head = self._pending[0]
        if isinstance(head, _Update) or head.seed is not None:
            return [head]
        group = []
        for entry in self._pending:
            if isinstance(entry, _Update) or len(group) == self.max_batch_rows:
                break
            if entry.seed is None and entry.settings == head.settings:
                group.append(entry)
        return group

    async def _run_pending(self) -> None:
        await asyncio.sleep(0)  # let the requests sent together reach the queue
        while self._pending:
            self._pending = [r for r in self._pending if not r.future.done()]  # cancelled callers leave
            if not self._pending:
                break
            group = self._next_batch()
            for r in group:
                self._pending.remove(r)
            try:
                if isinstance(group[0], _Update):
                    results = [await asyncio.to_thread(self.load_weights, group[0].weights)]
                else:
                    head = group[0]
                    results = await asyncio.to_thread(
                        self._decode, [r.prompt for r in group], head.settings, head.seed, {}
                    )
            except Exception as error:  # every request of the batch learns why
                results = [error] * len(group)
            for r, result in zip(group, results, strict=True):
                # a caller that cancelled or went away while the batch ran: only it misses out
                if r.future.done():
                    continue
                if isinstance(result, Exception):
                    r.future.set_exception(result)
                else:
                    r.future.set_result(result)

    def check_prompt(self, prompt_ids, settings: SamplerSettings) -> list[int]:
        """A request's prompt as a list of ids, or a one-line ValueError (empty, not whole numbers, an id
        outside the vocabulary: on a GPU an out-of-range index would poison the device for every later batch;
        longer than the model's context with the canvas)."""
        import numbers

        prompt = list(prompt_ids)
        if not prompt:
            raise ValueError("every request needs a non-empty prompt_ids.")
        vocab = self.model.get_input_embeddings().num_embeddings
        bad = [
            t
            for t in prompt
            if isinstance(t, bool) or not isinstance(t, numbers.Integral) or not 0 <= t < vocab
        ]
        if bad:
            raise ValueError(f"prompt_ids hold {len(bad)} id(s) outside the vocabulary 0..{vocab - 1} (e.g. "
                             f"{bad[0]!r}); send the served tokenizer's ids.")  # fmt: skip
        config = self.model.config
        context = getattr(config, "max_sequence_length", None) or getattr(
            config, "max_position_embeddings", None
        )
        if context and len(prompt) + settings.gen_length > context:
            raise ValueError(f"prompt of {len(prompt)} ids + gen_length {settings.gen_length} exceeds the model's "
                             f"context of {context}; shorten the prompt.")  # fmt: skip
        return [int(t) for t in prompt]

    async def generate_batch(self, prompts: list[list[int]], sampling_params: dict | None = None, hooks=None):
        return await asyncio.to_thread(self.decode_batch, prompts, sampling_params, hooks=hooks)

    async def update_weights(self, weights, wire_format: str = "named_tensors", **unused) -> int:
        if wire_format != "named_tensors":
            raise ValueError(f"update_weights takes wire_format 'named_tensors', not {wire_format!r}.")
        return await self._enqueue(_Update(weights, asyncio.get_running_loop().create_future()))

    async def get_stats(self) -> dict:
        return {**self.stats, "weights_version": self.version}

    # ---- verl's lifecycle calls around a weight sync ------------------------------------------------------
    async def abort_all_requests(self, reject_request: bool = False) -> int:
        """Answer every queued request now with ``stop_reason`` "aborted" (no tokens: verl's partial rollout
        sends it again) and hold new ones until ``resume_generation`` (``reject_request``: refuse them instead);
        a batch already decoding finishes. Returns how many were aborted."""
        if self._paused is None:
            self._paused = asyncio.Event()
        self._reject = reject_request
        queued = [r for r in self._pending if isinstance(r, _Request)]
        self._pending = [r for r in self._pending if isinstance(r, _Update)]  # queued updates still apply
        for r in queued:
            if not r.future.done():
                r.future.set_result(token_output(token_ids=[], stop_reason="aborted", num_preempted=0,
                                                 extra_fields={"weights_version": self.version}))  # fmt: skip
        return len(queued)

    async def resume_generation(self) -> None:
        """Let the requests held since ``abort_all_requests`` join batches again."""
        paused, self._paused, self._reject = self._paused, None, False
        if paused is not None:
            paused.set()

    # No KV cache lives across requests here (each batch's cache is its own) and no profiler runs: explicit
    # no-ops, so verl's weight sync and profiling calls succeed.
    async def clear_kv_cache(self) -> None:
        return None

    async def release_kv_cache(self) -> None:
        return None

    async def resume_kv_cache(self) -> None:
        return None

    async def start_profile(self, **kwargs) -> None:
        return None

    async def stop_profile(self) -> None:
        return None

    # weights and caches stay resident on this server
    async def resume(self, tags=None):
        return None

    async def release(self):
        return None

    async def wake_up(self):
        return None

    async def sleep(self):
        return None


@dataclass
class _Request:
    prompt: list[int]
    settings: SamplerSettings
    seed: object  # None (the server's generator), an int seed
    future: asyncio.Future


@dataclass
class _Update:
    weights: object  # named tensors (update_weights)
    future: asyncio.Future


def ray_server(*args, num_cpus: float = 1, num_gpus: float = 0, name: str | None = None, **kwargs):
    """A ``DiffusionServer`` as a Ray actor (Ray must be initialised); arguments as ``DiffusionServer``;
    ``name``: a named actor (``ray.get_actor(name)`` finds it: verl's rollout adapter does)."""
    import ray

    actor = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(DiffusionServer)
    if name is not None:
        actor = actor.options(name=name)
    return actor.remote(*args, **kwargs)


@register_engine("server")
class ServerEngine(RolloutEngine):
    """The project's trainer rolling out on a ``DiffusionServer`` (a Ray actor handle, or an object in this
    process): the batch goes as one ``generate_batch`` call carrying the trainer's generator state, which the
    server decodes with and hands back advanced, so the rollouts are the in-process ones draw for draw;
    ``sync_weights`` pushes the policy's state dict. Rows go as one batch (the server's ``max_batch_rows``
    chunks them as ``rollout_batch_size`` does in process)."""

    def __init__(self, server, *, spec):
        self.server, self.spec = server, spec
        self.remote = hasattr(server.generate_batch, "remote")

    def _call(self, method: str, *args, **kwargs):
        fn = getattr(self.server, method)
        if self.remote:
            import ray

            return ray.get(fn.remote(*args, **kwargs))
        return asyncio.run(fn(*args, **kwargs))

    def sync_weights(self, model) -> None:
        from align.models.family import _unwrap

        state = {k: v.detach().cpu() for k, v in _unwrap(model).state_dict().items()}
        self._call("update_weights", state)

    def generate(
        self, prompt_ids, attention_mask, settings: SamplerSettings, *, generator=None, on_block=None, **hooks
    ):
        from align.sampling import GenerationOutput

        prompts = [
            row[mask.bool()].tolist()
            for row, mask in zip(prompt_ids.cpu(), attention_mask.cpu(), strict=True)
        ]
        params = dataclasses.asdict(settings)
        if generator is not None:
            params["generator_state"] = generator.get_state()
        results = self._call("generate_batch", prompts, params, hooks or None)
        if generator is not None:  # the server drew from the same stream: continue it here
            generator.set_state(results[0].extra_fields["generator_state"])
        completion = torch.tensor([r.extra_fields["canvas"] for r in results], dtype=torch.long)
        commit = torch.tensor([r.extra_fields["commit_step"] for r in results], dtype=torch.long)
        device = prompt_ids.device
        decoded = [r.extra_fields.get("decoded") for r in results]
        decoded = None if None in decoded else torch.tensor(decoded, dtype=torch.long, device=device)
        if on_block is not None:
            on_block(1, 1)
        return GenerationOutput(
            sequences=torch.cat([prompt_ids, completion.to(device)], 1),
            attention_mask=torch.cat([attention_mask, torch.ones_like(completion).to(device)], 1),
            commit_step=commit.to(device),
            nfe=results[0].extra_fields["nfe"] if results else 0,
            prompt_length=prompt_ids.shape[1],
            decoded=decoded,
        )

    def describe(self) -> dict:
        return {"engine": self.name, "remote": self.remote}
