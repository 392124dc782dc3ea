"""Time a full first sync and a no-change re-sync of N products through the real CLI,
against a sandbox on loopback, each in a fresh data dir and Dagster instance.

    python -m bench.full_sync 5000 100000
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_sandbox(products: int) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_pipeline.cli", "sandbox", "--port", str(port), "--products", str(products)],
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("sandbox did not start")


def _timed_sync(env: dict, *args: str) -> dict:
    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    done = subprocess.run(
        [sys.executable, "-m", "sync_pipeline.cli", "sync", "PRODUCT", *args],
        env=env, capture_output=True, text=True,
    )
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"sync failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}")
    summary = [line for line in done.stdout.splitlines() if line.startswith("PRODUCT: 2")][-1]
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"wall_seconds": round(seconds, 2), "summary": summary, "peak_rss_mib_max_so_far": round(max(before, peak_kib) / 1024, 1)}


def measure(products: int) -> dict:
    sandbox, url = _start_sandbox(products)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            home = Path(tmp) / "dagster"
            home.mkdir()
            (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
            env = {
                **os.environ,
                "SYNC_DATA_DIR": str(Path(tmp) / "data"),
                "DAGSTER_HOME": str(home),
                "PRODUCT_SERVICE_URL": url,
                "GATEWAY_URL": url,
            }
            env.pop("SYNC_STATE_URL", None)
            full = _timed_sync(env, "--mode", "full")
            again = _timed_sync(env, "--mode", "full")
        full["records_per_second"] = round(products / full["wall_seconds"])
        return {"products": products, "full_first_sync": full, "full_resync_nothing_changed": again}
    finally:
        sandbox.terminate()
        sandbox.wait()


def main(argv: list[str]) -> None:
    sizes = [int(a) for a in argv] or [5000, 100_000]
    results = [measure(n) for n in sizes]
    out = ROOT / "bench" / "results" / "full_sync.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'products':>9} {'full sync s':>12} {'records/s':>10} {'re-sync s':>10}")
    for r in results:
        print(f"{r['products']:>9} {r['full_first_sync']['wall_seconds']:>12} {r['full_first_sync']['records_per_second']:>10} {r['full_resync_nothing_changed']['wall_seconds']:>10}")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main(sys.argv[1:])
