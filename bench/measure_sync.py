"""Run one `sync-pipeline sync ...` in this process and print its wall time, CPU time (its own and
its children's: the state store's imports) and peak RSS as JSON (a process of its own per
measurement, so peak memory is that sync's alone)."""

import json
import resource
import sys
import time

from sync_pipeline.cli import main

started = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - started
own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
print("BENCH " + json.dumps(
    {"exit": code, "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "peak_rss_mib": round(own.ru_maxrss / 1024, 1)}
))
