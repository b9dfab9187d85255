"""Apply parallelism to a single-device model from outside, in one fixed order:
pipeline split → tensor parallel (DTensor) → compute dtype → activation checkpointing →
(QLoRA: 4-bit base) → data parallel (FSDP2 or DDP). The model is read only through its family's spec."""

from __future__ import annotations

import logging
from typing import Optional

import torch
from torch.distributed._composable.replicate import replicate
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor.parallel import parallelize_module
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

from collie import storage
from collie.config import ConfigError, checkpointing_mode
from collie.config.quantization import quant_settings
from collie.distributed.parallel_model import ParallelModel
from collie.distributed.pipeline import local_stages, split_for_stages, stage_layer_ranges
from collie.dtypes import DTYPES
from collie.forward_context import autocast_dtype
from collie.models.base import is_meta, model_source
from collie.models.recomputation import CheckpointedRun
from collie.peft.qlora import QuantizingLoad, quantize_frozen_linears
from collie.peft.quantize import require_backend
from collie.peft.tensor_parallel import with_lora_styles

log = logging.getLogger("collie")


def parallelize(model: torch.nn.Module, spec, config, runtime, weights_from: Optional[str] = None,
                replicate_wrapper: bool = True) -> ParallelModel:
    """`weights_from`: an HF directory to load once the model is split and sharded (the model
    is still empty, on the meta device); each rank then reads only its own shards.
    `replicate_wrapper=False` leaves replicated data parallel (zero_stage 0) to an optimizer
    that averages gradients itself inside backward (LOMO/AdaLomo). The sizes come from
    `runtime.layout`, checked against the model when the runtime was built."""
    layout = runtime.layout
    if layout.pipelined:
        ranges = stage_layer_ranges(model, spec, layout.stages, layout.pp_partition)
        split_for_stages(model, spec, local_stages(runtime.pp_rank, layout.pp, len(ranges)), ranges)
    if weights_from is None:
        model.to(runtime.device)
    if layout.tp > 1:
        plan = spec.tp_plan(model, layout.sequence_parallel, layout.loss_parallel)
        frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
        parallelize_module(model, runtime.mesh["tp"], with_lora_styles(model, plan))
        # Some styles (SequenceParallel) re-create parameters as trainable: keep frozen ones frozen.
        for name, p in model.named_parameters():
            p.requires_grad_(name not in frozen)
    model.compute_dtype = compute_dtype(config.compute, runtime.device, next(model.parameters()).dtype)
    model.loss_chunk_tokens = config.loss_chunk_tokens
    mode = checkpointing_mode(config.checkpointing)
    if mode != "none":
        apply_activation_checkpointing(spec, model, selective=mode == "selective", every=config.checkpointing_every)
    if config.compile:
        compile_blocks(spec, model)
    fsdp = layout.uses_fsdp
    quant = quant_settings(config.quantization_config)  # QLoRA: no FSDP, no model parallel
    if quant is not None:
        require_backend(runtime.device)
    if weights_from is not None and quant is not None:
        load = QuantizingLoad(model, spec, quant, runtime.device)
        load.materialize()
        model.load_hf_weights(weights_from, take=load.take)
    elif weights_from is not None and not fsdp:
        _load_shards(model, weights_from, runtime)  # DDP broadcasts real weights when it wraps
    if quant is not None:  # a model that came loaded: its weights are on their device now
        quantize_frozen_linears(model, spec, quant, runtime.device)
    if layout.dp > 1 and (fsdp or replicate_wrapper):
        apply_data_parallel(model, spec, runtime.mesh["dp"], layout, config)
    if weights_from is not None and fsdp:
        _load_shards(model, weights_from, runtime)
    return ParallelModel(model, spec, config, runtime)


def compile_blocks(spec, model: torch.nn.Module) -> None:
    """Regional compilation: each decoder block (after tensor parallel and checkpointing, before
    FSDP, as torch.compile composes with them) compiled in place, so state-dict names stay."""
    for _, block in spec.block_items(model):
        block.compile()


def _load_shards(model: torch.nn.Module, path: str, runtime) -> None:
    model.to_empty(device=runtime.device)
    model.load_hf_weights(path, partial=runtime.layout.pipelined)


