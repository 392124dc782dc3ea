"""The bench's CPU budget (bench/run.py): the floor a first sync's CPU and the sandbox's allow on
the machine's cores, with the sandbox's CPU read from /proc (bench/infra.py)."""

import os
import time

from bench.infra import process_cpu_seconds
from bench.run import cpu_budget

ROW = {
    "gateway": "0", "products": 1_000_000, "cores": 2.0,
    "baseline_fetch_post": {"seconds": 30.0, "cpu_seconds": 20.0, "sandbox_cpu_seconds": 25.0},
    "full_first_sync": {"seconds": 60.0, "cpu_seconds": 80.0, "sandbox_cpu_seconds": 20.0},
}


def test_a_process_cpu_is_read_from_proc_as_the_kernel_counts_it():
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    times = os.times()
    assert abs(process_cpu_seconds(os.getpid()) - (times.user + times.system)) < 0.05


def test_the_floor_is_the_sync_and_the_sandbox_cpu_over_the_cores():
    assert cpu_budget([ROW])[-1] == "| 0 | 1,000,000 | 2 | 20.0 + 25.0 | 80.0 + 20.0 = 100.0 | 50.0 | 45.0 | 60.0 |"


def test_no_floor_without_every_figure_nor_for_a_small_catalogue():
    for run in ("baseline_fetch_post", "full_first_sync"):
        for key in ("cpu_seconds", "sandbox_cpu_seconds"):
            older = {**ROW, run: {name: value for name, value in ROW[run].items() if name != key}}
            assert cpu_budget([older]) == []
    assert cpu_budget([{**ROW, "products": 10}]) == []
