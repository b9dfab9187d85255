"""The device-dependent choices, checked on CPU: what GPU users get is decided by these."""

import contextlib

import torch

from collie import CollieConfig
from collie.distributed.parallelize import compute_dtype
from collie.monitors.monitors import MFUMonitor, MemoryMonitor, StepStats, peak_flops


def test_compute_dtype_per_device():
    auto = CollieConfig()
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert compute_dtype(auto, cpu, torch.bfloat16) == torch.float32  # no fast bf16 matmul on CPU
    assert compute_dtype(auto, cuda, torch.bfloat16) == torch.bfloat16
    assert compute_dtype(auto, cpu, torch.float64) == torch.float64
    assert compute_dtype(CollieConfig(compute_dtype="bfloat16"), cpu, torch.bfloat16) == torch.bfloat16


def test_bf16_autocast_only_on_gpus():
    from collie import LlamaForCausalLM
    from collie.trainer import Trainer
    from helpers import tiny_llama_config

    config = CollieConfig(model_config=tiny_llama_config(), mixed_precision="bf16", logging=[])
    trainer = Trainer(LlamaForCausalLM.from_config(config, seed=0), config)
    assert isinstance(trainer._autocast(), contextlib.nullcontext)


def test_mfu_and_memory_monitors_on_cpu():
    stats = StepStats(step=1, epoch=0, loss=1.0, lr=0.1, tokens=100, step_time_s=0.5, num_devices=1,
                      flops_per_token=1e6, device=torch.device("cpu"))
    assert peak_flops(torch.device("cpu")) is None
    assert MFUMonitor().step_columns(stats) == {}  # no meaningful peak for a CPU
    assert MemoryMonitor().step_columns(stats)["mem_gib"] > 0.05  # process RSS
