"""Data-parallel ranks with unequal shares of an evaluation run as many batches (a sharded model's
every forward is collective); a user metric that gathers every rank's results (CoLLiE's
`gather_result=True`) sees each real item once, and a rank's filler batches add nothing to it.
Two spawned processes, a stand-in model whose forward joins an all-reduce as FSDP's does."""

import contextlib
import datetime
import os
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from collie.evaluate.evaluators import Evaluator
from collie.evaluate.metrics import BaseMetric


class _Collective(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight, self.forwards = torch.nn.Parameter(torch.zeros(1)), 0

    def forward(self, input_ids):
        dist.all_reduce(torch.zeros(1))
        self.forwards += 1
        return input_ids


class _SeenIds(BaseMetric):
    """A user's metric: every rank's first tokens, gathered."""

    def __init__(self) -> None:
        super().__init__(gather_result=True)
        self.seen: list = []

    def reset(self) -> None:
        self.seen = []

    def update(self, result: dict) -> None:
        self.seen += result["first"].tolist()

    def get_metric(self) -> dict:
        return {"seen": sorted(self.seen)}


def _evaluate(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    try:
        model = _Collective()
        dataset = [{"input_ids": torch.tensor([10 + i, 1, 2])} for i in range(3)]  # rank 0: items 0, 2; rank 1: 1
        evaluator = Evaluator(model, SimpleNamespace(eval_batch_size=1, data=None), dataset, {"ids": _SeenIds()},
                              eval_fn=lambda ev, batch: {"first": ev.model(batch["input_ids"])[:, 0]})
        evaluator.runtime = SimpleNamespace(dp_rank=rank, dp_size=2, dp_group=dist.group.WORLD,
                                            device=torch.device("cpu"))
        evaluator.forward_context = contextlib.nullcontext
        seen = evaluator.evaluate()["seen"]
        results[rank] = (model.forwards, seen)
    finally:
        dist.destroy_process_group()


def test_filler_batches_join_the_collectives_and_add_nothing_to_a_gathering_metric():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_evaluate, args=(port, results), nprocs=2)
    assert results[0][0] == results[1][0] == 2  # rank 1 ran one filler batch
    assert results[0][1] == results[1][1] == [10, 11, 12]
