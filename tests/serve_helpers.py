"""The server's bad-input, fuzz and load tests share these: the quickstart's model shape with the
bundled tokenizer (as `collie init-model` writes it, chat template included), and the real app
(engine thread and all) driven in-process."""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

from fastapi.testclient import TestClient

from collie.cli import main
from collie.models.base import CollieModel, load_tokenizer
from collie.serve.app import ServedModel, build_app
from collie.serve.engine import Engine


def quickstart_model(path: str) -> str:
    """A random-initialised model of the quickstart's shape, written by `collie init-model`."""
    assert main(["init-model", "--shape", "tiny", path]) == 0
    return path


@contextlib.contextmanager
def in_process_client(model_dir: str, context_length: int = 4096, max_batch_size: int = 8,
                      max_queue: int = 64) -> Iterator:
    """A TestClient over `collie serve`'s app for `model_dir`, its engine decoding in a thread.
    A short `context_length` keeps generated requests cheap (every budget is checked against it)."""
    model = CollieModel.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    engine = Engine(model, tokenizer, max_batch_size=max_batch_size, max_queue=max_queue, batch_wait_s=0.0)
    decoder = threading.Thread(target=engine.serve_forever, name="test-decode", daemon=True)
    decoder.start()
    served = ServedModel("tiny", tokenizer, context_length, default_max_tokens=8)
    try:
        with TestClient(build_app(engine, served), raise_server_exceptions=False) as client:
            yield client
    finally:
        engine.stop()
        decoder.join(timeout=60)


def assert_openai_error(response, status: int | None = None) -> dict:
    """A 4xx in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`; returns the error."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str), error
    return error
