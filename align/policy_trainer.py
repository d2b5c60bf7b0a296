"""What the GRPO and DPO trainers share: the reference model, the metric log and the loss handed to
``Trainer.training_step``.

The reference is a frozen copy of the policy prepared like it (DeepSpeed or DDP, evaluation mode), or
under LoRA the policy itself with its adapter disabled. Metrics are recorded per micro-step (each value
averaged over processes) and averaged into the next training log.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict


class PolicyTrainerMixin:
    """For ``transformers.Trainer`` subclasses (call ``_setup_reference`` after ``Trainer.__init__``)."""

    loss_is_scaled_for_ga = True  # compute_loss divides by the accumulation steps itself (as TRL does)

    def _for_training_step(self, loss):
        """compute_loss's value as ``Trainer.training_step`` takes it. transformers 5.2x reads
        ``loss_is_scaled_for_ga`` and leaves the value alone; before it (5.17: the GPU image's) the step divides
        it by the accumulation steps again, so there the value goes up by that factor and one division remains."""
        from transformers import Trainer

        if hasattr(Trainer, "loss_is_scaled_for_ga"):
            return loss
        return loss * self.current_gradient_accumulation_steps

    def _setup_reference(self, ref_model, needed: bool, missing: str) -> None:
        """Keep ``ref_model`` when a reference is ``needed`` and the policy has no adapter to disable;
        ``missing`` is the error when it is needed but not given."""
        from trl.models.utils import prepare_deepspeed

        self._metrics: dict[str, list[float]] = defaultdict(list)
        self.use_peft = hasattr(self.model, "disable_adapter")
        self.ref_model = None
        if not needed or self.use_peft:
            return
        if ref_model is None:
            raise ValueError(missing)
        ref_model.requires_grad_(False).eval()
        if self.is_deepspeed_enabled:
            self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
        else:
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)

    @contextlib.contextmanager
    def _reference_model(self, policy):
        """The reference: the frozen copy, or ``policy`` with its adapter disabled."""
        from align.models.loading import quiet_checkpointing_renames

        if self.ref_model is not None:
            yield self.ref_model
            return
        with quiet_checkpointing_renames():  # unwrapping reads a renamed transformers property
            module = self.accelerator.unwrap_model(policy)
        with module.disable_adapter():
            yield policy

    def _record(self, metrics: dict) -> None:
        """Each metric tensor (a scalar or per-row values) averaged over every process, kept for the log."""
        for key, value in metrics.items():
            self._metrics[key].append(
                self.accelerator.gather(value.detach().float().reshape(-1)).mean().item()
            )

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log, not the final summary
            logs = {**logs, **{k: sum(v) / len(v) for k, v in self._metrics.items() if v}}
            self._metrics.clear()
            self._on_training_log()
        super().log(logs, start_time)

    def _on_training_log(self) -> None:
        """Called at each training log after the metrics are merged (GRPO logs its completions here)."""
