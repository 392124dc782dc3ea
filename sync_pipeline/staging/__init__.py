"""DuckDB scratch of one sync: load pages in bulk, dedupe, validate, diff against what the gateway holds.

The scratch itself (store.py: DuckDB, and the state store's columns) is imported when first
named, so that a process parsing records alone (parsing.py) loads neither."""

from importlib import import_module

from .changes import ChangedBatch, ChangedRecord
from .records import PageRows, listed_digest, listed_digests_of, parse_listed, rejection_reason, to_rows

_FROM_STORE = {
    "ListedIndex", "ListedSame", "Outcome", "PublishCheck", "StageCounts", "StagingStore", "Unsaved", "connect_scratch",
}

__all__ = [
    "ChangedBatch", "ChangedRecord", "ListedIndex", "ListedSame", "Outcome", "PageRows", "PublishCheck", "StageCounts", "StagingStore", "Unsaved",
    "connect_scratch", "listed_digest", "listed_digests_of", "parse_listed", "rejection_reason", "to_rows",
]


def __getattr__(name: str):
    if name in _FROM_STORE:
        return getattr(import_module(".store", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
