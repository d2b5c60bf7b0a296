"""dllm-align: RL alignment (GRPO family) for masked diffusion language models.

Importing ``align`` is cheap (no torch): the CLI answers ``--help`` and config errors before any heavy
library loads. ``align.models`` registers the native LLaDA classes with transformers' Auto classes.
"""

__version__ = "0.1.0"

# The Python API (TRL's names): ``from align import DiffusionGRPOTrainer, GRPOConfig``; loaded on first use.
API = {
    "DiffusionGRPOTrainer": "trainer",
    "GRPOConfig": "config",
    "SFTConfig": "config",
    "DPOConfig": "config",
    "load_config": "config",
    "load_model": "models",
    "load_tokenizer": "models",
}
__all__ = sorted(API)


def lazy_face(package: str, homes: dict[str, str]):
    """A package's ``__getattr__`` that imports ``package.<module>`` only when one of its names is used
    (``homes``: name -> module), so importing a torch-free submodule never loads its heavy siblings."""
    import importlib

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{homes[name]}"), name)

    return __getattr__


__getattr__ = lazy_face("align", API)
