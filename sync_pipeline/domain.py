"""The vocabulary every layer shares: entity types, sync modes, sync statuses, trail events, windows."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


DEFAULT_MERCHANT = "default"
MERCHANT_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


def check_merchant_id(text: object) -> str:
    """A merchant id as CONTRACT §6 spells it, or ValueError saying what is wrong."""
    if not isinstance(text, str) or not MERCHANT_ID_PATTERN.fullmatch(text):
        raise ValueError(
            f"merchantId must be 1 to 40 of a-z, 0-9 and '-', starting with a letter or digit, not {str(text)[:60]!r}"
        )
    return text


class EntityType(str, enum.Enum):
    PRODUCT = "PRODUCT"
    COLLECTION = "COLLECTION"

    @property
    def path(self) -> str:
        """The product service's path segment: /products, /collections."""
        return {EntityType.PRODUCT: "products", EntityType.COLLECTION: "collections"}[self]

    @property
    def plural(self) -> str:
        return self.path

    @classmethod
    def parse(cls, text: str) -> "EntityType":
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown entity type {text!r}: expected PRODUCT or COLLECTION") from None


class SyncMode(str, enum.Enum):
    LATEST = "latest"
    FULL = "full"
    HISTORIC = "historic"


class SyncStatus(enum.Enum):
    """CONTRACT §4: (code, text) of a sync."""

    QUEUED = (1000, "Queued")
    IN_PROGRESS = (1100, "InProgress")
    SUCCESS = (2000, "Success")
    PARTIAL_SUCCESS = (2100, "PartialSuccess")
    FAILED = (4000, "Failed")
    SOURCE_UNAVAILABLE = (4100, "SourceUnavailable")
    GATEWAY_UNAVAILABLE = (4200, "GatewayUnavailable")
    DELETION_GUARD = (4300, "DeletionGuard")
    ABANDONED = (4900, "Abandoned")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def text(self) -> str:
        return self.value[1]

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_STATUSES

    @property
    def is_success(self) -> bool:
        return self in SUCCESS_STATUSES

    @classmethod
    def from_code(cls, code: int) -> "SyncStatus":
        for status in cls:
            if status.code == code:
                return status
        raise ValueError(f"unknown sync status code {code}")


class Event:
    """What happened to a record in a sync: the `event` column of its trail."""

    SEEN = "seen"  # a new valid version at the source
    REJECTED = "rejected"  # an invalid version, with the reason
    PUBLISHED = "published"  # the gateway applied this version (batch)
    REFUSED = "refused"  # the gateway refused it, with its reason (batch)
    PARKED = "parked"  # refused again at the same version: not sent until it changes
    FAILED = "failed"  # its batch FAILED or was never settled
    GONE = "gone"  # the product service answers 404
    DELETED = "deleted"  # the gateway deleted it (batch)
    # A version seen and published by the same sync, in one row of `record_events`: `event_at`
    # when it was published, `detail` when it was seen (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC); the
    # trail shows the two events (trail.py).
    SEEN_PUBLISHED = "seen+published"


ACTIVE_STATUSES = frozenset({SyncStatus.QUEUED, SyncStatus.IN_PROGRESS})
SUCCESS_STATUSES = frozenset({SyncStatus.SUCCESS, SyncStatus.PARTIAL_SUCCESS})


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_time(text: str) -> datetime:
    """The one parser of every time the CLI, the API and the sources give: ISO-8601, converted
    to UTC; a time without an offset is UTC; `z` counts as `Z`. Anything else, a time that
    does not exist in UTC (`0001-01-01T00:00:00+01:00`) included, is a ValueError saying so."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"not an ISO-8601 time: {text!r:.60}")
    cleaned = text.strip()
    if cleaned.endswith("z"):
        cleaned = cleaned[:-1] + "Z"
    try:
        value = datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {text!r:.60}") from None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError(f"{text!r:.60} is out of range in UTC") from None


def as_utc(value: datetime | None) -> datetime | None:
    """A time read back from a database, in UTC (SQLite gives it back without an offset)."""
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def format_time(value: datetime | None) -> str | None:
    """ISO-8601 UTC with a Z, as on the wire: 2024-05-01T00:00:00Z (microseconds kept if set)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    value = value.astimezone(timezone.utc)
    # not strftime: it does not pad years before 1000 on every platform
    text = f"{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    if value.microsecond:
        text += f".{value.microsecond:06d}"
    return text + "Z"


@dataclass(frozen=True)
class Window:
    """Records updated in [start, end); a None start means from the beginning."""

    start: datetime | None
    end: datetime

    def __post_init__(self) -> None:
        if self.start is not None and self.start >= self.end:
            raise ValueError(f"window start {format_time(self.start)} is not before end {format_time(self.end)}")


def resolve_window(
    mode: SyncMode,
    *,
    now: datetime,
    watermark: datetime | None,
    sync_to: datetime | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    lookback: timedelta = timedelta(0),
) -> tuple[SyncMode, Window]:
    """Turn a requested mode into the mode actually run and its window (CONTRACT §5).

    A latest sync with no earlier successful sync is a full one. A latest sync reads from the
    watermark less `lookback`, so a record a source committed late, with an `updatedAt` inside a
    window already synced, is still listed; the content-hash diff makes the overlap free.
    """
    if mode is SyncMode.HISTORIC:
        if start is None or end is None:
            raise ValueError("a historic sync needs both start and end")
        if end > now:
            raise ValueError(f"end {format_time(end)} is in the future")
        return mode, Window(start, end)
    upper = sync_to or now
    if upper > now:
        raise ValueError(f"syncTo {format_time(upper)} is in the future")
    if mode is SyncMode.LATEST and watermark is not None:
        if watermark >= upper:
            raise ValueError(
                f"syncTo {format_time(upper)} is not after the end of the last successful sync"
                f" ({format_time(watermark)})"
            )
        return mode, Window(max(watermark - lookback, EARLIEST) if lookback else watermark, upper)
    return SyncMode.FULL, Window(None, upper)


EARLIEST = datetime(1, 1, 2, tzinfo=timezone.utc)


def parse_duration(text: str) -> timedelta:
    """`10m`, `90s`, `2h`, `1d` or `0`: a duration as the settings give it."""
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text or "")
    if not match:
        raise ValueError(f"not a duration: {text!r:.40} (say 10m, 90s, 2h or 0)")
    number, unit = int(match.group(1)), match.group(2) or "s"
    return timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: number})
