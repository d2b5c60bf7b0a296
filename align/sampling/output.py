"""What a sampler returns (``GenerationOutput``) and where an answer ends (``truncate_at_stop``): the leaf every
decoder (``diffusion``, ``dream``, ``block``) and every caller of them imports."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GenerationOutput:
    """Result of :func:`generate`.

    sequences:      [B, P + G] prompt (as given, left-padded) followed by the generated tokens.
    attention_mask: [B, P + G] the prompt mask extended with ones.
    commit_step:    [B, G] global step at which each generated token was committed (-1: never, i.e. the
                    EOS padding after a variable-length row finished). Feeds trace-replay estimators.
    nfe:            model forward calls (a CFG call runs the doubled batch once and counts once).
    prompt_length:  P.
    full_passes:    calls that encoded the whole canvas (all of them without a cache; with one, the block
                    starts and the ``cache_refresh`` re-encodings); the rest ran on the block (and suffix).
    decoded:        [B] completion tokens each row decoded before it left the batch (variable-length
                    decoding; the rest is EOS filler no model wrote), None when every row decoded the canvas.
    """

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    commit_step: torch.Tensor
    nfe: int
    prompt_length: int
    full_passes: int = 0
    decoded: torch.Tensor | None = None

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.sequences[:, self.prompt_length :]


def truncate_at_stop(
    completion_ids: torch.Tensor, stop_ids, fill_id: int, decoded: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, L] with everything after the first stop token set to ``fill_id``, keep mask [B, L]).

    The keep mask is 1 up to and including the first stop token (all ones when there is none), the
    completion mask GRPO scores; decode the returned ids with ``skip_special_tokens`` to get the text.
    ``decoded`` (``GenerationOutput.decoded``) also cuts each row where its decoding stopped: a row that left
    a variable-length batch without a stop token (a loop cut early, a spent budget) keeps what it wrote, not
    the filler after it.
    """
    is_stop = torch.isin(completion_ids, torch.as_tensor(list(stop_ids), device=completion_ids.device))
    before = is_stop.long().cumsum(1) - is_stop.long() == 0  # no stop token strictly before this position
    if decoded is not None:
        positions = torch.arange(completion_ids.shape[1], device=completion_ids.device)
        before &= positions[None] < decoded.to(completion_ids.device)[:, None]
    return torch.where(before, completion_ids, fill_id), before.long()
