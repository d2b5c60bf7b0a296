"""Masked-diffusion decoding: the LLaDA reference sampler and Fast-dLLM fast modes (one module)."""

from align.sampling.diffusion import (
    GenerationOutput,
    generate,
    num_transfer_tokens,
    sample_tokens,
    select_transfer,
)

__all__ = ["GenerationOutput", "generate", "num_transfer_tokens", "sample_tokens", "select_transfer"]
