"""Talk to the model while it trains: the same OpenAI endpoint as `collie serve`, answering from
the weights of the step just finished, under any layout (`serve.port` in the config, or this
callback). Requests wait in the queue and are decoded between two steps — at most one batch per
step — in eval mode and without gradients, with the engine's own random generator: training's
numbers are the same with or without serving.

Rank 0 runs the HTTP server in a thread; at every step boundary it tells the other ranks whether
there is a batch to decode (`Lockstep`), so all ranks decode it together and go back to training.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from collie.events import Callback
from collie.serve.app import ServedModel, build_app
from collie.serve.engine import Engine, decode
from collie.serve.gradio_page import GradioPage
from collie.serve.http import http_server, start_in_background
from collie.serve.limits import context_length, model_name
from collie.serve.lockstep import Lockstep

log = logging.getLogger("collie")


class ServeCallback(Callback):
    """`gradio_port`: a Gradio page there; `page`: another page, made from the endpoint's URL and
    the model's name (CoLLiE's providers, `collie.serve.providers`)."""

    def __init__(self, port: int, host: str = "127.0.0.1", max_batch_size: int = 8, max_queue: int = 64,
                 model_name: Optional[str] = None, gradio_port: Optional[int] = None,
                 page: Optional[Callable[[str, str], object]] = None) -> None:
        self.port, self.host, self.model_name = port, host, model_name
        if gradio_port is not None:
            page = lambda api_url, name: GradioPage(api_url, name, port=gradio_port, host=host)  # noqa: E731
        self.page = page
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.engine = None
        self.lockstep = None
        self._server = None
        self._thread: Optional[threading.Thread] = None
        self._page = None

    def on_train_begin(self, trainer) -> None:
        if trainer.tokenizer is None:
            raise ValueError("serve: serving during training needs the Trainer's tokenizer")
        parallel = trainer.parallel
        self.lockstep = Lockstep() if trainer.runtime.env.world_size > 1 else None
        self.engine = Engine(parallel.eval_model, trainer.tokenizer, parallel.forward_context, self.max_batch_size,
                             self.max_queue, batch_wait_s=0.0, lockstep=self.lockstep, batching="static",
                             step=lambda: trainer.global_step)
        if not trainer.runtime.is_main:
            return
        name = model_name(trainer.base_model or trainer.config.output_dir or "model", self.model_name)
        dims = trainer.spec.dims(trainer.model.config)
        served = ServedModel(name, trainer.tokenizer, context_length(dims, trainer.tokenizer, parallel.eval_model))
        self._server = http_server(build_app(self.engine, served), self.host, self.port)
        self._thread = start_in_background(self._server, "serve.port")
        log.info("serving %r at http://%s:%d/v1 while training (answered between steps)", name, self.host, self.port)
        if self.page is not None:
            api_host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
            self._page = self.page(f"http://{api_host}:{self.port}/v1", name)
            self._page.start()

    def on_train_batch_end(self, trainer, loss) -> None:
        self._serve_waiting(trainer)

    def on_train_end(self, trainer) -> None:
        if trainer.runtime.is_main:
            self.engine.stop()  # from now on new requests are refused (503) while the server closes
        self._serve_waiting(trainer, everything=True)  # the final weights answer what is queued
        if self._page is not None:
            self._page.stop()
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=60)

    def _serve_waiting(self, trainer, everything: bool = False) -> None:
        """Every rank calls this between two steps: one batch of what waits (or all of it)."""
        model = trainer.parallel.eval_model
        was_training = model.training
        model.eval()
        try:
            if trainer.runtime.is_main:
                jobs = self.engine.next_batch(block=False)
                while jobs:
                    self.engine.run_batch(jobs)
                    jobs = self.engine.next_batch(block=False) if everything else None
                if self.lockstep is not None:
                    self.lockstep.send_idle()
            else:
                self.lockstep.follow(lambda prompts, max_new, choose: decode(
                    model, trainer.parallel.forward_context, prompts, max_new, self.engine.pad_id, choose), until="idle")
        finally:
            model.train(was_training)
