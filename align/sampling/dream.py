"""Dream's own decoding (``diffusion_generate`` of the Dream-v0 hub code), beside LLaDA's in ``diffusion``.

The algorithm of the hub's ``generation_utils.py`` ``_sample`` (Ye et al. 2025, Dream 7B):

* canvas = prompt + ``gen_length`` masks, decoded as one block in ``steps`` steps along the timesteps
  ``linspace(1, eps, steps + 1)``; at step i, t = ts[i], s = ts[i + 1];
* proposals for the masked positions from the aligned logits (logit i predicts token i): the logits are
  divided by the temperature (T > 0), cut to ``top_p`` then ``top_k``, and x0 is drawn from their softmax
  (its argmax at T = 0); the confidence is that softmax's probability of x0 (``maskgit_plus``), its top-1
  minus top-2 margin (``topk_margin``) or its negative entropy (``entropy``);
* ``origin``: each masked position is committed with probability 1 - s / t (all at the last step);
  the others commit ``int(masked per row * (1 - s / t))`` positions per row (all remaining at the last
  step): the most confident ones, or with ``alg_temp`` a draw without replacement from
  softmax(confidence / alg_temp).

The arithmetic, the order of random draws and ``torch.topk`` are the hub file's, so with the same seed
the output is token-for-token the official one (tests/test_dream.py checks it against a reference written
from that file; T > 0 draws are checked in distribution). Deliberate differences: proposals are computed
for the completion only (a mask token inside the prompt is conditioning, not infilled); a draw uses
``torch.multinomial`` with the caller's generator (the hub uses ``Categorical.sample``: the same
distribution); non-finite probabilities raise instead of silently falling back to argmax; the loop stops
once nothing is masked. As in the hub code, the mask token itself is not excluded from the proposals.

Not covered: Fast-dLLM's threshold and KV caches, classifier-free guidance and variable-length growth with
these schedules (refused in one line: Dream's count per step comes from its timesteps, and the family has
no KV-cache forward); LLaDA's schedules run on Dream models through ``diffusion.generate``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from align.errors import RunError
from align.models.family import FamilySpec, model_logits
from align.sampling.decoders import Decoder, register
from align.sampling.settings import DREAM_ALGS


def filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None) -> torch.Tensor:
    """Dream's nucleus then top-k cut of logits [N, V]: removed entries get the dtype's lowest value."""
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        remove = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first token above the threshold
        remove[..., 0] = False
        logits = logits.masked_fill(
            torch.zeros_like(remove).scatter_(-1, order, remove), torch.finfo(logits.dtype).min
        )
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)))[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    return logits


def propose(
    logits: torch.Tensor,
    alg: str,
    temperature: float,
    top_p: float | None,
    top_k: int | None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence [N], x0 [N]) for the rows of logits [N, V] under ``alg``'s confidence."""
    if temperature > 0:
        logits = logits / temperature
    probs = torch.softmax(filter_logits(logits, top_p, top_k), dim=-1)
    if temperature > 0 and len(probs):
        if not torch.isfinite(probs).all():
            raise RunError(
                "the model's next-token probabilities are not finite (NaN or inf logits): its weights have "
                "diverged or the checkpoint is corrupt; lower learning_rate or load an earlier checkpoint."
            )
        x0 = torch.multinomial(probs, 1, generator=generator)[:, 0]
        confidence = probs.gather(-1, x0[:, None])[:, 0]
    else:
        confidence, x0 = probs.max(dim=-1)
    if alg == "topk_margin":
        top2 = torch.sort(probs, dim=-1, descending=True)[0]
        confidence = top2[:, 0] - top2[:, 1]
    elif alg == "entropy":
        confidence = (probs * torch.log(probs + 1e-10)).sum(-1)
    return confidence, x0


