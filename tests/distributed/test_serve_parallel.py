"""`torchrun … -m collie serve MODEL tp_size=2` (and pp_size=2): rank 0 answers HTTP, both ranks
decode in lockstep, and the answers equal one process's (float64, greedy and seeded samples)."""

import threading

import httpx
from helpers import ServerProcess, free_port

from collie.cli import main

PROMPTS = ["The quick brown fox", "Once upon a time", "collie serves", "1 2 3 4"]
REQUESTS = [{"prompt": p, "max_tokens": 10, "temperature": 0} for p in PROMPTS] + \
           [{"prompt": PROMPTS[0], "max_tokens": 10, "temperature": 0.8, "seed": 3, "n": 2}]


def _answers(url: str) -> list[list[str]]:
    """All requests at once (so they are batched), answers in request order."""
    answers: list = [None] * len(REQUESTS)

    def ask(i: int) -> None:
        response = httpx.post(f"{url}/v1/completions", json={"model": "tiny", **REQUESTS[i]}, timeout=120)
        answers[i] = [c["text"] for c in response.json()["choices"]]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(REQUESTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


def _serve(model_dir, tmp_path, name, *layout):
    port = free_port()
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if layout else []
    return ServerProcess([*launcher, "-m", "collie", "serve", model_dir, "param_dtype=float64", *layout,
                          "--port", str(port), "--model-name", "tiny"], port, str(tmp_path / f"{name}.log"))


def test_tensor_and_pipeline_parallel_servers_answer_as_one_process(tmp_path):
    model_dir = str(tmp_path / "tiny")
    assert main(["init-model", "--shape", "tiny", model_dir]) == 0
    single = _serve(model_dir, tmp_path, "single")
    try:
        expected = _answers(single.url)
    finally:
        assert single.stop() == 0
    assert all(len(texts) == 1 for texts in expected[:4]) and len(expected[4]) == 2
    for name, layout in (("tp2", ["tp_size=2"]), ("pp2", ["pp_size=2"])):
        server = _serve(model_dir, tmp_path, name, *layout)
        try:
            assert _answers(server.url) == expected, name
            health = httpx.get(f"{server.url}/health").json()
            assert health["status"] == "ok" and health["batching"] == "continuous", health
        finally:
            server.stop()  # torchrun itself exits 1 on SIGTERM; its workers drained and stopped
        text = (tmp_path / f"{name}.log").read_text()
        assert "stopped: every request was answered" in text and "ChildFailedError" not in text, text[-3000:]
