"""The Sync API application as uvicorn serves it, configured from the environment."""

from __future__ import annotations

import logging
import os
import sys
import threading

from ..domain import EntityType
from ..settings import state_url
from ..state import StateStore, open_state_store
from .app import access_log, create_app


def _reaper():
    """Close syncs whose run died before a new one is queued (needs the Dagster instance,
    loaded on first use so the API starts fast)."""
    instance = None
    lock = threading.Lock()  # the first requests arrive together; the instance is made once

    def reap(store: StateStore, entity: EntityType, merchant: str) -> None:
        nonlocal instance
        from dagster import DagsterInstance

        from ..defs.runs import close_abandoned

        with lock:
            if instance is None:
                instance = DagsterInstance.get()
        close_abandoned(store, instance, entity, merchant)

    return reap


def _log_access_to_stdout() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


_log_access_to_stdout()
app = create_app(
    open_state_store(state_url()),
    reap=_reaper() if os.environ.get("DAGSTER_HOME") else None,
)
