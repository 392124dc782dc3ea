"""Pure functions on source records: the validation rules of CONTRACT §2 and page -> columns."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from ..domain import EntityType, format_time, parse_time
from ..jsontext import NumberOutOfRange, canonical_json, loads

# The columns of a chunk of `PageRows` as one bulk load into the staging table `fetched` takes them.
FETCHED_SCHEMA = pa.schema(
    [
        ("seq", pa.int64()),
        ("id", pa.string()),
        ("updated_at", pa.string()),  # as sent; DuckDB parses it in bulk (validity was checked in Python)
        ("raw", pa.large_binary()),  # UTF-8, decoded by DuckDB
        ("reason", pa.string()),
        ("listed_hash", pa.string()),
    ]
)


def rejection_reason(entity: EntityType, record: Any, updated_at: datetime | None = None) -> str | None:
    """Why `record` cannot be published, or None when it is valid. Never raises. `updated_at`:
    its updatedAt already parsed, if it was."""
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    record_id = record.get("id")
    if not isinstance(record_id, str) or not record_id.strip():
        return "id is missing or not a non-empty string"
    title = record.get("title")
    if not isinstance(title, str) or not title.strip():
        return "title is missing or not a non-empty string"
    if (updated_at or parsed_updated_at(record.get("updatedAt"))) is None:
        return f"updatedAt is missing or not a time: {record.get('updatedAt')!r:.60}"
    if entity is EntityType.PRODUCT:
        price = record.get("listPrice")
        if isinstance(price, bool) or not isinstance(price, int):
            return f"listPrice is not an integer: {price!r:.60}"
        if price < 0:
            return f"listPrice is negative: {price}"
    return None


# The key of every listed hash: change it whenever validation or the canonical text changes
# (or the hash), so that the next full sync parses every record again instead of trusting what
# it decided before. Rules 2: BLAKE2b keyed with this text, where rules 1 was md5 of it and the
# bytes (BLAKE2b takes two thirds of md5's time on a record of 400 bytes, a million a sync).
# A BLAKE2b key holds at most 64 bytes.
LISTED_RULES = b"sync_pipeline listed records, rules 2\n"
assert len(LISTED_RULES) <= 64


def listed_digest(raw: bytes) -> bytes:
    """The 16-byte BLAKE2b of a record's bytes as the source listed them, keyed with LISTED_RULES:
    the same bytes are the same record, so they validate and hash the same as when they were
    last parsed."""
    return hashlib.blake2b(raw, digest_size=16, key=LISTED_RULES).digest()


_KEYED = hashlib.blake2b(digest_size=16, key=LISTED_RULES)


def listed_digests_of(raws: list) -> list[bytes]:
    """`listed_digest` of each, the same digests made faster: each copies a hash already keyed
    (0.76 µs a record of 420 bytes, against 0.97 µs keying each anew: 0.2 s of a million)."""
    digests = []
    for raw in raws:
        keyed = _KEYED.copy()
        keyed.update(raw)
        digests.append(keyed.digest())
    return digests


def _for_duckdb(text: str, parsed: datetime) -> str:
    """The time DuckDB is to store: the text as sent when it is plain UTC (`...Z`, which DuckDB
    reads as Python does), else the parsed time written so (any offset, a lowercase `z`)."""
    if text.endswith("Z") and len(text) in (20, 24, 27) and text[10] == "T":
        return text
    return format_time(parsed)


def parsed_updated_at(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError):
        return None


def _is_unicode(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class PageRows:
    """Columns ready for one bulk load into the staging table `fetched`.

    The canonical JSON of the records goes end to end into one buffer, `raw`, as Arrow lays out
    a binary column: each record's bytes object is freed at once. orjson's bytes hold 4 KiB
    whatever their length (orjson 3.13): a chunk of 10,000 records of 400 bytes kept as
    objects held 40 MiB of the process's memory, as one buffer it holds 4."""

    seq: list[int] = field(default_factory=list)
    id: list[str | None] = field(default_factory=list)
    updated_at: list[str | None] = field(default_factory=list)  # as sent, when it parses
    raw: bytearray = field(default_factory=bytearray)  # canonical JSON, UTF-8, record after record
    raw_ends: list[int] = field(default_factory=list)  # where each record's JSON ends in `raw`
    reason: list[str | None] = field(default_factory=list)
    listed: list[str | None] = field(default_factory=list)  # hash of the bytes listed, when known (`listed_hash`)

    def __len__(self) -> int:
        return len(self.seq)

    def add_raw(self, raw: bytes) -> None:
        self.raw += raw
        self.raw_ends.append(len(self.raw))

    def raw_of(self, index: int) -> bytes:
        """The canonical JSON of the record at `index`."""
        start = self.raw_ends[index - 1] if index > 0 else 0
        return bytes(self.raw[start : self.raw_ends[index]])

    def raw_column(self) -> pa.Array:
        """`raw` as an Arrow large binary column, without a copy."""
        offsets = np.zeros(len(self.raw_ends) + 1, dtype=np.int64)
        offsets[1:] = self.raw_ends
        return pa.Array.from_buffers(
            pa.large_binary(), len(self.raw_ends), [None, pa.py_buffer(offsets), pa.py_buffer(self.raw)]
        )

    @property
    def rejected(self) -> int:
        return sum(reason is not None for reason in self.reason)

    def table(self) -> pa.Table:
        """The rows as one Arrow table of FETCHED_SCHEMA."""
        return pa.Table.from_pydict(
            {"seq": self.seq, "id": self.id, "updated_at": self.updated_at, "raw": self.raw_column(),
             "reason": self.reason, "listed_hash": self.listed},
            schema=FETCHED_SCHEMA,
        )


