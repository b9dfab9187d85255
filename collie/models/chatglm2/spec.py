"""ChatGLM2/3 (their published checkpoints) and GLM (transformers' format): the decoder network
with partial, interleaved rotary and row-stacked q/k/v and gate/up."""

from __future__ import annotations

import dataclasses

from transformers import GlmConfig

from collie.models.chatglm2.config import ChatGLMConfig
from collie.models.chatglm2.hf_adapter import ChatGLMHFAdapter, GlmHFAdapter
from collie.models.common.args import DecoderArgs, decoder_args
from collie.models.common.spec import decoder_spec, shape_config_of


def glm_args(config) -> DecoderArgs:
    """transformers' GLM: `attention_bias` is on q/k/v only, and its rotary pairs interleave."""
    args = decoder_args(config)
    return dataclasses.replace(args, qkv_bias=bool(config.attention_bias), o_bias=False,
                               rope_interleaved=bool(getattr(config, "rope_interleaved", True)))


def _chatglm_shape(fields: dict, tokenizer) -> ChatGLMConfig:
    heads = fields["num_attention_heads"]
    return ChatGLMConfig(num_layers=fields["num_hidden_layers"], padded_vocab_size=fields["vocab_size"],
                         hidden_size=fields["hidden_size"], ffn_hidden_size=fields["intermediate_size"],
                         kv_channels=fields["hidden_size"] // heads, num_attention_heads=heads,
                         multi_query_group_num=fields["num_key_value_heads"], seq_length=4096,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)


def _glm_shape(fields: dict, tokenizer) -> GlmConfig:
    head_dim = fields["hidden_size"] // fields["num_attention_heads"]
    return shape_config_of(GlmConfig, head_dim=head_dim, attention_bias=True)(fields, tokenizer)


CHATGLM = decoder_spec(name="chatglm", model_types=("chatglm",), adapter=ChatGLMHFAdapter(),
                       model="collie.models.chatglm2.model:ChatGLM2ForCausalLM",
                       config_cls=ChatGLMConfig, shape_config=_chatglm_shape)
GLM = decoder_spec(name="glm", model_types=("glm",), adapter=GlmHFAdapter(), args=glm_args, shape_config=_glm_shape)
