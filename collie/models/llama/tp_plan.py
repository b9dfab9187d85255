"""Tensor-parallel plan for the LLaMA family (DTensor styles keyed by module name)."""

from __future__ import annotations

from torch.distributed.tensor import Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel


def llama_tp_plan(model) -> dict:
    """Megatron layout: q/k/v and gate/up split by output features, o/down by input features,
    so each layer needs one all-reduce after attention and one after the MLP; the embedding is
    split by vocabulary and the LM head gathers its vocabulary shards back."""
    plan = {}
    # A pipeline stage may lack the embedding or the head.
    if model.embed_tokens is not None:
        plan["embed_tokens"] = RowwiseParallel(input_layouts=Replicate())
    if model.lm_head is not None:
        plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    for name in model.layers:
        prefix = f"layers.{name}."
        for proj in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            plan[prefix + proj] = ColwiseParallel()
        for proj in ("self_attn.o_proj", "mlp.down_proj"):
            plan[prefix + proj] = RowwiseParallel()
    return plan
