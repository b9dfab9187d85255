"""The device-dependent choices, checked on CPU: what GPU users get is decided by these."""

import pytest
import torch

from collie import CollieConfig
from collie.distributed.parallelize import compute_dtype
from collie.forward_context import autocast_dtype
from collie.monitors.monitors import MemoryMonitor, MFUMonitor, StepStats, peak_flops, peak_flops_of


def test_compute_dtype_per_device():
    auto = CollieConfig()
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert compute_dtype(auto, cpu, torch.bfloat16) == torch.float32  # no fast bf16 matmul on CPU
    assert compute_dtype(auto, cuda, torch.bfloat16) == torch.bfloat16
    assert compute_dtype(auto, cpu, torch.float64) == torch.float64
    assert compute_dtype(CollieConfig(compute_dtype="bfloat16"), cpu, torch.bfloat16) == torch.bfloat16
    # Mixed precision on GPUs: autocast decides, nothing is cast by hand.
    assert compute_dtype(CollieConfig(mixed_precision="bf16"), cuda, torch.float32) is None
    assert compute_dtype(CollieConfig(mixed_precision="bf16"), cpu, torch.float32) == torch.float32


def test_linear_casts_weights_to_the_activations_unless_autocast_decides():
    from collie.models.layers import Linear

    layer = Linear(8, 4).to(torch.bfloat16)
    x = torch.randn(2, 8)
    assert layer(x).dtype == torch.float32  # bf16 storage computing in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast's choice, the weight used as stored


def test_bf16_autocast_only_on_gpus():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert autocast_dtype(CollieConfig(mixed_precision="bf16"), cuda) == torch.bfloat16
    assert autocast_dtype(CollieConfig(mixed_precision="fp16"), cuda) == torch.float16
    assert autocast_dtype(CollieConfig(mixed_precision="bf16"), cpu) is None
    assert autocast_dtype(CollieConfig(), cuda) is None


@pytest.mark.parametrize("use_flash", [True, False])
def test_use_flash_decides_the_attention_kernels_of_training_and_evaluation(use_flash):
    """`use_flash: false` keeps SDPA off its flash kernel in every forward the Trainer runs."""
    from helpers import tiny_llama_config

    from collie import LlamaForCausalLM
    from collie.data import CollieDatasetForTraining
    from collie.evaluate import EvaluatorForPerplexity, PPLMetric
    from collie.trainer import Trainer

    config = CollieConfig(model_config=tiny_llama_config(), logging=[], max_steps=1, use_flash=use_flash)
    model = LlamaForCausalLM.from_config(config, seed=0)
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.backends.cuda.flash_sdp_enabled()))
    dataset = CollieDatasetForTraining([{"tokens": [1, 2, 3, 4]}] * 2)
    trainer = Trainer(model, config, train_dataset=dataset,
                      evaluators=[EvaluatorForPerplexity(model, config, dataset, {"ppl": PPLMetric()})])
    trainer.train()
    trainer.evaluate()
    assert len(seen) == 3 and set(seen) == {use_flash}
    assert torch.backends.cuda.flash_sdp_enabled()  # restored afterwards


def test_mfu_and_memory_monitors_on_cpu():
    stats = StepStats(step=1, epoch=0, loss=1.0, lr=0.1, tokens=100, step_time_s=0.5, num_devices=1,
                      flops_per_token=1e6, device=torch.device("cpu"))
    assert peak_flops(torch.device("cpu")) is None
    assert MFUMonitor().step_columns(stats) == {}  # no meaningful peak for a CPU
    monitor = MemoryMonitor()
    columns = monitor.step_columns(stats)
    monitor.stop()
    # This process's anonymous memory: at least the interpreter and torch's own allocations.
    assert 0.05 < columns["mem_peak_gib"] <= columns["mem_run_peak_gib"] < 8


def test_mfu_peak_follows_the_precision_the_config_computes_in():
    h100 = "NVIDIA H100 80GB HBM3"
    assert peak_flops_of(h100, torch.bfloat16, allow_tf32=False) == 989e12
    assert peak_flops_of(h100, torch.float32, allow_tf32=True) == 494.5e12
    assert peak_flops_of(h100, torch.float32, allow_tf32=False) == 67e12
    assert peak_flops_of("Tesla V100-SXM2-32GB", torch.float32, allow_tf32=True) == 15.7e12
    assert peak_flops_of("Some New GPU", torch.bfloat16, allow_tf32=False) is None
    cuda = torch.device("cuda", 0)
    assert MFUMonitor(CollieConfig(mixed_precision="bf16"))._matmul_dtype(cuda) == torch.bfloat16
    assert MFUMonitor(CollieConfig(param_dtype="bfloat16"))._matmul_dtype(cuda) == torch.bfloat16
    assert MFUMonitor(CollieConfig())._matmul_dtype(cuda) == torch.float32
    assert MFUMonitor()._matmul_dtype(cuda) == torch.bfloat16


def test_adam_is_fused_only_where_every_parameter_is_a_plain_tensor_on_one_device_kind():
    from types import SimpleNamespace

    from collie.trainer.optim_factory import adam_implementation

    cuda, cpu = SimpleNamespace(device=torch.device("cuda", 0)), SimpleNamespace(device=torch.device("cpu"))
    meta = SimpleNamespace(device=torch.device("meta"))
    assert adam_implementation([cuda, cuda]) == {"fused": True} == adam_implementation([cpu])
    assert adam_implementation([cuda, cpu]) == {} == adam_implementation([meta]) == adam_implementation([])


def test_activation_offload_is_a_gpu_setting():
    from collie.forward_context import forward_context, offload_context

    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    on = CollieConfig(activation_offload=True)
    assert isinstance(offload_context(on, cuda), torch.autograd.graph.save_on_cpu)
    assert offload_context(on, cpu) is None and offload_context(CollieConfig(), cuda) is None
    # On a CPU the setting changes nothing: training forwards run as without it.
    x = torch.ones(3, requires_grad=True)
    with forward_context(on, cpu):
        y = (x * 2).sum()
    y.backward()
    assert x.grad.tolist() == [2.0, 2.0, 2.0]
