"""The decoding side of the server: requests wait in a bounded queue; the engine takes as many
as fit in a batch, left-pads their prompts and decodes them together with one KV cache, each
row with its own sampling settings, stop sequences and token budget. Rows report what they
generate as it is generated (`Job.events`), so streaming and plain answers are the same path.

Under several processes (tensor or pipeline parallel) rank 0 runs this engine and every other
rank follows it through a `Lockstep` channel: the same batches, the same tokens, step by step.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Optional

import torch

from collie.dtypes import at_least_fp32
from collie.generation import GREEDY_BELOW, choose_next
from collie.serve.text import IncrementalText
from collie.tensors import whole
from collie.tokenization import pad_token_id

log = logging.getLogger("collie")


class Overloaded(RuntimeError):
    """The queue is full: the request is refused at once (HTTP 503)."""


@dataclass
class RowSettings:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: Optional[int] = None


@dataclass
class Event:
    """What a job hears: text for a row, a row that finished (with its reason and token counts),
    or a failure of the whole job."""
    kind: str  # "text" | "finish" | "error"
    index: int = 0
    text: str = ""
    finish_reason: Optional[str] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    step: Optional[int] = None  # serving during training: the step whose weights decoded it


class Job:
    """One HTTP request: its rows (prompts × n) and where their events go."""

    def __init__(self, rows: list[RowSettings], events: Callable[[Event], None]) -> None:
        self.rows = rows
        self.events = events
        self.cancelled = False  # the client went away: its rows stop at the next token


class _Row:
    def __init__(self, job: Job, index: int, settings: RowSettings, tokenizer, eos: set[int],
                 unseeded: torch.Generator, step: Optional[int]) -> None:
        self.job, self.index, self.settings, self.eos, self.step = job, index, settings, eos, step
        self.text = IncrementalText(tokenizer, settings.stop)
        self.generated = 0
        self.done = False
        # Never the global generator: serving during training must leave training's random stream alone.
        self.generator = unseeded if settings.seed is None else torch.Generator().manual_seed(settings.seed + index)

    def choose(self, logits: torch.Tensor) -> int:
        s = self.settings
        if s.temperature < GREEDY_BELOW:
            return int(logits.argmax())
        # Sampled on the CPU with a CPU generator: a seed gives the same text on any device.
        return int(choose_next(logits[None].cpu(), True, s.temperature, 0, s.top_p, self.generator))

    def accept(self, token: int) -> None:
        if self.job.cancelled:
            self.done = True
            return
        if token in self.eos:
            return self._finish("stop", self.text.flush())
        self.generated += 1
        piece, stopped = self.text.add(token)
        if stopped:
            return self._finish("stop", piece)
        if self.generated >= self.settings.max_tokens:
            return self._finish("length", piece + self.text.flush())
        if piece:
            self.job.events(Event("text", self.index, piece, step=self.step))

    def _finish(self, reason: str, piece: str) -> None:
        if piece:
            self.job.events(Event("text", self.index, piece, step=self.step))
        self.job.events(Event("finish", self.index, finish_reason=reason, prompt_tokens=len(self.settings.prompt_ids),
                              completion_tokens=self.generated, step=self.step))
        self.done = True


def decode(model, forward_context: Callable[[], ContextManager], prompts: list[list[int]], max_new: int,
           pad_id: int, choose: Callable[[torch.Tensor], tuple[torch.Tensor, bool]]) -> None:
    """Run one batch: prefill the left-padded prompts, then feed back the tokens `choose` picks from
    each step's last logits until it says every row is done (or `max_new` steps). Every rank of a
    parallel model calls this with the same arguments; only rank 0's `choose` decides."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    device = next(iter(model.parameters())).device
    ids, mask = ids.to(device), mask.to(device)
    cache = model.new_kv_cache(width + max_new)
    with torch.no_grad(), forward_context():
        logits = whole(model(ids, attention_mask=mask, kv_cache=cache).logits)[:, -1]
        for _ in range(max_new):
            tokens, all_done = choose(logits.to(at_least_fp32(logits.dtype)))
            if all_done:
                return
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            logits = whole(model(tokens.to(device)[:, None], attention_mask=mask, kv_cache=cache).logits)[:, -1]