def to_rows(
    entity: EntityType, records: list[Any], first_seq: int, rows: PageRows | None = None, *,
    seqs: list[int] | None = None, listed: list[str] | None = None,
) -> PageRows:
    """Append one page of records to `rows` as columns: numbered from `first_seq`, or by `seqs`;
    `listed`, each record's `listed_hash(bytes)`, when parsed from its own bytes.

    The raw JSON is re-encoded with sorted keys so that the content hash does not change when
    only the key order does; every field, known or not, is kept.
    """
    rows = rows if rows is not None else PageRows()
    for offset, record in enumerate(records):
        is_object = isinstance(record, dict)
        # parsed once, here: the time DuckDB stores is the one validation read, in UTC
        updated_at = parsed_updated_at(record.get("updatedAt")) if is_object else None
        record_id = record.get("id") if is_object else None
        record_id = record_id if isinstance(record_id, str) and record_id else None
        try:
            raw = canonical_json(record)
            reason = rejection_reason(entity, record, updated_at)
        except NumberOutOfRange as error:  # this record cannot go out as it is; the page can
            raw, reason = canonical_json(record, strict=False), str(error)
        except RecursionError:
            raw, reason = b"", "nested too deeply to be read"
        except UnicodeEncodeError:  # a lone surrogate (\ud800), which only the exact parser lets through
            raw = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()  # escaped as it came
            reason = "holds text that is not Unicode (an unpaired surrogate such as \\ud800)"
            record_id = record_id if record_id and _is_unicode(record_id) else None
        rows.seq.append(first_seq + offset if seqs is None else seqs[offset])
        rows.id.append(record_id)
        rows.updated_at.append(_for_duckdb(record["updatedAt"], updated_at) if updated_at else None)
        rows.add_raw(raw)
        rows.reason.append(reason)
    rows.listed.extend(listed if listed is not None else [None] * len(records))
    return rows


def parse_listed(
    entity: EntityType, raws: list, seqs: list[int], hashes: list[str], rows: PageRows | None = None
) -> PageRows:
    """Parse each listed record from the bytes the source sent and append it to `rows` (see
    `to_rows`), numbered by `seqs`, with `hashes`, the hex `listed_digest` of each one's bytes."""
    return to_rows(entity, [loads(raw) for raw in raws], 0, rows, seqs=seqs, listed=hashes)
