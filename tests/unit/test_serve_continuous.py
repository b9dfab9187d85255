"""Continuous batching over the paged KV cache, driven through the engine (float64, so greedy
tokens are compared exactly): requests that join while others decode get the tokens they get
alone and under static batching, with prefix reuse and after preemption; seeded sampling does not
depend on the batch; every block comes back; `/metrics` parses as Prometheus text."""

import copy
import threading
import time

import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from serve_helpers import quickstart_model

from collie.models.base import CollieModel, load_tokenizer
from collie.serve.app import ServedModel, build_app
from collie.serve.continuous import Plan, block_names, paged_forward
from collie.serve.engine import Engine, Job, RowSettings, kv_bytes_per_token
from collie.serve.kv_blocks import BlockPool

BLOCK = 4


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = quickstart_model(str(tmp_path_factory.mktemp("continuous") / "tiny"))
    return CollieModel.from_pretrained(path, dtype=torch.float64).eval(), load_tokenizer(path)


def engine_for(model, batching="continuous", blocks=None, **kwargs) -> Engine:
    model, tokenizer = model
    gib = None if blocks is None else blocks * BLOCK * kv_bytes_per_token(model) / 2**30
    return Engine(model, tokenizer, batch_wait_s=0.0, batching=batching, kv_cache_gib=gib, block_size=BLOCK,
                  **kwargs)


class Answer:
    """A job's events: the text and the finish of each of its rows."""

    def __init__(self, rows: int) -> None:
        self.text, self.finish = [""] * rows, [None] * rows
        self.done = threading.Event()
        self.errors = []

    def __call__(self, event) -> None:
        if event.kind == "text":
            self.text[event.index] += event.text
        elif event.kind == "finish":
            self.finish[event.index] = (event.finish_reason, event.completion_tokens)
        else:
            self.errors.append(event.text)
        if self.errors or all(self.finish):
            self.done.set()


def serve(engine: Engine, requests: list[tuple[float, list[RowSettings]]]) -> list[Answer]:
    """Submit each request after its delay (seconds from the start) while the engine decodes in
    its thread; return every answer (in the order of `requests`) once all are in."""
    decoder = threading.Thread(target=engine.serve_forever, daemon=True)
    decoder.start()
    answers, start = [Answer(len(rows)) for _, rows in requests], time.perf_counter()
    try:
        for index in sorted(range(len(requests)), key=lambda i: requests[i][0]):
            delay, rows = requests[index]
            time.sleep(max(0.0, start + delay - time.perf_counter()))
            engine.submit(Job(rows, answers[index]))
        for answer in answers:
            assert answer.done.wait(120), "a request was never answered"
    finally:
        engine.stop()
        decoder.join(60)
    return answers


PROMPTS = [[5, 17, 42, 9], [100, 3], [7] * 23, [11, 12, 13, 14, 15, 16, 17, 18, 19], [300, 301, 302, 303, 304, 2],
           [9, 9], [42] * 11, [1000, 7, 8]]


def mixed() -> list[tuple[float, list[RowSettings]]]:
    """Mixed lengths and budgets, arriving while the first ones decode; a stop sequence; n = 2."""
    requests = [(0.02 * i, [RowSettings(p, 3 + 5 * (i % 4), temperature=0.0)]) for i, p in enumerate(PROMPTS)]
    requests.append((0.05, [RowSettings(PROMPTS[0], 9, temperature=0.0)] * 2))
    return requests


def alone(model, requests) -> list[list[str]]:
    return [serve(engine_for(model), [(0.0, rows)])[0].text for _, rows in requests]


def test_greedy_tokens_equal_one_request_alone_and_static_batching(model):
    requests = mixed()
    continuous = serve(engine_for(model, max_batch_size=4, max_num_tokens=8), requests)
    static = serve(engine_for(model, "static", max_batch_size=4), requests)
    expected = alone(model, requests)
    for answer, other, single in zip(continuous, static, expected):
        assert answer.errors == [] and answer.text == single == other.text
    assert continuous[-1].text[0] == continuous[-1].text[1]  # n = 2, greedy


