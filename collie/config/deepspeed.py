"""CoLLiE's `ds_config` (a DeepSpeed configuration) read into collie's sections.

CoLLiE ran on DeepSpeed and took its settings in DeepSpeed's format; collie runs on PyTorch's
own engine, so each DeepSpeed setting is translated to the collie setting with the same
meaning: `fp16`/`bf16` → `mixed_precision`, `zero_optimization.stage` → `zero_stage`, offloading →
`cpu_offload`, `gradient_clipping` → `optimizer.clip_grad_norm`, `monitor_config` → the sinks and
where they write. Switches that only tune DeepSpeed's own engine are accepted with a note; any
other key is refused in one line listing what collie does not support.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from typing import Any, Union

import yaml

from collie.config.errors import ConfigError

log = logging.getLogger("collie")

# Settings that tune DeepSpeed's engine itself (bucket sizes, kernels, logging cadence):
# collie's engine has its own equivalents or needs none, so they change nothing here.
_ENGINE_ONLY = frozenset({
    "zero_allow_untested_optimizer", "zero_force_ds_cpu_optimizer", "steps_per_print", "wall_clock_breakdown",
    "dump_state", "prescale_gradients", "gradient_predivide_factor", "communication_data_type",
    "memory_breakdown", "flops_profiler", "comms_logger", "data_types", "sparse_gradients", "amp",
    "activation_checkpointing", "aio", "checkpoint",
})
_ZERO_ENGINE_ONLY = frozenset({
    "allgather_partitions", "allgather_bucket_size", "overlap_comm", "reduce_scatter", "reduce_bucket_size",
    "contiguous_gradients", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold",
    "stage3_max_live_parameters", "stage3_max_reuse_distance", "stage3_gather_16bit_weights_on_model_save",
    "stage3_gather_fp16_weights_on_model_save", "sub_group_size", "round_robin_gradients", "elastic_checkpoint",
    "ignore_unused_parameters", "load_from_fp32_weights", "cpu_offload_use_pin_memory", "memory_efficient_linear",
    "zero_hpz_partition_size", "zero_quantized_weights", "zero_quantized_gradients", "mics_shard_size",
})
# Keys of fp16/bf16 beyond `enabled`: dynamic loss scaling is collie's own (always dynamic).
_PRECISION_TUNING = frozenset({"loss_scale", "initial_scale_power", "loss_scale_window", "hysteresis",
                               "min_loss_scale", "auto_cast", "consecutive_hysteresis", "immediate_grad_update"})
_TRANSLATED = frozenset({"fp16", "bf16", "zero_optimization", "gradient_clipping", "train_micro_batch_size_per_gpu",
                         "gradient_accumulation_steps", "train_batch_size", "monitor_config"})


def read_ds_config(value: Union[str, dict, None]) -> dict:
    """A ds_config given as a dict, or as the path of a JSON (or YAML) file."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"ds_config: expected a dict or a JSON file path, got {type(value).__name__}")
    if not os.path.isfile(value):
        raise ConfigError(f"ds_config: file not found: {value}")
    with open(value) as f:
        try:
            data = yaml.safe_load(f) if str(value).endswith((".yaml", ".yml")) else json.load(f)
        except (json.JSONDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"ds_config: {value} is not valid {'YAML' if str(value).endswith('ml') else 'JSON'}: "
                              f"{str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"ds_config: {value} must hold a mapping of DeepSpeed settings")
    return data


def apply_ds_config(config, ds: dict) -> None:
    """Set `config`'s sections from DeepSpeed settings `ds` (batch sizes are checked against the
    config by `check_batch_agreement`, whichever is set first)."""
    unknown = sorted(set(ds) - _TRANSLATED - _ENGINE_ONLY)
    zero = ds.get("zero_optimization") or {}
    unknown += sorted(f"zero_optimization.{k}" for k in set(zero) - _ZERO_ENGINE_ONLY
                      - {"stage", "offload_optimizer", "offload_param"})
    if unknown:
        raise ConfigError(f"ds_config: collie does not support {', '.join(unknown)} (supported: "
                          f"{', '.join(sorted(_TRANSLATED))}, and DeepSpeed engine switches, which are noted)")
    _apply_precision(config, ds)
    if "stage" in zero:
        config.zero_stage = int(zero["stage"])
    offload = [k for k in ("offload_optimizer", "offload_param") if _offloads(zero.get(k))]
    if offload:
        config.cpu_offload = True
    if ds.get("gradient_clipping"):
        config.optimizer.clip_grad_norm = float(ds["gradient_clipping"])
    if "monitor_config" in ds:
        _apply_monitor(config, ds["monitor_config"])
    engine_only = sorted(set(ds) & _ENGINE_ONLY) + sorted(f"zero_optimization.{k}" for k in set(zero) & _ZERO_ENGINE_ONLY)
    if engine_only:
        log.info("ds_config: %s tune DeepSpeed's own engine; collie runs on PyTorch's and does not need them",
                 ", ".join(engine_only))


def check_batch_agreement(config, ds: dict, world_size: Union[int, None] = None) -> None:
    """DeepSpeed's batch settings must say what the config says (CoLLiE kept them in both places)."""
    for ds_key, name in (("train_micro_batch_size_per_gpu", "train_micro_batch_size"),
                         ("gradient_accumulation_steps", "gradient_accumulation_steps")):
        if ds_key in ds and int(ds[ds_key]) != getattr(config, name):
            raise ConfigError(f"ds_config.{ds_key}={ds[ds_key]} disagrees with {name}={getattr(config, name)}; "
                              f"set {name} only")
    if "train_batch_size" in ds and world_size is not None:
        dp = config.resolve_dp_size(world_size)
        total = config.train_micro_batch_size * config.gradient_accumulation_steps * dp
        if int(ds["train_batch_size"]) != total:
            raise ConfigError(f"ds_config.train_batch_size={ds['train_batch_size']} disagrees with train_micro_batch_size"
                              f" × gradient_accumulation_steps × dp_size = {total}; leave train_batch_size out")


def _apply_precision(config, ds: dict) -> None:
    enabled = [name for name in ("fp16", "bf16") if (ds.get(name) or {}).get("enabled", False)]
    if len(enabled) > 1:
        raise ConfigError("ds_config: fp16 and bf16 are both enabled; enable one")
    for name in ("fp16", "bf16"):
        extra = set(ds.get(name) or {}) - {"enabled"} - _PRECISION_TUNING
        if extra:
            raise ConfigError(f"ds_config.{name}: collie does not support {', '.join(sorted(extra))}")
    if enabled:
        config.mixed_precision = enabled[0]
        log.info("ds_config: %s mixed precision (autocast on GPUs; on a CPU collie computes in float32, "
                 "since half-precision matmuls are many times slower there)", enabled[0])


def _offloads(setting: Any) -> bool:
    if not setting:
        return False
    device = setting.get("device", "cpu") if isinstance(setting, dict) else setting
    if device not in ("cpu", "none"):
        raise ConfigError(f"ds_config.zero_optimization offload device {device!r}: collie offloads to cpu only")
    return device == "cpu"


def _apply_monitor(config, monitor: dict) -> None:
    """CoLLiE's monitors wrote through DeepSpeed's: a CSV monitor, TensorBoard, W&B, each in
    `output_path/<job name>` where the job name is the tag (+ a timestamp for CSV)."""
    if not monitor.get("enabled", True):
        return
    kinds = {"csv_monitor": "csv", "tensorboard": "tensorboard", "wandb": "wandb"}
    unknown = sorted(set(monitor) - set(kinds) - {"enabled", "tag"})
    if unknown:
        raise ConfigError(f"ds_config.monitor_config: collie does not support {', '.join(unknown)}")
    tag = str(monitor.get("tag", ""))
    sinks = [s for s in config.logging if s not in kinds.values()]
    for key, sink in kinds.items():
        settings = monitor.get(key) or {}
        if not settings.get("enabled", False):
            continue
        sinks.append(sink)
        if sink == "wandb":
            config.monitor.wandb_project = settings.get("project", config.monitor.wandb_project)
            config.monitor.wandb_entity = settings.get("team", config.monitor.wandb_entity)
            config.monitor.wandb_group = settings.get("group", config.monitor.wandb_group)
        elif "output_path" in settings:
            job = settings.get("job_name") or tag + (datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
                                                     if sink == "csv" else "")
            config.monitor.dir = os.path.join(settings["output_path"], job)
    config.logging = sinks
