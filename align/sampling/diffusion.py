"""The one home of masked-diffusion decoding: LLaDA's reference sampler and the Fast-dLLM speedups.

Reference mode (``threshold=None, cache=None``) is the algorithm of LLaDA's ``generate.py``
(Nie et al. 2025, Alg. 4 semi-autoregressive remasking):

* canvas = left-padded prompt + ``gen_length`` mask tokens, split into ``gen_length / block_length``
  blocks decoded left to right, ``steps / num_blocks`` steps each;
* per block and row, ``n`` masked tokens are committed on a uniform schedule: ``n // s`` per step plus one
  for the first ``n % s`` steps;
* each step proposes x0 for every masked position: ``argmax(logits)`` at T = 0, a draw from
  ``softmax(logits / T)`` at T > 0 (the official script uses the Gumbel-max form
  ``argmax(exp(logits) / (-log u)^T)`` in float64, the same distribution); the confidence is the
  *untempered* softmax probability of ``x0`` (``low_confidence``) or ``u ~ U(0, 1)`` (``random``);
  committed positions and positions beyond the current block get confidence -inf and the top-k per row
  are committed; committed tokens never change;
* classifier-free guidance: ``logits = un + (cfg_scale + 1) * (cond - un)`` where the unconditional copy
  has its (real) prompt tokens replaced by masks.

Deliberate differences from the official script, none changing the distribution of outputs: proposals
are computed for the still-masked positions of the current block only, since nothing else can be
committed; the mask token's own logit is excluded, so the sampler never emits a mask; at T > 0 one
uniform per position replaces a float64 Gumbel per vocabulary entry (see ``sample_tokens``). At T = 0
the arithmetic is the official one (argmax and softmax in the logits' dtype): the same tokens.

Fast modes (Wu et al. 2025, Fast-dLLM): ``threshold`` commits every masked position of the block whose
confidence is >= threshold (at least as many as needed to finish the block within its ``steps`` budget,
and at least one); ``cache="prefix"`` re-encodes the canvas at each block start and reuses the prefix
keys/values inside the block; ``cache="dual"`` also reuses the (stale) suffix. The cached keys/values
of the prefix (and suffix) were computed when the block was all masks; every token committed since makes
them staler (attention is bidirectional), which is the approximation of both modes, not a defect: the
first pass of a block is exact, and tests/test_sampling.py checks that a cache refreshed at every pass
reproduces reference decoding. ``cache_refresh=k`` bounds the staleness: the whole canvas is re-encoded
(one full pass, the cache rebuilt) as soon as some row has committed k tokens since the last full pass
(None: only at block starts, as Fast-dLLM). ``variable_length=True``
grows the canvas block by block until every row has emitted EOS or ``gen_length`` is reached (iLLaDA);
finished rows stop costing compute.

``generate`` dispatches through the decoder registry (``align.sampling.decoders``): this module registers
LLaDA's blocks; Dream's own ``diffusion_generate`` schedules register in ``align.sampling.dream`` (origin /
maskgit_plus / topk_margin / entropy); block-diffusion models (block-causal attention: SDAR, TraDo) decode
with SDAR's schedules and an exact block cache registered in ``align.sampling.block``.

Not covered: Fast-dLLM's KV caches for full-attention models other than the native LLaDA class.
"""

from __future__ import annotations

import math

import torch

from align.errors import RunError
from align.models.family import FamilySpec, family_spec, model_logits
from align.sampling.decoders import Decoder, check_hooks, decoder_for, register
from align.sampling.family_checks import check_family_settings
from align.sampling.hooks import NO_HOOKS, SamplerHooks
from align.sampling.output import GenerationOutput, truncate_at_stop  # noqa: F401 (truncate_at_stop: re-exported)
from align.sampling.settings import REMASKING, SamplerSettings

CACHE_MODES = (None, "prefix", "dual")


def num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """Uniform commit schedule [B, steps]: ``n // steps`` per step, +1 for the first ``n % steps`` steps.

    mask_index: [B, n] bool, the masked positions of the block.
    """
    n = mask_index.sum(dim=1, keepdim=True)
    base, rem = n // steps, n % steps
    schedule = base.expand(-1, steps).clone()
    schedule += (torch.arange(steps, device=mask_index.device)[None] < rem).long()
    return schedule


