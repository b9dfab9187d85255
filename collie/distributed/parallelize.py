"""Apply parallelism to a single-device model from outside, in one fixed order:
pipeline split → tensor parallel (DTensor) → compute dtype → activation checkpointing →
data parallel (FSDP2 or DDP)."""

from __future__ import annotations

import logging

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.tensor.parallel import parallelize_module

from collie.config import ConfigError
from collie.distributed.precision import apply_compute_dtype
from collie.forward_context import autocast_dtype

log = logging.getLogger("collie")


def parallelize(model: torch.nn.Module, config, runtime, replicate_wrapper: bool = True) -> torch.nn.Module:
    """`replicate_wrapper=False` leaves replicated data parallel (zero_stage 0) to an optimizer
    that averages gradients itself inside backward (LOMO/AdaLomo)."""
    check_layout(model, config)
    # A model from `from_pretrained` under a multi-process launch is still empty (meta): it is
    # split and sharded first, then each rank loads only its own shards.
    source = getattr(model, "hf_source", None)
    if config.pp_size > 1:
        from collie.distributed.pipeline import local_stages, split_for_stage, stage_layer_ranges

        ranges = stage_layer_ranges(model, config.pp_size * config.pp_virtual_stages, config.pp_partition_method)
        split_for_stage(model, local_stages(runtime.pp_rank, config.pp_size, len(ranges)), ranges)
    if source is None:
        model.to(runtime.device)
    if config.tp_size > 1:
        apply_tensor_parallel(model, runtime.mesh["tp"], config.sequence_parallel, config.loss_parallel)
    compute = compute_dtype(config, runtime.device, next(model.parameters()).dtype)
    if compute != next(model.parameters()).dtype:
        apply_compute_dtype(model, compute)
    if config.checkpointing:
        apply_activation_checkpointing(model)
    fsdp = runtime.dp_size > 1 and (config.zero_stage > 0 or needs_fsdp_for_replication(config))
    if source is not None and not fsdp:
        _load_shards(model, source, runtime, config)  # DDP broadcasts real weights when it wraps
    if runtime.dp_size > 1 and (fsdp or replicate_wrapper):
        apply_data_parallel(model, runtime.mesh["dp"], config)
    if source is not None and fsdp:
        _load_shards(model, source, runtime, config)
    return model


def _load_shards(model: torch.nn.Module, source: str, runtime, config) -> None:
    model.to_empty(device=runtime.device)
    model.load_hf_weights(source, partial=config.pp_size > 1)
    del model.hf_source


def compute_dtype(config, device: torch.device, storage: torch.dtype) -> torch.dtype:
    """Half-precision storage computes in float32 on CPU (no fast bf16 matmuls there); otherwise
    compute happens in the storage dtype, unless `compute_dtype` says otherwise."""
    if config.compute_dtype != "auto":
        return getattr(torch, config.compute_dtype)
    if device.type == "cpu" and storage in (torch.bfloat16, torch.float16):
        return torch.float32
    return storage


def check_layout(model: torch.nn.Module, config) -> None:
    """Layouts the model's shape cannot support, each with the field to change."""
    hf = getattr(model, "config", None)
    if hf is None:
        return
    heads = hf.num_attention_heads
    kv_heads = getattr(hf, "num_key_value_heads", None) or heads
    if heads % config.tp_size or kv_heads % config.tp_size:
        raise ConfigError(f"tp_size: {config.tp_size} must divide the attention heads ({heads}) and "
                          f"key/value heads ({kv_heads})")
    stages = config.pp_size * config.pp_virtual_stages
    if stages > hf.num_hidden_layers:
        virtual = f" ({config.pp_size} × {config.pp_virtual_stages} virtual)" if config.pp_virtual_stages > 1 else ""
        raise ConfigError(f"pp_size: {stages} stages{virtual} but the model has only {hf.num_hidden_layers} layers")
    if config.loss_parallel and config.pp_size > 1:
        raise ConfigError("loss_parallel: not available with pipeline parallel yet (use pp_size=1)")
    if (config.tp_size > 1 or config.pp_size > 1) and getattr(hf, "tie_word_embeddings", False):
        raise ConfigError("tie_word_embeddings: tied input/output embeddings cannot be split by tensor or "
                          "pipeline parallel yet (use tp_size=1 and pp_size=1 for this model)")


def apply_tensor_parallel(model: torch.nn.Module, tp_mesh, sequence_parallel: bool = False,
                          loss_parallel: bool = False) -> None:
    from collie.models.llama.tp_plan import llama_tp_plan

    parallelize_module(model, tp_mesh, llama_tp_plan(model, sequence_parallel, loss_parallel))


def apply_activation_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer in backward instead of storing its activations."""
    for name, layer in list(model.layers.items()):
        model.layers[name] = checkpoint_wrapper(layer, preserve_rng_state=False)


def needs_fsdp_for_replication(config) -> bool:
    return config.tp_size > 1 or config.pp_virtual_stages > 1


def apply_data_parallel(model: torch.nn.Module, dp_mesh, config) -> None:
    """ZeRO through FSDP2: stage 3 reshards parameters after forward, stages 2 and 1 keep them
    gathered until backward (FSDP2 always shards optimizer state and gradients, so stage 1
    behaves as stage 2). Stage 0 is plain replicated data parallel (PyTorch's DDP); DDP does
    not take tensor-parallel DTensor parameters nor hook virtual pipeline stages, so there
    stage 0 runs as stage 2."""
    if config.zero_stage == 0 and needs_fsdp_for_replication(config):
        log.info("zero_stage 0 runs as zero_stage 2 here: DDP cannot hold tensor-parallel DTensor parameters "
                 "nor see virtual pipeline stages")
    elif config.zero_stage == 0:
        from torch.distributed._composable.replicate import replicate

        replicate(model, device_mesh=dp_mesh)
        return
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": dp_mesh, "reshard_after_forward": config.zero_stage == 3}
    if config.cpu_offload and dp_mesh.device_type == "cpu":
        log.info("cpu_offload has no effect here: training already runs on the CPU")
    elif config.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    dtype = autocast_dtype(config, torch.device(dp_mesh.device_type))
    if dtype is not None:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    for layer in model.layers.values():
        fully_shard(layer, **kwargs)
    if config.pp_size > 1:
        # Pipeline stages run submodules directly, never the model's own forward: the embedding
        # and the head get their own FSDP units instead of a root one.
        for module in (model.embed_tokens, model.norm, model.lm_head):
            if module is not None:
                fully_shard(module, **kwargs)
    else:
        fully_shard(model, **kwargs)