class Engine:
    def __init__(self, model, tokenizer, forward_context: Callable[[], ContextManager] = contextlib.nullcontext,
                 max_batch_size: int = 16, max_queue: int = 64, batch_wait_s: float = 0.005,
                 lockstep=None, step: Callable[[], Optional[int]] = lambda: None) -> None:
        self.model, self.tokenizer, self.forward_context = model, tokenizer, forward_context
        self.step = step
        self.max_batch_size, self.max_queue, self.batch_wait_s = max_batch_size, max_queue, batch_wait_s
        self.lockstep = lockstep
        eos = tokenizer.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
        self.pad_id = pad_token_id(tokenizer)
        self.waiting: deque[Job] = deque()
        self.condition = threading.Condition()
        self.stopping = False
        self.busy_rows = 0
        self.unseeded = torch.Generator()
        self.unseeded.seed()

    # -- the HTTP side (any thread) -------------------------------------------------
    def submit(self, job: Job) -> None:
        with self.condition:
            queued = sum(len(j.rows) for j in self.waiting)
            if self.stopping or queued + len(job.rows) > self.max_queue:
                raise Overloaded(f"the server is at capacity ({queued} requests waiting, max_queue={self.max_queue}); "
                                 "retry later")
            self.waiting.append(job)
            self.condition.notify()

    def queued(self) -> int:
        with self.condition:
            return sum(len(j.rows) for j in self.waiting)

    def stop(self) -> None:
        with self.condition:
            self.stopping = True
            self.condition.notify()

    # -- the decoding side (one thread) -----------------------------------------------
    def serve_forever(self) -> None:
        """Decode batches until `stop()` (what is queued then is still answered)."""
        while True:
            jobs = self.next_batch(block=True)
            if jobs is None:
                break
            self.run_batch(jobs)
        if self.lockstep is not None:
            self.lockstep.send_stop()

    def next_batch(self, block: bool) -> Optional[list[Job]]:
        """The jobs of the next batch (whole jobs, at most max_batch_size rows); None once stopped
        and drained; an empty list (block=False) when nothing waits."""
        with self.condition:
            while not self.waiting:
                if self.stopping:
                    return None
                if not block:
                    return []
                self.condition.wait()
        if self.batch_wait_s > 0:
            time.sleep(self.batch_wait_s)  # requests sent together arrive a moment apart
        with self.condition:
            jobs, rows = [self.waiting.popleft()], 0
            rows = len(jobs[0].rows)
            while self.waiting and rows + len(self.waiting[0].rows) <= self.max_batch_size:
                job = self.waiting.popleft()
                jobs.append(job)
                rows += len(job.rows)
            return jobs

    def run_batch(self, jobs: list[Job]) -> None:
        step = self.step()
        rows = [_Row(job, i, settings, self.tokenizer, self.eos, self.unseeded, step)
                for job in jobs for i, settings in enumerate(job.rows)]
        prompts = [row.settings.prompt_ids for row in rows]
        max_new = max(row.settings.max_tokens for row in rows)
        if self.lockstep is not None:
            self.lockstep.send_batch(prompts, max_new)
        self.busy_rows = len(rows)

        def choose(logits: torch.Tensor) -> tuple[torch.Tensor, bool]:
            tokens = torch.full((len(rows),), self.pad_id, dtype=torch.long)
            for i, row in enumerate(rows):
                if not row.done:
                    tokens[i] = row.choose(logits[i])
                    row.accept(int(tokens[i]))
            all_done = all(row.done for row in rows)
            if self.lockstep is not None:
                self.lockstep.send_tokens(tokens, all_done)
            return tokens, all_done

        try:
            decode(self.model, self.forward_context, prompts, max_new, self.pad_id, choose)
        except Exception as e:  # a failed batch fails its requests, not the server
            log.exception("serving: a batch of %d rows failed", len(rows))
            error = Event("error", text=f"generation failed: {type(e).__name__}: {e}")
            if self.lockstep is not None:
                # The other ranks are inside the same collectives: no way to go on together.
                # Every request still waiting is answered before the server stops.
                with self.condition:
                    self.stopping = True
                    jobs = jobs + list(self.waiting)
                    self.waiting.clear()
            for job in jobs:
                job.events(error)
            if self.lockstep is not None:
                raise
        finally:
            self.busy_rows = 0
