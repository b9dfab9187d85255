"""Tensor-parallel plans of the decoder network (DTensor styles keyed by module name): the gated
blocks' plan, and `block_plan` for a family whose blocks name their projections otherwise."""

from __future__ import annotations

from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, SequenceParallel


def decoder_tp_plan(model, sequence_parallel: bool = False, loss_parallel: bool = False) -> dict:
    """Megatron layout: q/k/v and gate/up split by output features, o/down by input features,
    so each layer needs one all-reduce after attention and one after the MLP; the embedding is
    split by vocabulary and the LM head gathers its vocabulary shards back.

    With `sequence_parallel`, the residual stream and the norms hold a slice of the sequence
    on each rank (the all-reduces become reduce-scatter + all-gather), cutting activation
    memory by tp_size outside attention and MLP. With `loss_parallel`, the LM head returns
    logits as a DTensor sharded by vocabulary, for `torch.distributed.tensor.parallel.loss_parallel`.
    """
    return block_plan(model, ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj",
                              "mlp.up_proj"), ("self_attn.o_proj", "mlp.down_proj"),
                      ("input_layernorm", "post_attention_layernorm"), sequence_parallel, loss_parallel)


def block_plan(model, column: tuple[str, ...], row: tuple[str, ...], norms: tuple[str, ...],
               sequence_parallel: bool, loss_parallel: bool) -> dict:
    """The plan above for blocks of any layout: `column` projections split by output features,
    `row` ones by input features, `norms` hold a slice of the sequence under sequence parallel
    (and `self_attn` / `mlp` gather it at their entrance)."""
    between = Shard(1) if sequence_parallel else Replicate()
    plan = {}
    # A pipeline stage may lack the embedding or the head.
    if model.embed_tokens is not None:
        plan["embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=between)
    if model.lm_head is not None:
        plan["lm_head"] = ColwiseParallel(input_layouts=between,
                                          output_layouts=Shard(-1) if loss_parallel else Replicate(),
                                          use_local_output=not loss_parallel)
        if sequence_parallel:
            plan["norm"] = SequenceParallel()
    for name in model.layers:
        prefix = f"layers.{name}."
        for proj in column:
            plan[prefix + proj] = ColwiseParallel()
        for proj in row:
            plan[prefix + proj] = RowwiseParallel(output_layouts=between)
        if sequence_parallel:
            for norm in norms:
                plan[prefix + norm] = SequenceParallel()
            # Attention and MLP see the whole sequence: gather it at their entrance.
            plan[prefix + "self_attn"] = PrepareModuleInput(input_layouts=(Shard(1), None, None, None, None),
                                                            desired_input_layouts=(Replicate(), None, None, None,
                                                                                   None))
            plan[prefix + "mlp"] = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    return plan
