"""Fixtures: the real sandbox on a free loopback port, a temporary data dir and Dagster
instance, and state stores on SQLite and on the PostgreSQL server at 127.0.0.1:5432."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from sync_pipeline.sandbox.process import free_port  # noqa: F401  (tests import it from here)
from sync_pipeline.sandbox.process import start_sandbox as start_sandbox_process
from sync_pipeline.sandbox.process import stop as stop_process
from sync_pipeline.settings import SANDBOX_GATEWAY_TOKEN, SANDBOX_PRODUCT_TOKEN
from sync_pipeline.state import StateStore

PG_ADMIN_URL = os.environ.get("SYNC_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@dataclass
class Sandbox:
    url: str
    process: subprocess.Popen

    def admin(self, method: str, path: str, **kwargs) -> dict:
        response = requests.request(method, f"{self.url}/_admin{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()

    def source(self, kind: str) -> dict:
        return self.admin("GET", f"/source/{kind}")

    def gateway(self, entity_type: str) -> dict[str, dict]:
        return self.admin("GET", f"/gateway/{entity_type}")["records"]

    def stats(self) -> dict:
        return self.admin("GET", "/stats")


def start_sandbox(*args: str) -> Sandbox:
    process, url = start_sandbox_process(*args, timeout=60)
    return Sandbox(url, process)


@dataclass
class ApiServer:
    url: str  # base path included
    process: subprocess.Popen


OPERATOR_TOKEN = "operator-token-0123456789"
SECRET_KEY = "a-test-secret-key-of-at-least-32-characters"


def start_api(
    state_url: str, dagster_home: Path, write: str = "write-token", read: str = "read-token", log: Path | None = None
) -> ApiServer:
    """`sync-pipeline api` as its own process on a free port, over `state_url`, with the
    operator token; its access log goes to `log` if given."""
    port = free_port()
    env = {
        **os.environ,
        "SYNC_STATE_URL": state_url,
        "SYNC_API_TOKEN": write,
        "SYNC_API_READ_TOKEN": read,
        "SYNC_OPERATOR_TOKEN": OPERATOR_TOKEN,
        "SYNC_SECRET_KEY": SECRET_KEY,
        "DAGSTER_HOME": str(dagster_home),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "sync_pipeline.cli", "api", "--port", str(port)],
        env=env, stdout=log.open("ab") if log else subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"API exited: {process.stderr.read().decode()}")
        try:
            if requests.get(f"{root}/healthz", timeout=1).ok:
                return ApiServer(f"{root}/product-gateway/v1", process)
        except requests.ConnectionError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("API did not start in 60s")


def dagster_home(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return path


def stop_sandbox(sandbox: Sandbox) -> None:
    stop_process(sandbox.process)


@pytest.fixture
def sandbox():
    """A fresh sandbox (default catalogue: 5,000 products, 200 collections) for one test."""
    box = start_sandbox()
    yield box
    stop_sandbox(box)


@pytest.fixture
def slow_gateway():
    """The sandbox in a thread of this process, with 600 products, whose gateway takes 100 to
    200 ms over each batch."""
    from sync_pipeline.sandbox.app import SandboxConfig
    from sync_pipeline.sandbox.process import start_in_thread

    sandbox = start_in_thread(SandboxConfig(products=600, collections=2, queue_delay=0, process_delay=0.1,
                                            process_delay_max=0.2))
    yield sandbox
    sandbox.stop()


@pytest.fixture(scope="session")
def shared_sandbox():
    """A sandbox for tests that only read from it."""
    box = start_sandbox("--products", "2500", "--collections", "50")
    yield box
    stop_sandbox(box)


@pytest.fixture
def sync_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: Sandbox) -> Path:
    """Environment of a sync against `sandbox`: fresh data dir and Dagster instance."""
    home = dagster_home(tmp_path / "dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("SYNC_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("SYNC_STATE_URL", raising=False)
    monkeypatch.setenv("PRODUCT_SERVICE_URL", sandbox.url)
    monkeypatch.setenv("PRODUCT_SERVICE_TOKEN", SANDBOX_PRODUCT_TOKEN)
    monkeypatch.setenv("GATEWAY_URL", sandbox.url)
    monkeypatch.setenv("GATEWAY_TOKEN", SANDBOX_GATEWAY_TOKEN)
    return tmp_path


def _postgres_available() -> bool:
    try:
        engine = sa.create_engine(PG_ADMIN_URL)
        with engine.connect():
            pass
        engine.dispose()
        return True
    except Exception:
        return False


@pytest.fixture
def postgres_url():
    """A PostgreSQL database of this test's own, dropped afterwards."""
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}")
        pytest.skip("PostgreSQL is not reachable")
    name = f"sync_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def state_store(request, tmp_path: Path):
    """The state store on each backend it supports."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    store = StateStore(url)
    yield store
    store.dispose()
