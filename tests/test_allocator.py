"""fl_backdoor.allocator: freed training buffers stay in the process instead of going back to the OS."""

import subprocess
import sys

import pytest

from fl_backdoor.allocator import keep_freed_memory

PROBE = """
import ctypes, sys, torch
from fl_backdoor.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory
if sys.argv[1] == "on":
    assert keep_freed_memory()
else:  # glibc's initial thresholds (128 KiB), which earlier frees may already have raised in this process
    mallopt = ctypes.CDLL(None).mallopt
    assert mallopt(M_MMAP_THRESHOLD, 128 * 1024) and mallopt(M_TRIM_THRESHOLD, 128 * 1024)

def rss_mib():
    line = next(l for l in open("/proc/self/status") if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

torch.ones(1024).sum()  # torch's lazy start-up allocations are not what this measures
before = rss_mib()
buffer = torch.ones(4 * 2**20)  # 16 MiB, every page touched
del buffer
print(rss_mib() - before)
"""


def kept_mib(mode: str) -> float:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux") or not keep_freed_memory(), reason="needs glibc's mallopt")
def test_a_freed_16_mib_buffer_stays_resident_only_with_the_setting():
    assert kept_mib("off") < 4
    assert kept_mib("on") > 12
