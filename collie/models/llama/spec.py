"""The LLaMA family's spec (LLaMA 1/2/3; Qwen2 checkpoints load into the same model)."""

from __future__ import annotations

import dataclasses

from collie.models.llama.hf_adapter import LlamaHFAdapter, Qwen2HFAdapter
from collie.models.llama.model import LlamaForCausalLM
from collie.models.llama.tp_plan import llama_tp_plan
from collie.models.spec import ModelDims, ModelSpec


def llama_dims(hf_config) -> ModelDims:
    heads = hf_config.num_attention_heads
    return ModelDims(layers=hf_config.num_hidden_layers, heads=heads,
                     kv_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
                     hidden=hf_config.hidden_size, vocab=hf_config.vocab_size,
                     tied_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)))


def llama_flops_per_token(dims: ModelDims, seq_len: int, trainable_params: int) -> float:
    """Training FLOPs per token: 6 per parameter plus the attention score/value matmuls."""
    return 6.0 * trainable_params + 12.0 * dims.layers * dims.hidden * seq_len


SHAPES: dict[str, dict] = {
    # vocab_size None: the tokenizer's size (rounded up to a multiple of 64).
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=352, vocab_size=None),
    "20m": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=8,
                intermediate_size=688, vocab_size=32000),
    "100m": dict(hidden_size=640, num_hidden_layers=12, num_attention_heads=10, num_key_value_heads=10,
                 intermediate_size=1728, vocab_size=32000),
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16,
               intermediate_size=5632, vocab_size=32000),
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, vocab_size=32000),
}


def llama_shape_config(fields: dict, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
                       tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **fields)


LLAMA = ModelSpec(name="llama", model_types=("llama",), model_cls=LlamaForCausalLM, adapter=LlamaHFAdapter(),
                  tp_plan=llama_tp_plan, dims=llama_dims, flops_per_token=llama_flops_per_token, shapes=SHAPES,
                  shape_config=llama_shape_config)
QWEN2 = dataclasses.replace(LLAMA, name="qwen2", model_types=("qwen2",), adapter=Qwen2HFAdapter(), shapes={},
                            shape_config=None)
