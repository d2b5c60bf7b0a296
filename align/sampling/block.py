"""Block-diffusion decoding (SDAR / TraDo), beside LLaDA's in ``diffusion`` and Dream's in ``dream``.

The algorithm of SDAR's ``block_diffusion_generate`` (JetAstra/SDAR ``generate.py``; dLLM-RL's rollout
engine runs the same schedule):

* blocks are aligned to positions: block j holds positions [j B, (j + 1) B); a prompt's last, partial
  block is decoded together with the first completion tokens (its prompt tokens stay as they are), and
  the canvas runs to the block boundary after prompt + ``gen_length``;
* the whole blocks of the prompt are encoded once into the KV cache; each later block is denoised with
  the cache as context (exact: earlier blocks never attend to later ones) in at most ``steps_per_block``
  steps, then encoded once more with its final tokens and appended to the cache (``store_kv``);
* a step proposes x0 for every position of the block: logits / T (T != 1), top-k, then top-p, softmax,
  one ``torch.multinomial`` draw per position; the confidence is the drawn token's probability. At
  T = 0 x0 is the argmax and its confidence 1 (the limit of softmax(l / T); the authors' code has no T =
  0 and decodes greedily with top_k = 1, which gives the same tokens);
* the schedule commits ``n_s`` positions at step s (``block_length // steps`` each, the first
  ``block_length % steps`` steps one more): ``low_confidence_static`` the n_s most confident masked ones,
  ``low_confidence_dynamic`` every masked one above ``threshold`` when there are at least n_s of them,
  else the n_s most confident, ``sequential`` the n_s first masked ones;
* with ``variable_length`` a row stops after the block in which it emitted a stop token (the official
  ``stopping_criteria_idx``, per row here): its later blocks are not decoded (commit step -1, EOS id).

Batches: each row is laid out on one block grid, shifted left by a multiple of the block size so that
all rows end at the same block boundary (pads before the prompt are excluded from attention, positions
count real tokens), so row i's tokens, positions and blocks are those of a batch of one. Row i's
completion is the ``gen_length`` tokens after its prompt; the up to B - 1 tokens of the final block
beyond it are decoded as the official code does and not returned.

The arithmetic, the torch calls and the order of random draws are the official ones, so a batch of one
with the same seed gives the official tokens (tests/test_block_sampling.py checks it against a reference
written from that file, at T = 0 and T > 0; batches are checked in distribution). Two deliberate
differences: where the official code asks ``torch.topk`` for more positions than are still masked (a
prompt's partial block with n_s > 1, or a block the dynamic rule got ahead of), it also picks unmasked
positions and overwrites them, prompt tokens included, with fresh draws; here a step commits at most the
masked positions. And the mask token is never proposed (its logit is -inf): the official code can draw
it, leaving the position masked, and then fails indexing its schedule past the last step.

``commit_step`` records the global step at which each token was committed (trace replay). Logits hooks,
deprioritized ids, CFG and Fast-dLLM's caches are refused in one line (``generate`` and the recipe checks).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from align.errors import RunError
from align.models.family import FamilySpec
from align.sampling.decoders import Decoder, register
from align.sampling.settings import BLOCK_SCHEDULES


def transfer_schedule(block_length: int, steps: int) -> list[int]:
    """Positions committed at each step of a block: ``block_length // steps``, +1 for the first ``% steps``."""
    base, rem = divmod(block_length, steps)
    return [base + (1 if s < rem else 0) for s in range(steps)]


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """SDAR's top-k then top-p cut of logits [N, V] (removed entries -inf; the first token over top_p kept)."""
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, top_k)[0][..., -1, None]
        logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()
        remove[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(remove).scatter(-1, order, remove), float("-inf"))
    return logits