@torch.no_grad()
def dream_generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    spec: FamilySpec,
    gen_length: int,
    steps: int,
    alg: str = "origin",
    temperature: float = 0.0,
    top_p: float | None = None,
    top_k: int | None = None,
    alg_temp: float | None = None,
    eps: float = 1e-3,
    generator: torch.Generator | None = None,
    logits_hook=None,
    suppress_token_ids=None,
):
    """Decode ``gen_length`` tokens after each (left-padded) prompt of input_ids [B, P] with Dream's schedule.

    ``logits_hook(logits, canvas, masked, completion_start, 0)`` may change the completion's aligned logits
    [B, G, V] in place before a step proposes (as in ``diffusion.generate``); ``suppress_token_ids`` get
    logit -inf. Returns ``output.GenerationOutput`` (``commit_step``: the step each token was committed,
    -1 for one never committed, e.g. a mask token proposed at the last step)."""
    from align.sampling.output import GenerationOutput

    b, p = input_ids.shape
    device, mask_id, total = input_ids.device, spec.mask_token_id, p + gen_length
    x = F.pad(input_ids, (0, gen_length), value=mask_id)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    attn = F.pad(attention_mask.long(), (0, gen_length), value=1)
    mask4d = positions = None  # no padding: the hub sampler's "full" attention and arange positions
    if not bool(attention_mask.all()):  # the hub sampler's [B, 1, N, N] mask and positions (pads read 1)
        keep = attn.bool()
        mask4d = keep[:, None, None, :] & keep[:, None, :, None]
        positions = (attn.cumsum(-1) - 1).masked_fill(~keep, 1)
    commit = torch.full((b, gen_length), -1, dtype=torch.long, device=device)
    timesteps = torch.linspace(1, eps, steps + 1, device=device)
    nfe = 0
    for i in range(steps):
        window = x[:, p:]
        masked = window == mask_id
        if not masked.any():
            break
        logits = model_logits(model, x, mask4d, spec, logits_range=(p, total), position_ids=positions).logits
        nfe += 1
        if logits_hook is not None:
            logits_hook(logits, x, masked, p, 0)
        if suppress_token_ids:
            logits[..., list(suppress_token_ids)] = -torch.inf
        rows = logits[masked]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.full((len(rows),), mask_id, dtype=torch.long, device=device)
            chosen = torch.rand(x0.shape, generator=generator, device=device) < p_transfer
            x0[chosen] = propose(rows[chosen], alg, temperature, top_p, top_k, generator)[1]
            newly = torch.zeros_like(masked)
            newly[masked] = chosen & (x0 != mask_id)
            window[masked] = x0
        else:
            confidence, x0 = propose(rows, alg, temperature, top_p, top_k, generator)
            per_row = masked.sum() / masked.shape[0]
            k = int(per_row * (1 - s / t)) if i < steps - 1 else int(per_row)
            newly = torch.zeros_like(masked)
            if k > 0:  # ranked over the whole canvas (prompt at -inf) as the hub code does: same tie order
                full = torch.full(x.shape, -torch.inf, dtype=logits.dtype, device=device)
                full[:, p:][masked] = confidence
                if alg_temp is None or alg_temp == 0:
                    picked = torch.topk(full, k)[1]
                else:
                    picked = torch.multinomial(F.softmax(full / alg_temp, dim=-1), k, generator=generator)
                proposal = torch.full_like(x, mask_id)
                proposal[:, p:][masked] = x0
                row_ids = torch.arange(b, device=device)[:, None].expand_as(picked)
                x[row_ids, picked] = proposal[row_ids, picked]
                newly[row_ids, picked - p] = proposal[row_ids, picked] != mask_id
        commit[newly] = i
    return GenerationOutput(
        sequences=x, attention_mask=attn, commit_step=commit, nfe=nfe, prompt_length=p, full_passes=nfe
    )


def _decode_dream(model, input_ids, attention_mask, s, *, spec, generator, hooks, on_block):
    out = dream_generate(
        model,
        input_ids,
        attention_mask,
        spec=spec,
        gen_length=s.gen_length,
        steps=s.steps,
        alg=s.remasking,
        temperature=s.temperature,
        top_p=s.top_p,
        top_k=s.top_k,
        alg_temp=s.alg_temp,
        eps=s.eps,
        generator=generator,
        logits_hook=hooks.logits_hook,
        suppress_token_ids=hooks.suppress_token_ids,
    )
    if on_block is not None:  # one block
        on_block(1, 1)
    return out


register(
    Decoder(
        kind="dream",
        schedules=DREAM_ALGS,
        attention="full",
        hooks=frozenset({"logits_hook", "suppress_token_ids"}),
        run=_decode_dream,
    )
)
