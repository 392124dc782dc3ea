"""Configuration from the environment, with the defaults of CONTRACT §5, in one place."""

from __future__ import annotations

import os
from pathlib import Path

from .domain import EntityType

SANDBOX_URL = "http://127.0.0.1:8765"
SANDBOX_PRODUCT_TOKEN = "sandbox-product-token"
SANDBOX_GATEWAY_TOKEN = "sandbox-gateway-token"
REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = {
    "PRODUCT_SERVICE_URL": SANDBOX_URL,
    "PRODUCT_SERVICE_TOKEN": SANDBOX_PRODUCT_TOKEN,
    "GATEWAY_URL": SANDBOX_URL,
    "GATEWAY_TOKEN": SANDBOX_GATEWAY_TOKEN,
    "SYNC_DATA_DIR": "data",
}


def env(name: str) -> str:
    """The variable's value, or its CONTRACT §5 default."""
    return os.environ.get(name) or DEFAULTS[name]


def data_dir() -> Path:
    path = Path(env("SYNC_DATA_DIR")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_url() -> str:
    return os.environ.get("SYNC_STATE_URL") or f"sqlite:///{data_dir() / 'state.db'}"


def staging_path(entity: EntityType) -> Path:
    """One DuckDB file per entity type, so both types can sync at the same time."""
    return data_dir() / f"{entity.plural}.duckdb"
