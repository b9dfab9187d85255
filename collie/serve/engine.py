"""The decoding side of the server: requests wait in a bounded queue and are decoded together,
each row with its own sampling settings, stop sequences and token budget. Rows report what they
generate as it is generated (`Job.events`), so streaming and plain answers are the same path.

Two ways to batch: `continuous` (the default; `collie.serve.continuous`) lets rows join and
leave at every decoding step over a paged KV cache sized by a memory budget; `static` takes as
many requests as fit, left-pads their prompts and decodes them with one KV cache until the
longest is done (kept for comparison, for models whose positions are not read from the
attention mask, and for serving between training steps).

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

import psutil
import torch

from collie.dtypes import at_least_fp32
from collie.generation import GREEDY_BELOW, choose_next
from collie.models.kv_cache import KVCache
from collie.models.registry import spec_of
from collie.peft.prompt_tuning import prompt_length
from collie.serve.continuous import ContinuousBatcher, Plan, paged_forward
from collie.serve.kv_blocks import BlockPool
from collie.serve.serve_metrics import ServeMetrics
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
        self.arrived = time.perf_counter()


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
        # Every token, even one whose text is held back (half a character, the start of a stop
        # sequence, a special token): a streaming client hears of its first token when it is made.
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
                 lockstep=None, step: Callable[[], Optional[int]] = lambda: None, batching: str = "continuous",
                 max_num_tokens: int = 512, kv_cache_gib: Optional[float] = None, block_size: int = 16) -> None:
        """`batching`: continuous or static (see the module); continuous takes `max_num_tokens`
        (prompt tokens prefilled per iteration) and a KV cache of `kv_cache_gib` (None: see
        `kv_cache_blocks`) in blocks of `block_size` tokens."""
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
        self.metrics = ServeMetrics(lambda: self.busy_rows, self.queued)
        self.batching = batching if batching == "static" or continuous_supported(model) else "static"
        if self.batching != batching:
            log.info("serving: this model's positions do not come from the attention mask; batching statically")
        self.batcher: Optional[ContinuousBatcher] = None
        if self.batching == "continuous":
            pool = BlockPool(kv_cache_blocks(model, kv_cache_gib, block_size, max_batch_size), block_size)
            self.batcher = ContinuousBatcher(pool, self._paged_forward, max_batch_size, max_num_tokens, self.metrics)

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
        if self.batcher is not None:
            self._continuous_forever()
            return
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
            self.metrics.forward_pass()  # each call follows one forward
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
            self._fail(jobs, e)
        finally:
            self.busy_rows = 0

    # -- continuous batching ------------------------------------------------------------
    def _paged_forward(self, plan: Plan) -> torch.Tensor:
        self.metrics.forward_pass()
        if self.lockstep is not None:
            self.lockstep.send_plan(plan)
        return paged_forward(self.model, self.forward_context, self.batcher.pool, plan)

    def _continuous_forever(self) -> None:
        batcher = self.batcher
        while True:
            with self.condition:
                while not self.waiting and not batcher.running:
                    if self.stopping:
                        if self.lockstep is not None:
                            self.lockstep.send_stop()
                        return
                    self.condition.wait()
                jobs, room = [], batcher.room()
                # Whole jobs, while their rows fit (a job larger than the batch runs alone).
                while self.waiting and (len(self.waiting[0].rows) <= room or not batcher.running and not jobs):
                    jobs.append(self.waiting.popleft())
                    room -= len(jobs[-1].rows)
            step = self.step()
            capacity = batcher.pool.num_blocks * batcher.pool.block_size
            for job in jobs:
                longest = max(len(row.prompt_ids) + row.max_tokens for row in job.rows)
                if longest > capacity:
                    job.events(Event("error", text=f"the KV cache holds {capacity} tokens and this request needs up "
                                                   f"to {longest}; start the server with a larger --kv-cache-gib"))
                    continue
                batcher.admit([_Row(job, i, settings, self.tokenizer, self.eos, self.unseeded, step)
                               for i, settings in enumerate(job.rows)], job.arrived)
            self.busy_rows = len(batcher.running)
            try:
                batcher.drop_finished()
                batcher.step()
            except Exception as e:  # a failed forward fails the requests in it, not the server
                log.exception("serving: a forward over %d sequences failed", len(batcher.running))
                self._fail(batcher.fail_all(), e)
            self.busy_rows = len(batcher.running)

    def _fail(self, jobs: list[Job], error: Exception) -> None:
        """Answer `jobs` with the error. Under lockstep the other ranks are inside the same
        collectives, so the server cannot go on: every waiting request is answered too, and the
        error is raised."""
        event = Event("error", text=f"generation failed: {type(error).__name__}: {error}")
        if self.lockstep is not None:
            # The other ranks are inside the same collectives: no way to go on together.
            # Every request still waiting is answered before the server stops.
            with self.condition:
                self.stopping = True
                jobs = jobs + list(self.waiting)
                self.waiting.clear()
        for job in jobs:
            job.events(event)
        if self.lockstep is not None:
            raise error


def continuous_supported(model) -> bool:
    """Whether the model reads positions from the attention mask and keeps collie's KV cache:
    what a paged forward relies on (not ChatGLM-6B's 2D positions, a prompt-tuned model's
    virtual tokens, or transformers' own classes)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        try:
            spec = spec_of(model)
        except (KeyError, TypeError, ValueError):
            return False
    if getattr(spec, "position_ids", None) is not None or prompt_length(model):
        return False
    new_cache = getattr(model, "new_kv_cache", None)
    return new_cache is not None and isinstance(new_cache(1), KVCache)


def kv_bytes_per_token(model) -> int:
    """Bytes of keys and values one token takes over every layer (all heads: an upper bound for a
    rank that holds some of them)."""
    config = model.config
    heads = getattr(config, "num_attention_heads", 1)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    dtype = getattr(model, "compute_dtype", None) or next(iter(model.parameters())).dtype
    return 2 * config.num_hidden_layers * kv_heads * head_dim * torch.empty((), dtype=dtype).element_size()


def kv_cache_blocks(model, gib: Optional[float], block_size: int, max_batch_size: int) -> int:
    """Blocks in `gib` GiB (None: 90% of a GPU's free memory; on a CPU, what `max_batch_size`
    sequences of the model's whole context need, at most a quarter of the memory available)."""
    per_token = kv_bytes_per_token(model)
    parameter = next(iter(model.parameters()))
    config = model.config
    if gib is not None:
        budget = gib * 2**30
    elif parameter.device.type == "cuda":
        budget = 0.9 * torch.cuda.mem_get_info(parameter.device)[0]
    else:
        context = getattr(config, "max_position_embeddings", 2048)
        budget = min(max_batch_size * context * per_token, 0.25 * psutil.virtual_memory().available)
    blocks = int(budget // (per_token * block_size))
    if blocks < 1:
        raise ValueError(f"--kv-cache-gib: {gib} GiB holds no block of {block_size} tokens "
                         f"({per_token * block_size / 2**20:.2f} MiB each for this model)")
    return blocks
