"""Memory-flat Monte Carlo backward, shared by the GRPO and DPO trainers (``mc_backward: chunked``).

Every loss here is a function L(v) of the per-pass log-probabilities v [P, B, T]
(``align.logprob.pass_logprobs``; linear estimates are ``combine(plan, v)``, SPG's EUBO and BGPO's
per-sample terms are not linear), and pass p's values depend on the weights only through pass p's
forward. So dL/dtheta = sum_c < dL/dv_c, d v_c / dtheta > over chunks c of ``mc_chunk_size`` passes. The
step takes g = dL/dv at the no-grad values (a leaf tensor), then re-runs each chunk with grad and
backpropagates < g_c, v_c >: one chunk's graph is alive at a time, so peak memory does not grow with the
number of passes, for one extra no-grad estimate. Under DDP every chunk but the last backpropagates in ``no_sync``; under DeepSpeed every chunk
but the last is a non-boundary micro-step (no ``engine.step``), exactly as gradient accumulation does.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from accelerate.utils import DistributedType

from align.logprob.estimators import MaskPlan, combine


class ChunkedBackwardMixin:
    """For ``transformers.Trainer`` subclasses that define ``_passes(model, ids, attn, plan)`` ([P, B, T]
    per-pass log-probabilities, ``align.logprob.pass_logprobs``)."""

    def _estimate(self, model, ids, attn, plan: MaskPlan) -> torch.Tensor:
        """The plan's linear estimate [B, T]."""
        return combine(plan, self._passes(model, ids, attn, plan))

    def _backward_in_chunks(
        self,
        model,
        ids: torch.Tensor,
        attn: torch.Tensor | None,
        plan: MaskPlan,
        loss_of: Callable[[torch.Tensor], torch.Tensor],
        value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Backpropagate ``loss_of(per-pass values)`` chunk by chunk; returns the detached loss. ``value``:
        the per-pass values when the caller knows the gradient does not depend on them (skips the no-grad
        pass)."""
        if value is None:
            with torch.no_grad(), self.compute_loss_context_manager():
                value = self._passes(model, ids, attn, plan)
        leaf = value.detach().requires_grad_()
        with self.compute_loss_context_manager():
            loss = loss_of(leaf)
        (grad,) = torch.autograd.grad(loss, leaf)
        deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        kwargs = {"scale_wrt_gas": False} if deepspeed else {}  # as transformers' Trainer.training_step
        size = self.args.mc_chunk_size
        starts = range(0, plan.num_passes, size)
        for start in starts:
            part = plan.passes(start, start + size)
            with self._accumulating(model, last=start == starts[-1]):
                with self.compute_loss_context_manager():
                    surrogate = (self._passes(model, ids, attn, part) * grad[start : start + size]).sum()
                self.accelerator.backward(surrogate, **kwargs)
        return loss.detach()

    @contextlib.contextmanager
    def _accumulating(self, model, last: bool):
        """Backward of a chunk that is not the micro-step's last: no DDP all-reduce, no DeepSpeed step."""
        if last:
            yield
            return
        state = self.accelerator.gradient_state
        was = state.sync_gradients
        state._set_sync_gradients(False)
        try:
            with self.accelerator.no_sync(model):
                yield
        finally:
            state._set_sync_gradients(was)

    def _train_mode(self, model) -> None:
        model.train()
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()
