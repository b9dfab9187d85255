"""Serving while training (`serve.port`, `serve.gradio_port`): the OpenAI endpoint answers from the
weights of the step just finished, the Gradio page works in a real headless Chromium, and the
training losses are the same as without serving."""

import os
import shutil

import httpx
import pytest
import torch
from helpers import AskAt, Losses, free_port

from collie import CollieConfig
from collie.cli import main
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel, load_tokenizer
from collie.trainer import Trainer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_FILE = os.path.join(ROOT, "examples", "data", "collie_qa.jsonl")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _train(model_dir, out, callbacks=(), overrides=()) -> list[float]:
    config = CollieConfig.load(None, ["max_steps=4", "logging=[csv]", "checkpoint_every_n_steps=2",
                                      "data.max_length=64", "optimizer.lr=0.001", f"output_dir={out}", *overrides])
    model = CollieModel.from_pretrained(model_dir, config=config)
    tokenizer = load_tokenizer(model_dir)
    dataset = CollieDatasetForTraining(TRAIN_FILE, tokenizer, max_length=64)
    losses = Losses()
    Trainer(model, config, train_dataset=dataset, tokenizer=tokenizer, callbacks=[losses, *callbacks]).train()
    return losses.values


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian: apt-get install chromium)")
def test_endpoint_and_gradio_page_answer_during_training_and_losses_are_unchanged(tmp_path):
    from openai import OpenAI
    from playwright.sync_api import sync_playwright

    model_dir = str(tmp_path / "tiny")
    assert main(["init-model", "--shape", "tiny", model_dir]) == 0
    port, gradio_port = free_port(), free_port()
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    got = {}

    def ask_openai():
        got["answer"] = client.completions.create(model="tiny", prompt="Question: What is collie?", max_tokens=8,
                                                  temperature=0)

    def use_the_page():
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{gradio_port}")
            page.locator("#prompt textarea").fill("Question: What is LOMO?")
            page.locator("#generate").click()
            page.wait_for_function("document.querySelector('#answer textarea').value.length > 0", timeout=120_000)
            page.wait_for_function("document.querySelector('#step').innerText.includes('step')", timeout=60_000)
            got["page_answer"] = page.locator("#answer textarea").input_value()
            got["page_step"] = page.locator("#step").inner_text()
            page.screenshot(path=str(tmp_path / "gradio.png"), full_page=True)
            browser.close()

    health = f"http://127.0.0.1:{port}/health"
    page_at, openai_at = AskAt(1, use_the_page, health), AskAt(2, ask_openai, health)
    served = _train(model_dir, str(tmp_path / "served"), [page_at, openai_at],
                    [f"serve.port={port}", f"serve.gradio_port={gradio_port}"])
    page_at.thread.join(timeout=120)
    openai_at.thread.join(timeout=120)
    assert served == _train(model_dir, str(tmp_path / "plain"))  # serving changed no training number

    # The endpoint answered with the weights of step 2: the same text as the step-2 checkpoint's greedy output.
    answer = got["answer"]
    assert answer.system_fingerprint == "collie-step-2"
    assert main(["convert", str(tmp_path / "served" / "checkpoints" / "step-2"), "--to-hf", str(tmp_path / "s2")]) == 0
    model, tokenizer = CollieModel.from_pretrained(str(tmp_path / "s2")).eval(), load_tokenizer(model_dir)
    ids = tokenizer("Question: What is collie?")["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=8, eos_token_id=tokenizer.eos_token_id)[0, len(ids):]
    new = out.tolist()[:out.tolist().index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in out else out.tolist()
    assert answer.choices[0].text == tokenizer.decode(new, skip_special_tokens=True)

    # The page typed into, answered by step 1's weights, screenshot saved.
    assert got["page_answer"] and not got["page_answer"].startswith("error")
    assert "answered by the weights of step 1" in got["page_step"]
    assert (tmp_path / "gradio.png").stat().st_size > 10_000
    # Training is over: the endpoint is closed.
    with pytest.raises(httpx.ConnectError):
        httpx.get(health)


def test_gradio_port_without_serve_port_is_one_line(tmp_path, capsys):
    assert main(["train", os.path.join(ROOT, "examples", "quickstart.yaml"), f"output_dir={tmp_path}",
                 "serve.gradio_port=7861"]) == 2
    assert "serve.gradio_port: the Gradio page talks to the OpenAI endpoint; set serve.port too" in \
           capsys.readouterr().err