@pytest.mark.parametrize("window", [None, 3])
def test_one_paged_forward_gives_each_sequence_the_logits_of_its_own_forward(model, window):
    """Decoding rows, a whole prompt and a prompt chunk laid end to end in one forward: each
    sequence's last logits equal a plain forward over its tokens (float64), with and without a
    sliding window shorter than the sequences."""
    model, _ = model
    config = copy.deepcopy(model.config)
    config.sliding_window = window
    windowed = type(model)(config).to(torch.float64).eval()
    windowed.load_state_dict(model.state_dict())
    pool = BlockPool(32, BLOCK)
    tokens = [[5, 17, 42, 9, 100, 3, 7, 7, 11, 12], [1000, 7, 8, 9, 10], [300, 301, 302, 303, 304, 2],
              [9, 9, 42, 42, 1000, 7, 8, 8]]
    tables = [[pool.allocate() for _ in range(4)] for _ in tokens]

    def forward(cached: list[int], upto: list[int]) -> torch.Tensor:
        keep = [i for i, (c, u) in enumerate(zip(cached, upto)) if u > c]
        plan = Plan([tables[i] for i in keep], [cached[i] for i in keep],
                    [tokens[i][cached[i]:upto[i]] for i in keep], pool.num_blocks, pool.block_size)
        return paged_forward(windowed, torch.no_grad, pool, plan)

    forward([0, 0, 0, 0], [9, 4, 0, 5])  # two prompts, nothing, a first chunk
    logits = forward([9, 4, 0, 5], [10, 5, 6, 8])  # two decoding, a whole prompt, the rest of a prompt
    with torch.no_grad():
        expected = torch.stack([windowed(torch.tensor([t])).logits[0, -1] for t in tokens])
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-9)
    # Only the kept positions' logits are made, and they are the whole forward's.
    ids, keep = torch.tensor([tokens[0]]), torch.tensor([2, 9])
    with torch.no_grad():
        torch.testing.assert_close(windowed(ids, logits_to_keep=keep).logits, windowed(ids).logits[:, keep])


def test_no_more_than_max_batch_size_sequences_run_at_once(model):
    engine = engine_for(model, max_batch_size=3)
    widths, forward = [], engine.batcher.forward

    def counting(plan):
        widths.append(len(plan.tables))
        return forward(plan)

    engine.batcher.forward = counting
    for prompt in PROMPTS:  # all waiting before the engine starts: admission alone must hold the limit
        engine.submit(Job([RowSettings(prompt, 5, temperature=0.0)], Answer(1)))
    answers = serve(engine, [(0.0, [RowSettings(PROMPTS[0], 2, temperature=0.0)])])
    assert answers[0].finish[0] is not None and max(widths) == 3


def test_a_stream_hears_of_every_token_when_it_is_made(model):
    """One text event per generated token, empty while its text is held back (here the start of
    a UTF-8 character split over two tokens): a streaming client sees its first token at once."""
    events = []
    answer = Answer(1)

    def record(event) -> None:
        events.append(event)
        answer(event)

    engine = engine_for(model)
    decoder = threading.Thread(target=engine.serve_forever, daemon=True)
    decoder.start()
    engine.submit(Job([RowSettings(PROMPTS[1], 24, temperature=0.0)], record))
    assert answer.done.wait(60)
    engine.stop()
    decoder.join(30)
    texts = [e.text for e in events if e.kind == "text"]
    generated = answer.finish[0][1]
    assert "" in texts and len(texts) >= generated - 1  # the last token may come with the finish only


def test_preemption_recomputes_and_changes_nothing(model):
    """A cache of 12 blocks (48 tokens) for rows that need up to 40 each: sequences are preempted
    and prefilled again, and still give the tokens they give alone; no request fails."""
    engine = engine_for(model, blocks=12, max_batch_size=6)
    requests = [(0.0, [RowSettings(p, 14, temperature=0.0)]) for p in PROMPTS[:6]]
    answers = serve(engine, requests)
    assert [a.text for a in answers] == alone(model, requests)
    assert engine.metrics._preemptions._value.get() > 0
    assert engine.batcher.pool.used == 0


def test_a_shared_prefix_is_prefilled_once(model):
    """16 requests that share a 40-token system prompt: its 10 full blocks are computed once and
    found by the others (the prefix-cache counter counts their tokens), with unchanged answers."""
    system = [(7 * i) % 500 + 3 for i in range(40)]
    engine = engine_for(model, max_batch_size=16)
    requests = [(0.0, [RowSettings(system + [10, 20], 3, temperature=0.0)])]
    requests += [(0.3, [RowSettings(system + [i + 10, i + 20], 3, temperature=0.0)]) for i in range(1, 16)]
    answers = serve(engine, requests)
    assert engine.batcher.prefix_hit_tokens == 15 * 40
    assert [a.text for a in answers[:3]] == alone(model, requests[:3])


