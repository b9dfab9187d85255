"""MOSS's checkpoint names ↔ ours.

MOSS (as CodeGen) computes q, k and v with one `attn.qkv_proj` matrix in 4 model-parallel
groups: its rows, viewed as (4, 3, hidden / 4, hidden), hold in each group the group's query
rows, then value rows, then key rows (q | v | k). Loading splits it into q/k/v projections whose
heads keep MOSS's order (so tensor parallel shards whole heads); saving puts the groups back.
Buffers in the checkpoint (a cached causal mask, `masked_bias`) are not weights.
"""

from __future__ import annotations

from collie.models.hf_adapter import BlockTableAdapter
from collie.models.moss.model import MP_GROUPS


class MossHFAdapter(BlockTableAdapter):
    architecture = "MossForCausalLM"
    edges = [("embed_tokens.", "transformer.wte."), ("norm.", "transformer.ln_f."), ("lm_head.", "lm_head.")]
    block = [("input_layernorm.", "ln_1."), ("self_attn.o_proj.", "attn.out_proj."), ("mlp.", "mlp.")]
    hf_block = "transformer.h.{}."
    ignored = ("attn.causal_mask", "attn.bias", "attn.masked_bias")
    fused_qkv = "attn.qkv_proj."
    qkv_order = ("q_proj", "v_proj", "k_proj")

    def qkv_groups(self, hf_config) -> int:
        return MP_GROUPS
