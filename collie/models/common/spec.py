"""The spec of a family built on the decoder network, and the shapes `collie init-model` writes.

A family on this network differs only in its checkpoint names, its config class and, at most,
how its config.json is read: `decoder_spec` fills in the rest, so the families do not copy one
another's specs.
"""

from __future__ import annotations

from typing import Any, Callable

from collie.models.common.args import decoder_args
from collie.models.common.tp_plan import decoder_tp_plan
from collie.models.spec import ModelSpec

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

# The decoder network's class, imported when a model is first built (see collie.models.spec).
DECODER_MODEL = "collie.models.common.decoder:LlamaForCausalLM"


def shape_config_of(config_cls: type, **defaults) -> Callable[[dict, Any], Any]:
    """A family's `shape_config`: its config class filled with a shape's fields and the
    tokenizer's special tokens."""
    def build(fields: dict, tokenizer):
        return config_cls(max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id, **defaults, **fields)
    return build


def decoder_spec(**fields) -> ModelSpec:
    """A family on the decoder network: `fields` (name, model_types, adapter, …) over the
    network's model class, settings reader, tensor-parallel plan and shapes."""
    return ModelSpec(**{"model": DECODER_MODEL, "args": decoder_args, "tp_plan": decoder_tp_plan, "shapes": SHAPES,
                        **fields})
