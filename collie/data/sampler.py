"""Global batches that do not depend on the parallel layout.

The sampler draws the indices of a whole global batch (micro_batch × grad_accum × dp) from
one seeded permutation per epoch, then each data-parallel rank takes its contiguous slice
and cuts it into micro-batches. So step k sees the same samples on every layout, and a
resumed run continues the same sequence by skipping whole batches (nothing is replayed).
"""

from __future__ import annotations

import itertools
from typing import Iterator

import torch


class GlobalBatchSampler:
    def __init__(self, num_samples: int, micro_batch_size: int, grad_accum: int, dp_size: int,
                 dp_rank: int, seed: int, shuffle: bool = True, keep_last: bool = False) -> None:
        """`keep_last`: an incomplete last global batch is kept (the Trainer drops it, so every
        step has the same size); it is shared evenly over the data-parallel ranks, topped up from
        the epoch's first samples to a multiple of `dp_size` (as torch's `DistributedSampler`
        does), and its last micro-batch may be short."""
        self.num_samples = num_samples
        self.micro_batch_size = micro_batch_size
        self.grad_accum = grad_accum
        self.dp_size = dp_size
        self.dp_rank = dp_rank
        self.seed = seed
        self.shuffle = shuffle
        self.keep_last = keep_last
        self.global_batch_size = micro_batch_size * grad_accum * dp_size
        if num_samples < self.global_batch_size and not keep_last:
            raise ValueError(
                f"train_micro_batch_size*gradient_accumulation_steps*dp_size: the global batch "
                f"({self.global_batch_size}) is larger than the dataset ({num_samples} samples)")

    def batches_per_epoch(self) -> int:
        # Without keep_last an incomplete last global batch is dropped; with shuffling a different tail each epoch.
        if self.keep_last:
            return -(-self.num_samples // self.global_batch_size)
        return self.num_samples // self.global_batch_size

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[list[list[int]]]:
        """For each global batch: this rank's micro-batches (lists of sample indices)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = list(range(self.num_samples))
        if self.keep_last:
            order += list(itertools.islice(itertools.cycle(order), -len(order) % self.dp_size))
        for b in range(start_batch, self.batches_per_epoch()):
            batch = order[b * self.global_batch_size:(b + 1) * self.global_batch_size]
            local = len(batch) // self.dp_size  # micro_batch × grad_accum (fewer in a kept last batch)
            mine = batch[self.dp_rank * local:(self.dp_rank + 1) * local]
            yield [mine[i:i + self.micro_batch_size] for i in range(0, local, self.micro_batch_size)]
