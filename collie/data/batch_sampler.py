"""CoLLiE's `CollieBatchSampler`: batches of any sampler's indices, its last short batch kept,
dropped or filled, as asked."""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

from torch.utils.data import BatchSampler

LAST_BATCH = ("normal", "drop", "fill")


class CollieBatchSampler(BatchSampler):
    """Batches of `batch_size` indices drawn from `sampler`. The last batch, when short, is
    kept as it is (`last_batch="normal"`), dropped (`"drop"`) or filled up with the sampler's
    first indices (`"fill"`: every batch full, as pipeline stages need)."""

    def __init__(self, sampler: Iterable[int], batch_size: int, last_batch: str = "normal") -> None:
        if last_batch not in LAST_BATCH:
            raise ValueError(f"last_batch: {last_batch!r} is not one of {', '.join(LAST_BATCH)}")
        super().__init__(sampler, batch_size, drop_last=last_batch == "drop")
        self.last_batch = last_batch

    def __iter__(self) -> Iterator[list[int]]:
        for batch in super().__iter__():
            if self.last_batch == "fill" and len(batch) < self.batch_size:
                batch = batch + list(itertools.islice(itertools.cycle(self.sampler), self.batch_size - len(batch)))
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """The epoch a shuffling sampler draws its order for (torch's `DistributedSampler`)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
