"""Small builders shared by tests: tiny LLaMA configs and saved HF model directories."""

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
