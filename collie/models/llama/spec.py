"""The specs of LLaMA 1/2/3 and of the families whose checkpoints load into the same network
with LLaMA's tensor names (Qwen2, Mistral)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from transformers import LlamaConfig, MistralConfig, Qwen2Config

from collie.models.llama.args import llama_args
from collie.models.llama.hf_adapter import LlamaHFAdapter, MistralHFAdapter, Qwen2HFAdapter
from collie.models.llama.model import LlamaForCausalLM
from collie.models.llama.tp_plan import llama_tp_plan
from collie.models.spec import ModelDims, ModelSpec


def llama_dims(hf_config) -> ModelDims:
    args = llama_args(hf_config)
    return ModelDims(layers=args.layers, heads=args.heads, kv_heads=args.kv_heads, hidden=args.hidden,
                     vocab=args.vocab, tied_embeddings=args.tied_embeddings)


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


def shape_config_of(config_cls: type, **defaults) -> Callable[[dict, Any], Any]:
    """A family's `shape_config`: its config class filled with a shape's fields and the
    tokenizer's special tokens."""
    def build(fields: dict, tokenizer):
        return config_cls(max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **defaults, **fields)
    return build


LLAMA = ModelSpec(name="llama", model_types=("llama",), model_cls=LlamaForCausalLM, adapter=LlamaHFAdapter(),
                  tp_plan=llama_tp_plan, dims=llama_dims, flops_per_token=llama_flops_per_token, shapes=SHAPES,
                  shape_config=shape_config_of(LlamaConfig, rope_theta=10000.0))
QWEN2 = dataclasses.replace(LLAMA, name="qwen2", model_types=("qwen2",), adapter=Qwen2HFAdapter(),
                            shape_config=shape_config_of(Qwen2Config))
MISTRAL = dataclasses.replace(LLAMA, name="mistral", model_types=("mistral",), adapter=MistralHFAdapter(),
                              shape_config=shape_config_of(MistralConfig, sliding_window=4096))
