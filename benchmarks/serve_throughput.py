"""Batched serving vs the same prompts one at a time: `collie serve` on a random model, 64
completions (greedy, 32 tokens each) from 16 concurrent clients, then the same 64 sent one after
another to the same server; generated tokens per second of each and their ratio.

    OMP_NUM_THREADS=2 python benchmarks/serve_throughput.py [--shape 20m] [--requests 64] [--clients 16]
    python benchmarks/serve_throughput.py --dry-run      # tiny shape, 8 requests, 4 clients
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prompts(count: int) -> list[str]:
    with open(os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")) as f:
        questions = [json.loads(line)["input"] for line in f if line.strip()]
    return [f"{questions[i % len(questions)]}({i})" for i in range(count)]


def ask(url: str, prompt: str, max_tokens: int) -> int:
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    response = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def one_at_a_time(url: str, texts: list[str], max_tokens: int) -> tuple[int, float]:
    start = time.perf_counter()
    tokens = sum(ask(url, text, max_tokens) for text in texts)
    return tokens, time.perf_counter() - start


def concurrent(url: str, texts: list[str], max_tokens: int, clients: int) -> tuple[int, float]:
    counts: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for text in texts[k::clients]:
            n = ask(url, text, max_tokens)
            with lock:
                counts.append(n)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - start


def start_server(model_dir: str, port: int, batch: int, queue: int, log) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "collie", "serve", model_dir, "--port", str(port),
                                "--model-name", "bench", "--max-batch-size", str(batch), "--max-queue", str(queue)],
                               stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
        if process.poll() is not None:
            break
    process.kill()
    raise RuntimeError("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="20m")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        args.shape, args.requests, args.clients, args.max_tokens = "tiny", 8, 4, 8
    work = tempfile.mkdtemp(prefix="collie-serve-bench-")
    model_dir = os.path.join(work, args.shape)
    subprocess.run([sys.executable, "-m", "collie", "init-model", "--shape", args.shape, model_dir], check=True,
                   stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{args.port}"
    texts = prompts(args.requests)
    with open(os.path.join(work, "server.log"), "w") as log:
        server = start_server(model_dir, args.port, args.clients, args.requests, log)
        try:
            ask(url, texts[0], 2)  # warm-up
            batched_tokens, batched_s = concurrent(url, texts, args.max_tokens, args.clients)
            single_tokens, single_s = one_at_a_time(url, texts, args.max_tokens)
        finally:
            server.terminate()
            server.wait(timeout=120)
    batched, single = batched_tokens / batched_s, single_tokens / single_s
    print(f"shape {args.shape}, {args.requests} requests × {args.max_tokens} tokens (greedy), "
          f"threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'mode':<28}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}")
    print(f"{f'{args.clients} concurrent clients':<28}{batched_tokens:>8}{batched_s:>10.2f}{batched:>10.1f}")
    print(f"{'one at a time':<28}{single_tokens:>8}{single_s:>10.2f}{single:>10.1f}")
    print(f"batched / one at a time: {batched / single:.2f}x")


if __name__ == "__main__":
    main()
