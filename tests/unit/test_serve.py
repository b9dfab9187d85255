"""`collie serve`: the real `openai` client against a live server on 127.0.0.1 (a tiny random
model in float64, so greedy answers are compared token for token with `generate`), the bad-input
table, a bounded load test and a SIGTERM drain."""

import json
import signal
import threading
import time

import httpx
import pytest
import torch
from helpers import ServerProcess, free_port

from collie.cli import main
from collie.models.base import CollieModel, load_tokenizer
from collie.serve.text import IncrementalText

CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")
PROMPTS = ["The quick brown fox", "Once upon a time", "collie serves", "1 2 3 4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("serve") / "tiny")
    assert main(["init-model", "--shape", "tiny", path]) == 0
    tokenizer = load_tokenizer(path)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    port = free_port()
    log = str(tmp_path_factory.mktemp("serve-log") / "server.log")
    process = ServerProcess(["-m", "collie", "serve", model_dir, "param_dtype=float64", "--port", str(port),
                             "--model-name", "tiny", "--max-batch-size", "8", "--max-queue", "16",
                             "--default-max-tokens", "8"], port, log)
    yield process
    assert process.stop() == 0


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(model_dir):
    """Greedy continuations from the model itself (one prompt at a time, float64)."""
    model = CollieModel.from_pretrained(model_dir, dtype=torch.float64).eval()
    tokenizer = load_tokenizer(model_dir)

    def greedy(ids: list[int], max_new: int) -> tuple[str, int]:
        out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, eos_token_id=tokenizer.eos_token_id)
        new = out[0, len(ids):].tolist()
        if tokenizer.eos_token_id in new:
            new = new[:new.index(tokenizer.eos_token_id)]
        return tokenizer.decode(new, skip_special_tokens=True), len(new)

    return tokenizer, greedy


def test_models_and_greedy_completions_equal_generate(client, reference):
    tokenizer, greedy = reference
    assert [m.id for m in client.models.list().data] == ["tiny"]
    for prompt in PROMPTS:
        answer = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
        ids = tokenizer(prompt)["input_ids"]
        text, generated = greedy(ids, 12)
        assert answer.choices[0].text == text
        assert answer.usage.prompt_tokens == len(ids) and answer.usage.completion_tokens == generated
        assert answer.choices[0].finish_reason == ("length" if generated == 12 else "stop")


def test_chat_uses_the_tokenizer_template(client, reference):
    tokenizer, greedy = reference
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    answer = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, temperature=0)
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text, _ = greedy(tokenizer(rendered, add_special_tokens=False)["input_ids"], 10)
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content == text


def test_streaming_sends_the_same_text_in_pieces(client):
    whole = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert len(chunks) > 3 and "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    chat = list(client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                               max_tokens=6, temperature=0, stream=True))
    assert chat[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chat)
    plain = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=6, temperature=0)
    assert streamed == plain.choices[0].message.content


def test_stop_sequences_cut_the_text_before_them(client):
    full = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=16, temperature=0).choices[0].text
    stop = full[len(full) // 2:len(full) // 2 + 3]
    cut = full[:full.find(stop)]
    answer = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=16, temperature=0, stop=[stop])
    assert answer.choices[0].text == cut and answer.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=16, temperature=0,
                                         stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut


def test_seed_repeats_a_sample_and_n_gives_choices(client):
    def sample(seed, n=1):
        answer = client.completions.create(model="tiny", prompt=PROMPTS[2], max_tokens=10, temperature=1.0,
                                           top_p=0.9, seed=seed, n=n)
        return [c.text for c in answer.choices]

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)
    many = sample(7, n=3)
    assert len(many) == 3 and many[0] == sample(7)[0] and len(set(many)) > 1
    batch = client.completions.create(model="tiny", prompt=PROMPTS[:2], max_tokens=5, temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]


