"""The server's rows of the bad-input table: it validates as OpenAI's API does (an unknown argument
is 400 "Unrecognized request argument supplied", types are strict, token-id prompts are answered),
every 4xx is OpenAI-style JSON, `collie serve` refuses a bad or taken port in one line before it
says "serving", the quickstart's model answers chat, and the in-training page leaves no httpx
lines in the log."""

import contextlib
import json
import logging
import socket
import subprocess
import sys
import threading

import httpx
import pytest
from helpers import free_port
from serve_helpers import assert_openai_error, in_process_client, quickstart_model

from collie.cli import main
from collie.init_model import bundled_tokenizer_path
from collie.models.base import CollieModel, load_tokenizer
from collie.serve.app import ServedModel, build_app
from collie.serve.engine import Engine
from collie.serve.gradio_page import GradioPage
from collie.serve.http import http_server, start_in_background
from collie.serve.page_client import QuietRequestsTo, page_urls
from collie.serve.standalone import serve_until_stopped

HI = {"model": "tiny", "prompt": "hi"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}
JSON = "application/json"

# (path, body, content-type, status, message, param)
BAD_REQUESTS = [
    ("completions", dict(HI, foo=1), JSON, 400, "Unrecognized request argument supplied: foo", "foo"),
    ("completions", dict(HI, functions=[]), JSON, 400, "Unrecognized request argument supplied: functions", "functions"),
    ("chat/completions", dict(CHAT, messages=[{"role": "user", "content": "hi", "foo": 1}]), JSON, 400,
     "Unrecognized request argument supplied: messages.0.foo", "messages.0.foo"),
    ("completions", dict(HI, stream=True, stream_options={"include_usage": True, "x": 1}), JSON, 400,
     "Unrecognized request argument supplied: stream_options.x", "stream_options.x"),
    ("completions", dict(HI, stream="yes"), JSON, 400, "stream: Input should be a valid boolean", "stream"),
    ("completions", dict(HI, max_tokens="5"), JSON, 400, "max_tokens: Input should be a valid integer", "max_tokens"),
    ("completions", dict(HI, n=1.0), JSON, 400, "n: Input should be a valid integer", "n"),
    ("completions", dict(HI, temperature=True), JSON, 400, "temperature: Input should be a valid number", "temperature"),
    ("completions", dict(HI, model=7), JSON, 400, "model: Input should be a valid string", "model"),
    ("completions", dict(HI, stop=5), JSON, 400, "stop: must be a string or a list of strings", "stop"),
    ("completions", HI, "text/plain", 400, "content-type: the request body must be JSON sent as application/json", None),
    ("chat/completions", CHAT, "application/x-www-form-urlencoded", 400, "got 'application/x-www-form-urlencoded'", None),
    ("completions", HI, None, 400, "got 'no content-type'", None),
    ("completions", dict(HI, prompt={"text": "hi"}), JSON, 400, "prompt: must be a string, a list of strings, a list "
     "of token ids (integers) or a list of lists of token ids", "prompt"),
    ("completions", dict(HI, prompt=[1, "a"]), JSON, 400, "prompt: must be a string, a list of strings", "prompt"),
    ("completions", dict(HI, prompt=[1, True]), JSON, 400, "prompt: must be a string, a list of strings", "prompt"),
    ("completions", dict(HI, prompt=[[1, 2], [5, 99999]]), JSON, 400,
     "prompt: token id 99999 is not in the model's vocabulary (0 to 4095)", "prompt"),
    ("completions", dict(HI, prompt=[-1]), JSON, 400, "prompt: token id -1 is not in the model's vocabulary", "prompt"),
    ("completions", dict(HI, prompt=[[1], []]), JSON, 400, "prompt: must not be empty", "prompt"),
    ("completions", dict(HI, stream_options={"include_usage": True}), JSON, 400,
     "stream_options: only allowed when stream is true", "stream_options"),
    ("completions", dict(HI, logit_bias={"5": 10}), JSON, 400, "logit_bias: not supported", "logit_bias"),
    ("completions", dict(HI, suffix="end"), JSON, 400, "suffix: not supported", "suffix"),
    ("completions", dict(HI, best_of=3), JSON, 400, "best_of: not supported", "best_of"),
    ("chat/completions", dict(CHAT, logprobs=True), JSON, 400, "logprobs: not supported", "logprobs"),
    ("chat/completions", dict(CHAT, top_logprobs=2), JSON, 400, "top_logprobs: not supported", "top_logprobs"),
    ("chat/completions", dict(CHAT, max_completion_tokens=0), JSON, 400, "max_tokens: must be at least 1", "max_tokens"),
    ("chat/completions", dict(CHAT, messages=[{"role": "user", "content": "hi", "name": "ann"}]), JSON, 400,
     "messages: a participant's name is not supported", "messages"),
    ("chat/completions", dict(CHAT, messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     JSON, 400, "messages.0.content: must be a string or a list of text parts", "messages.0.content"),
    ("completions", b'{"model": "tiny", "prompt": "hi", "temperature": NaN}', JSON, 400,
     "the request body is not valid JSON (NaN is not JSON", None),
    ("completions", b'{"model": "tiny", "prompt": "\\ud800"}', JSON, 400, "lone \\ud800-style surrogate", None),
    ("completions", b"[" * 100_000 + b"]" * 100_000, JSON, 400, "nested too deeply", None),
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return quickstart_model(str(tmp_path_factory.mktemp("serve-bad") / "quickstart"))


@pytest.fixture(scope="module")
def client(model_dir):
    with in_process_client(model_dir) as client:
        yield client


@pytest.mark.parametrize("path, body, content_type, status, message, param", BAD_REQUESTS,
                         ids=[row[4][:60] for row in BAD_REQUESTS])
def test_bad_requests_get_openai_errors(client, path, body, content_type, status, message, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": content_type} if content_type else {}
    response = client.post(f"/v1/{path}", content=content, headers=headers)
    error = assert_openai_error(response, status)
    assert message in error["message"] and error["param"] == param, error


def test_wrong_methods_and_paths_get_openai_errors(client):
    assert assert_openai_error(client.get("/v1/completions"), 405)["message"] == "Method Not Allowed"
    assert assert_openai_error(client.post("/v1/nothing", json=HI), 404)["type"] == "not_found_error"
    assert assert_openai_error(client.put("/health"), 405)["type"] == "invalid_request_error"


def test_prompts_given_as_token_ids_are_answered_as_their_text(client, model_dir):
    ids = load_tokenizer(model_dir)("The quick brown fox")["input_ids"]
    settings = {"model": "tiny", "max_tokens": 6, "temperature": 0}
    as_text = client.post("/v1/completions", json=dict(settings, prompt="The quick brown fox")).json()
    as_ids = client.post("/v1/completions", json=dict(settings, prompt=ids)).json()
    assert as_ids["choices"][0]["text"] == as_text["choices"][0]["text"]
    assert as_ids["usage"]["prompt_tokens"] == len(ids)
    several = client.post("/v1/completions", json=dict(settings, prompt=[ids, ids[:3]])).json()
    assert [c["index"] for c in several["choices"]] == [0, 1]
    assert several["choices"][0]["text"] == as_text["choices"][0]["text"]


def test_arguments_that_do_not_change_the_answer_are_accepted(client):
    body = dict(HI, max_tokens=2, user="someone", logit_bias={}, stream=True, stream_options={"include_usage": True},
                best_of=1, suffix=None)
    response = client.post("/v1/completions", json=body, headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 200 and response.text.rstrip().endswith("data: [DONE]"), response.text


def test_a_temperature_near_zero_samples_greedily(client):
    """Found by the fuzz: logits / 1e-300 overflow, and the probabilities were NaN (a 500)."""
    body = dict(HI, max_tokens=6)
    greedy = client.post("/v1/completions", json=dict(body, temperature=0)).json()["choices"][0]["text"]
    tiny = client.post("/v1/completions", json=dict(body, temperature=1e-300))
    assert tiny.status_code == 200 and tiny.json()["choices"][0]["text"] == greedy, tiny.text


def test_the_quickstart_model_answers_chat_in_its_own_format(client, model_dir):
    """`collie init-model` copies the bundled tokenizer, chat template included: a chat turn is the
    quickstart's own "Question: …\\nAnswer: " prompt (what its records train)."""
    tokenizer = load_tokenizer(model_dir)
    messages = [{"role": "user", "content": "What is collie?"}]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        "<s>Question: What is collie?\nAnswer: "
    assert load_tokenizer(bundled_tokenizer_path()).chat_template == tokenizer.chat_template
    answer = client.post("/v1/chat/completions", json={"model": "tiny", "messages": messages, "max_tokens": 5,
                                                       "temperature": 0})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["choices"][0]["message"]["role"] == "assistant" and isinstance(body["choices"][0]["message"]["content"], str)
    assert body["usage"]["prompt_tokens"] == len(tokenizer("Question: What is collie?\nAnswer: ")["input_ids"])


def _serve(model_dir: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "collie", "serve", model_dir, *argv], capture_output=True, text=True,
                          timeout=120)


def test_a_port_out_of_range_is_one_line_before_anything_else(model_dir):
    result = _serve(model_dir, "--port", "99999")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "collie: error: --port: a port is a number from 1 to 65535, got 99999\n"


def test_a_taken_port_fails_before_serving_is_said(model_dir, capsys, caplog):
    caplog.set_level(logging.INFO)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", model_dir, "--port", str(port)]) == 2
        taken_message = f"collie: error: --port: cannot listen on 127.0.0.1:{port} (Address already in use)\n"
        assert capsys.readouterr().err == taken_message
        # Tried before the model loads (a missing model is not even looked at) …
        assert main(["serve", str(model_dir) + "-missing", "--port", str(port)]) == 2
        assert capsys.readouterr().err == taken_message
        # … and bound before "serving" is said, should the port be taken in between.
        tokenizer = load_tokenizer(model_dir)
        with pytest.raises(ValueError, match=f"--port: cannot listen on 127.0.0.1:{port}"):
            serve_until_stopped(CollieModel.from_pretrained(model_dir), tokenizer, contextlib.nullcontext,
                                ServedModel("tiny", tokenizer, 4096), "127.0.0.1", port)
        # Serving while training: the same line, naming the config key.
        app = build_app(Engine(CollieModel.from_pretrained(model_dir), tokenizer), ServedModel("tiny", tokenizer, 4096))
        with pytest.raises(ValueError, match=rf"^serve.port: cannot listen on 127.0.0.1:{port} \(Address already in use\)$"):
            start_in_background(http_server(app, "127.0.0.1", port), "serve.port")
    assert main(["serve", model_dir, "--host", "no-such-host.invalid", "--port", "8000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("collie: error: --port: cannot listen on no-such-host.invalid:8000 (the host: ") and \
        err.count("\n") == 1
    assert not caplog.records  # refused before the model loads: nothing said, "serving" least of all


def test_the_page_s_own_requests_leave_no_httpx_lines_in_the_log(model_dir, caplog):
    """With the Gradio page on, httpx (which logs every request at INFO) would write "HTTP Request: POST …"
    into the training log for each prompt and for Gradio's start-up checks; only those lines are dropped."""
    tokenizer = load_tokenizer(model_dir)
    engine = Engine(CollieModel.from_pretrained(model_dir).eval(), tokenizer, batch_wait_s=0.0)
    decoder = threading.Thread(target=engine.serve_forever, daemon=True)
    decoder.start()
    api_port, page_port = free_port(), free_port()
    server = http_server(build_app(engine, ServedModel("tiny", tokenizer, 4096)), "127.0.0.1", api_port)
    thread = start_in_background(server, "serve.port")
    api_url = f"http://127.0.0.1:{api_port}/v1"
    caplog.set_level(logging.INFO)
    page = GradioPage(api_url, "tiny", port=page_port)
    try:
        page.start()
        answer, _ = page.answer("Hello", 3, 0.0, 1.0)  # what a click on "Generate" runs
    finally:
        page.stop()
    logged = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert not answer.startswith("error"), answer
    assert not any("HTTP Request" in line for line in logged), logged
    # Narrow: other requests are still logged, and the page's once it is closed.
    httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200))).get("http://example.test/")
    httpx.get(f"http://127.0.0.1:{api_port}/health")
    logged = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("http://example.test/" in line for line in logged) and any("/health" in line for line in logged), logged
    server.should_exit = True
    thread.join(timeout=30)
    engine.stop()
    decoder.join(timeout=30)


def test_only_the_page_s_own_addresses_are_quiet():
    quiet = QuietRequestsTo(*page_urls("http://127.0.0.1:8000/v1", "0.0.0.0", 7878))

    def logged(url: str) -> bool:
        return quiet.filter(logging.LogRecord("httpx", logging.INFO, __file__, 0, 'HTTP Request: %s %s "%s %d %s"',
                                              ("POST", httpx.URL(url), "HTTP/1.1", 200, "OK"), None))

    assert not logged("http://127.0.0.1:8000/v1/completions") and not logged("http://localhost:7878/gradio_api/x")
    assert logged("http://127.0.0.1:78781/") and logged("http://127.0.0.1:8000/v10") and logged("https://example.test/")