def test_a_block_name_stands_for_its_whole_prefix():
    """Equal prefixes share names block by block; one token changed in the first block changes
    every later name; names are 128-bit digests, not Python hashes (which collide on purpose-made
    inputs: hash(0) == hash(2**61 - 1))."""
    first = list(range(12))
    names = block_names(first + [7, 8, 9, 10], 4, 4)
    assert names[:3] == block_names(first, 4, 3)
    changed = block_names([99] + first[1:] + [7, 8, 9, 10], 4, 4)
    assert all(a != b for a, b in zip(names, changed))
    assert all(isinstance(name, bytes) and len(name) == 16 for name in names)
    assert block_names([0] * 4, 4, 1) != block_names([2**61 - 1] + [0] * 3, 4, 1)
    # Names already made are extended, not made again, as a sequence's blocks fill.
    assert block_names(first + [7, 8, 9, 10], 4, 4, known=names[:2]) == names
    assert block_names(first, 4, 2, known=[b"kept", b"as given", b"dropped"]) == [b"kept", b"as given"]


def test_a_request_larger_than_the_whole_cache_is_refused_and_others_are_served(model):
    answers = serve(engine_for(model, blocks=3), [(0.0, [RowSettings(PROMPTS[2], 8, temperature=0.0)]),
                                                  (0.0, [RowSettings(PROMPTS[1], 4, temperature=0.0)])])
    assert "the KV cache holds 12 tokens and this request needs up to 31" in answers[0].errors[0]
    assert answers[1].errors == [] and answers[1].finish[0] is not None


def test_seeded_sampling_does_not_depend_on_the_batch(model):
    request = [RowSettings(PROMPTS[2], 12, temperature=0.9, top_p=0.95, seed=1234)]
    by_itself = serve(engine_for(model), [(0.0, request)])[0].text
    busy = serve(engine_for(model, max_batch_size=8), [(0.0, [RowSettings(p, 10, temperature=1.0)]) for p in PROMPTS]
                 + [(0.01, request)])
    assert busy[-1].text == by_itself


def test_every_block_comes_back_after_cancellation_and_errors(model):
    engine = engine_for(model, max_batch_size=4)
    decoder = threading.Thread(target=engine.serve_forever, daemon=True)
    decoder.start()
    cancelled = Job([RowSettings(PROMPTS[0], 4000, temperature=0.0)], lambda event: None)
    engine.submit(cancelled)
    deadline = time.monotonic() + 30
    while engine.batcher.pool.used == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.batcher.pool.used > 0
    cancelled.cancelled = True
    while engine.batcher.pool.used and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.batcher.pool.used == 0 and engine.busy_rows == 0
    # A forward that raises fails the requests in it; their blocks come back and the next is served.
    real, calls = engine.batcher.forward, [0]

    def failing(plan):
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("out of memory (injected)")
        return real(plan)

    engine.batcher.forward = failing
    failed, served = Answer(1), Answer(1)
    engine.submit(Job([RowSettings(PROMPTS[1], 6, temperature=0.0)], failed))
    assert failed.done.wait(30) and "out of memory (injected)" in failed.errors[0]
    engine.submit(Job([RowSettings(PROMPTS[1], 3, temperature=0.0)], served))
    assert served.done.wait(30) and served.errors == [] and served.finish[0][1] == 3
    engine.stop()
    decoder.join(30)
    assert engine.batcher.pool.used == 0


def test_metrics_are_prometheus_text_and_move(model):
    model, tokenizer = model
    engine = Engine(model, tokenizer, batch_wait_s=0.0)
    decoder = threading.Thread(target=engine.serve_forever, daemon=True)
    decoder.start()
    try:
        with TestClient(build_app(engine, ServedModel("tiny", tokenizer, 4096))) as client:
            def values() -> dict:
                response = client.get("/metrics")
                assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
                return {sample.name: sample.value for family in text_string_to_metric_families(response.text)
                        for sample in family.samples}

            before = values()
            body = {"model": "tiny", "prompt": "Hello there", "max_tokens": 5, "temperature": 0}
            assert client.post("/v1/completions", json=body).status_code == 200
            after = values()
            health = client.get("/health").json()
    finally:
        engine.stop()
        decoder.join(30)
    assert after["collie_generation_tokens_total"] - before["collie_generation_tokens_total"] >= 1
    assert after["collie_prompt_tokens_total"] > before["collie_prompt_tokens_total"]
    assert after["collie_time_to_first_token_seconds_count"] == before["collie_time_to_first_token_seconds_count"] + 1
    # 5 tokens, at most 5 forwards (the last one's token may end it early); none before
    assert before["collie_forward_passes_total"] == 0 and 1 <= after["collie_forward_passes_total"] <= 5
    assert after["collie_kv_blocks_used"] == 0 and after["collie_kv_blocks_free"] > 0
    assert {"collie_requests_running", "collie_requests_waiting", "collie_preemptions_total",
            "collie_prefix_cache_hit_tokens_total", "collie_time_per_output_token_seconds_bucket"} <= set(after)
    assert health["batching"] == "continuous" and health["kv_blocks_used"] == 0
