"""DuckDB scratch of one sync: load pages in bulk, dedupe, validate, diff against what the gateway holds."""

from .records import PageRows, listed_digest, listed_digests_of, rejection_reason, to_rows
from .store import ChangedRecord, ListedIndex, ListedSame, Outcome, PublishCheck, StageCounts, StagingStore, connect_scratch

__all__ = [
    "ChangedRecord", "ListedIndex", "ListedSame", "Outcome", "PageRows", "PublishCheck", "StageCounts", "StagingStore",
    "connect_scratch", "listed_digest", "listed_digests_of", "rejection_reason", "to_rows",
]
