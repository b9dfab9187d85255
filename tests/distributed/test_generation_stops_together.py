"""Data-parallel ranks that generate stop decoding together: a sharded model's (ZeRO-3, FSDP)
every forward gathers its weights from every rank, so a rank whose rows all reached EOS must keep
stepping, padding them, until every rank's rows have (`generate(..., stop_group=)`, which the
generation evaluator passes its data-parallel group). This file imports only torch and
collie.generation: its two spawned processes start fast."""

import datetime
import os
import socket
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from collie.generation import GenerationMixin, generate


class _EosAtOnce(GenerationMixin, torch.nn.Module):
    """A causal LM whose next token is always `token`; each forward joins an all-reduce, as a
    sharded model's forward gathers its weights, and counts itself."""

    def __init__(self, token: int) -> None:
        super().__init__()
        self.token, self.forwards = token, 0

    def new_kv_cache(self, max_len: int):
        return None

    def forward(self, input_ids, attention_mask=None, kv_cache=None):
        dist.all_reduce(torch.zeros(1))
        self.forwards += 1
        logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], 8)
        logits[..., self.token] = 1.0
        return SimpleNamespace(logits=logits)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _decode_on_two_ranks(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    try:
        model = _EosAtOnce(token=2 if rank == 0 else 5)  # rank 0 emits eos (2) at once, rank 1 never
        out = generate(model, torch.ones(1, 3, dtype=torch.long), max_new_tokens=6, eos_token_id=2, pad_token_id=0,
                       stop_group=dist.group.WORLD)
        results[rank] = (model.forwards, out.tolist())
    finally:
        dist.destroy_process_group()


def test_ranks_decoding_together_run_as_many_forwards_and_pad_the_finished_rows():
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = mp.Manager().dict()
    mp.spawn(_decode_on_two_ranks, args=(_free_port(), results), nprocs=2)
    assert results[0][0] == results[1][0] == 6  # rank 1 decoded all 6 tokens; rank 0 kept it company
    assert results[0][1] == [[1, 1, 1, 2, 0, 0, 0, 0, 0]]
    assert results[1][1] == [[1, 1, 1, 5, 5, 5, 5, 5, 5]]
