"""Before and after: full syncs of N products, with the code of each given tree (a checkout or
`git worktree` of another commit), against one sandbox of this tree per gateway pace. Prints a
JSON line per (gateway, tree): the full first sync and the no-change full re-sync, each a whole
`sync-pipeline sync PRODUCT --mode full` process with its wall time and peak RSS.

    python -m bench.before_after 1000000 0,0.05-0.2 /tmp/before,.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sync_pipeline.sandbox.process import start_sandbox, stop


def measure(n: int, gateway: str, tree: Path) -> dict:
    sandbox, url = start_sandbox("--products", str(n), "--collections", "10", "--batch-seconds", gateway, timeout=1800)
    scratch = Path(tempfile.mkdtemp(prefix="before-after-"))
    try:
        (scratch / "dagster").mkdir()
        (scratch / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {**os.environ, "PYTHONPATH": str(tree), "SYNC_DATA_DIR": str(scratch / "data"),
               "DAGSTER_HOME": str(scratch / "dagster"), "PRODUCT_SERVICE_URL": url, "GATEWAY_URL": url}
        env.pop("SYNC_STATE_URL", None)
        out: dict = {"products": n, "gateway": gateway, "tree": str(tree)}
        for label in ("full_first_sync", "full_resync_unchanged"):
            done = subprocess.run([sys.executable, "-m", "bench.measure_sync", "sync", "PRODUCT", "--mode", "full"],
                                  env=env, cwd=tree, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
            out[label] = json.loads(lines[-1][6:]) if lines else {"error": done.stderr[-500:]}
        return out
    finally:
        stop(sandbox)
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    n, gateways, trees = int(sys.argv[1]), sys.argv[2].split(","), [Path(t).resolve() for t in sys.argv[3].split(",")]
    for gateway in gateways:
        for tree in trees:
            print(json.dumps(measure(n, gateway, tree)), flush=True)
