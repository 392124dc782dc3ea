"""Writes to the state store made in a thread of their own, one after the other, in the order
they were asked for, while the threads that asked go on.

A publishing sync writes to the state store from many threads: each batch when it is sent and
when it ends, and every few batches the answers of thousands of records at once. SQLite takes one
writer at a time, so while a save held the lock every publishing thread waited on it, and the
gateway was sent nothing meanwhile (a 1M first sync's publishing threads spent a third of their
time so). Made behind, the writes queue instead; a write that fails makes the next call, or
`close`, raise its error, so the sync fails as it would have."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class WriteBehind:
    def __init__(self, name: str = "state-writes"):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queued: deque[Future] = deque()
        self._lock = threading.Lock()
        self._error: BaseException | None = None

    def __call__(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        """Queue `write(*args, **kwargs)` after every write queued before it; raises the error
        of an earlier write that failed (from any thread) instead."""
        with self._lock:
            self._raise_failed()
            future = self._pool.submit(write, *args, **kwargs)
            self._queued.append(future)
            return future

    def _raise_failed(self, *, wait: bool = False) -> None:
        while self._queued and (wait or self._queued[0].done()):
            error = self._queued.popleft().exception()
            self._error = self._error or error
        if self._error is not None:  # a new error each time: one raised in many threads would gather their frames
            raise StateWriteError(f"the state store did not take a write: {self._error}") from self._error

    def close(self) -> None:
        """Wait for every write queued; raise the first error among them."""
        self._pool.shutdown(wait=True)
        with self._lock:
            self._raise_failed(wait=True)

    def __enter__(self) -> WriteBehind:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, traceback: object) -> None:
        try:
            self.close()
        except StateWriteError as failed:
            if error is None:
                raise
            log.error("%s (while the sync was failing: %s)", failed, error)  # not raised over the first error


class StateWriteError(RuntimeError):
    """A write made behind failed; its error is the cause."""