def sample_tokens(
    logits: torch.Tensor,
    temperature: float,
    remasking: str,
    generator: torch.Generator | None = None,
    masked: torch.Tensor | None = None,
    excluded_ids: list[int] | tuple[int, ...] = (),
    confidence_excluded_ids: list[int] | tuple[int, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Propose tokens and confidences for the ``masked`` positions of logits [B, S, V].

    Returns (x0 [B, S] long, confidence [B, S] float64); positions outside ``masked`` (default: all) get
    x0 = 0 and confidence -inf, and cost nothing: only the still-masked rows are read. ``excluded_ids``
    (the mask token, suppressed tokens) get probability 0.

    * ``temperature == 0``: x0 = argmax and the confidence is softmax(logits)[x0] in the logits' own dtype,
      the arithmetic of LLaDA's ``generate.py`` (no float64 copy), so reference mode is token-for-token the
      official sampler.
    * ``temperature > 0``: x0 ~ softmax(logits / T), drawn by ``draw_categorical``: one float64 uniform per
      position and a two-level inverse CDF over the unnormalised weights, where LLaDA draws a float64 Gumbel
      per vocabulary entry (``argmax(exp(logits) / (-log u)^T)``, the same distribution) and
      ``torch.multinomial`` an exponential per entry (most of the sampler's CPU outside the model at a
      126k vocabulary). tests/test_sampling.py checks the distribution with chi-square tests. The confidence
      is the untempered float32 softmax probability of x0.
    * ``random`` remasking: the confidence is a uniform draw per position.
    * ``confidence_excluded_ids`` (LLaDA's ``confidence_eos_eot_inf``): after x0 is chosen, the confidence
      softmax gives these ids logit -inf (a chosen one has confidence 0, the others are renormalised). At
      T > 0 the authors' code excludes only EoT (its EOS assignment lands on the Gumbel-noised copy, after
      the choice); here every listed id is excluded at any temperature.
    """
    b, s, _ = logits.shape
    if masked is None:
        masked = torch.ones(b, s, dtype=torch.bool, device=logits.device)
    rows = logits[masked]  # [N, V]: the still-masked positions only (a copy, in the logits' dtype)
    if len(excluded_ids):
        rows[:, list(excluded_ids)] = -math.inf
    if temperature > 0:
        rows = rows.float()
        probs = torch.softmax(rows / temperature if temperature != 1.0 else rows, dim=-1)
        picked, total = draw_categorical(probs, generator)
        if not torch.isfinite(total).all():  # NaN or +inf logits make a whole row NaN
            raise RunError(
                "the model's next-token probabilities are not finite (NaN or inf logits): its weights have "
                "diverged or the checkpoint is corrupt; lower learning_rate or load an earlier checkpoint."
            )
    else:
        picked = rows.argmax(-1)
    if remasking == "low_confidence":
        if len(confidence_excluded_ids):
            rows = rows.clone()  # the proposals above saw these ids; the confidence does not
            rows[:, list(confidence_excluded_ids)] = -math.inf
            probs = torch.softmax(rows, dim=-1)
        elif temperature != 1.0:
            probs = torch.softmax(rows, dim=-1)
        picked_conf = probs.gather(-1, picked[:, None])[:, 0].double()
    elif remasking == "random":
        picked_conf = torch.rand(picked.shape, generator=generator, device=logits.device, dtype=torch.float64)
    else:
        raise ValueError(f"remasking {remasking!r} is not one of {REMASKING}.")
    x0 = torch.zeros(b, s, dtype=torch.long, device=logits.device)
    confidence = torch.full((b, s), -math.inf, dtype=torch.float64, device=logits.device)
    x0[masked], confidence[masked] = picked, picked_conf
    return x0, confidence


_DRAW_BLOCK = 1024


def draw_categorical(
    weights: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One index per row of ``weights`` [N, V] (non-negative, unnormalised float32), drawn with probability
    weight / row total by a two-level inverse CDF from one float64 uniform per row: the row's mass in blocks of
    1,024 entries (float32 sums, float64 prefix sums), the block holding ``u * total``, then the entry inside it
    (float64 prefix sums of that block only). One pass over the weights; zero-weight entries are never drawn.
    Returns (indices [N] long, row totals [N] float64)."""
    n, v = weights.shape
    if n == 0:
        empty = torch.zeros(0, device=weights.device)
        return empty.long(), empty.double()
    full = v - v % _DRAW_BLOCK
    masses = weights[:, :full].reshape(n, -1, _DRAW_BLOCK).sum(-1)
    if full < v:
        masses = torch.cat([masses, weights[:, full:].sum(-1, keepdim=True)], -1)
    cum = masses.double().cumsum(-1)  # [N, blocks]
    u = torch.rand(n, 1, generator=generator, dtype=torch.float64, device=weights.device) * cum[:, -1:]
    block = torch.searchsorted(cum, u, right=True).clamp_max(cum.shape[1] - 1)  # the first block past u
    before = torch.where(block > 0, cum.gather(-1, (block - 1).clamp_min(0)), torch.zeros_like(u))
    index = block * _DRAW_BLOCK + torch.arange(_DRAW_BLOCK, device=weights.device)  # [N, block size]
    inside = weights.gather(-1, index.clamp_max(v - 1)).double() * (index < v)
    within = torch.searchsorted(inside.cumsum(-1), u - before, right=True)
    last = (inside > 0).cumsum(-1).argmax(-1, keepdim=True)  # the block's last drawable entry (rounding)
    return index.gather(-1, torch.minimum(within, last))[:, 0], cum[:, -1]


def select_transfer(
    confidence: torch.Tensor,
    num_to_commit: torch.Tensor,
    threshold: float | None = None,
) -> torch.Tensor:
    """Boolean [B, S] of positions to commit: top-k per row, or (threshold) all >= threshold, k at least.

    confidence: [B, S] with -inf at positions that must not be committed. num_to_commit: [B] long.
    """
    k = num_to_commit.clone()
    if threshold is not None:
        k = torch.maximum(k, (confidence >= threshold).sum(-1))
    available = torch.isfinite(confidence).sum(-1)
    k = torch.minimum(k, available)
    order = torch.argsort(confidence, dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(order.shape[-1], device=order.device).expand_as(order))
    return rank < k[:, None]


def check_pad_id(spec: FamilySpec) -> None:
    if spec.pad_token_id is not None and spec.pad_token_id == spec.mask_token_id:
        raise ValueError(
            f"pad id equals mask id ({spec.mask_token_id}): padded prompt positions would read as masks. "
            "Pad with the EOS id instead (tokenizer.pad_token = tokenizer.eos_token)."
        )


class _Denoiser:
    """Computes the (guided, shifted) logits of one block, with optional KV caching."""

    def __init__(
        self,
        model,
        spec: FamilySpec,
        cfg_scale: float,
        cache: str | None,
        suppress: list[int],
        refresh: int | None = None,
    ):
        if cache not in CACHE_MODES:
            raise ValueError(f"cache {cache!r} is not one of {CACHE_MODES}.")
        if refresh is not None and (cache is None or refresh < 1):
            raise ValueError(f"cache_refresh {refresh!r} needs a cache mode and a value >= 1.")
        if cache is not None and not spec.family.supports_cache:
            raise ValueError(
                f"cache={cache!r} is not supported for the {spec.family.name} family ({spec.model_type}): it has no "
                "KV-cache forward; decode with cache None."
            )
        self.model, self.spec, self.cfg_scale, self.cache = model, spec, cfg_scale, cache
        self.suppress, self.refresh = suppress, refresh
        self.nfe = 0
        self._kv = None
        self.full_passes = 0  # passes over the whole canvas (block starts and refreshes)

    def _inputs(self, x: torch.Tensor, attn: torch.Tensor | None, prompt_real: torch.Tensor):
        if self.cfg_scale <= 0:
            return x, attn
        un_x = x.clone()
        un_x[prompt_real] = self.spec.mask_token_id
        return torch.cat([x, un_x]), (None if attn is None else torch.cat([attn, attn]))

    def needs_full_pass(self, first_step: bool, committed_since: int) -> bool:
        """Whether this pass must encode the whole canvas: no cache, a block start, or a due refresh."""
        due = self.refresh is not None and committed_since >= self.refresh
        return self.cache is None or first_step or due

    def block_logits(self, x, attn, prompt_real, start: int, end: int, full: bool) -> torch.Tensor:
        """Logits [B, end - start, V] of the block positions for canvas x [B, L]; ``full`` re-encodes the
        whole canvas (and rebuilds the cache), else the cache serves the positions outside the block."""
        inp, mask = self._inputs(x, attn, prompt_real)
        self.nfe += 1
        if full:
            self.full_passes += 1
            out = model_logits(
                self.model, inp, mask, self.spec, use_cache=self.cache is not None, logits_range=(start, end)
            )
            if self.cache == "prefix":
                self._kv = [(k[:, :, :start], v[:, :, :start]) for k, v in out.kv_cache]
            elif self.cache == "dual":
                self._kv = out.kv_cache
        else:
            seg_end = inp.shape[1] if self.cache == "prefix" else end
            out = self.spec.family.cached_forward(
                self.model, inp[:, start:seg_end], mask, self._kv, start, (0, end - start)
            )
        logits = out.logits
        if self.cfg_scale > 0:
            cond, un = logits.chunk(2)
            logits = un + (self.cfg_scale + 1) * (cond - un)
        return logits  # the mask and suppressed ids are excluded by sample_tokens, on the masked rows only


def _decode_block(
    den: _Denoiser,
    x: torch.Tensor,
    attn: torch.Tensor | None,
    prompt_real: torch.Tensor,
    commit: torch.Tensor,
    start: int,
    end: int,
    steps: int,
    step_offset: int,
    opts: dict,
) -> None:
    """Unmask x[:, start:end] in at most ``steps`` steps (in place); commit[:, start:end] gets step ids."""
    mask_id = den.spec.mask_token_id
    schedule = num_transfer_tokens(x[:, start:end] == mask_id, steps)
    since = 0  # the most tokens any row committed since the last full pass
    for i in range(steps):
        masked = x[:, start:end] == mask_id
        if not masked.any():
            break
        full = den.needs_full_pass(i == 0, since)
        since = 0 if full else since
        logits = den.block_logits(x, attn, prompt_real, start, end, full)
        if opts["logits_hook"] is not None:  # protocol behaviour, e.g. iLLaDA's end-of-thinking boost
            opts["logits_hook"](
                logits,
                x,
                masked,
                opts["completion_start"],
                start - opts["completion_start"],
                budgets=opts["budgets"],
            )
        x0, conf = sample_tokens(
            logits,
            opts["temperature"],
            opts["remasking"],
            opts["generator"],
            masked,
            [mask_id, *den.suppress],
            opts["confidence_excluded"],
        )
        if opts["deprioritize"] is not None:
            conf = conf.masked_fill(torch.isin(x0, opts["deprioritize"]) & masked, 0.0)
        if opts["threshold"] is None:
            k = schedule[:, i]
        else:
            remaining = masked.sum(-1)
            k = torch.clamp(torch.div(remaining + (steps - i) - 1, steps - i, rounding_mode="floor"), min=1)
        transfer = select_transfer(conf, k, opts["threshold"]) & masked
        if den.refresh is not None:  # (a host sync per pass, only when refreshes are asked for)
            since += int(transfer.sum(-1).max())
        block = x[:, start:end]
        block[transfer] = x0[transfer]
        commit[:, start:end][transfer] = step_offset + i


def _finished(x: torch.Tensor, p: int, end: int, stop_ids: torch.Tensor) -> torch.Tensor:
    return torch.isin(x[:, p:end], stop_ids).any(-1)


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    settings: SamplerSettings | None = None,
    *,
    spec: FamilySpec | None = None,
    generator: torch.Generator | None = None,
    hooks: SamplerHooks | None = None,
    on_block=None,
) -> GenerationOutput:
    """Decode ``settings.gen_length`` tokens after each (left-padded) prompt of input_ids [B, P] with the
    decoder registered for ``settings.remasking`` (``align.sampling.decoders``): LLaDA's blocks here, Dream's
    schedules (``align.sampling.dream``), block diffusion (``align.sampling.block``).

    ``hooks`` (``align.sampling.hooks.SamplerHooks``) add what is not a setting: a logits hook (protocol
    behaviour such as iLLaDA's end-of-thinking boost, ``align.sampling.boost``), a variable-length stop check
    and context length, suppressed and deprioritized ids; a decoder refuses a hook it does not honour.
    ``on_block(done, total)`` reports progress. Returns a :class:`GenerationOutput`.
    """
    if settings is None:
        raise TypeError(
            "generate needs settings: align.sampling.SamplerSettings(gen_length=, steps=, block_length=)."
        )
    spec = family_spec(model) if spec is None else spec
    hooks = NO_HOOKS if hooks is None else hooks
    check_settings(settings, spec)
    decoder = decoder_for(settings.remasking)
    check_hooks(decoder, settings.remasking, hooks)
    return decoder.run(
        model,
        input_ids,
        attention_mask,
        settings,
        spec=spec,
        generator=generator,
        hooks=hooks,
        on_block=on_block,
    )


def check_settings(s: SamplerSettings, spec: FamilySpec) -> None:
    """What ``generate`` checks before decoding, one line each: the schedule's arithmetic and modes, the pad id,
    and whether the family can run them."""
    s.check()
    check_pad_id(spec)
    check_family_settings(spec, cache=s.cache, remasking=s.remasking, block_length=s.block_length)


def _decode_llada_blocks(
    model, input_ids, attention_mask, s: SamplerSettings, *, spec, generator, hooks, on_block
):
    """LLaDA's semi-autoregressive blocks (fixed canvas, or grown block by block with ``variable_length``)."""
    device = input_ids.device
    b, p = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    num_blocks = s.gen_length // s.block_length
    steps_per_block = s.steps // num_blocks
    deprioritize = torch.tensor(hooks.deprioritize_token_ids, dtype=torch.long, device=device)
    opts = {
        "temperature": s.temperature,
        "remasking": s.remasking,
        "generator": generator,
        "threshold": s.threshold,
        "deprioritize": deprioritize if len(deprioritize) else None,
        "logits_hook": hooks.logits_hook,
        "completion_start": p,
        "confidence_excluded": hooks.confidence_excluded_ids,
    }
    if (hooks.stop_check is not None or hooks.max_length is not None) and not s.variable_length:
        raise ValueError(
            "stop_check and max_length decide when variable-length rows stop; set variable_length."
        )
    budgets = torch.full((b,), s.gen_length, dtype=torch.long, device=device)
    if hooks.max_length is not None:
        room = hooks.max_length - attention_mask.sum(-1).to(device)
        budgets = torch.clamp(torch.minimum(budgets, room) // s.block_length * s.block_length, min=0)
        if bool((budgets == 0).any()):
            raise ValueError(
                f"a prompt leaves less than one block of {s.block_length} tokens before max_length "
                f"{hooks.max_length}; shorten it or raise max_length."
            )
    opts["budgets"], opts["stop_check"] = budgets, hooks.stop_check
    den = _Denoiser(model, spec, s.cfg_scale, s.cache, list(hooks.suppress_token_ids), s.cache_refresh)
    total = p + s.gen_length
    x = torch.full((b, total), spec.mask_token_id, dtype=torch.long, device=device)
    x[:, :p] = input_ids
    attn = torch.cat([attention_mask.long(), torch.ones(b, s.gen_length, dtype=torch.long, device=device)], 1)
    commit = torch.full((b, total), -1, dtype=torch.long, device=device)
    prompt_real = torch.zeros(b, total, dtype=torch.bool, device=device)
    prompt_real[:, :p] = attention_mask.bool()
    if not s.variable_length:  # the variable-length branch is after this one
        model_attn = None if bool(attention_mask.all()) else attn
        for blk in range(num_blocks):
            start = p + blk * s.block_length
            _decode_block(
                den,
                x,
                model_attn,
                prompt_real,
                commit,
                start,
                start + s.block_length,
                steps_per_block,
                blk * steps_per_block,
                opts,
            )
            if on_block is not None:  # progress: blocks done of num_blocks
                on_block(blk + 1, num_blocks)
    decoded = None
    if s.variable_length:
        decoded = _generate_variable_length(
            den, x, attn, prompt_real, commit, p, s.block_length, steps_per_block, opts
        )
    return GenerationOutput(
        sequences=x,
        attention_mask=attn,
        commit_step=commit[:, p:],
        nfe=den.nfe,
        prompt_length=p,
        full_passes=den.full_passes,
        decoded=decoded,
    )


register(
    Decoder(
        kind="llada_blocks",
        schedules=REMASKING,
        attention="full",
        hooks=frozenset(SamplerHooks.names()),
        run=_decode_llada_blocks,
    )
)


def generate_in_chunks(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    settings: SamplerSettings,
    *,
    rows_per_call: int | None,
    **call,
) -> GenerationOutput:
    """:func:`generate` over ``rows_per_call`` rows at a time (None: all at once), so that the transient
    memory of a decoding pass (logits [rows, block, V], caches) is bounded whatever the batch. Chunks run
    one after another with the same ``generator``; ``nfe`` / ``full_passes`` add up over the chunks. ``call``:
    generate's keywords (spec, generator, hooks, on_block)."""
    b = input_ids.shape[0]
    if rows_per_call is None or rows_per_call >= b:
        return generate(model, input_ids, attention_mask, settings, **call)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    parts = [
        generate(
            model, input_ids[i : i + rows_per_call], attention_mask[i : i + rows_per_call], settings, **call
        )
        for i in range(0, b, rows_per_call)
    ]
    return GenerationOutput(
        sequences=torch.cat([o.sequences for o in parts]),
        attention_mask=torch.cat([o.attention_mask for o in parts]),
        commit_step=torch.cat([o.commit_step for o in parts]),
        nfe=sum(o.nfe for o in parts),
        prompt_length=parts[0].prompt_length,
        full_passes=sum(o.full_passes for o in parts),
        decoded=None if parts[0].decoded is None else torch.cat([o.decoded for o in parts]),
    )


def _generate_variable_length(den, x, attn, prompt_real, commit, p, block_length, steps_per_block, opts):
    """Grow the canvas block by block for the rows that have not emitted a stop token yet (in place).

    Each block is decoded on the canvas cut at the block's end (no future masks), like iLLaDA. Rows that
    finish are filled with EOS after their last block and leave the batch. Returns [B] the completion
    tokens each row decoded.
    """
    spec = den.spec
    stop = torch.tensor(spec.stop_token_ids, dtype=torch.long, device=x.device)
    if not len(stop):
        raise ValueError("variable_length=True needs an EOS/EoT id in the family spec to know when to stop.")
    fill = spec.eos_token_id if spec.eos_token_id is not None else int(stop[0])
    active = torch.arange(x.shape[0], device=x.device)
    budgets = opts["budgets"]
    decoded = budgets.clone()
    num_blocks = int(budgets.max()) // block_length
    for blk in range(num_blocks):
        start, end = p + blk * block_length, p + (blk + 1) * block_length
        sub_x, sub_commit = x[active, :end], commit[active, :end]
        sub_attn = attn[active, :end]
        model_attn = None if bool(sub_attn.all()) else sub_attn
        _decode_block(
            den,
            sub_x,
            model_attn,
            prompt_real[active, :end],
            sub_commit,
            start,
            end,
            steps_per_block,
            blk * steps_per_block,
            {**opts, "budgets": budgets[active]},
        )
        x[active, :end], commit[active, :end] = sub_x, sub_commit
        if opts["stop_check"] is not None:
            done = opts["stop_check"](sub_x[:, p:end]).to(x.device)
        else:
            done = _finished(sub_x, p, end, stop)
        done = done | (budgets[active] <= end - p)  # the row's budget is spent
        if done.any():
            x[active[done], end:] = fill
            decoded[active[done]] = end - p
            active = active[~done]
        if not len(active):
            break
    return decoded
