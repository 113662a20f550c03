"""The benchmarks' own measuring instruments."""

import subprocess
import sys

from tools.bench_image import peak_rss_kib


def test_peak_memory_is_the_childs_own_not_its_parents():
    # A parent holding 1 GiB more than it needs starts a child: the child's peak must not include the parent's
    # (getrusage's ru_maxrss does: earlier tile benchmarks reported the parent's memory as the child's).
    ballast = bytearray(1 << 30)
    ballast[:: 1 << 12] = b"\x01" * len(ballast[:: 1 << 12])
    child = "from tools.bench_image import peak_rss_kib; print(peak_rss_kib())"
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, check=True)
    assert 0 < int(done.stdout) < (1 << 20)  # KiB: the child's own imports (torch) take about half a GiB
    assert peak_rss_kib() > (1 << 20)  # the parent's own peak does include its ballast
    del ballast
