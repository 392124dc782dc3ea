"""Run one `sync-pipeline sync ...` in this process and print its wall time and peak RSS as JSON
(a process of its own per measurement, so peak memory is that sync's alone)."""

import json
import resource
import sys
import time

from sync_pipeline.cli import main

started = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("BENCH " + json.dumps({"exit": code, "seconds": round(seconds, 3), "peak_rss_mib": round(peak_mib, 1)}))
