"""Masked-diffusion decoding: the LLaDA reference sampler and Fast-dLLM fast modes (``diffusion``), and
the settings it decodes with (``settings``, torch-free). Names resolve lazily."""

from align import lazy_face

_HOMES = {
    name: "diffusion"
    for name in (
        "GenerationOutput",
        "generate",
        "generate_in_chunks",
        "num_transfer_tokens",
        "sample_tokens",
        "select_transfer",
        "truncate_at_stop",
    )
}
_HOMES["SamplerSettings"] = "settings"
__all__ = sorted(_HOMES)
__getattr__ = lazy_face(__name__, _HOMES)
