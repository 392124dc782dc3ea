"""A batch to publish, as Arrow columns: its body, its key and its parts must be exactly what the
records given one by one make (ChangedRecord, idempotency_key), whatever the ids and JSON hold."""

import json

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_pipeline.domain import EntityType
from sync_pipeline.gateway import UPSERT_ENVELOPE, Operation, idempotency_key, idempotency_key_of
from sync_pipeline.staging import ChangedBatch, ChangedRecord, StagingStore, connect_scratch
from sync_pipeline.staging import store as staging_store
from sync_pipeline.staging.changes import SCHEMA

texts = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
records = st.lists(
    st.builds(
        lambda record_id, title, content, held: ChangedRecord(
            record_id, json.dumps({"id": record_id, "title": title}, ensure_ascii=False), content, held
        ),
        texts, texts, st.text("0123456789abcdef", min_size=1, max_size=32), st.none() | texts,
    ),
    max_size=12,
)


@settings(max_examples=200, deadline=None)
@given(records, st.data())
def test_a_batch_is_its_records_one_after_the_other(given_records, data):
    batch = ChangedBatch.of(given_records)
    assert list(batch) == given_records
    assert batch.records_json == ",".join(r.raw for r in given_records).encode()
    assert batch.fingerprints() == b"".join(b"\x00" + r.fingerprint.encode() for r in given_records)
    for merchant in ("default", "acme"):
        assert idempotency_key_of(EntityType.PRODUCT, Operation.UPSERT, batch.fingerprints(), merchant) == (
            idempotency_key(EntityType.PRODUCT, Operation.UPSERT, [r.fingerprint for r in given_records], merchant)
        )
    # any part of it (a split on 400 or 413) is the batch of that part of the records
    start = data.draw(st.integers(0, len(given_records)))
    stop = data.draw(st.integers(start, len(given_records)))
    part = batch[start:stop]
    assert list(part) == given_records[start:stop]
    assert part.records_json == ChangedBatch.of(given_records[start:stop]).records_json
    assert part.fingerprints() == ChangedBatch.of(given_records[start:stop]).fingerprints()
    # held inside the request's envelope, whole or in part: the request is the body as held
    inside = ChangedBatch.of_rows(_with_json(given_records), UPSERT_ENVELOPE)
    assert inside.body == b'{"operation":"UPSERT","records":[' + batch.records_json + b"]}"
    assert inside.records_json == batch.records_json and list(inside) == given_records
    assert inside[start:stop].body == b'{"operation":"UPSERT","records":[' + part.records_json + b"]}"
    assert list(inside[start:stop]) == given_records[start:stop]
    # rows read from the scratch come in chunks, at an offset into them
    rows = pa.concat_tables([ChangedBatch.of(given_records[:start]).table, ChangedBatch.of(given_records).table])
    as_read = pa.concat_tables([_with_json(given_records[:start]), _with_json(given_records)]).slice(start)
    assert list(ChangedBatch.of_rows(as_read)) == given_records
    assert rows.num_rows == len(given_records) + start


def _with_json(given_records):
    columns = list(zip(*given_records)) if given_records else [()] * 4
    return pa.table([pa.array(list(values), pa.string()) for values in columns], schema=SCHEMA)


def test_a_batch_is_parted_by_the_ids_the_gateway_refused():
    given_records = [ChangedRecord(i, f'{{"id":"{i}"}}', f"h{i}", None) for i in "abcde"]
    batch = ChangedBatch.of(given_records)
    accepted, refused = batch.partition({"b": "too long", "e": "blocked", "zz": "not in the batch"})
    assert [r.id for r in accepted] == ["a", "c", "d"] and [r.id for r in refused] == ["b", "e"]
    assert refused.content_hashes.to_pylist() == ["hb", "he"]
    everything, nothing = batch.partition({})
    assert len(everything) == 5 and len(nothing) == 0


def test_deletions_have_no_json_and_the_key_of_their_fingerprints():
    batch = ChangedBatch.deletions([("a", "h1"), ("b", None)])
    assert batch.records_json is None
    assert list(batch) == [ChangedRecord("a", None, "deleted", "h1"), ChangedRecord("b", None, "deleted", None)]
    assert batch.fingerprints() == b"\x00a:h1:deleted\x00b:None:deleted"
    assert batch[1:].id_list() == ["b"]


def test_batches_read_from_the_scratch_let_go_of_the_slice_they_were_cut_from(tmp_path, monkeypatch):
    """A batch's ids and hashes are its own buffers: outcomes keep them long after the JSON is
    sent, and a slice of the query's result would keep the whole result (its JSON too) alive.
    Slices of 700 records: batches of 1000 are made of two or three of them."""
    monkeypatch.setattr(staging_store, "SLICE_ROWS", 700)
    staging = StagingStore(connect_scratch(tmp_path / "s.duckdb"))
    staging.db.execute(
        "INSERT INTO fetched (seq, id, raw, content_hash) SELECT i, 'p' || i, '{\"id\":\"p' || i || '\"}', 'h' || i"
        " FROM range(2500) t(i)"
    )
    staging.db.execute("INSERT INTO known (record_id, source_hash, pending) SELECT id, content_hash, 1 FROM fetched")
    batches = list(staging.changed_since_publish(1000))
    assert [len(b) for b in batches] == [1000, 1000, 500]
    sent = [r.id for b in batches for r in b]  # their order: test_staging
    assert sorted(sent) == sorted(f"p{i}" for i in range(2500))
    assert b",".join(b.records_json for b in batches) == ",".join(f'{{"id":"{i}"}}' for i in sent).encode()
    for batch in batches:
        size = sum(buffer.size for column in batch.table.columns for chunk in column.chunks
                   for buffer in chunk.buffers() if buffer is not None)
        assert size < 32 * len(batch), "a batch's columns hold more than its own ids and hashes"


def test_a_sent_batch_lets_go_of_its_json_and_keeps_what_its_outcome_needs():
    batch = ChangedBatch.of([ChangedRecord(i, f'{{"id":"{i}"}}', f"h{i}", None) for i in "ab"])
    batch.let_go_of_json()
    assert batch.records_json is None
    assert list(batch) == [ChangedRecord("a", None, "ha", None), ChangedRecord("b", None, "hb", None)]
    assert batch.fingerprints() == b"\x00a:None:ha\x00b:None:hb"


@pytest.mark.parametrize("index", [-6, 5])
def test_a_record_out_of_the_batch_is_an_index_error(index):
    with pytest.raises(IndexError):
        ChangedBatch.of([ChangedRecord(i, "{}", "h", None) for i in "abcde"])[index]
