"""Continuous vs static batching on a mixed workload, a shared system prompt, and collie's engine
next to transformers' own continuous batching (`generate_batch`), all in one run.

1. `collie serve` on a random model twice — `--batching continuous`, then `--batching static` —
   each answering the same 64 streamed completions (greedy, `max_tokens` 4–64, prompts of 3–40
   words, drawn with a fixed seed) from 16 concurrent clients. Per server: completion tokens per
   second over the whole run, time to first token (first streamed chunk) p50 and p90, the
   peak KV blocks in use (sampled from /health) against the `--kv-cache-gib` budget, and the
   model forwards it ran (/metrics). `--runs` such pairs; the median pair ratio is the figure.
2. 16 requests that share a 200-token system prompt, on the continuous server: the prompt
   tokens found in the cache (/health's prefix counter) against those the requests sent.
3. In-process, no HTTP: collie's `Engine` and transformers' `generate_batch` on the same weights
   and token prompts, `max_new_tokens` 32 each, greedy: generated tokens per second (each timed
   on its second round, warm).

    OMP_NUM_THREADS=2 python benchmarks/serve_throughput.py [--shape 20m] [--requests 64] [--clients 16] [--runs 3]
    python benchmarks/serve_throughput.py --dry-run      # tiny shape, 8 requests, 4 clients
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import torch
from transformers import AutoModelForCausalLM, GenerationConfig

from collie.models.base import CollieModel, load_tokenizer
from collie.serve.engine import Engine, Job, RowSettings, kv_bytes_per_token

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KV_CACHE_GIB = 0.25


def workload(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """(prompt, max_tokens) pairs: prompts of 3–40 words from the repo's Q/A text, budgets 4–64."""
    with open(os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")) as f:
        words = " ".join(json.loads(line)["output"] for line in f if line.strip()).split()
    draw = random.Random(seed)
    return [(" ".join(draw.choice(words) for _ in range(draw.randint(3, 40))), draw.randint(4, 64))
            for _ in range(count)]


async def stream(client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds to the first streamed chunk) of one greedy completion."""
    body = {"model": "bench", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and first is None:
                first = time.perf_counter() - start
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return tokens, first if first is not None else time.perf_counter() - start


def concurrent(url: str, work: list[tuple[str, int]], clients: int) -> dict:
    """`clients` closed-loop clients (each sends its next request when its last is answered), as
    tasks of one event loop, as vLLM's serving benchmark runs them: a thread per client would
    take a good part of the two cores the server runs on."""
    return asyncio.run(_concurrent(url, work, clients))


async def _concurrent(url: str, work: list[tuple[str, int]], clients: int) -> dict:
    results: list[tuple[int, float]] = []
    peak, done = [0], asyncio.Event()
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 1)) as http:
        async def client(k: int) -> None:
            for prompt, max_tokens in work[k::clients]:
                results.append(await stream(http, url, prompt, max_tokens))

        async def watch() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], (await http.get(f"{url}/health")).json().get("kv_blocks_used", 0))
                await asyncio.sleep(0.05)

        forwards = forward_passes(url)
        watcher = asyncio.create_task(watch())
        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        seconds = time.perf_counter() - start
        done.set()
        await watcher
    tokens = sum(n for n, _ in results)
    ttft = sorted(t for _, t in results)
    return {"tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "forwards": forward_passes(url) - forwards,
            "ttft_p50": statistics.median(ttft), "ttft_p90": ttft[int(0.9 * (len(ttft) - 1))], "peak_blocks": peak[0]}


def forward_passes(url: str) -> int:
    """The server's count of model forwards so far (its /metrics)."""
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    return int(float(next(line.split()[-1] for line in metrics.splitlines()
                          if line.startswith("collie_forward_passes_total "))))


def start_server(model_dir: str, port: int, batching: str, clients: int, queue: int, log) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", "collie", "serve", model_dir, "--port", str(port),
                                "--model-name", "bench", "--max-batch-size", str(clients), "--max-queue", str(queue),
                                "--batching", batching, "--kv-cache-gib", str(KV_CACHE_GIB)],
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