def propose(logits: torch.Tensor, temperature: float, top_k, top_p, generator=None):
    """(x0 [N], probability of x0 [N]) for logits [N, V] (see the module docstring)."""
    if temperature == 0:
        return logits.argmax(-1), torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device)
    if temperature != 1.0:
        logits = logits / temperature
    probs = F.softmax(filter_logits(logits, top_k, top_p), dim=-1)
    if not torch.isfinite(probs).all():
        raise RunError(
            "the model's next-token probabilities are not finite (NaN or inf logits): its weights have "
            "diverged or the checkpoint is corrupt; lower learning_rate or load an earlier checkpoint."
        )
    x0 = torch.multinomial(probs, 1, generator=generator)
    return x0[:, 0], probs.gather(-1, x0)[:, 0]


def _select(masked: torch.Tensor, conf: torch.Tensor, n: int, schedule: str, threshold: float | None):
    """Positions [S] of one row's block to commit at a step that asks for ``n``."""
    pick = torch.zeros_like(masked)
    k = min(n, int(masked.sum()))
    if k == 0:
        return pick
    if schedule == "sequential":
        first = int(masked.nonzero()[0, 0])
        pick[first : first + n] = True
        return pick & masked
    confidence = torch.where(masked, conf, -torch.inf)
    if schedule == "low_confidence_dynamic":
        high = confidence > threshold
        if int(high.sum()) >= n:
            return high
    pick[torch.topk(confidence, k)[1]] = True
    return pick


