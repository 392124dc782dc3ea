"""What publishing sends: the records the gateway is owed, a batch at a time, as Arrow columns
and one run of JSON bytes, with no Python object per record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, overload

import numpy as np
import pyarrow as pa

DELETED = "deleted"  # the content hash of a deletion
# what changed_since_publish reads for each record, in the order sent
SCHEMA = pa.schema([(name, pa.string()) for name in ("id", "raw", "content_hash", "held_hash")])
COLUMNS = ("id", "content_hash", "held_hash")  # what a batch keeps as columns
# The allocator of what batches are made of: Arrow's default (mimalloc) kept what they freed,
# 14 MiB more on a 1M first sync's peak
POOL = pa.system_memory_pool()
NO_ENVELOPE = (b"", b"")


class ChangedRecord(NamedTuple):
    id: str
    raw: str | None  # the JSON to send; None for a deletion, or once sent
    content_hash: str
    published_hash: str | None  # what the gateway holds (held_hash), None for nothing

    @property
    def fingerprint(self) -> str:
        return f"{self.id}:{self.published_hash}:{self.content_hash}"


class ChangedBatch(Sequence[ChangedRecord]):
    """Records in the order they are sent: ids and hashes as an Arrow table (COLUMNS), and for
    upserts, until they are sent, their JSON as one UTF-8 string joined by commas (the inside of
    the request's `records` array), with where each record ends in it. A sequence of
    `ChangedRecord`s, each made when asked for. A first sync of a million records used to make a
    million Python tuples (and four million strings) only to join them into bodies and keys.

    The JSON is held inside an `envelope` (what comes before and after it in the request,
    `gateway.UPSERT_ENVELOPE`), in one buffer: the request goes out as `body`, not as one more
    copy of the records' JSON (a megabyte a batch being sent; a 1M first sync peaked about 5 MiB
    lower so)."""

    __slots__ = ("table", "_text", "_envelope", "_ends")

    def __init__(
        self, table: pa.Table, records_json: bytes | memoryview | None = None, ends: np.ndarray | None = None,
        envelope: tuple[bytes, bytes] = NO_ENVELOPE,
    ):
        self.table = table
        # None for deletions, and once sent (`let_go_of_json`)
        self._text = None if records_json is None else b"".join((envelope[0], records_json, envelope[1]))
        self._envelope = envelope
        self._ends = ends  # the end of each record's JSON in records_json (a comma or the end follows)

    @classmethod
    def of_rows(cls, rows: pa.Table, envelope: tuple[bytes, bytes] = NO_ENVELOPE) -> ChangedBatch:
        """From rows of SCHEMA: their JSON joined here (in Arrow) between `envelope`'s two parts,
        the rest kept as columns of their own (`copied`): a batch is kept until its outcome is
        folded, well after its JSON is sent."""
        raw = rows.column("raw").combine_chunks(memory_pool=POOL)
        if raw.null_count:
            raise ValueError("a record to send has no JSON")
        offsets = np.frombuffer(raw.buffers()[1], dtype=np.int32)[raw.offset : raw.offset + len(raw) + 1]
        ends = offsets[1:] - offsets[0] + np.arange(len(raw))  # a comma after each record but the last
        columns = copied(rows.select(COLUMNS))
        return cls(columns, memoryview(_joined_buffer(raw, ",")), ends, envelope)

    @classmethod
    def of(cls, records: Sequence[ChangedRecord]) -> ChangedBatch:
        """From records given one by one (a test, a few)."""
        columns = list(zip(*records)) if records else [()] * len(SCHEMA)
        return cls.of_rows(pa.table([pa.array(list(values), pa.string()) for values in columns], schema=SCHEMA))

    @classmethod
    def deletions(cls, held: Sequence[tuple[str, str | None]]) -> ChangedBatch:
        """Deletions of these records, given as (id, hash held)."""
        ids, hashes = [record_id for record_id, _ in held], [held_hash for _, held_hash in held]
        return cls(pa.table(
            [pa.array(ids, pa.string()), pa.array([DELETED] * len(ids), pa.string()), pa.array(hashes, pa.string())],
            names=list(COLUMNS),
        ))

    @property
    def records_json(self) -> memoryview | None:
        """The records' JSON joined by commas (a view of `body`), or None: a deletion, or sent."""
        if self._text is None:
            return None
        return memoryview(self._text)[len(self._envelope[0]) : len(self._text) - len(self._envelope[1])]

    @property
    def body(self) -> bytes | None:
        """`records_json` with `envelope` before and after it, or None."""
        return self._text

    def __len__(self) -> int:
        return self.table.num_rows

    @overload
    def __getitem__(self, index: int) -> ChangedRecord: ...
    @overload
    def __getitem__(self, index: slice) -> ChangedBatch: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("a batch is sliced in one piece")
            stop = max(start, stop)
            records_json = self.records_json
            if records_json is None:
                return ChangedBatch(self.table.slice(start, stop - start))
            first, last = self._start(start), self._start(stop) - 1
            return ChangedBatch(
                self.table.slice(start, stop - start), records_json[first:max(first, last)],
                self._ends[start:stop] - first, self._envelope,
            )
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        record_id, content_hash, held_hash = (self.table.column(name)[index].as_py() for name in COLUMNS)
        raw = None
        if self._text is not None:
            before = len(self._envelope[0])
            raw = self._text[before + self._start(index) : before + int(self._ends[index])].decode()
        return ChangedRecord(record_id, raw, content_hash, held_hash)

    def let_go_of_json(self) -> None:
        """Once the gateway has the batch: it is followed, and its outcome folded, by ids and
        hashes only. In place, for whoever else holds the batch (the pool's work item, the loop
        that made it) until it is followed to its end."""
        self._text = self._ends = None

    def _start(self, index: int) -> int:
        """Where record `index`'s JSON starts in records_json (len + 1 for one past the last)."""
        return 0 if index == 0 else int(self._ends[index - 1]) + 1

    @property
    def ids(self) -> pa.ChunkedArray:
        return self.table.column("id")

    @property
    def content_hashes(self) -> pa.ChunkedArray:
        return self.table.column("content_hash")

    def id_list(self) -> list[str]:
        return self.ids.to_pylist()

    def fingerprints(self) -> bytes:
        """Each record's `ChangedRecord.fingerprint`, UTF-8, each after a NUL byte: what
        `idempotency_key` hashes after the batch's scope."""
        if not len(self):
            return b""
        pc = _compute()
        held, content = (
            pc.coalesce(self.table.column(name), "None", memory_pool=POOL) for name in ("held_hash", "content_hash")
        )
        fingerprints = pc.binary_join_element_wise(self.ids, held, content, ":", memory_pool=POOL)
        return b"".join((b"\x00", _joined_buffer(fingerprints, "\x00")))

    def partition(self, refused: set[str] | dict[str, str]) -> tuple[ChangedBatch, ChangedBatch]:
        """(the records whose id is not in `refused`, those whose id is), ids and hashes only."""
        if not refused:
            return ChangedBatch(self.table), ChangedBatch(self.table.slice(0, 0))
        pc = _compute()
        named = pc.is_in(self.ids, value_set=pa.array(list(refused), pa.string()), memory_pool=POOL)
        return ChangedBatch(self.table.filter(pc.invert(named, memory_pool=POOL))), ChangedBatch(self.table.filter(named))


def _compute():
    """pyarrow.compute, imported when first used: 8 MiB and about 80 ms that a sync with nothing
    to send does without."""
    import pyarrow.compute

    return pyarrow.compute


def copied(rows: pa.Table) -> pa.Table:
    """`rows` in buffers of their own. A slice keeps every buffer of the record batch it is cut
    from alive: an Arrow import (DuckDB's result) holds the exporter's batch whole."""
    return _compute().take(rows, np.arange(rows.num_rows), memory_pool=POOL)


def _joined_buffer(strings: pa.ChunkedArray | pa.Array, separator: str) -> pa.Buffer | bytes:
    """`separator.join(strings).encode()`, in Arrow: its buffer (or b"" for none)."""
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks(memory_pool=POOL)
    if not len(strings):
        return b""
    one_list = pa.ListArray.from_arrays(pa.array([0, len(strings)], pa.int32()), strings, pool=POOL)
    joined = _compute().binary_join(one_list, separator, memory_pool=POOL)
    if joined.null_count:
        raise ValueError("a value to join is null")
    # the data buffer of the one value, from its offsets (a slice of the buffer is not a copy)
    start, stop = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset : joined.offset + 2]
    return joined.buffers()[2].slice(int(start), int(stop - start))
