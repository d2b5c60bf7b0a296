"""dllm-align: RL alignment (GRPO family) for masked diffusion language models."""

from align.models import register_auto_classes

register_auto_classes()

__version__ = "0.1.0"
