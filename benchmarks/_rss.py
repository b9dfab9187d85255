"""What the memory benchmarks share: one measured run per subprocess, its peak RSS, and
building and training a collie model without a memory peak that is not the method's own.

Peak RSS is a process-wide high-water mark, so each configuration gets a fresh process
(`script --run NAME ...`) that prints one JSON line; the parent collects those lines.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Optional

import torch

RESULT_PREFIX = "RESULT "


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def peak_rss_gib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gib() -> float:
    """Resident memory now (/proc/self/statm: pages), 0 where there is no /proc."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except OSError:
        return 0.0


_ANON: Any = None
# What `report` adds to every result: resident memory at two moments, for a breakdown (libraries
# imported: interpreter, torch, collie; the first training step about to start: model and trainer
# built), and the training losses, step by step.
_REPORTED: dict[str, Any] = {}
# The learning rate of the LOMO/AdaLomo runs, collie's and the authors' alike (lomo-optim's
# README value), so their loss curves can be compared.
LOMO_LR = 1e-3


def start_anon_sampling() -> None:
    """Track this process's anonymous memory from now on (collie's monitor does the same)."""
    global _ANON
    from collie.monitors.memory import PeakMemory

    _ANON = PeakMemory(torch.device("cpu"))
    _ANON.start()
    _REPORTED["imported_rss_gib"] = current_rss_gib()


def report(**fields: Any) -> None:
    """The child's last word: its peak RSS (OS high-water mark, file pages included), its peak
    anonymous memory when sampled, the GPU peak on CUDA, plus `fields`, as JSON."""
    result = {"peak_rss_gib": peak_rss_gib(), **_REPORTED, **fields}
    if _ANON is not None:
        _ANON.interval_peak()
        result["peak_anon_gib"] = _ANON.sampled_peak / 2**30
    if torch.cuda.is_available():
        result["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_child(script: str, name: str, args: list[str]) -> dict:
    """Run `script --run name args` in a fresh interpreter and return its reported result."""
    proc = subprocess.run([sys.executable, script, "--run", name, *args], capture_output=True, text=True,
                          check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"run {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def shape_model_config(shape: str):
    """An HF LlamaConfig of a named collie shape (vocab at least the bundled tokenizer's)."""
    from transformers import AutoTokenizer

    from collie.init_model import bundled_tokenizer_path, shape_config

    return shape_config(shape, AutoTokenizer.from_pretrained(bundled_tokenizer_path()))


def build_collie_model(model_config, dtype: torch.dtype, seed: int = 0, materialize: bool = True):
    """A randomly initialised collie LLaMA stored in `dtype` (built on meta and cast there, so
    a bf16 model never passes through an fp32 copy); `materialize=False`: the meta skeleton."""
    from collie.models import LlamaForCausalLM

    if not materialize:
        return LlamaForCausalLM(model_config)
    return LlamaForCausalLM.from_config(model_config, seed=seed, dtype=dtype)


def available_bytes() -> int:
    """Memory the OS could still give a new process (MemAvailable), to decide what to attempt."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def random_records(vocab: int, seq: int, count: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"tokens": torch.randint(0, vocab, (seq,), generator=g).tolist()} for _ in range(count)]


def train_transformers_adamw(shape: str, seq: int, steps: int, checkpointing: bool = True) -> list[float]:
    """The baseline: transformers' LlamaForCausalLM, fp32, gradient checkpointing (unless told
    otherwise), torch AdamW, a plain loop on the same random tokens; returns the step times."""
    from transformers import LlamaForCausalLM as HFLlama

    # Built straight on the device's host in fp32: one copy, as `from_pretrained` would leave it.
    return _train_transformers(HFLlama(shape_model_config(shape)), seq, steps, checkpointing)


def train_transformers_peft_lora(shape: str, seq: int, steps: int, lora: dict) -> list[float]:
    """The LoRA baseline: transformers' LlamaForCausalLM (fp32) wrapped by peft's LoRA, gradient
    checkpointing, AdamW over the adapters, the same loop and tokens."""
    from transformers import LlamaForCausalLM as HFLlama

    return train_peft_lora(HFLlama(shape_model_config(shape)), seq, steps, lora)


def train_peft_lora(model, seq: int, steps: int, lora: dict) -> list[float]:
    """A transformers model (a 4-bit one too) wrapped by peft's LoRA (`lora`: r, alpha,
    target_modules), trained by the baseline loop with gradient checkpointing."""
    from peft import LoraConfig, get_peft_model

    # What peft's docs prescribe with checkpointing and a frozen embedding.
    model.enable_input_require_grads()
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=list(lora["target_modules"]),
                        task_type="CAUSAL_LM")
    return _train_transformers(get_peft_model(model, config), seq, steps)


def train_transformers_lomo_optim(shape: str, seq: int, steps: int, name: str,
                                  from_dir: Optional[str] = None) -> list[float]:
    """The LOMO authors' own package (`lomo-optim`: Lomo or AdaLomo) on transformers'
    LlamaForCausalLM (fp32, gradient checkpointing), as its README runs it: `fused_backward`.
    The model starts from the weights collie's runs start from (`init_like_collie`), or is
    loaded with `from_pretrained` from the checkpoint `from_dir` that collie's runs load."""
    import lomo_optim
    from transformers import LlamaForCausalLM as HFLlama

    if device().type == "cpu":
        # lomo-optim puts its state with `.cuda()`; on a CPU-only machine that must stay put.
        # A shim for this benchmark process only.
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    if from_dir is None:
        model = HFLlama(shape_model_config(shape))
        init_like_collie(model)
    else:
        model = HFLlama.from_pretrained(from_dir, dtype=torch.float32)
    model = model.to(device()).train()
    model.gradient_checkpointing_enable()
    optimizer = getattr(lomo_optim, name)(model, lr=LOMO_LR)
    times, losses = [], []
    for record in random_records(model.config.vocab_size, seq, steps):
        ids = torch.tensor([record["tokens"]], device=device())
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        optimizer.fused_backward(loss, LOMO_LR)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    _REPORTED["losses"] = losses
    return times


