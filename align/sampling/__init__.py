"""Masked-diffusion decoding: the LLaDA reference sampler and Fast-dLLM fast modes (one module)."""

from align.sampling.diffusion import (
    GenerationOutput,
    describe_mode,
    generate,
    generate_in_chunks,
    num_transfer_tokens,
    sample_tokens,
    select_transfer,
    truncate_at_stop,
)

__all__ = [
    "GenerationOutput",
    "generate",
    "generate_in_chunks",
    "describe_mode",
    "truncate_at_stop",
    "num_transfer_tokens",
    "sample_tokens",
    "select_transfer",
]
