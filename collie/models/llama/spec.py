"""The specs of LLaMA 1/2/3 and of the families whose checkpoints load into the same network
with LLaMA's tensor names (Qwen2, Mistral)."""

from __future__ import annotations

import dataclasses

from transformers import LlamaConfig, MistralConfig, Qwen2Config

from collie.models.common.args import DecoderArgs, decoder_args
from collie.models.common.spec import decoder_spec, shape_config_of
from collie.models.llama.hf_adapter import LlamaHFAdapter, MistralHFAdapter, Qwen2HFAdapter


def qwen2_args(config) -> DecoderArgs:
    """Qwen2 biases q/k/v but not o, and its configs carry a sliding window they do not use
    unless `use_sliding_window` asks for it."""
    args = decoder_args(config)
    window = args.sliding_window if getattr(config, "use_sliding_window", False) else None
    return dataclasses.replace(args, qkv_bias=True, o_bias=False, sliding_window=window)


LLAMA = decoder_spec(name="llama", model_types=("llama",), adapter=LlamaHFAdapter(),
                     shape_config=shape_config_of(LlamaConfig, rope_theta=10000.0))
QWEN2 = decoder_spec(name="qwen2", model_types=("qwen2",), adapter=Qwen2HFAdapter(), args=qwen2_args,
                     shape_config=shape_config_of(Qwen2Config))
MISTRAL = decoder_spec(name="mistral", model_types=("mistral",), adapter=MistralHFAdapter(),
                       shape_config=shape_config_of(MistralConfig, sliding_window=4096))
