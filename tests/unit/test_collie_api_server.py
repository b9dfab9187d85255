"""CoLLiE's server example, run as written (its hub id resolves to a tiny LLaMA in a local Hugging
Face cache; the model in float64 and the page's port are the only changes): its Gradio page
answers a prompt with transformers' own greedy continuation of that model, and SIGTERM stops the
server cleanly (exit status 0)."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from gradio_client import Client
from helpers import free_port, hub_cache_with
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "collie_api", "server.py")
HUB_ID = "openlm-research/open_llama_13b"
PROMPT = "Collie is a python package for "
NEW_TOKENS = 12


def test_the_server_example_answers_on_its_page_greedily_and_stops_on_sigterm(tmp_path):
    cache = tmp_path / "hf"
    snapshot = hub_cache_with(cache, HUB_ID, "llama")
    port = free_port()
    script = open(EXAMPLE).read()
    for old, new in (("config.tp_size = 1", 'config.tp_size = 1\nconfig.param_dtype = "float64"'),
                     ("GradioProvider(tokenizer=tokenizer)", f"GradioProvider(tokenizer=tokenizer, port={port})")):
        assert old in script, old
        script = script.replace(old, new)
    (tmp_path / "server.py").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    run = subprocess.Popen([sys.executable, "server.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        client = connect(f"http://127.0.0.1:{port}/", run)
        answer, _ = client.predict(PROMPT, NEW_TOKENS, 0.0, 1.0, api_name="/answer")
        run.send_signal(signal.SIGTERM)
        output, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 0, output[-3000:]
    assert answer == greedy_answer(snapshot), output[-3000:]
    assert "stopped: every request was answered" in output


def greedy_answer(model_dir: str) -> str:
    """transformers' greedy continuation of PROMPT, in float64, decoded as the endpoint decodes it."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    new = [t for t in out[0, ids.shape[1]:].tolist() if t != tokenizer.eos_token_id]
    assert len(new) > 1, "the reference stopped at once: pick another prompt"
    return tokenizer.decode(new, skip_special_tokens=True)


def connect(url: str, run: subprocess.Popen) -> Client:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if run.poll() is not None:
            pytest.fail(f"the server exited before its page came up:\n{run.stdout.read()[-3000:]}")
        try:
            return Client(url, verbose=False)
        except Exception:  # not listening yet
            time.sleep(0.5)
    pytest.fail("the Gradio page never came up")
