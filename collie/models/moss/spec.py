"""MOSS (moss-moon-003): CodeGen's network with MOSS's names and fused, grouped q|v|k."""

from __future__ import annotations

from collie.models.common.spec import SHAPES
from collie.models.common.tp_plan import block_plan
from collie.models.moss.args import MP_GROUPS, moss_args
from collie.models.moss.config import MossConfig
from collie.models.moss.hf_adapter import MossHFAdapter
from collie.models.spec import ModelSpec


def moss_tp_plan(model, sequence_parallel: bool = False, loss_parallel: bool = False) -> dict:
    """q/k/v and fc_in split by output features, o and fc_out by input features: one all-reduce
    per block for attention and one for the MLP, as for LLaMA."""
    return block_plan(model, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.fc_in"),
                      ("self_attn.o_proj", "mlp.fc_out"), ("input_layernorm",), sequence_parallel, loss_parallel)


def _moss_shape(fields: dict, tokenizer) -> MossConfig:
    head_dim = fields["hidden_size"] // fields["num_attention_heads"]
    return MossConfig(vocab_size=fields["vocab_size"], n_embd=fields["hidden_size"],
                      n_layer=fields["num_hidden_layers"], n_head=fields["num_attention_heads"],
                      n_inner=fields["intermediate_size"],
                      rotary_dim=head_dim // 2, n_positions=2048, n_ctx=2048, bos_token_id=tokenizer.bos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


MOSS = ModelSpec(name="moss", model_types=("moss",), model="collie.models.moss.model:MossForCausalLM",
                 adapter=MossHFAdapter(), tp_plan=moss_tp_plan, args=moss_args,
                 shapes={name: fields for name, fields in SHAPES.items()
                         if fields["num_attention_heads"] % MP_GROUPS == 0},
                 shape_config=_moss_shape, config_cls=MossConfig)
