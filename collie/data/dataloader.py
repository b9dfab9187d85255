"""CoLLiE's `CollieDataLoader`: a torch `DataLoader` over a collie dataset, this data-parallel
rank's share of each batch, padded by `ColliePadder`.

The order and the split over ranks are the Trainer's own (`GlobalBatchSampler`), except that the
last, incomplete batch is kept unless `drop_last=True` asks to drop it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from collie.data.batch_sampler import CollieBatchSampler
from collie.data.collate import ColliePadder
from collie.data.sampler import GlobalBatchSampler
from collie.tokenization import pad_token_id


class DataParallelBatches:
    """A batch sampler over a `GlobalBatchSampler`: this rank's micro-batches, one epoch's worth
    per iteration (the epoch set by `set_epoch`, as with torch's `DistributedSampler`)."""

    def __init__(self, sampler: GlobalBatchSampler) -> None:
        self.sampler = sampler
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        for micro_batches in self.sampler.epoch(self.epoch):
            yield from micro_batches

    def __len__(self) -> int:
        return sum(len(micro_batches) for micro_batches in self.sampler.epoch(self.epoch))


class CollieDataLoader(DataLoader):
    """CoLLiE's signature. `batch_size` samples per iteration on each data-parallel rank, the
    global batch being `batch_size × accumulation_steps × dp_size` samples, shuffled by `seed`
    and the epoch (`batch_sampler.set_epoch`). With a `sampler`, batches of its indices instead.
    `collate_fn` defaults to a `ColliePadder` with the dataset tokenizer's pad id.

    `dp_rank`/`dp_size` say where this process sits in data parallel; without torch.distributed
    they default to 0 and 1, under it they must be given (a rank's tensor-parallel peers read
    the same data, so the world size alone does not say it)."""

    def __init__(self, dataset: Dataset, batch_size: int, accumulation_steps: int = 1, shuffle: bool = False,
                 pin_memory: bool = True, collate_fn: Optional[Callable[[list], Any]] = None,
                 num_workers: Optional[int] = None, sampler: Optional[Any] = None, drop_last: bool = False,
                 data_efficiency_config: Optional[dict] = None, *, dp_rank: Optional[int] = None,
                 dp_size: Optional[int] = None, seed: int = 0) -> None:
        if data_efficiency_config:
            raise ValueError("data_efficiency_config: DeepSpeed's curriculum learning is not supported; order the "
                             "dataset yourself or pass a sampler")
        if sampler is None:
            rank, size = data_parallel_place(dp_rank, dp_size)
            batches: Any = DataParallelBatches(GlobalBatchSampler(len(dataset), batch_size, accumulation_steps, size,
                                                                  rank, seed, shuffle, keep_last=not drop_last))
        else:
            batches = CollieBatchSampler(sampler, batch_size, "drop" if drop_last else "normal")
        if collate_fn is None:
            collate_fn = ColliePadder(pad_token_id(getattr(dataset, "tokenizer", None)))
        # Items are tokenized up front: worker processes only when asked for.
        super().__init__(dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers or 0,
                         pin_memory=pin_memory and torch.cuda.is_available())


def data_parallel_place(dp_rank: Optional[int], dp_size: Optional[int]) -> tuple[int, int]:
    """(dp_rank, dp_size): as given, or (0, 1) in a single process."""
    if dp_rank is not None and dp_size is not None:
        if not 0 <= dp_rank < dp_size:
            raise ValueError(f"dp_rank: {dp_rank} is not in 0..{dp_size - 1}")
        return dp_rank, dp_size
    if dp_rank is None and dp_size is None and not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    raise ValueError("CollieDataLoader: pass both dp_rank= and dp_size= (under torch.distributed the data-parallel "
                     "place is the run's layout's: runtime.dp_rank, runtime.dp_size)")
