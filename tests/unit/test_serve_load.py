"""`collie serve` under load: 200 mixed good and bad requests from 32 concurrent clients against a
real server process (the quickstart's model shape, as `collie init-model` writes it). Every good
request is answered (200, a whole answer), every bad one is a 4xx in OpenAI's shape, the server
is alive afterwards with nothing queued, its memory is back near its idle level, and SIGTERM
still stops it cleanly."""

import json
import queue
import threading

import httpx
import psutil
from helpers import ServerProcess, free_port
from serve_helpers import quickstart_model

CLIENTS, REQUESTS = 32, 200
MEMORY_GROWTH_BOUND = 200 * 2**20  # generous: a leak of a few KB per request over 200 requests stays far below

COMPLETION = {"model": "tiny", "prompt": "Question: What is collie?\nAnswer: ", "max_tokens": 8, "temperature": 0}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "What is collie?"}], "max_tokens": 8}
GOOD = [("completions", COMPLETION), ("chat/completions", CHAT), ("completions", dict(COMPLETION, prompt=[1, 53, 9, 71])),
        ("completions", dict(COMPLETION, stream=True)), ("chat/completions", dict(CHAT, temperature=0.8, seed=3))]
BAD = [("completions", dict(COMPLETION, foo=1), None), ("completions", dict(COMPLETION, stream="yes"), None),
       ("completions", COMPLETION, "text/plain"), ("completions", dict(COMPLETION, model="gpt-4"), None),
       ("chat/completions", dict(CHAT, max_tokens=100000), None)]


def mixed_requests() -> list:
    """Every third request is bad: (path, body, content type, good)."""
    requests = []
    for i in range(REQUESTS):
        if i % 3 == 2:
            path, body, content_type = BAD[i % len(BAD)]
            requests.append((path, body, content_type, False))
        else:
            path, body = GOOD[i % len(GOOD)]
            requests.append((path, body, None, True))
    return requests


def outcome(response: httpx.Response, body: dict, good: bool) -> str:
    """'ok' when the answer is what it should be, else what came back."""
    if not good:
        error = response.json().get("error", {}) if response.headers["content-type"].startswith("application/json") else {}
        return "ok" if 400 <= response.status_code < 500 and isinstance(error.get("message"), str) else response.text
    if response.status_code != 200:
        return f"{response.status_code}: {response.text}"
    if body.get("stream"):
        return "ok" if response.text.rstrip().endswith("data: [DONE]") else response.text
    choice = response.json()["choices"][0]
    text = choice["message"]["content"] if "messages" in body else choice["text"]
    return "ok" if isinstance(text, str) and choice["finish_reason"] in ("stop", "length") else response.text


def test_mixed_load_from_32_clients(tmp_path):
    model_dir = quickstart_model(str(tmp_path / "quickstart"))
    port = free_port()
    server = ServerProcess(["-m", "collie", "serve", model_dir, "--port", str(port), "--model-name", "tiny",
                            "--max-batch-size", "16", "--max-queue", "64"], port, str(tmp_path / "server.log"))
    try:
        process = psutil.Process(server.process.pid)
        for path, body in GOOD:  # the first requests allocate what every later one reuses
            assert outcome(httpx.post(f"{server.url}/v1/{path}", json=body, timeout=60), body, True) == "ok"
        idle = process.memory_info().rss

        todo: queue.Queue = queue.Queue()
        for request in mixed_requests():
            todo.put(request)
        results: list = []

        def client() -> None:
            with httpx.Client(base_url=f"{server.url}/v1", timeout=120) as http:
                while True:
                    try:
                        path, body, content_type, good = todo.get_nowait()
                    except queue.Empty:
                        return
                    response = http.post(f"/{path}", content=json.dumps(body).encode(),
                                         headers={"content-type": content_type or "application/json"})
                    results.append((good, outcome(response, body, good)))

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert len(results) == REQUESTS and sum(good for good, _ in results) == 134
        assert [answer for _, answer in results if answer != "ok"] == []

        health = httpx.get(f"{server.url}/health", timeout=10).json()
        assert health["status"] == "ok" and health["queued"] == 0 and health["decoding"] == 0
        assert outcome(httpx.post(f"{server.url}/v1/completions", json=COMPLETION, timeout=60), COMPLETION, True) == "ok"
        grown = process.memory_info().rss - idle
        assert grown < MEMORY_GROWTH_BOUND, f"the server's memory grew by {grown / 2**20:.0f} MB under load"
    finally:
        assert server.stop() == 0