@torch.no_grad()
def init_like_collie(hf_model: torch.nn.Module, seed: int = 0) -> None:
    """Give a transformers LLaMA (fp32) the values `build_collie_model(seed=seed)` has, filling
    each tensor in place: no temporaries that could raise the baseline's peak."""
    from collie.models.init import init_tensor
    from collie.models.llama.spec import LLAMA

    config = hf_model.config
    with torch.device("meta"):
        skeleton = build_collie_model(config, torch.float32, materialize=False)
    shapes = {name: tuple(p.shape) for name, p in skeleton.named_parameters()}
    std = float(getattr(config, "initializer_range", 0.02))
    targets = dict(hf_model.named_parameters())
    for hf_name, parts in LLAMA.adapter.hf_layout(skeleton.hf_state_names(), config):
        if len(parts) != 1:
            raise RuntimeError(f"init_like_collie: {hf_name} fuses {parts}; LLaMA's HF layout has no fused tensor")
        init_tensor(parts[0], shapes[parts[0]], seed, std, out=targets.pop(hf_name))
    if targets:
        raise RuntimeError(f"init_like_collie: no collie tensor for {sorted(targets)}")


def _train_transformers(model, seq: int, steps: int, checkpointing: bool = True) -> list[float]:
    config = model.config
    model = model.to(device()).train()
    if checkpointing:
        model.gradient_checkpointing_enable()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for record in random_records(config.vocab_size, seq, steps):
        ids = torch.tensor([record["tokens"]], device=device())
        start = time.perf_counter()
        model(input_ids=ids, labels=ids, use_cache=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return times


def train_collie(model: torch.nn.Module, optimizer: str, seq: int, steps: int,
                 lora: Optional[dict] = None, checkpointing: str = "full", lr: Optional[float] = None) -> list[float]:
    """Train `model` for `steps` steps (batch 1, `checkpointing`) with collie's Trainer on random
    tokens; returns the step times. A bf16-stored model computes in fp32 on CPU, one layer at
    a time (the Trainer's default compute_dtype), natively in bf16 on GPUs. `lora`: the `peft:`
    section's fields (LoRA adapters instead of full training); `lr`: the optimizer's, else
    collie's default. The step losses are reported too."""
    from collie import CollieConfig
    from collie.data import CollieDatasetForTraining
    from collie.trainer import Callback, Trainer

    class StepTimes(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_begin(self, trainer, batch) -> None:
            _REPORTED.setdefault("ready_rss_gib", current_rss_gib())
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, loss) -> None:
            self.times.append(time.perf_counter() - self.start)
            _REPORTED.setdefault("losses", []).append(float(loss))

    config = CollieConfig(model_config=model.config, train_micro_batch_size=1, max_steps=steps, logging=[],
                          checkpointing=checkpointing)
    config.data.max_length = seq
    config.data.shuffle = False  # the records in order, as the transformers loops take them
    config.optimizer.name = optimizer
    if lr is not None:
        config.optimizer.lr = lr
    for key, value in (lora or {}).items():
        setattr(config.peft, key, value)
    data = CollieDatasetForTraining(random_records(model.config.vocab_size, seq, steps))
    timer = StepTimes()
    Trainer(model, config, train_dataset=data, callbacks=[timer]).train()
    return timer.times


def checkpoint_dir(root: str, shape: str, dtype: torch.dtype) -> str:
    return os.path.join(root, f"{shape}-{str(dtype).split('.')[-1]}")


def write_checkpoint(root: str, shape: str, dtype: torch.dtype) -> str:
    """The HF directory `collie init-model --shape SHAPE --dtype DTYPE` writes (kept if present)."""
    from collie.init_model import init_model

    path = checkpoint_dir(root, shape, dtype)
    if not os.path.isfile(os.path.join(path, "config.json")):
        init_model(shape, path, dtype=dtype)
    return path


def train_collie_from_disk(model_dir: str, optimizer: str, seq: int, steps: int, dtype: torch.dtype,
                           extra: Optional[dict] = None) -> dict:
    """As a user runs it: `collie train` on a config naming `model_dir`, LOMO's memory mode
    (`param_dtype`) and activation checkpointing, plus `extra` config sections (`peft`,
    `quantization_config`); returns the step times and the memory the run reported
    (`mem_run_peak_gib` of its last metrics.csv row); the step losses are reported too. LOMO and
    AdaLomo take `LOMO_LR`, as the in-process runs and lomo-optim's do."""
    import tempfile

    # The run's output (its `final/` export is as large as the model) is removed afterwards.
    with tempfile.TemporaryDirectory(prefix="collie-bench-") as work:
        return _train_from_disk_in(work, model_dir, optimizer, seq, steps, dtype, extra or {})


def _train_from_disk_in(work: str, model_dir: str, optimizer: str, seq: int, steps: int, dtype: torch.dtype,
                        extra: dict) -> dict:
    import csv

    import yaml

    from collie.cli import main
    from collie.models.base import load_hf_config

    data = os.path.join(work, "data.json")
    with open(data, "w") as f:
        json.dump(random_records(load_hf_config(model_dir).vocab_size, seq, steps), f)
    config = os.path.join(work, "config.yaml")
    with open(config, "w") as f:
        yaml.safe_dump({"model": model_dir, "output_dir": os.path.join(work, "out"), "max_steps": steps,
                        "train_micro_batch_size": 1, "checkpointing": True, "logging": ["csv"],
                        "param_dtype": str(dtype).split(".")[-1],
                        "optimizer": {"name": optimizer, "lr": LOMO_LR if optimizer in ("lomo", "adalomo") else 1e-5},
                        "data": {"train_file": data, "max_length": seq, "shuffle": False}, **extra}, f)
    if main(["train", config]) != 0:
        raise RuntimeError(f"collie train {config} failed")
    with open(os.path.join(work, "out", "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    _REPORTED["losses"] = [float(row["loss"]) for row in rows]
    return {"times": [float(row["step_time_s"]) for row in rows], "collie_mem_gib": float(rows[-1]["mem_run_peak_gib"])}


def train_transformers_adamw_from(model_dir: str, seq: int, steps: int) -> list[float]:
    """The baseline loading the same HF directory with `from_pretrained`, as its users do."""
    from transformers import AutoModelForCausalLM

    return _train_transformers(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), seq, steps)


def time_calls(owner: Any, attribute: str, label: str) -> None:
    """Wrap `owner.attribute` (a module's function or a class's method) so that `report` adds how
    long its calls took in all (`{label}_s`), the resident memory when the first began
    (`{label}_start_rss_gib`) and the OS peak when the last returned (`{label}_end_peak_rss_gib`):
    a phase of a run (a reference pass) timed and placed in its memory history."""
    function = getattr(owner, attribute)

    def timed(*args, **kwargs):
        _REPORTED.setdefault(f"{label}_start_rss_gib", current_rss_gib())
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            _REPORTED[f"{label}_s"] = _REPORTED.get(f"{label}_s", 0.0) + time.perf_counter() - start
            _REPORTED[f"{label}_end_peak_rss_gib"] = peak_rss_gib()

    setattr(owner, attribute, timed)


def record(**fields: Any) -> None:
    """Fields for `report` to add, from code that does not report itself (a callback)."""
    _REPORTED.update(fields)


def run_child_watched(script: str, name: str, args: list[str], floor_gib: float = 2.0, poll_s: float = 0.05) -> dict:
    """`run_child` under a watchdog: when the machine's MemAvailable falls below `floor_gib`, the
    child (its whole process group) is killed before the OS runs out, and the result is
    `{"killed_at_gib": its resident memory then, "available_gib": ...}` instead of its report."""
    import signal
    import tempfile

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, script, "--run", name, *args], stdout=out, stderr=err, text=True,
                                start_new_session=True)
        killed: Optional[dict] = None
        while proc.poll() is None:
            available = available_bytes()
            if available < floor_gib * 2**30:
                rss = _process_rss_gib(proc.pid)
                os.killpg(proc.pid, signal.SIGKILL)
                killed = {"killed_at_gib": rss, "available_gib": available / 2**30}
                proc.wait()
                break
            time.sleep(poll_s)
        if killed is not None:
            return killed
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith(RESULT_PREFIX)]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"run {name} failed (exit {proc.returncode}):\n{err.read()[-3000:]}")
        return json.loads(lines[-1][len(RESULT_PREFIX):])


def _process_rss_gib(pid: int) -> float:
    """Another process's resident memory now (VmRSS of /proc/PID/status), 0 when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0
