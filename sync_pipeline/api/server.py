"""The Sync API application as uvicorn serves it, configured from the environment."""

from __future__ import annotations

import os
import threading

from ..domain import EntityType
from ..settings import state_url
from ..state import StateStore
from .app import create_app


def _reaper():
    """Close syncs whose run died before a new one is queued (needs the Dagster instance,
    loaded on first use so the API starts fast)."""
    instance = None
    lock = threading.Lock()  # the first requests arrive together; the instance is made once

    def reap(store: StateStore, entity: EntityType) -> None:
        nonlocal instance
        from dagster import DagsterInstance

        from ..defs.runs import close_abandoned

        with lock:
            if instance is None:
                instance = DagsterInstance.get()
        close_abandoned(store, instance, entity)

    return reap


app = create_app(
    StateStore(state_url()),
    write_token=os.environ.get("SYNC_API_TOKEN", ""),
    read_token=os.environ.get("SYNC_API_READ_TOKEN") or None,
    reap=_reaper() if os.environ.get("DAGSTER_HOME") else None,
)
