"""Which prompts each process rolls out: one dataloader item = one micro-step's prompts."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader


class RolloutBatchSampler:
    """Prompt indices per rollout for one process, each batch repeated ``repeats`` times in a row.

    Every ``repeats`` consecutive batches are one rollout phase (steps_per_generation x num_iterations
    micro-steps); the permutation depends only on (seed, epoch), so all processes agree on it and
    take disjoint slices.
    """

    def __init__(
        self,
        num_rows: int,
        prompts_per_rollout: int,
        repeats: int,
        *,
        num_processes: int,
        process_index: int,
        seed: int,
    ):
        self.num_rows, self.per, self.repeats = num_rows, prompts_per_rollout, repeats
        self.num_processes, self.process_index, self.seed = num_processes, process_index, seed
        self.epoch = 0
        self.rollouts = num_rows // (prompts_per_rollout * num_processes)
        if self.rollouts == 0:
            raise ValueError(
                f"the dataset has {num_rows} prompts but one rollout phase needs {prompts_per_rollout} per "
                f"process x {num_processes} processes; use more data or a smaller generation_batch_size."
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.rollouts * self.repeats

    def __iter__(self):
        order = torch.randperm(self.num_rows, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        for r in range(self.rollouts):
            start = (r * self.num_processes + self.process_index) * self.per
            batch = order[start : start + self.per].tolist()
            for _ in range(self.repeats):
                yield batch


class RolloutLoader(DataLoader):
    """Rows of the prompts each micro-step (as dicts); ``set_epoch`` reshuffles like a distributed sampler."""

    def __init__(self, dataset, sampler: RolloutBatchSampler):
        super().__init__(dataset, batch_sampler=sampler, collate_fn=_rows)

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def _rows(batch: list[dict]) -> list[dict]:
    return batch
