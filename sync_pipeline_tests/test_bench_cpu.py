"""The bench's CPU accounting (bench/run.py): what a process has spent, read from /proc, and the
floor a first sync's CPU and the sandbox's allow on the machine's cores."""

import os
import subprocess
import sys
import time

from bench.run import cpu_budget, cpu_seconds


def test_a_process_cpu_is_read_as_the_kernel_counts_it_its_waited_for_children_included():
    busy = "import time\nend = time.process_time() + 0.2\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", busy], check=True)  # a child's CPU, waited for
    deadline = time.process_time() + 0.2
    while time.process_time() < deadline:  # and some of its own
        pass
    times = os.times()
    read = cpu_seconds(os.getpid())
    assert read is not None and times.children_user + times.children_system >= 0.15
    assert abs(read - (times.user + times.system + times.children_user + times.children_system)) < 0.05


def test_a_process_that_is_gone_has_no_cpu_to_read():
    gone = subprocess.Popen(["true"])
    gone.wait()  # reaped: its /proc entry is gone
    assert cpu_seconds(gone.pid) is None


def test_the_floor_is_the_sync_and_the_sandbox_cpu_over_the_cores():
    row = {
        "gateway": "0", "products": 1_000_000, "cores": 2.0,
        "baseline_fetch_post": {"seconds": 30.0, "cpu_seconds": 20.0, "sandbox_cpu_seconds": 25.0},
        "full_first_sync": {"seconds": 60.0, "cpu_seconds": 80.0, "sandbox_cpu_seconds": 20.0},
    }
    lines = cpu_budget([row])
    assert lines[-1] == "| 0 | 1,000,000 | 2 | 20.0 + 25.0 | 80.0 + 20.0 = 100.0 | 50.0 | 45.0 | 60.0 |"
    older = {**row, "full_first_sync": {"seconds": 60.0, "cpu_seconds": 80.0}}  # a run from before the sandbox's CPU
    assert cpu_budget([older]) == []
