"""dllm-align: RL alignment (GRPO family) for masked diffusion language models.

Importing ``align`` is cheap (no torch): the CLI answers ``--help`` and config errors before any heavy
library loads. ``align.models`` registers the native LLaDA classes with transformers' Auto classes.
"""

__version__ = "0.1.0"