def shared_prefix(url: str, clients: int, system_tokens: int) -> dict:
    """`clients` requests with one system prompt of about `system_tokens` tokens, sent together."""
    system = " ".join(f"rule{i}" for i in range(system_tokens // 2))  # ~2 GPT-style tokens a word
    before = httpx.get(f"{url}/health").json()["prefix_cache_hit_tokens"]
    sent = []

    def client(k: int) -> None:
        body = {"model": "bench", "prompt": f"{system}\nQuestion {k}: why?", "max_tokens": 4, "temperature": 0}
        sent.append(httpx.post(f"{url}/v1/completions", json=body, timeout=600).json()["usage"]["prompt_tokens"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"prompt_tokens": sum(sent), "from_cache": httpx.get(f"{url}/health").json()["prefix_cache_hit_tokens"] - before}


def time_engine(engine: Engine, work: list[tuple[list[int], int]], before_round=lambda: None) -> tuple[int, float]:
    """(generated tokens, seconds) of `engine` decoding every (token prompt, max_tokens) of `work`,
    submitted at once, greedy; the second of two rounds is timed (warm). `before_round` runs
    before each round (a peak-memory reset)."""
    done, counts = threading.Semaphore(0), []

    def events(event) -> None:
        if event.kind == "finish":
            counts.append(event.completion_tokens)
            done.release()

    decoder = threading.Thread(target=engine.serve_forever, daemon=True)
    decoder.start()
    seconds = 0.0
    for _ in range(2):
        counts.clear()
        before_round()
        start = time.perf_counter()
        for ids, max_tokens in work:
            engine.submit(Job([RowSettings(ids, max_tokens, temperature=0.0)], events))
        for _ in work:
            done.acquire()
        seconds = time.perf_counter() - start
    engine.stop()
    decoder.join()
    return sum(counts), seconds


def offline(model_dir: str, work: list[tuple[str, int]], max_new: int) -> dict:
    """collie's Engine and transformers' generate_batch, in this process, on the same prompts."""
    tokenizer = load_tokenizer(model_dir)
    prompts = [tokenizer(prompt)["input_ids"] for prompt, _ in work]
    engine = Engine(CollieModel.from_pretrained(model_dir).eval(), tokenizer, max_batch_size=len(prompts),
                    max_queue=len(prompts), batch_wait_s=0.0, kv_cache_gib=KV_CACHE_GIB, max_num_tokens=4096)
    collie_tokens, collie_s = time_engine(engine, [(ids, max_new) for ids in prompts])
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    config = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.eos_token_id)
    for _ in range(2):  # the second round is timed, as collie's
        start = time.perf_counter()
        outputs = hf.generate_batch(prompts, generation_config=config)
        hf_s = time.perf_counter() - start
    hf_tokens = sum(len(output.generated_tokens) for output in outputs.values())
    return {"collie_tokens": collie_tokens, "collie_s": collie_s, "hf_tokens": hf_tokens, "hf_s": hf_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="20m")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--system-tokens", type=int, default=200)
    parser.add_argument("--port", type=int, default=8791)
    parser.add_argument("--runs", type=int, default=3, help="continuous/static pairs (the median ratio is printed)")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.dry_run:
        args.shape, args.requests, args.clients, args.system_tokens, args.runs = "tiny", 8, 4, 40, 1
    tmp = tempfile.mkdtemp(prefix="collie-serve-bench-")
    model_dir = os.path.join(tmp, args.shape)
    subprocess.run([sys.executable, "-m", "collie", "init-model", "--shape", args.shape, model_dir], check=True,
                   stdout=subprocess.DEVNULL)
    work = workload(args.requests)
    url = f"http://127.0.0.1:{args.port}"
    runs, prefix = [], None
    for _ in range(args.runs):  # pairs: static's figure swings with how its batches happen to form
        pair = {}
        for batching in ("continuous", "static"):
            with open(os.path.join(tmp, f"{batching}.log"), "w") as log:
                server = start_server(model_dir, args.port, batching, args.clients, args.requests, log)
                try:
                    concurrent(url, work[:1], 1)  # warm-up
                    pair[batching] = concurrent(url, work, args.clients)
                    if batching == "continuous" and prefix is None:
                        prefix = shared_prefix(url, args.clients, args.system_tokens)
                finally:
                    server.terminate()
                    server.wait(timeout=120)
        runs.append(pair)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    new_tokens = 4 if args.dry_run else 32
    side = offline(model_dir, work, new_tokens)
    block_bytes = 16 * kv_bytes_per_token(CollieModel.from_pretrained(model_dir))
    print(f"shape {args.shape}, {args.requests} requests (max_tokens 4-64, prompts 3-40 words, greedy), "
          f"{args.clients} clients, threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    print(f"{'run':<4}{'batching':<12}{'tokens':>8}{'seconds':>10}{'tokens/s':>10}{'ttft p50':>10}{'ttft p90':>10}"
          f"{'kv peak MiB':>13}{'forwards':>10}")
    for index, pair in enumerate(runs, 1):
        for name, r in pair.items():
            # A static batch's cache is rows × its longest sequence, made per batch: not sampled.
            kv = f"{r['peak_blocks'] * block_bytes / 2**20:.1f}" if name == "continuous" else "-"
            print(f"{index:<4}{name:<12}{r['tokens']:>8}{r['seconds']:>10.2f}{r['tokens_per_s']:>10.1f}"
                  f"{r['ttft_p50']:>10.3f}{r['ttft_p90']:>10.3f}{kv:>13}{r['forwards']:>10}")
    print(f"kv budget: {KV_CACHE_GIB * 1024:.0f} MiB")
    speed = [p["continuous"]["tokens_per_s"] / p["static"]["tokens_per_s"] for p in runs]
    ttft = [p["continuous"]["ttft_p50"] / p["static"]["ttft_p50"] for p in runs]
    print(f"continuous / static tokens/s: median {statistics.median(speed):.2f}x of {', '.join(f'{x:.2f}' for x in speed)}")
    print(f"continuous / static ttft p50: median {statistics.median(ttft):.2f}x of {', '.join(f'{x:.2f}' for x in ttft)}")
    print(f"shared system prompt: {prefix['from_cache']} of {prefix['prompt_tokens']} prompt tokens from the cache")
    collie_rate, hf_rate = side["collie_tokens"] / side["collie_s"], side["hf_tokens"] / side["hf_s"]
    print(f"offline, {new_tokens} new tokens each: collie Engine {side['collie_tokens']} tokens {collie_rate:.1f}/s, "
          f"transformers generate_batch {side['hf_tokens']} tokens {hf_rate:.1f}/s")
    print(f"collie / transformers generate_batch tokens/s: {collie_rate / hf_rate:.2f}x")


if __name__ == "__main__":
    main()
