"""Small builders shared by tests: tiny LLaMA configs, saved HF model directories, and an
optimizer checkpoint round trip."""

import io

import torch
from transformers import LlamaConfig


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
