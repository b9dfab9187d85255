"""Serving a ready model until stopped: rank 0 answers HTTP requests (and opens a page, if one is
asked for), every rank decodes the batches together. `collie serve` and CoLLiE's `Server.run()`
both end here."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Callable, ContextManager, Optional

import torch

from collie.host_memory import reuse_freed_memory
from collie.serve.app import ServedModel, build_app
from collie.serve.continuous import Plan, paged_forward
from collie.serve.engine import Engine, decode
from collie.serve.http import http_server, listening_socket
from collie.serve.kv_blocks import BlockPool
from collie.serve.lockstep import Lockstep

log = logging.getLogger("collie")


def follow_plan(model, forward_context: Callable[[], ContextManager], plan: Plan, blocks: list[BlockPool]) -> None:
    """A following rank's part of one continuous-batching forward, on its own blocks (the same
    block numbers as rank 0's, holding this rank's heads or layers)."""
    if not blocks:
        blocks.append(BlockPool(plan.num_blocks, plan.block_size))
    paged_forward(model, forward_context, blocks[0], plan)


def serve_until_stopped(model: torch.nn.Module, tokenizer, forward_context: Callable[[], ContextManager],
                        served: ServedModel, host: str, port: int, world_size: int = 1, max_batch_size: int = 16,
                        max_queue: int = 64, page: Optional[Callable[[str, str], object]] = None,
                        port_setting: str = "--port", batching: str = "continuous", max_num_tokens: int = 512,
                        kv_cache_gib: Optional[float] = None) -> None:
    """Serve `model` at http://host:port/v1 until SIGTERM or Ctrl-C, then answer what is in flight
    and return. `page(api_url, model_name)` makes a web page over the endpoint (rank 0). A port
    that cannot be listened on is a ValueError naming `port_setting`, before anything starts."""
    reuse_freed_memory()  # the same step buffers every step: keep them, not fault them in anew
    lockstep = Lockstep() if world_size > 1 else None
    blocks: list[BlockPool] = []  # a following rank's own KV blocks, made at the first plan
    engine = Engine(model, tokenizer, forward_context, max_batch_size, max_queue, lockstep=lockstep,
                    batching=batching, max_num_tokens=max_num_tokens, kv_cache_gib=kv_cache_gib)
    if lockstep is not None and lockstep.rank != 0:
        lockstep.follow(lambda prompts, max_new, choose: decode(model, forward_context, prompts, max_new,
                                                                engine.pad_id, choose),
                        run_plan=lambda plan: follow_plan(model, forward_context, plan, blocks))
        return
    sock = listening_socket(host, port, port_setting)
    server = http_server(build_app(engine, served), host, port)
    failure: list[BaseException] = []

    def decode_forever() -> None:
        try:
            engine.serve_forever()
        except BaseException as e:  # the ranks can no longer decode together: stop serving
            failure.append(e)
            server.should_exit = True

    decoder = threading.Thread(target=decode_forever, name="collie-decode", daemon=True)
    decoder.start()
    opened = None
    if page is not None:
        api_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        opened = page(f"http://{api_host}:{port}/v1", served.name)
        opened.start()
    log.info("serving %r at http://%s:%d/v1 (%d process(es)); SIGTERM or Ctrl-C drains and stops",
             served.name, host, port, world_size)
    if threading.current_thread() is threading.main_thread():
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda *_: None)
    server.run(sockets=[sock])  # returns once the requests in flight are answered
    engine.stop()
    decoder.join()
    if opened is not None:
        opened.stop()
    if failure:
        raise failure[0]
    log.info("stopped: every request was answered")
