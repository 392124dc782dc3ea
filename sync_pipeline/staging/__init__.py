"""DuckDB scratch of one sync: load pages in bulk, dedupe, validate, diff against what the gateway holds."""

from .changes import ChangedBatch, ChangedRecord
from .records import PageRows, listed_digest, listed_digests_of, parse_listed, rejection_reason, to_rows
from .store import ListedIndex, ListedSame, Outcome, PublishCheck, StageCounts, StagingStore, Unsaved, connect_scratch

__all__ = [
    "ChangedBatch", "ChangedRecord", "ListedIndex", "ListedSame", "Outcome", "PageRows", "PublishCheck", "StageCounts", "StagingStore", "Unsaved",
    "connect_scratch", "listed_digest", "listed_digests_of", "parse_listed", "rejection_reason", "to_rows",
]
