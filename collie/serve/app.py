"""The HTTP side: FastAPI routes speaking OpenAI's API (`/v1/models`, `/v1/completions`,
`/v1/chat/completions`, streaming as server-sent events) plus `/health`, in front of an `Engine`."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import AsyncIterator, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from collie.serve.engine import Engine, Event, Job, Overloaded
from collie.serve.protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    check_content_type,
    check_sampling,
    check_token_ids,
    parse,
    rows_for,
)
from collie.serve.serve_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions; chat defaults to what fits


class ServedModel:
    """What the routes need to know about the model besides the engine."""

    def __init__(self, name: str, tokenizer, context_length: int, default_max_tokens: int = 1024) -> None:
        self.name, self.tokenizer, self.context_length = name, tokenizer, context_length
        # A chat request without max_tokens gets this many at most (or what fits): the KV cache of
        # a batch is sized by its longest budget, so "the whole context" is not the default.
        self.default_max_tokens = default_max_tokens

    def encode(self, prompt: Union[str, list[int]]) -> list[int]:
        """A text's token ids; a prompt given as token ids (as OpenAI's API takes them) as it is."""
        if isinstance(prompt, list):
            return check_token_ids(prompt, len(self.tokenizer))
        return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]

    def chat_prompt(self, request: ChatRequest) -> list[int]:
        if not getattr(self.tokenizer, "chat_template", None):
            raise APIError(400, f"model {self.name!r} has no chat template (its tokenizer sets none); use "
                                "/v1/completions", "messages")
        if not request.messages:
            raise APIError(400, "messages: must not be empty", "messages")
        turns = [{"role": m.role, "content": m.text()} for m in request.messages]
        try:
            text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template is the model's code: it refuses what it cannot render, its own way
            raise APIError(400, f"messages: the model's chat template could not render them ({type(e).__name__}: "
                                f"{e})", "messages") from None
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def build_app(engine: Engine, served: ServedModel) -> FastAPI:
    app = FastAPI(title="collie", docs_url=None, redoc_url=None)
    created = int(time.time())

    @app.exception_handler(APIError)
    async def api_error(_request, error: APIError):
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(Exception)
    async def server_error(_request, error: Exception):  # a bug, still answered in OpenAI's shape
        message = f"the server failed: {type(error).__name__}: {error}"
        return JSONResponse(APIError(500, message, kind="server_error").body(), status_code=500)

    @app.exception_handler(HTTPException)
    async def http_error(_request, error: HTTPException):
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(APIError(error.status_code, str(error.detail), kind=kind).body(),
                            status_code=error.status_code)

    @app.get("/health")
    async def health():
        health = {"status": "ok", "model": served.name, "queued": engine.queued(), "decoding": engine.busy_rows,
                  "step": engine.step(), "batching": engine.batching}
        if engine.batcher is not None:
            pool = engine.batcher.pool
            health.update(kv_blocks_used=pool.used, kv_blocks_total=pool.num_blocks,
                          prefix_cache_hit_tokens=engine.batcher.prefix_hit_tokens)
        return health

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(engine.metrics.text(), media_type=METRICS_CONTENT_TYPE)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": created,
                                            "owned_by": "collie"}]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        check_content_type(request.headers.get("content-type"))
        body = parse(await request.body(), CompletionRequest)
        _check_model(body.model, served)
        check_sampling(body, engine.max_batch_size)
        given = body.prompts()
        if not given:
            raise APIError(400, "prompt: must not be empty", "prompt")
        prompts = [served.encode(prompt) for prompt in given]
        rows = rows_for(body, prompts, served.context_length, engine.max_batch_size, COMPLETIONS_DEFAULT_MAX_TOKENS)
        return await _answer(engine, served, body, rows, chat=False, request=request)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        check_content_type(request.headers.get("content-type"))
        body = parse(await request.body(), ChatRequest)
        _check_model(body.model, served)
        check_sampling(body, engine.max_batch_size)
        rows = rows_for(body, [served.chat_prompt(body)], served.context_length, engine.max_batch_size,
                        served.default_max_tokens)
        return await _answer(engine, served, body, rows, chat=True, request=request)

    return app


def _check_model(name: str, served: ServedModel) -> None:
    if name != served.name:
        raise APIError(404, f"model {name!r} does not exist; this server serves {served.name!r}", "model",
                       "model_not_found")


async def _answer(engine: Engine, served: ServedModel, body, rows, chat: bool, request: Request):
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Event] = asyncio.Queue()
    job = Job(rows, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
    try:
        engine.submit(job)
    except Overloaded as e:
        raise APIError(503, str(e), kind="server_overloaded", code="server_overloaded") from None
    answer = _Answer(served.name, len(rows), chat, body.n)
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        return StreamingResponse(answer.stream(job, events, include_usage), media_type="text/event-stream")
    try:
        checked = loop.time()
        while not answer.complete():
            try:
                answer.take(await asyncio.wait_for(events.get(), timeout=1.0))
            except asyncio.TimeoutError:
                pass
            if loop.time() - checked >= 1.0:  # about once a second: is anybody still waiting for it?
                checked = loop.time()
                if await request.is_disconnected():
                    job.cancelled = True  # the engine stops decoding its rows at the next token
                    return JSONResponse(APIError(499, "the client closed the request").body(), status_code=499)
    except asyncio.CancelledError:
        job.cancelled = True
        raise
    return answer.whole()


class _Answer:
    """Collects a job's events into OpenAI's response objects (whole, or as stream chunks)."""

    def __init__(self, model: str, choices: int, chat: bool, n: int) -> None:
        self.model, self.chat, self.n = model, chat, n
        self.step: Optional[int] = None
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.texts = [""] * choices
        self.finish: list[Optional[str]] = [None] * choices
        self.prompt_tokens = [0] * choices
        self.completion_tokens = [0] * choices

    @property
    def fingerprint(self) -> dict:
        """Serving during training: the step whose weights answered (OpenAI's field for the backend's version)."""
        return {"system_fingerprint": f"collie-step-{self.step}"} if self.step is not None else {}

    def take(self, event: Event) -> None:
        if event.kind == "error":
            raise APIError(500, event.text, kind="server_error")
        self.step = event.step
        if event.kind == "text":
            self.texts[event.index] += event.text
        else:
            self.finish[event.index] = event.finish_reason
            self.prompt_tokens[event.index] = event.prompt_tokens
            self.completion_tokens[event.index] = event.completion_tokens

    def complete(self) -> bool:
        return all(reason is not None for reason in self.finish)

    def usage(self) -> dict:
        # Rows go prompt by prompt, n each: a prompt answered n times is counted once, as OpenAI does.
        prompt = sum(self.prompt_tokens[::self.n])
        completion = sum(self.completion_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def whole(self) -> dict:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                        "logprobs": None} for i, (text, reason) in enumerate(zip(self.texts, self.finish))]
        else:
            choices = [{"index": i, "text": text, "finish_reason": reason, "logprobs": None}
                       for i, (text, reason) in enumerate(zip(self.texts, self.finish))]
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self.usage(),
                **self.fingerprint}

    def _chunk(self, choices: list[dict], usage: Optional[dict] = None) -> str:
        chunk = {"id": self.id, "object": "chat.completion.chunk" if self.chat else "text_completion",
                 "created": self.created, "model": self.model, "choices": choices, **self.fingerprint}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk)}\n\n"

    def _choice(self, index: int, text: Optional[str], reason: Optional[str]) -> dict:
        if self.chat:
            delta = {} if text is None else {"content": text}
            return {"index": index, "delta": delta, "finish_reason": reason, "logprobs": None}
        return {"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}

    async def stream(self, job: Job, events: asyncio.Queue, include_usage: bool) -> AsyncIterator[str]:
        try:
            started = False
            while not self.complete():
                event = await events.get()
                if event.kind == "error":  # the status line has gone out: an error event, as OpenAI sends
                    yield f"data: {json.dumps(APIError(500, event.text, kind='server_error').body())}\n\n"
                    return
                self.take(event)
                if self.chat and not started:
                    for index in range(len(self.texts)):
                        yield self._chunk([{"index": index, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None, "logprobs": None}])
                started = True
                if event.kind == "text":
                    yield self._chunk([self._choice(event.index, event.text, None)])
                else:
                    yield self._chunk([self._choice(event.index, None, event.finish_reason)])
            if include_usage:
                yield self._chunk([], self.usage())
            yield "data: [DONE]\n\n"
        finally:
            if not self.complete():
                job.cancelled = True  # the client went away: stop decoding for it
