"""Reward functions for dllm-align (TRL convention: f(prompts, completions, **columns) -> list[float | None])."""
