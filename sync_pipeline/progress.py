"""How far a sync has got, for whoever watches: the run's log, and a progress bar when the
`sync` command runs on a terminal. The pipeline reports; listeners in the same process look."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ProgressEvent:
    phase: str  # "fetching" or "publishing"
    pages: int = 0
    records: int = 0  # fetched (fetching) or published (publishing)
    batches: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        if self.phase == "fetching":
            return f"{self.pages} pages, {self.records:,} records, {self.rate:,.0f} records/s"
        return f"{self.batches} batches settled, {self.records:,} records published"


Listener = Callable[[ProgressEvent], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def report(event: ProgressEvent) -> None:
    for listener in list(_listeners):
        listener(event)