BAD_REQUESTS = [
    ("completions", b"{not json", 400, "the request body is not valid JSON"),
    ("completions", b'{"model": "tiny", "prompt": "\xff\xfe"}', 400, "the request body is not valid UTF-8"),
    ("completions", b"[1, 2]", 400, "the request body must be a JSON object"),
    ("completions", {"model": "tiny"}, 400, "prompt: Field required"),
    ("completions", {"model": "gpt-4", "prompt": "hi"}, 404, "model 'gpt-4' does not exist; this server serves 'tiny'"),
    ("completions", {"model": "tiny", "prompt": "hi", "max_tokens": 5000}, 400,
     "max_tokens: the prompt (2 tokens) plus max_tokens (5000) is more than the model's context of 4096 tokens"),
    ("completions", {"model": "tiny", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens: must be at least 1, got 0"),
    ("completions", {"model": "tiny", "prompt": "hi", "max_tokens": -3}, 400, "max_tokens: must be at least 1"),
    ("completions", {"model": "tiny", "prompt": "hi", "temperature": -1}, 400, "temperature: must be between 0 and 2"),
    ("completions", {"model": "tiny", "prompt": "hi", "temperature": 1e9}, 400, "temperature: must be between 0 and 2"),
    ("completions", {"model": "tiny", "prompt": "hi", "temperature": "hot"}, 400, "temperature: Input should be a valid number"),
    ("completions", {"model": "tiny", "prompt": "hi", "top_p": 0}, 400, "top_p: must be in (0, 1]"),
    ("completions", {"model": "tiny", "prompt": "hi", "n": 100}, 400, "more than this server's max_batch_size (8)"),
    ("completions", {"model": "tiny", "prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, 400,
     "stop: up to 4 non-empty strings"),
    ("completions", {"model": "tiny", "prompt": "hi", "logprobs": 3}, 400, "logprobs: not supported"),
    ("completions", {"model": "tiny", "prompt": "hi", "seed": -1}, 400, "seed: must be in [0, 2**63)"),
    ("completions", {"model": "tiny", "prompt": []}, 400, "prompt: must not be empty"),
    ("completions", {"model": "tiny", "prompt": "x " * 5000}, 400, "prompt: 5002 tokens leave no room"),
    ("chat/completions", {"model": "tiny", "messages": []}, 400, "messages: must not be empty"),
    ("chat/completions", {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages.0.role: Input should be"),
]


@pytest.mark.parametrize("path, body, status, message", BAD_REQUESTS, ids=[m for *_, m in BAD_REQUESTS])
def test_bad_requests_get_openai_errors(server, path, body, status, message):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{server.url}/v1/{path}", content=content, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["type"] in ("invalid_request_error", "not_found_error")


def test_load_every_request_is_answered_and_the_server_lives(server):
    """64 requests from 16 concurrent clients against a queue of 16 rows: each gets 200 or 503."""
    results: list = []
    lock = threading.Lock()

    def client_thread(k: int) -> None:
        with httpx.Client(timeout=120) as http:
            for i in range(4):
                body = {"model": "tiny", "prompt": PROMPTS[(k + i) % 4], "max_tokens": 8, "temperature": 0}
                response = http.post(f"{server.url}/v1/completions", json=body)
                ok = response.status_code == 200 and response.json()["choices"][0]["finish_reason"] in ("stop", "length")
                busy = response.status_code == 503 and response.json()["error"]["type"] == "server_overloaded"
                with lock:
                    results.append("ok" if ok else "busy" if busy else response.text)

    threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert len(results) == 64 and set(results) <= {"ok", "busy"}, results
    assert results.count("ok") >= 16
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ok" and health["queued"] == 0


def test_sigterm_answers_requests_in_flight_then_exits(model_dir, tmp_path):
    port = free_port()
    process = ServerProcess(["-m", "collie", "serve", model_dir, "--port", str(port)], port, str(tmp_path / "log"))
    got = {}

    def long_request() -> None:
        body = {"model": "tiny", "prompt": "Hello", "max_tokens": 300, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{process.url}/v1/completions", json=body, timeout=120) as response:
            got["lines"] = [line for line in response.iter_lines() if line.startswith("data: ")]

    thread = threading.Thread(target=long_request)
    thread.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{process.url}/health").json()["decoding"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    process.process.send_signal(signal.SIGTERM)
    thread.join(timeout=120)
    assert process.stop() == 0
    assert got["lines"][-1] == "data: [DONE]"
    finish = json.loads(got["lines"][-2][len("data: "):])["choices"][0]["finish_reason"]
    assert finish in ("length", "stop")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{process.url}/health")


class _Chars:
    """A tokenizer whose tokens are characters, and one UTF-8 byte at a time for ids ≥ 256."""

    def decode(self, ids, skip_special_tokens=True):
        raw = b"".join(bytes([i - 256]) if i >= 256 else chr(i).encode() for i in ids)
        return raw.decode("utf-8", errors="replace")


def test_text_is_never_sent_half_a_character_or_a_partial_stop():
    text = IncrementalText(_Chars(), stop=["END"])
    sent = [text.add(ord(c)) for c in "ab E"]
    assert [piece for piece, _ in sent] == ["a", "b", " ", ""]  # "E" may begin "END": held back
    assert text.add(ord("x")) == ("Ex", False)  # it did not
    assert text.add(ord("E"))[0] == "" and text.add(ord("N"))[0] == ""
    assert text.add(ord("D")) == ("", True)  # the stop sequence itself is never sent
    euro = "€".encode()
    text = IncrementalText(_Chars(), stop=[])
    assert [text.add(256 + b)[0] for b in euro] == ["", "", "€"]


def test_throughput_benchmark_dry_run_prints_the_ratio():
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, os.path.join("benchmarks", "serve_throughput.py"), "--dry-run",
                             "--port", str(free_port())], cwd=root, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rates = {line.split()[1]: float(line.split()[4]) for line in lines  # run, batching, tokens, seconds, tokens/s
             if line.split()[:1] == ["1"] and line.split()[1] in ("continuous", "static")}
    forwards = [int(line.split()[-1]) for line in lines if line.split()[:1] == ["1"]]
    assert len(forwards) == 2 and min(forwards) > 0  # each server's model forwards, from its /metrics
    ratio_line = next(line for line in lines if line.startswith("continuous / static tokens/s"))
    ratio = float(ratio_line.split("median ")[1].split("x")[0])
    assert abs(ratio - rates["continuous"] / rates["static"]) <= 0.02 * ratio  # the columns are rounded
    cached, sent = (int(word) for word in next(line for line in lines if line.startswith("shared system")).split()
                    if word.isdigit())
    assert 0 < cached < sent  # the system prompt was prefilled once and found by the other requests
    assert "collie / transformers generate_batch tokens/s" in result.stdout


def test_peft_adapters_are_served_on_their_base_model(tmp_path):
    """An adapter directory written by peft itself: the engine's greedy answer is peft's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from collie import CollieConfig
    from collie.inference import load_for_inference
    from collie.serve.engine import Engine, Job, RowSettings

    base = str(tmp_path / "base")
    assert main(["init-model", "--shape", "tiny", base]) == 0
    torch.manual_seed(0)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # as if trained: B is no longer zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    loaded = load_for_inference(str(tmp_path / "adapter"), CollieConfig())
    ids = loaded.tokenizer(PROMPTS[0])["input_ids"]
    events = []
    Engine(loaded.model, loaded.tokenizer, loaded.forward_context).run_batch(
        [Job([RowSettings(ids, 8, temperature=0.0)], events.append)])
    served = "".join(e.text for e in events if e.kind == "text")
    with torch.no_grad():
        out = peft_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False,
                                  eos_token_id=loaded.tokenizer.eos_token_id, pad_token_id=0)[0, len(ids):].tolist()
    eos = loaded.tokenizer.eos_token_id
    assert served == loaded.tokenizer.decode(out[:out.index(eos)] if eos in out else out, skip_special_tokens=True)
    assert events[-1].kind == "finish"


def test_a_failed_batch_fails_its_requests_and_the_engine_goes_on(model_dir):
    """A batch whose forward raises answers its requests with an error; the next batch is served."""
    from collie.serve.engine import Engine, Job, RowSettings

    model = CollieModel.from_pretrained(model_dir).eval()
    tokenizer = load_tokenizer(model_dir)
    real_forward, calls = model.forward, [0]

    def forward(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("out of memory (injected)")
        return real_forward(*args, **kwargs)

    model.forward = forward
    engine = Engine(model, tokenizer)
    failed, served = [], []
    engine.run_batch([Job([RowSettings([1, 5, 9], 4, temperature=0.0)], failed.append)])
    engine.run_batch([Job([RowSettings([1, 5, 9], 4, temperature=0.0)], served.append)])
    assert [e.kind for e in failed] == ["error"] and "out of memory (injected)" in failed[0].text
    assert served[-1].kind == "finish" and served[-1].completion_tokens >= 1


def test_chat_without_max_tokens_gets_the_servers_default(client):
    answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Tell me more"}],
                                            temperature=0)
    assert 1 <= answer.usage.completion_tokens <= 8


def test_a_client_that_goes_away_stops_its_decoding(server):
    """A plain (non-streaming) request whose client disconnects is cancelled: the engine stops
    decoding it within seconds instead of running to max_tokens (thousands of tokens here)."""
    body = {"model": "tiny", "prompt": "Hello", "max_tokens": 4000, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 6
    while httpx.get(f"{server.url}/health").json()["decoding"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert httpx.get(f"{server.url}/health").json()["decoding"] == 0


def test_a_failed_batch_under_several_processes_answers_everyone_then_stops(model_dir):
    """With other ranks in lockstep the engine cannot go on after a failed batch: every request,
    in the batch or still queued, gets an error, and the engine takes no more."""
    from collie.serve.engine import Engine, Job, Overloaded, RowSettings

    class Channel:  # stands in for the gloo channel to the other ranks
        def send_batch(self, prompts, max_new):
            pass

        def send_tokens(self, tokens, all_done):
            raise RuntimeError("peer gone (injected)")

    model, tokenizer = CollieModel.from_pretrained(model_dir).eval(), load_tokenizer(model_dir)
    engine = Engine(model, tokenizer, lockstep=Channel())
    running, queued = [], []
    engine.submit(Job([RowSettings([1, 5, 9], 4, temperature=0.0)], queued.append))
    with pytest.raises(RuntimeError, match="peer gone"):
        engine.run_batch([Job([RowSettings([1, 5, 9], 4, temperature=0.0)], running.append)])
    # The running request may have heard of its first token before the failure; it ends in the error.
    assert [e.kind for e in running if e.kind != "text"] == ["error"] and running[-1].kind == "error"
    assert [e.kind for e in queued] == ["error"]
    with pytest.raises(Overloaded):
        engine.submit(Job([RowSettings([1], 1)], queued.append))
