"""Start the sandbox as its own process on a free loopback port (for tests and benchmarks)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_sandbox(*args: str, timeout: float = 600) -> tuple[subprocess.Popen, str]:
    """`sync-pipeline sandbox` with `args` on a free port; returns the process and its URL
    once it answers /healthz (a large catalogue takes a while to generate)."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_pipeline.cli", "sandbox", "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"sandbox exited: {process.stderr.read().decode()}")
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"sandbox did not start in {timeout:.0f}s")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
