"""Run one `sync-pipeline sync ...` in this process and print its wall time and peak RSS as JSON
(a process of its own per measurement, so peak memory is that sync's alone), and the peak of
the largest child process it ran."""

import json
import resource
import sys
import time

from sync_pipeline.cli import main

started = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - started
peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
# the largest of the child processes it ran (SQLite's imports of large saves), apart
children_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print("BENCH " + json.dumps({
    "exit": code, "seconds": round(seconds, 3), "peak_rss_mib": round(peak_mib, 1),
    "children_peak_rss_mib": round(children_mib, 1),
}))
