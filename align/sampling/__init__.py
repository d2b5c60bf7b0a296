"""Masked-diffusion decoding: the LLaDA reference sampler and Fast-dLLM fast modes (``diffusion``), Dream's
and SDAR's decoders (``dream``, ``block``), the settings they decode with (``settings``, torch-free) and what
they return (``output``). Names resolve lazily."""

from align import lazy_face

_HOMES = {
    name: "diffusion"
    for name in (
        "generate",
        "generate_in_chunks",
        "num_transfer_tokens",
        "sample_tokens",
        "select_transfer",
    )
}
_HOMES["SamplerSettings"] = "settings"
_HOMES["GenerationOutput"] = _HOMES["truncate_at_stop"] = "output"
__all__ = sorted(_HOMES)
__getattr__ = lazy_face(__name__, _HOMES)
