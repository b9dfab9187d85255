"""MOSS's checkpoint names ↔ ours.

MOSS (as CodeGen) computes q, k and v with one `attn.qkv_proj` matrix in 4 model-parallel
groups: its rows, viewed as (4, 3, hidden / 4, hidden), hold in each group the group's query
rows, then value rows, then key rows (q | v | k). Loading splits it into q/k/v projections whose
heads keep MOSS's order (so tensor parallel shards whole heads); saving puts the groups back.
Buffers in the checkpoint (a cached causal mask, `masked_bias`) are not weights.
"""

from __future__ import annotations

from collie.models.hf_adapter import Fused, HFAdapter
from collie.models.moss.args import MP_GROUPS


class MossHFAdapter(HFAdapter):
    architecture = "MossForCausalLM"
    edges = [("embed_tokens.", "transformer.wte."), ("norm.", "transformer.ln_f."), ("lm_head.", "lm_head.")]
    hf_block = "transformer.h.{}."
    block = [("input_layernorm.", "ln_1."), ("self_attn.o_proj.", "attn.out_proj.")]
    fused = [Fused("attn.qkv_proj.", ("self_attn.q_proj.", "self_attn.v_proj.", "self_attn.k_proj."),
                   lambda hf_config: (MP_GROUPS, (1, 1, 1)))]
    ignored = ("attn.causal_mask", "attn.bias", "attn.masked_bias")