@torch.no_grad()
def block_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    spec: FamilySpec,
    gen_length: int,
    block_length: int,
    steps_per_block: int,
    schedule: str = "low_confidence_static",
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    threshold: float | None = None,
    variable_length: bool = False,
    suppress_token_ids=None,
    generator: torch.Generator | None = None,
    on_block=None,
    use_cache: bool = True,
):
    """Decode ``gen_length`` tokens after each (left-padded) prompt of input_ids [B, P] block by block with
    an exact KV cache (``use_cache=False``: every pass re-encodes the canvas up to the current block, the
    same tokens at more cost, for measuring the cache). Returns ``output.GenerationOutput`` (sequences
    [B, P + gen_length])."""
    from align.models.modeling_sdar import BlockKVCache
    from align.sampling.output import GenerationOutput

    if schedule not in BLOCK_SCHEDULES:
        raise ValueError(f"remasking {schedule!r} is not one of the block schedules {BLOCK_SCHEDULES}.")
    if schedule == "low_confidence_dynamic" and threshold is None:
        raise ValueError("remasking low_confidence_dynamic needs a threshold (SDAR's configs use 0.9).")
    device, bsz, p = input_ids.device, input_ids.shape[0], input_ids.shape[1]
    mask_id, blk = spec.mask_token_id, block_length
    fill = spec.pad_token_id if spec.pad_token_id is not None else spec.eos_token_id
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    lengths = attention_mask.long().sum(1)
    ends = (lengths + gen_length + blk - 1) // blk * blk  # each row's canvas end (its own positions)
    total = int(ends.max())
    shift = total - ends  # a multiple of blk per row
    # the grid: [pads, prompt, masks], every row ending at ``total``
    x = torch.full((bsz, total), fill, dtype=torch.long, device=device)
    real = torch.zeros(bsz, total, dtype=torch.long, device=device)
    col = torch.arange(total, device=device)[None]
    start = shift + lengths  # where each row's completion begins on the grid
    real[col >= shift[:, None]] = 1
    x[col >= start[:, None]] = mask_id
    prompt_cols = (col >= shift[:, None]) & (col < start[:, None])
    x[prompt_cols] = input_ids[attention_mask.bool()]  # left-padded prompts keep their token order
    commit = torch.full((bsz, total), -1, dtype=torch.long, device=device)
    stop_ids = torch.tensor(spec.stop_token_ids, dtype=torch.long, device=device)
    schedule_n = transfer_schedule(blk, steps_per_block)
    suppress = [mask_id, *(suppress_token_ids or [])]

    cache, active = BlockKVCache(), torch.arange(bsz, device=device)
    first = int(start.min()) // blk  # blocks before it hold no mask in any row
    nfe, step = 0, 0
    if first > 0 and use_cache:
        model(
            input_ids=x[:, : first * blk],
            attention_mask=real[:, : first * blk],
            kv_cache=cache,
            store_kv=True,
        )
        nfe += 1
    num_blocks = total // blk
    for b in range(first, num_blocks):
        lo, hi = b * blk, (b + 1) * blk
        cur = x[active, lo:hi].clone()
        attn = real[active, :hi]
        for s in range(steps_per_block):  # the official loop's extra pass only stores (below)
            masked = cur == mask_id
            if not masked.any():
                break
            if use_cache:
                logits = model(input_ids=cur, attention_mask=attn, kv_cache=cache).logits
            else:  # the canvas so far, this block's current tokens last
                canvas = torch.cat([x[active, :lo], cur], 1)
                logits = model(input_ids=canvas, attention_mask=attn, logits_range=(lo, hi)).logits
            nfe += 1
            logits[..., suppress] = -torch.inf  # the mask token and the caller's suppressed ids
            x0, x0_p = propose(logits.reshape(-1, logits.shape[-1]), temperature, top_k, top_p, generator)
            x0, x0_p = x0.view(cur.shape), x0_p.view(cur.shape)
            step += 1
            for r in range(cur.shape[0]):
                pick = _select(masked[r], x0_p[r], schedule_n[s], schedule, threshold)
                cur[r, pick] = x0[r, pick]
                commit[int(active[r]), lo:hi][pick] = step
        if use_cache:
            model(input_ids=cur, attention_mask=attn, kv_cache=cache, store_kv=True)
            nfe += 1
        x[active, lo:hi] = cur
        if on_block is not None:
            on_block(b + 1 - first, num_blocks - first)
        if variable_length and b + 1 < num_blocks:
            done = torch.isin(x[active, :hi], stop_ids) & (col[:, :hi] >= start[active, None])
            keep = ~done.any(1)
            if not bool(keep.all()):
                stopped = active[~keep]
                x[stopped, hi:] = spec.eos_token_id if spec.eos_token_id is not None else fill
                active = active[keep]
                if not len(active):
                    break
                if use_cache:
                    cache.select(keep.nonzero()[:, 0])
    # back to the library's layout: the prompt as given, then each row's first gen_length tokens
    idx = (start[:, None] + torch.arange(gen_length, device=device)[None]).clamp(max=total - 1)
    beyond = (
        start[:, None] + torch.arange(gen_length, device=device)[None] >= total
    )  # never (ends >= start + G)
    completion = x.gather(1, idx).masked_fill(beyond, fill)
    steps_out = commit.gather(1, idx).masked_fill(beyond, -1)
    attn_out = torch.cat(
        [attention_mask.long(), torch.ones(bsz, gen_length, dtype=torch.long, device=device)], 1
    )
    return GenerationOutput(
        sequences=torch.cat([input_ids, completion], 1),
        attention_mask=attn_out,
        commit_step=steps_out,
        nfe=nfe,
        prompt_length=p,
        full_passes=1 if first else 0,
    )


def _decode_blocks_causal(model, input_ids, attention_mask, s, *, spec, generator, hooks, on_block):
    """A row's tokens before its stop token do not depend on what follows it (block-causal), so every row
    stops there, as SDAR's generate.py does (``variable_length`` always)."""
    return block_generate(
        model,
        input_ids,
        attention_mask,
        spec=spec,
        gen_length=s.gen_length,
        block_length=s.block_length,
        steps_per_block=s.steps // (s.gen_length // s.block_length),
        schedule=s.remasking,
        temperature=s.temperature,
        top_k=s.top_k,
        top_p=s.top_p,
        threshold=s.threshold,
        variable_length=True,
        suppress_token_ids=hooks.suppress_token_ids,
        generator=generator,
        on_block=on_block,
    )


register(
    Decoder(
        kind="block_diffusion",
        schedules=BLOCK_SCHEDULES,
        attention="block_causal",
        hooks=frozenset({"suppress_token_ids"}),
        run=_decode_blocks_causal,
    )
)
