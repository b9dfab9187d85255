"""collie gives freed host memory back to the OS (glibc's growing mmap threshold otherwise
keeps freed multi-MiB buffers resident), and asks for huge pages so fresh buffers fault in
cheaply."""

import os
import subprocess
import sys

import pytest

PROBE = """
import sys, torch
def anon_mib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
if sys.argv[1] == "collie":
    from collie.host_memory import return_freed_memory_to_os
    assert return_freed_memory_to_os()
freed = torch.ones(4 * 2**20); del freed   # a 16 MiB block freed: glibc's threshold grows to it
start = anon_mib()
buffers, small = [], []
for _ in range(20):
    buffers.append(torch.ones(2 * 2**20))  # 8 MiB each, as activation buffers
    small.append(torch.ones(1000))         # something long-lived after each of them
del buffers
print(anon_mib() - start)
"""


def _retained_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"})
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_freed_buffers_leave_resident_memory():
    assert _retained_mib("default") > 100  # the problem, as glibc behaves by default
    assert _retained_mib("collie") < 10


HUGE_PAGES_PROBE = """
import collie, torch
block = torch.empty(8 * 2**20, dtype=torch.uint8)   # a buffer as large as a few activations
address, flags = block.data_ptr(), None
for line in open("/proc/self/smaps"):
    fields = line.split()
    if "-" in fields[0] and len(fields) > 4:
        start, end = (int(x, 16) for x in fields[0].split("-"))
        inside = start <= address < end
    elif fields[0] == "VmFlags:" and inside:
        flags = fields[1:]
print("hg" in flags)
"""


def _advised_huge(env_value: str | None) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if env_value is not None:
        env["THP_MEM_ALLOC_ENABLE"] = env_value
    out = subprocess.run([sys.executable, "-c", HUGE_PAGES_PROBE], capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux's memory map")
def test_large_buffers_ask_for_huge_pages_unless_the_user_says_no():
    """Importing collie makes PyTorch advise huge pages for its large buffers (the VMA's `hg`
    flag: fresh mappings fault in 2 MiB at a time); THP_MEM_ALLOC_ENABLE=0 keeps them off."""
    assert _advised_huge(None)
    assert not _advised_huge("0")
