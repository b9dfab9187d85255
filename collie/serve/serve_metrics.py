"""What a server is operated with, in Prometheus' text format (`GET /metrics`): requests running
and waiting, prompt and generated tokens, time to first token and between tokens, KV cache
blocks, preemptions, prefix-cache hits and forward passes. Each engine has its own registry, so
two servers in one process (tests, serving during training) count separately."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    def __init__(self, running: Callable[[], int], waiting: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        Gauge("collie_requests_running", "Sequences being decoded", registry=r).set_function(running)
        Gauge("collie_requests_waiting", "Sequences queued for a place in the batch", registry=r).set_function(waiting)
        self._prompt = Counter("collie_prompt_tokens", "Prompt tokens prefilled", registry=r)
        self._generated = Counter("collie_generation_tokens", "Tokens generated", registry=r)
        self._ttft = Histogram("collie_time_to_first_token_seconds", "From arrival to the first generated token",
                               buckets=_LATENCY_BUCKETS, registry=r)
        self._gap = Histogram("collie_time_per_output_token_seconds", "Between two tokens of one sequence",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self._used = Gauge("collie_kv_blocks_used", "KV cache blocks held by sequences", registry=r)
        self._free = Gauge("collie_kv_blocks_free", "KV cache blocks no sequence holds", registry=r)
        self._preemptions = Counter("collie_preemptions", "Sequences preempted for KV cache room", registry=r)
        self._prefix = Counter("collie_prefix_cache_hit_tokens", "Prompt tokens found in the KV cache", registry=r)
        self._forwards = Counter("collie_forward_passes", "Forward passes of the model (each decoding step is one)",
                                 registry=r)

    def prompt(self, tokens: int) -> None:
        self._prompt.inc(tokens)

    def generated(self, tokens: int) -> None:
        self._generated.inc(tokens)

    def first_token(self, seconds: float) -> None:
        self._ttft.observe(seconds)

    def token_gap(self, seconds: float) -> None:
        self._gap.observe(seconds)

    def kv_blocks(self, used: int, free: int) -> None:
        self._used.set(used)
        self._free.set(free)

    def preempted(self) -> None:
        self._preemptions.inc()

    def prefix_hit(self, tokens: int) -> None:
        self._prefix.inc(tokens)

    def forward_pass(self) -> None:
        self._forwards.inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)
