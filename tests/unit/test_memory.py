"""Memory a user sees: loading a checkpoint holds the model plus one tensor (no mapped file
pages), and the memory monitor reports anonymous memory with per-interval and run peaks."""

import json
import subprocess
import sys
import time

import torch
from helpers import tiny_llama_config
from torch.utils._python_dispatch import TorchDispatchMode

from collie import CollieConfig
from collie.models import LlamaForCausalLM
from collie.models.init import init_tensor
from collie.monitors.memory import GIB, resident_memory
from collie.monitors.monitors import MemoryMonitor, StepStats

CHILD = """
import json, sys, threading, time
import torch
from collie.models.base import CollieModel
from collie.monitors.memory import resident_memory

peaks = {"RssAnon": 0, "RssFile": 0}
stop = threading.Event()

def sample():
    while not stop.is_set():
        for key, value in resident_memory().items():
            peaks[key] = max(peaks[key], value)
        time.sleep(0.002)

torch.ones(1)  # torch's own allocations belong to the baseline
base = resident_memory()
thread = threading.Thread(target=sample)
thread.start()
model = CollieModel.from_pretrained(sys.argv[1])
stop.set()
thread.join()
params = list(model.state_dict().values())
print(json.dumps({"base": base, "peak": peaks, "model": sum(p.numel() * p.element_size() for p in params),
                  "largest": max(p.numel() * p.element_size() for p in params)}))
"""


def test_loading_holds_the_model_plus_one_tensor(tmp_path):
    from collie.init_model import init_model

    init_model("100m", str(tmp_path / "m"))
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "m")], capture_output=True, text=True,
                         check=True, timeout=300)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    anon = got["peak"]["RssAnon"] - got["base"]["RssAnon"]
    file_pages = got["peak"]["RssFile"] - got["base"]["RssFile"]
    assert got["model"] > 350e6  # ~100M fp32 parameters: large enough to tell
    # The model, one tensor being copied in, and allocator slack.
    assert anon <= got["model"] + 2 * got["largest"] + 64e6, (anon, got)
    # The checkpoint's pages are not kept: far less than the 400 MB file is ever resident.
    assert file_pages <= got["largest"] + 64e6, (file_pages, got)


def _stats(step: int) -> StepStats:
    return StepStats(step=step, epoch=0, loss=1.0, lr=0.1, tokens=1, step_time_s=0.1, num_devices=1,
                     flops_per_token=None, device=torch.device("cpu"))


def test_memory_columns_peak_since_the_last_log_line_and_of_the_run():
    monitor = MemoryMonitor(CollieConfig(log_every_n_steps=2))
    monitor.start(torch.device("cpu"))
    try:
        before = monitor.step_columns(_stats(1))["mem_peak_gib"]
        spike = torch.ones(256 * 2**20 // 4)  # 256 MiB, held while the sampler runs
        time.sleep(0.2)
        del spike
        step2 = monitor.step_columns(_stats(2))  # a log line: reports the spike, then resets
        step3 = monitor.step_columns(_stats(3))
    finally:
        monitor.stop()
    assert step2["mem_peak_gib"] >= before + 0.24
    assert step3["mem_peak_gib"] < step2["mem_peak_gib"] - 0.2  # the spike was before the last log line
    assert step3["mem_run_peak_gib"] >= step2["mem_peak_gib"]
    assert abs(step3["mem_peak_gib"] - resident_memory()["RssAnon"] / GIB) < 0.1


RUN_PEAK_CHILD = """
import json, torch
from collie.monitors.memory import GIB
from collie.monitors.monitors import MemoryMonitor, StepStats
loading = torch.ones(512 * 2**20 // 4)  # 512 MiB held while "loading", freed before training
del loading
monitor = MemoryMonitor()
monitor.start(torch.device("cpu"))
columns = monitor.step_columns(StepStats(step=1, epoch=0, loss=1.0, lr=0.1, tokens=1, step_time_s=0.1,
                                         num_devices=1, flops_per_token=None, device=torch.device("cpu")))
monitor.stop()
print(json.dumps(columns))
"""


def test_run_peak_counts_what_came_before_training():
    """A model's loading peaks before the monitor starts: the run's peak still shows it (a
    machine must have that much), the step's peak does not."""
    out = subprocess.run([sys.executable, "-c", RUN_PEAK_CHILD], capture_output=True, text=True, check=True)
    columns = json.loads(out.stdout.strip().splitlines()[-1])
    assert columns["mem_run_peak_gib"] >= columns["mem_peak_gib"] + 0.45, columns


def test_random_init_fills_fp32_parameters_in_place():
    """No copy of a parameter is made while `from_config` initialises an fp32 model (the largest
    one would be the peak of building it); the values are `init_tensor`'s."""
    class Fresh(TorchDispatchMode):
        elements = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and not any(isinstance(a, torch.Tensor) and a.data_ptr() == out.data_ptr()
                                                         for a in args):
                self.elements = max(self.elements, out.numel())
            return out

    model = LlamaForCausalLM.from_config(tiny_llama_config(vocab_size=2048), seed=3)
    with Fresh() as fresh:
        model.reset_parameters("normal", 3)
    assert fresh.elements < 2048 * 64
    want = init_tensor("embed_tokens.weight", (2048, 64), 3, 0.02)
    assert torch.equal(model.embed_tokens.weight, want)
