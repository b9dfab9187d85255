"""The server, fuzzed: hypothesis generates requests to every endpoint (known arguments with right
and wrong types, unknown ones, JSON that is not an object, bytes that are not JSON, wrong methods,
paths and content types) against the real app and engine, in-process, on the quickstart's model
shape. No answer may be a 5xx, every 4xx is OpenAI-style JSON, every 200 is a whole answer, and
the server answers a good request afterwards.

Deterministic (derandomized, no example database): the same 1,000 requests every run, about 20 s
on 2 cores; COLLIE_FUZZ_EXAMPLES=5000 runs a longer search by hand. It found the NaN sampling of
a temperature near zero (tests/unit/test_bad_input_serve.py keeps that case)."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import assert_openai_error, in_process_client, quickstart_model

EXAMPLES = int(os.environ.get("COLLIE_FUZZ_EXAMPLES", "1000"))
CONTEXT = 48  # every budget is checked against the context: generated requests stay cheap

# Weighted towards the two that decode: most of the search goes where the work is.
ENDPOINTS = 3 * [("POST", "/v1/completions"), ("POST", "/v1/chat/completions")] + [("GET", "/v1/models"), ("GET", "/health"),
             ("GET", "/v1/completions"), ("POST", "/v1/models"), ("DELETE", "/health"), ("POST", "/v1/embeddings"),
             ("GET", "/"), ("HEAD", "/v1/models")]
CONTENT_TYPES = 4 * ["application/json"] + ["application/json; charset=utf-8", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data", None]

scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12)
any_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                                           max_size=3), max_leaves=8)
# Any text, unassigned and surrogate code points included, and a few a tokenizer treats specially.
text = st.text(max_size=24) | st.text(st.characters(exclude_categories=()), max_size=12) \
    | st.sampled_from(["\ud800", "<s>", "</s><pad>", "\x00", "\u200b\ufeff", "\U0001f9ee" * 5])
token_ids = st.lists(st.integers(-3, 4100), max_size=8)
content = text | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": text}),
                          max_size=2)
message = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant", "developer", "tool"]),
                                 "content": content}, optional={"name": text})

# OpenAI's arguments, each with values of its own type, in range and out of it.
ARGUMENTS = {
    "model": st.sampled_from(["tiny", "tiny", "tiny", "gpt-4"]),
    "prompt": text | st.lists(text, max_size=3) | token_ids | st.lists(token_ids, max_size=3),
    "messages": st.lists(message, max_size=3),
    "max_tokens": st.none() | st.integers(-2, CONTEXT + 4),
    "max_completion_tokens": st.none() | st.integers(-2, CONTEXT + 4),
    "temperature": st.floats(-1, 3),
    "top_p": st.floats(-0.5, 1.5),
    "n": st.integers(-1, 10),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "stop": st.none() | text | st.lists(text, max_size=6),
    "seed": st.none() | st.integers(-10, 2**64),
    "presence_penalty": st.floats(-2, 2),
    "frequency_penalty": st.floats(-2, 2),
    "logprobs": st.none() | st.booleans() | st.integers(0, 5),
    "top_logprobs": st.none() | st.integers(0, 5),
    "echo": st.booleans(),
    "logit_bias": st.dictionaries(st.text(max_size=4), st.floats(-100, 100), max_size=2),
    "user": text,
    "suffix": st.none() | text,
    "best_of": st.none() | st.integers(0, 4),
}
# The same arguments as a careful client sends them: most such requests are answered.
IN_RANGE = {
    "max_tokens": st.integers(1, 6), "max_completion_tokens": st.integers(1, 6), "temperature": st.floats(0, 2),
    "top_p": st.floats(0.01, 1), "n": st.integers(1, 3), "stream": st.booleans(), "stop": st.none() | text.filter(bool),
    "seed": st.none() | st.integers(0, 2**63 - 1), "user": text,
    "prompt": text | st.lists(text, min_size=1, max_size=2) | st.lists(st.integers(0, 4095), min_size=1, max_size=8),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]),
                                                "content": text}), min_size=1, max_size=3),
}
OWN_ARGUMENT = {"/v1/completions": "prompt", "/v1/chat/completions": "messages"}
NOT_CHAT, NOT_COMPLETIONS = {"max_completion_tokens"}, {"suffix", "best_of", "echo"}


def careful_body(path: str):
    own = OWN_ARGUMENT.get(path, "prompt")
    others = {name: values for name, values in IN_RANGE.items() if name not in OWN_ARGUMENT.values() and
              name not in (NOT_CHAT if own == "prompt" else NOT_COMPLETIONS)}
    return st.fixed_dictionaries({"model": st.just("tiny"), own: IN_RANGE[own]}, optional=others)


def careless_body(path: str):
    """Every argument may be missing, of its own type but out of range, of any type; unknown ones too."""
    own = OWN_ARGUMENT.get(path, "prompt")
    optional = {name: values | any_json for name, values in ARGUMENTS.items() if name not in ("model", own)}
    known = st.fixed_dictionaries({}, optional={"model": ARGUMENTS["model"] | any_json, own: ARGUMENTS[own] | any_json,
                                                **optional})
    return known.flatmap(lambda body: st.dictionaries(st.text(max_size=8), any_json, max_size=1)
                         .map(lambda more: {**more, **body}))


@st.composite
def requests(draw) -> tuple[str, str, str | None, bytes]:
    method, path = draw(st.sampled_from(ENDPOINTS))
    encoded = lambda body: json.dumps(body).encode()  # noqa: E731
    payload = draw(st.one_of(careful_body(path).map(encoded), careful_body(path).map(encoded),
                             careless_body(path).map(encoded), any_json.map(encoded), st.binary(max_size=40)))
    return method, path, draw(st.sampled_from(CONTENT_TYPES)), payload


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    model_dir = quickstart_model(str(tmp_path_factory.mktemp("serve-fuzz") / "quickstart"))
    with in_process_client(model_dir, context_length=CONTEXT, max_batch_size=8) as client:
        yield client


def check_answer(response, method: str, path: str, payload: bytes) -> None:
    assert response.status_code < 500, (method, path, payload, response.status_code, response.text)
    if method == "HEAD":  # an answer to HEAD has no body, an error's neither
        return
    if response.status_code >= 400:
        assert_openai_error(response)
        return
    assert response.status_code == 200, response.text
    if method != "POST":
        return
    if response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), response.text
        return
    answer = response.json()
    body = json.loads(payload)
    assert answer["choices"] and all(choice["finish_reason"] in ("stop", "length") for choice in answer["choices"])
    texts = [c["message"]["content"] if "messages" in body else c["text"] for c in answer["choices"]]
    assert all(isinstance(t, str) for t in texts), answer


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(request=requests())
def send_generated_requests(client, request) -> None:
    method, path, content_type, payload = request
    headers = {"content-type": content_type} if content_type else {}
    response = client.request(method, path, content=payload if method in ("POST", "DELETE") else None, headers=headers)
    check_answer(response, method, path, payload)


def test_generated_requests_get_answers_or_openai_errors_and_the_server_lives(client):
    send_generated_requests(client)
    # Nothing the fuzz sent left the server stuck or anything queued.
    response = client.post("/v1/completions", json={"model": "tiny", "prompt": "Hello", "max_tokens": 4})
    assert response.status_code == 200 and isinstance(response.json()["choices"][0]["text"], str)
    assert client.get("/health").json()["queued"] == 0
