"""ChatGLM-6B (v1): its own blocks on the decoder network (collie.models.chatglm.model) with its published names.
It shares `model_type: chatglm` with ChatGLM2/3; `accepts` tells the configs apart."""

from __future__ import annotations

from collie.models.chatglm.args import glm_v1_args
from collie.models.chatglm.config import ChatGLMv1Config, is_chatglm_v1
from collie.models.chatglm.hf_adapter import ChatGLMv1HFAdapter
from collie.models.chatglm.positions import glm_positions
from collie.models.common.spec import SHAPES
from collie.models.common.tp_plan import block_plan
from collie.models.spec import ModelSpec


def glm_v1_tp_plan(model, sequence_parallel: bool = False, loss_parallel: bool = False) -> dict:
    return block_plan(model, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc_in"),
                      ("self_attn.o_proj", "mlp.fc_out"), ("input_layernorm", "post_attention_layernorm"),
                      sequence_parallel, loss_parallel)


def _shape(fields: dict, tokenizer) -> ChatGLMv1Config:
    # A random model for tests and trials: with a tokenizer that has no [gMASK]/<sop>, its bos
    # (which starts every sequence) plays both, so every token is in the answer (a causal LM).
    bos = tokenizer.bos_token_id
    return ChatGLMv1Config(vocab_size=fields["vocab_size"], hidden_size=fields["hidden_size"],
                           num_layers=fields["num_hidden_layers"], num_attention_heads=fields["num_attention_heads"],
                           inner_hidden_size=fields["intermediate_size"], max_sequence_length=2048,
                           bos_token_id=bos, gmask_token_id=bos, mask_token_id=bos,
                           eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


CHATGLM_V1 = ModelSpec(name="chatglm_v1", model_types=("chatglm",),
                       model="collie.models.chatglm.model:ChatGLMForCausalLM", adapter=ChatGLMv1HFAdapter(),
                       tp_plan=glm_v1_tp_plan, args=glm_v1_args, shapes=SHAPES, shape_config=_shape,
                       config_cls=ChatGLMv1Config, accepts=is_chatglm_v1,
                       position_ids=lambda input_ids, attention_mask, config, kv_cache=None:
                       glm_positions(input_ids, attention_mask, config, kv_cache))
