"""Following many in-flight batches at once: one poller asks about every batch that is due, all
together, on a schedule that learns how long the gateway takes.

A publisher thread submits a batch and calls `BatchWatcher.follow(batch_id)`, which blocks until
the poller sees the batch COMPLETED or FAILED. The poller keeps one estimate, `typical`: how long
batches take from submission to their end (a moving average of the midpoint between the last
answer that said "not yet" and the one that said "done"). A batch is first asked about when it
is expected to be done, then again at an interval that grows with its age (a quarter of it),
within [`min_interval`, `max_interval`]. Against a gateway that completes batches at once, the
first question comes sooner and sooner after the submission; against one that takes 150 ms, at
about 120 ms and then every 40 ms or so.

Due batches are asked about together, each question on a thread of its own, so sixteen batches
in flight cost one round trip of waiting, not sixteen, and one slow answer (a 429 waiting out
its `Retry-After` in the client's session) holds up only its own batch.
"""

from __future__ import annotations

import heapq
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ..errors import GatewayError
from .client import TERMINAL_STATUSES, BatchOutcome, GatewayClient


@dataclass(order=True)
class _Followed:
    due: float
    batch_id: str = field(compare=False)
    submitted: float = field(compare=False)
    pending_age: float = field(compare=False, default=0.0)  # its age when last seen not ended
    future: Future = field(compare=False, default_factory=Future)


class BatchWatcher:
    def __init__(
        self,
        gateway: GatewayClient,
        *,
        max_in_flight: int = 16,
        min_interval: float = 0.002,
        max_interval: float | None = None,
        batch_timeout: float | None = None,
    ):
        self.gateway = gateway
        self.min_interval = min_interval
        self.max_interval = max_interval if max_interval is not None else gateway.poll_interval_max
        self.batch_timeout = batch_timeout if batch_timeout is not None else gateway.batch_timeout
        self.typical: float | None = None  # seconds from submission to the end, averaged
        self.polls = 0  # questions asked
        self.peak_in_flight = 0  # the most batches followed at once
        self._due: list[_Followed] = []  # a heap by due time
        self._lock = threading.Condition()
        self._closed = False
        self._followed = 0
        self._askers = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="batch-poll")
        self._poller = threading.Thread(target=self._run, name="batch-watcher", daemon=True)
        self._poller.start()

    def follow(self, batch_id: str, submitted: float | None = None) -> BatchOutcome:
        """Block until the batch ends; its outcome, or the error that ended the following."""
        submitted = time.monotonic() if submitted is None else submitted
        with self._lock:
            if self._closed:
                raise GatewayError(f"stopped following batch {batch_id}: the watcher is closed")
            followed = _Followed(submitted + self._first_wait(), batch_id, submitted)
            heapq.heappush(self._due, followed)
            self._followed += 1
            self.peak_in_flight = max(self.peak_in_flight, self._followed)
            self._lock.notify()
        try:
            return followed.future.result()
        finally:
            with self._lock:
                self._followed -= 1

    def close(self) -> None:
        """Stop: every batch still followed ends its `follow` with an error (the gateway replays
        the batch under the same Idempotency-Key when the sync runs again)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._fail_queued(lambda followed: GatewayError(f"stopped following batch {followed.batch_id}"))
            self._lock.notify()
        self._poller.join()
        self._askers.shutdown(wait=True)  # questions under way end as "stopped following"

    def __enter__(self) -> BatchWatcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- the schedule ---------------------------------------------------------------
    def _first_wait(self) -> float:
        return self.min_interval if self.typical is None else max(self.min_interval, 0.8 * self.typical)

    def _next_wait(self, age: float) -> float:
        if self.typical is None:  # nothing learned yet: back off faster, by half the age
            return min(self.max_interval, max(self.min_interval, age / 2))
        return min(self.max_interval, max(self.min_interval, age / 4, self.typical / 4))

    def _learn(self, lifetime: float) -> None:
        self.typical = lifetime if self.typical is None else 0.8 * self.typical + 0.2 * lifetime

    # --- the poller -----------------------------------------------------------------
    def _run(self) -> None:
        sweep: list[_Followed] = []
        try:
            while True:
                with self._lock:
                    while not self._closed and (not self._due or self._due[0].due > time.monotonic()):
                        self._lock.wait(None if not self._due else self._due[0].due - time.monotonic())
                    if self._closed:
                        return
                    # everything due now, or about to be: asked about together
                    horizon = time.monotonic() + self.min_interval
                    sweep = []
                    while self._due and self._due[0].due <= horizon:
                        sweep.append(heapq.heappop(self._due))
                while sweep:
                    self._askers.submit(self._ask, sweep[-1])
                    sweep.pop()
        except BaseException as error:  # never leave a publisher waiting on a dead poller
            with self._lock:
                self._closed = True
                self._due.extend(sweep)  # taken for asking, never asked
                self._fail_queued(lambda followed: GatewayError(f"following batch {followed.batch_id} failed: {error!r}"))
            raise

    def _ask(self, followed: _Followed) -> None:
        try:
            answer = self.gateway.get_batch(followed.batch_id)
        except Exception as error:  # the publisher thread that follows this batch raises it
            followed.future.set_exception(error)
            return
        with self._lock:
            self.polls += 1
            age = time.monotonic() - followed.submitted
            if answer.batch_status in TERMINAL_STATUSES:
                # it ended somewhere between the last "not yet" and now
                self._learn((followed.pending_age + age) / 2)
                followed.future.set_result(answer)
            elif age > self.batch_timeout:
                followed.future.set_exception(GatewayError(
                    f"batch {followed.batch_id} still {answer.batch_status} after {self.batch_timeout:g}s"
                ))
            elif self._closed:
                followed.future.set_exception(GatewayError(f"stopped following batch {followed.batch_id}"))
            else:
                followed.pending_age = age
                followed.due = time.monotonic() + self._next_wait(age)
                heapq.heappush(self._due, followed)
                self._lock.notify()

    def _fail_queued(self, error) -> None:
        """With the lock held: end the following of every batch waiting for its next question."""
        for followed in self._due:
            followed.future.set_exception(error(followed))
        self._due.clear()
