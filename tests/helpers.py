"""Small builders shared by tests: tiny LLaMA configs, saved HF model directories, an
optimizer checkpoint round trip, and a LLaMA checkpoint format with fused q/k/v."""

import io

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import LlamaConfig

from collie.cli import main
from collie.models.llama.hf_adapter import LlamaHFAdapter
from collie.trainer import Callback


def tiny_llama_config(**overrides) -> LlamaConfig:
    fields = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=128, vocab_size=256, max_position_embeddings=256, rms_norm_eps=1e-6)
    fields.update(overrides)
    return LlamaConfig(**fields)


def save_tiny_hf_model(path: str, seed: int = 0, **overrides) -> str:
    from transformers import LlamaForCausalLM as HFLlama

    torch.manual_seed(seed)
    HFLlama(tiny_llama_config(**overrides)).save_pretrained(path)
    return path


def reload_through_checkpoint(model, optimizer, fresh_model, make_optimizer):
    """Save model + optimizer state as a checkpoint would (torch.save, then a weights-only
    torch.load), load it into `fresh_model` and a new optimizer; return (optimizer, checkpoint)."""
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer)
    fresh_model.load_state_dict(checkpoint["model"])
    new_optimizer = make_optimizer(fresh_model)
    new_optimizer.load_state_dict(checkpoint["optim"])
    return new_optimizer, checkpoint


class FusedQKVAdapter(LlamaHFAdapter):
    """A LLaMA checkpoint format with q/k/v fused into one `qkv_proj` tensor per layer (as
    InternLM2, ChatGLM and MOSS store them): exercises the one-to-many adapter path."""

    _PARTS = ("q_proj", "k_proj", "v_proj")

    def split(self, hf_name, tensor, hf_config):
        if ".self_attn.qkv_proj." not in hf_name:
            return super().split(hf_name, tensor, hf_config)
        head_dim = hf_config.hidden_size // hf_config.num_attention_heads
        sizes = [hf_config.num_attention_heads * head_dim] + [hf_config.num_key_value_heads * head_dim] * 2
        prefix = self.from_hf_name(hf_name).replace("qkv_proj", "{}")
        return [(prefix.format(part), piece) for part, piece in zip(self._PARTS, tensor.split(sizes))]

    def hf_layout(self, names, hf_config):
        layout = []
        for name in names:
            if ".self_attn.q_proj." in name:
                parts = [name.replace("q_proj", part) for part in self._PARTS]
                layout.append((self.to_hf_name(name.replace("q_proj", "qkv_proj")), parts))
            elif ".self_attn.k_proj." not in name and ".self_attn.v_proj." not in name:
                layout.append((self.to_hf_name(name), [name]))
        return layout

    def fuse(self, hf_name, parts, hf_config):
        return torch.cat(parts) if ".self_attn.qkv_proj." in hf_name else parts[0]


def fused_llama_spec():
    import dataclasses

    from collie.models.llama.spec import LLAMA

    return dataclasses.replace(LLAMA, name="llama_fused_qkv", adapter=FusedQKVAdapter())


def assert_matches_reference(ours, reference, ids: torch.Tensor, new_tokens: int = 10) -> None:
    """Logits within 1e-5 of a transformers model, and the same greedy continuation."""
    with torch.no_grad():
        assert (ours(ids).logits - reference(ids).logits).abs().max() <= 1e-5
    prompt = ids[:, :8]
    expected = reference.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                                  do_sample=False, pad_token_id=0)
    assert ours.generate(prompt, max_new_tokens=new_tokens).tolist() == expected.tolist()


def assert_saves_back(ours, out_dir, checkpoint: dict) -> dict:
    """`save_pretrained` writes `checkpoint` back tensor for tensor; returns the written config.json."""
    import json
    import os

    from safetensors.torch import load_file

    ours.save_pretrained(str(out_dir))
    saved = load_file(os.path.join(out_dir, "model.safetensors"))
    assert saved.keys() == checkpoint.keys()
    assert all(torch.equal(saved[name], checkpoint[name]) for name in checkpoint)
    with open(os.path.join(out_dir, "config.json")) as f:
        return json.load(f)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ServerProcess:
    """`collie serve …` (or torchrun running it) in a subprocess, up once /health answers."""

    def __init__(self, argv: list, port: int, log_path: str, timeout: float = 120) -> None:
        import os
        import subprocess
        import sys
        import time

        import httpx

        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "w")
        env = dict(os.environ, OMP_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, *argv], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}): {open(log_path).read()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not come up: {open(log_path).read()[-3000:]}")

    def stop(self) -> int:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=120)
        self.log.close()
        return code


class Losses(Callback):
    """A Trainer callback that records each step's loss."""

    def __init__(self):
        self.values = []

    def on_train_batch_end(self, trainer, loss):
        self.values.append(loss)


class AskAt(Callback):
    """A Trainer callback (serving during training): at step `step`, `ask()` runs in a thread and
    training waits until its request is queued — the endpoint takes requests between steps, so it
    is answered at this very step boundary. Rank 0 only; the other ranks go on to decode it."""

    def __init__(self, step: int, ask, health_url: str):
        self.step, self.ask, self.health_url = step, ask, health_url
        self.thread = None

    def on_train_batch_end(self, trainer, loss):
        import threading
        import time

        import httpx

        if trainer.global_step != self.step or not trainer.runtime.is_main:
            return
        self.thread = threading.Thread(target=self.ask)
        self.thread.start()
        deadline = time.monotonic() + 120
        while httpx.get(self.health_url).json()["queued"] < 1:
            assert time.monotonic() < deadline, "the request never reached the server"
            time.sleep(0.05)


def hub_cache_with(cache, hub_id: str, family: str, shape: str = "tiny") -> str:
    """A Hugging Face cache (`HF_HUB_CACHE=cache`) in which `hub_id` resolves offline to a random
    `collie init-model` model of `family` in its published layout; returns its snapshot path."""
    repo = cache / ("models--" + hub_id.replace("/", "--"))
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    assert main(["init-model", "--family", family, "--shape", shape, str(snapshot)]) == 0
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return str(snapshot)


class LargestNewTensor(TorchDispatchMode):
    """Records the most elements of a tensor an op makes (views and in-place results excluded)."""

    elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor) and not a.is_sparse}
        for tensor in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(tensor, torch.Tensor) and not tensor.is_sparse and \
                    tensor.untyped_storage().data_ptr() not in inputs:
                self.elements = max(self.elements, tensor.numel())
        return out