def compute_dtype(compute, device: torch.device, storage: torch.dtype) -> Optional[torch.dtype]:
    """Of the config's compute section: half-precision storage computes in float32 on CPU (no
    fast bf16 matmuls there); otherwise compute happens in the storage dtype, unless
    `compute_dtype` says otherwise. None under mixed precision: autocast decides there."""
    if autocast_dtype(compute, device) is not None:
        return None
    if compute.compute_dtype != "auto":
        return DTYPES[compute.compute_dtype]
    if device.type == "cpu" and storage in (torch.bfloat16, torch.float16):
        return torch.float32
    return storage


def apply_activation_checkpointing(spec, model: torch.nn.Module, selective: bool = False, every: int = 1) -> None:
    """Recompute decoder blocks in backward instead of storing their activations: every `every`-th
    block (by its index in the whole model, so pipeline stages agree), wholly or — `selective` —
    all but the outputs of matmuls, attention and collectives, which are kept (recomputing them
    is what costs; the ops between them are cheap and their outputs as large)."""
    blocks = spec.blocks(model)
    kwargs = {"context_fn": _keep_matmul_outputs if selective else _flag_checkpointed_runs}
    for position, (key, block) in enumerate(spec.block_items(model)):
        index = int(key) if str(key).isdigit() else position
        if index % every == 0:
            blocks[key] = checkpoint_wrapper(block, preserve_rng_state=False, **kwargs)


def _flag_checkpointed_runs():
    """Full recomputation: the block's layers are told which run of their forward is under way
    (`collie.models.recomputation`)."""
    return CheckpointedRun(again=False), CheckpointedRun(again=True)


def _kept_ops() -> set:
    ops = torch.ops.aten
    names = ["mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu"]
    kept = {getattr(ops, name).default for name in names if hasattr(ops, name)}
    functional = getattr(torch.ops, "_c10d_functional", None)
    for name in ("all_reduce", "reduce_scatter_tensor", "all_gather_into_tensor", "wait_tensor"):
        if functional is not None and hasattr(functional, name):
            kept.add(getattr(functional, name).default)  # a collective is never run twice
    return kept


def _keep_matmul_outputs():
    kept = _kept_ops()

    def policy(_ctx, op, *args, **kwargs):
        return CheckpointPolicy.MUST_SAVE if op in kept else CheckpointPolicy.PREFER_RECOMPUTE

    return create_selective_checkpoint_contexts(policy)


def apply_data_parallel(model: torch.nn.Module, spec, dp_mesh, layout, config) -> None:
    """ZeRO through FSDP2: stage 3 reshards parameters after forward, stages 2 and 1 keep them
    gathered until backward (FSDP2 always shards optimizer state and gradients, so stage 1
    behaves as stage 2). Stage 0 is plain replicated data parallel (PyTorch's DDP); DDP does
    not take tensor-parallel DTensor parameters nor hook pipeline stages built as views, so
    there stage 0 runs as stage 2."""
    if layout.zero_stage == 0 and layout.replicates_through_fsdp:
        log.info("zero_stage 0 runs as zero_stage 2 here: DDP cannot hold tensor-parallel DTensor parameters "
                 "nor see pipeline stages built as views (virtual stages, a chunked loss on the last stage)")
    elif layout.zero_stage == 0:
        replicate(model, device_mesh=dp_mesh)
        return
    kwargs = {"mesh": dp_mesh, "reshard_after_forward": layout.zero_stage == 3}
    if config.cpu_offload and dp_mesh.device_type == "cpu":
        log.info("cpu_offload has no effect here: training already runs on the CPU")
    elif config.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    dtype = autocast_dtype(config.compute, torch.device(dp_mesh.device_type))
    if dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for _, block in spec.block_items(model):
        fully_shard(block, **kwargs)
    if layout.pipelined:
        # Pipeline stages run submodules directly, never the model's own forward: the embedding
        # and the head get their own FSDP units instead of a root one.
        for module in spec.present_edges(model):
            fully_shard(module, **kwargs)
    else:
        fully_shard(model, **kwargs)


def weights_source(model: torch.nn.Module) -> Optional[str]:
    """Where an empty (meta-device) model's weights are: `from_pretrained` under a multi-process
    launch records its directory in the model and leaves loading until the model is sharded."""
    if not is_meta(model):
        return None
    if not model_source(model):
        raise ConfigError("model: the model has no weights yet (meta device) and names no directory to load "
                          "them from; build it with from_pretrained(path)")
    return storage.local_copy(model_source(model))
