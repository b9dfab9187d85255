"""The OpenAI request bodies collie accepts, and their checks. A bad request is refused before
it reaches the engine, with OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

from __future__ import annotations

import json
from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

from collie.serve.engine import RowSettings

MAX_STOP_SEQUENCES = 4


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Request(BaseModel):
    # Fields clients send that do not change the answer here (user, logit_bias of {}, …) are accepted.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: Optional[dict] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: Union[bool, int, None] = None


class CompletionRequest(_Request):
    prompt: Union[str, list[str]]
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[dict]]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if any(part.get("type") != "text" for part in self.content):
            raise APIError(400, "messages: only text content parts are supported", "messages")
        return "".join(str(part.get("text", "")) for part in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = None
    top_logprobs: Optional[int] = None


def parse(body: bytes, request_type: type[_Request]) -> _Request:
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON ({e.msg} at position {e.pos})") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return request_type.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise APIError(400, f"{param}: {first['msg']}" if param else first["msg"], param) from None


def check_sampling(request: _Request, max_batch_size: int) -> None:
    """Ranges OpenAI documents; options collie does not implement are refused by name rather than ignored."""
    if not 0.0 <= request.temperature <= 2.0:
        raise APIError(400, f"temperature: must be between 0 and 2, got {request.temperature}", "temperature")
    if not 0.0 < request.top_p <= 1.0:
        raise APIError(400, f"top_p: must be in (0, 1], got {request.top_p}", "top_p")
    if request.n < 1:
        raise APIError(400, f"n: must be at least 1, got {request.n}", "n")
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(request, name):
            raise APIError(400, f"{name}: not supported by this server (leave it 0)", name)
    if request.logprobs not in (None, False, 0):
        raise APIError(400, "logprobs: not supported by this server", "logprobs")
    if getattr(request, "echo", False):
        raise APIError(400, "echo: not supported by this server", "echo")
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise APIError(400, f"seed: must be in [0, 2**63), got {request.seed}", "seed")
    stop = stop_sequences(request)
    if len(stop) > MAX_STOP_SEQUENCES or any(not s for s in stop):
        raise APIError(400, f"stop: up to {MAX_STOP_SEQUENCES} non-empty strings", "stop")


def stop_sequences(request: _Request) -> list[str]:
    if request.stop is None:
        return []
    return [request.stop] if isinstance(request.stop, str) else list(request.stop)


def rows_for(request: _Request, prompts: list[list[int]], context_length: int, max_batch_size: int,
             default_max_tokens: int) -> list[RowSettings]:
    """One engine row per prompt and choice; `max_tokens` checked against the model's context."""
    if len(prompts) * request.n > max_batch_size:
        raise APIError(400, f"n: {len(prompts)} prompt(s) × n={request.n} is more than this server's "
                            f"max_batch_size ({max_batch_size})", "n")
    requested = getattr(request, "max_completion_tokens", None) or request.max_tokens
    rows = []
    for prompt in prompts:
        if not prompt:
            raise APIError(400, "prompt: must not be empty", "prompt")
        room = context_length - len(prompt)
        if room < 1:
            raise APIError(400, f"prompt: {len(prompt)} tokens leave no room in the model's context of "
                                f"{context_length} tokens", "prompt", "context_length_exceeded")
        max_tokens = requested if requested is not None else min(default_max_tokens, room)
        if max_tokens < 1:
            raise APIError(400, f"max_tokens: must be at least 1, got {max_tokens}", "max_tokens")
        if max_tokens > room:
            raise APIError(400, f"max_tokens: the prompt ({len(prompt)} tokens) plus max_tokens ({max_tokens}) is "
                                f"more than the model's context of {context_length} tokens", "max_tokens",
                           "context_length_exceeded")
        for _ in range(request.n):
            rows.append(RowSettings(prompt, max_tokens, request.temperature, request.top_p,
                                    stop_sequences(request), request.seed))
    return rows
