"""Several processes serve one model (tensor / pipeline parallel): rank 0 owns HTTP and decides
every token; the other ranks run the same forward passes. Rank 0 tells them each batch's prompts,
then each step's tokens, over a gloo group of its own with a long timeout (a server may wait
days for its next request; the model's own collectives keep the configured one)."""

from __future__ import annotations

import signal
from datetime import timedelta

import torch
import torch.distributed as dist

_IDLE_TIMEOUT = timedelta(days=365)


class Lockstep:
    def __init__(self) -> None:
        self.group = dist.new_group(backend="gloo", timeout=_IDLE_TIMEOUT)
        self.rank = dist.get_rank()

    # -- rank 0 --
    def send_batch(self, prompts: list[list[int]], max_new: int) -> None:
        dist.broadcast_object_list([("batch", prompts, max_new)], src=0, group=self.group)

    def send_tokens(self, tokens: torch.Tensor, all_done: bool) -> None:
        message = torch.cat([tokens.cpu(), torch.tensor([int(all_done)])])
        dist.broadcast(message, src=0, group=self.group)

    def send_plan(self, plan) -> None:
        """One forward of continuous batching (`collie.serve.continuous.Plan`)."""
        dist.broadcast_object_list([("plan", plan, 0)], src=0, group=self.group)

    def send_stop(self) -> None:
        dist.broadcast_object_list([("stop", None, 0)], src=0, group=self.group)

    def send_idle(self) -> None:
        """Nothing more to decode for now (serving during training: back to the next step)."""
        dist.broadcast_object_list([("idle", None, 0)], src=0, group=self.group)

    # -- the other ranks --
    def follow(self, run_batch, until: str = "stop", run_plan=None) -> None:
        """Decode what rank 0 sends (`run_batch(prompts, max_new, choose)`, and `run_plan(plan)`
        for continuous batching's forwards) until it says stop, or with until="idle" until it
        says idle (or stop). A server's SIGTERM (torchrun passes it to every rank) is left to
        rank 0, which drains its requests first and then sends stop."""
        if until == "stop":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            command = [None]
            dist.broadcast_object_list(command, src=0, group=self.group)
            kind, prompts, max_new = command[0]
            if kind == "stop" or kind == until:
                return
            if kind == "plan":
                run_plan(prompts)
                continue
            run_batch(prompts, max_new, self._receive_tokens(len(prompts)))

    def _receive_tokens(self, rows: int):
        def choose(_logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
            message = torch.empty(rows + 1, dtype=torch.long)
            dist.broadcast(message, src=0, group=self.group)
            return message[:rows], bool(message[rows])

        return choose
