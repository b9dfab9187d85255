"""collie gives freed host memory back to the OS when loading and when a training run saves
memory (glibc's growing mmap threshold otherwise keeps freed multi-MiB buffers resident), and
keeps it for reuse when serving and in other training runs."""

import os
import subprocess
import sys

import pytest
from helpers import save_tiny_hf_model

from collie import CollieConfig
from collie.data import CollieDatasetForTraining
from collie.models.base import CollieModel
from collie.trainer import Trainer
from collie.trainer import trainer as trainer_module

PROBE = """
import resource, sys, torch
def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
def faults():
    torch.ones(2**19).sum()  # a 2 MiB step buffer, once before counting
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        torch.ones(2**19).sum()   # the same buffer again, as every decoding step makes it
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
collie = sys.argv[1] == "collie"
if collie:
    from collie.host_memory import for_training, return_freed_memory_to_os, reuse_freed_memory
    assert return_freed_memory_to_os()   # as loading a model does
freed = torch.ones(4 * 2**20); del freed   # a 16 MiB block freed: glibc's threshold grows to it
start = anon_mib()
buffers, small = [], []
for _ in range(20):
    buffers.append(torch.ones(2 * 2**20))  # 8 MiB each, as activation buffers
    small.append(torch.ones(1000))         # something long-lived after each of them
del buffers
print(anon_mib() - start)
if collie:  # then training runs, then a server
    as_loaded = faults()
    assert for_training(saves_memory=True)    # a run that checkpoints keeps the fixed threshold
    saving_memory = faults()
    assert for_training(saves_memory=False)   # any other run reuses its step buffers
    fast = faults()
    assert reuse_freed_memory() and not return_freed_memory_to_os()   # a later load leaves it so
    print(as_loaded, saving_memory, fast, faults())
    pinned, holes = [], []
    for _ in range(200):
        holes.append(torch.ones(2**17))   # 512 KiB each, from the heap
        pinned.append(torch.ones(1000))   # something long-lived after each of them
    del holes
    fragmented = anon_mib()
    assert for_training(saves_memory=True)
    print(fragmented - anon_mib())            # a run that saves memory gives the heap's free pages back first
"""


def _probe(mode: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"})
    return out.stdout.strip().splitlines()


@pytest.fixture(scope="module")
def collie_probe() -> list[str]:
    return _probe("collie")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_buffers_leave_resident_memory(collie_probe):
    assert float(_probe("default")[-1]) > 100  # the problem, as glibc behaves by default
    assert float(collie_probe[0]) < 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_run_that_saves_memory_starts_by_giving_back_the_heaps_free_pages(collie_probe):
    assert float(collie_probe[2]) > 80  # of the 100 MiB freed between long-lived blocks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_server_reuses_its_step_buffers_instead_of_faulting_them_in(collie_probe):
    as_loaded, serving = (int(n) for n in collie_probe[1].split()[::3])
    assert as_loaded > 50 * 400   # every 2 MiB buffer mapped afresh: 512 pages each
    assert serving < 1000


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_training_run_reuses_its_step_buffers_unless_it_saves_memory(collie_probe):
    saving_memory, fast = map(int, collie_probe[1].split()[1:3])
    assert saving_memory > 50 * 400
    assert fast < 1000


@pytest.mark.parametrize("settings, saves_memory", [([], False), (["checkpointing=full"], True),
                                                    (["optimizer.name=lomo"], True)])
def test_the_trainer_saves_host_memory_when_the_run_does(tmp_path, monkeypatch, settings, saves_memory):
    chosen = []
    monkeypatch.setattr(trainer_module, "for_training", lambda saves_memory: chosen.append(saves_memory))
    config = CollieConfig.load(None, ["max_steps=1", "logging=[]", *settings])
    records = [{"tokens": list(range(1, 9))} for _ in range(2)]
    Trainer(CollieModel.from_pretrained(save_tiny_hf_model(str(tmp_path / "tiny")), config=config), config,
            train_dataset=CollieDatasetForTraining(records)).train()
    assert chosen == [saves_memory]
