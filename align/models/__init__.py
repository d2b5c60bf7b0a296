"""Native models (the LLaDA and Dream families, no remote code), family specs and loading."""

from align.models.configuration_dream import DreamConfig
from align.models.configuration_llada import LLaDAConfig
from align.models.configuration_sdar import SDARConfig
from align.models.family import FamilySpec, family_spec, model_logits
from align.models.loading import load_model, load_tokenizer
from align.models.modeling_dream import DreamLM
from align.models.modeling_llada import LLaDAModel, LLaDAModelLM, LLaDAOutput
from align.models.modeling_sdar import SDARLM

__all__ = [
    "DreamConfig",
    "DreamLM",
    "FamilySpec",
    "LLaDAConfig",
    "LLaDAModel",
    "LLaDAModelLM",
    "LLaDAOutput",
    "family_spec",
    "load_model",
    "load_tokenizer",
    "model_logits",
    "register_auto_classes",
    "SDARConfig",
    "SDARLM",
]


def register_auto_classes() -> None:
    """Register the native classes with AutoConfig / AutoModel (idempotent)."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM

    AutoConfig.register("llada", LLaDAConfig, exist_ok=True)
    AutoModel.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
    AutoModelForMaskedLM.register(LLaDAConfig, LLaDAModelLM, exist_ok=True)
    AutoConfig.register("Dream", DreamConfig, exist_ok=True)
    AutoModel.register(DreamConfig, DreamLM, exist_ok=True)
    AutoModelForMaskedLM.register(DreamConfig, DreamLM, exist_ok=True)
    AutoConfig.register("sdar", SDARConfig, exist_ok=True)
    AutoModel.register(SDARConfig, SDARLM, exist_ok=True)
    AutoModelForMaskedLM.register(SDARConfig, SDARLM, exist_ok=True)


register_auto_classes()  # AutoConfig / AutoModel know "llada", "Dream" and "sdar" wherever align.models is imported
