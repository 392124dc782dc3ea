"""Start the sandbox on a free loopback port, as its own process or in a thread of this one
(for tests and benchmarks)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import requests

if TYPE_CHECKING:
    import uvicorn
    from starlette.applications import Starlette

    from .app import SandboxConfig


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


@dataclass
class ThreadedSandbox:
    url: str
    app: Starlette  # app.state.sandbox is the Sandbox, for looking inside
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        """Shut down as the process would (the state file is written)."""
        self.server.should_exit = True
        self.thread.join(30)


def start_in_thread(config: SandboxConfig, timeout: float = 60) -> ThreadedSandbox:
    """The sandbox with any `config` (the command line need not expose it) served by uvicorn
    in a thread of this process, once it answers /healthz."""
    import uvicorn

    from .app import create_app

    app = create_app(config)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name=f"sandbox-{port}", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise RuntimeError("sandbox thread exited")
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return ThreadedSandbox(url, app, server, thread)
        except requests.ConnectionError:
            time.sleep(0.02)
    server.should_exit = True
    raise RuntimeError(f"sandbox did not start in {timeout:.0f}s")
