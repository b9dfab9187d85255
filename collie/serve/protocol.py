"""The OpenAI request bodies collie accepts, and their checks. A bad request is refused before
it reaches the engine, with OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`.

As OpenAI's API does, an argument it does not know is refused ("Unrecognized request argument
supplied"), and types are strict: `"stream": "yes"` or `"max_tokens": "5"` is an error, not a guess."""

from __future__ import annotations

import json
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from collie.serve.engine import RowSettings

MAX_STOP_SEQUENCES = 4
JSON_TYPES = ("application/json",)


class APIError(Exception):
    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _Request(_Strict):
    model: str
    max_tokens: Optional[int] = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: Optional[dict[str, float]] = None
    user: Optional[str] = None  # OpenAI's end-user id: it does not change the answer

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_shape(cls, value: Any) -> Any:
        if value is None or isinstance(value, str) or (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            return value
        raise ValueError("must be a string or a list of strings")


def _is_ids(value: Any) -> bool:
    # bool is an int to Python, not a token id
    return isinstance(value, list) and all(type(v) is int for v in value)


class CompletionRequest(_Request):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    logprobs: Optional[int] = None
    suffix: Optional[str] = None
    best_of: Optional[int] = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        """OpenAI's four forms; checked here so an error names the prompt, not a member of the union."""
        if isinstance(value, str) or _is_ids(value):
            return value
        if isinstance(value, list) and (all(isinstance(v, str) for v in value) or all(_is_ids(v) for v in value)):
            return value
        raise ValueError("must be a string, a list of strings, a list of token ids (integers) or a list of "
                         "lists of token ids")

    def prompts(self) -> list[Union[str, list[int]]]:
        """Each prompt: a text, or token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class ChatMessage(_Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[dict]]
    name: Optional[str] = None

    @field_validator("content", mode="before")
    @classmethod
    def _text_only(cls, value: Any) -> Any:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) and part.get("type") == "text" and
                                           isinstance(part.get("text"), str) and set(part) == {"type", "text"}
                                           for part in value):
            return value
        raise ValueError("must be a string or a list of text parts ({\"type\": \"text\", \"text\": \"…\"}); "
                         "only text content is supported")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part["text"] for part in self.content)


class ChatRequest(_Request):
    messages: list[ChatMessage]
    max_completion_tokens: Optional[int] = None
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None


def check_content_type(content_type: Optional[str]) -> None:
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in JSON_TYPES:
        raise APIError(400, f"content-type: the request body must be JSON sent as application/json, got "
                            f"{content_type or 'no content-type'!r}")


def parse(body: bytes, request_type: type[_Request]) -> _Request:
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_no_constant)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # a lone surrogate ("\ud800") is not text
    except UnicodeError:
        raise APIError(400, "the request body is not valid UTF-8 (or holds a lone \\ud800-style surrogate)") from None
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON ({e.msg} at position {e.pos})") from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return request_type.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {param}", param) from None
        message = first["msg"].removeprefix("Value error, ")
        raise APIError(400, f"{param}: {message}" if param else message, param) from None


def _no_constant(name: str) -> None:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def check_sampling(request: _Request, max_batch_size: int) -> None:
    """Ranges OpenAI documents; options collie does not implement are refused by name rather than ignored."""
    if not 0.0 <= request.temperature <= 2.0:
        raise APIError(400, f"temperature: must be between 0 and 2, got {request.temperature}", "temperature")
    if not 0.0 < request.top_p <= 1.0:
        raise APIError(400, f"top_p: must be in (0, 1], got {request.top_p}", "top_p")
    if request.n < 1:
        raise APIError(400, f"n: must be at least 1, got {request.n}", "n")
    for name in ("presence_penalty", "frequency_penalty", "logit_bias", "suffix", "top_logprobs"):
        if getattr(request, name, None):
            raise APIError(400, f"{name}: not supported by this server (leave it out)", name)
    if getattr(request, "logprobs", None):
        raise APIError(400, "logprobs: not supported by this server", "logprobs")
    if getattr(request, "echo", False):
        raise APIError(400, "echo: not supported by this server", "echo")
    best_of = getattr(request, "best_of", None)
    if best_of is not None and best_of != request.n:
        raise APIError(400, f"best_of: not supported by this server (leave it out, or equal to n), got {best_of}",
                       "best_of")
    if any(getattr(m, "name", None) is not None for m in getattr(request, "messages", [])):
        raise APIError(400, "messages: a participant's name is not supported by this server (leave it out)",
                       "messages")
    if request.stream_options is not None and not request.stream:
        raise APIError(400, "stream_options: only allowed when stream is true", "stream_options")
    if request.seed is not None and not 0 <= request.seed < 2**63:
        raise APIError(400, f"seed: must be in [0, 2**63), got {request.seed}", "seed")
    stop = stop_sequences(request)
    if len(stop) > MAX_STOP_SEQUENCES or any(not s for s in stop):
        raise APIError(400, f"stop: up to {MAX_STOP_SEQUENCES} non-empty strings", "stop")


def stop_sequences(request: _Request) -> list[str]:
    if request.stop is None:
        return []
    return [request.stop] if isinstance(request.stop, str) else list(request.stop)


def check_token_ids(ids: list[int], vocab_size: int) -> list[int]:
    """A prompt given as token ids: each must be one of the model's tokens."""
    for token in ids:
        if not 0 <= token < vocab_size:
            raise APIError(400, f"prompt: token id {token} is not in the model's vocabulary (0 to {vocab_size - 1})",
                           "prompt")
    return ids


def rows_for(request: _Request, prompts: list[list[int]], context_length: int, max_batch_size: int,
             default_max_tokens: int) -> list[RowSettings]:
    """One engine row per prompt and choice; `max_tokens` checked against the model's context."""
    if len(prompts) * request.n > max_batch_size:
        raise APIError(400, f"n: {len(prompts)} prompt(s) × n={request.n} is more than this server's "
                            f"max_batch_size ({max_batch_size})", "n")
    requested = getattr(request, "max_completion_tokens", None)
    if requested is None:
        requested = request.max_tokens
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
