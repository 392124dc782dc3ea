"""Validation rules of CONTRACT §2 and page -> column conversion, as pure functions."""

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_pipeline.domain import EntityType
from sync_pipeline.staging import rejection_reason, to_rows

PRODUCT = {"id": "p1", "title": "Café", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1299}
COLLECTION = {"id": "c1", "title": "Picks", "updatedAt": "2025-03-01T10:00:00Z", "productIds": ["p1"]}


def test_a_complete_product_is_valid():
    assert rejection_reason(EntityType.PRODUCT, PRODUCT) is None


def test_a_collection_needs_no_price():
    assert rejection_reason(EntityType.COLLECTION, COLLECTION) is None


@pytest.mark.parametrize(
    "change, reason_part",
    [
        ({"id": ""}, "id"),
        ({"id": 7}, "id"),
        ({"title": "   "}, "title"),
        ({"title": None}, "title"),
        ({"updatedAt": "last Tuesday"}, "updatedAt"),
        ({"updatedAt": None}, "updatedAt"),
        ({"listPrice": -1}, "negative"),
        ({"listPrice": "12.99"}, "listPrice"),
        ({"listPrice": 12.5}, "listPrice"),
        ({"listPrice": True}, "listPrice"),
    ],
)
def test_a_product_breaking_a_rule_is_rejected_with_the_reason(change, reason_part):
    assert reason_part in rejection_reason(EntityType.PRODUCT, {**PRODUCT, **change})


def test_a_missing_field_is_rejected():
    record = dict(PRODUCT)
    del record["title"]
    assert "title" in rejection_reason(EntityType.PRODUCT, record)


def test_a_non_object_is_rejected():
    assert "not a JSON object" in rejection_reason(EntityType.PRODUCT, ["p1"])


def test_rows_keep_unknown_fields_and_sort_keys():
    record = {"zeta": {"b": 1, "a": [1, {"y": 2, "x": 1}]}, **PRODUCT, "x-extra": None}
    rows = to_rows(EntityType.PRODUCT, [record], first_seq=10)
    assert rows.seq == [10]
    assert rows.id == ["p1"]
    assert rows.reason == [None]
    assert orjson.loads(rows.raw_of(0)) == record
    assert list(orjson.loads(rows.raw_of(0))) == sorted(record)


def test_rows_of_a_rejected_record_keep_its_raw_json_and_reason():
    record = {**PRODUCT, "listPrice": -5}
    rows = to_rows(EntityType.PRODUCT, [record], first_seq=0)
    assert rows.rejected == 1
    assert orjson.loads(rows.raw_of(0)) == record
    assert "negative" in rows.reason[0]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
records = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "id": json_values | st.text(),
            "title": json_values | st.text(),
            "updatedAt": json_values | st.text() | st.datetimes().map(lambda d: d.isoformat()),
            "listPrice": json_values | st.integers(),
        },
    ),
)


@settings(max_examples=300, deadline=None)
@given(record=records)
def test_validation_never_raises_and_rows_match_it(record):
    for entity in EntityType:
        reason = rejection_reason(entity, record)
        assert reason is None or isinstance(reason, str)
        rows = to_rows(entity, [record], first_seq=0)
        assert rows.reason == [reason]
        assert json.loads(rows.raw_of(0)) == record


def test_exact_numbers_survive_parse_and_canonical_text():
    from sync_pipeline.jsontext import NumberOutOfRange, canonical_json, loads

    source = b'{"b": [18446744073709551616, 0.1000000000000000055511151231257827, 1.50, 1E5, -0.0], "a": "\xc3\xa9"}'
    assert canonical_json(loads(source)).decode() == '{"a":"\u00e9","b":[18446744073709551616,0.1000000000000000055511151231257827,1.50,1E5,-0.0]}'
    reordered = b'{"a": "\xc3\xa9", "b": [18446744073709551616, 0.1000000000000000055511151231257827, 1.50, 1E5, -0.0]}'
    assert canonical_json(loads(reordered)) == canonical_json(loads(source))
    plain = b'{"z": 1, "a": [true, null, "x"]}'
    assert canonical_json(loads(plain)) == b'{"a":[true,null,"x"],"z":1}'
    import pytest

    with pytest.raises(NumberOutOfRange, match="meta.x"):
        canonical_json(loads(b'{"meta": {"x": 1e400}}'))


def test_text_that_is_not_unicode_rejects_only_its_record():
    from sync_pipeline.jsontext import loads

    page = loads(b'[{"id": "p\\ud800", "title": "x", "updatedAt": "2025-01-01T00:00:00Z", "listPrice": 1},'
                 b' {"id": "ok", "title": "\\udfff", "updatedAt": "2025-01-01T00:00:00Z", "listPrice": 1},'
                 b' {"id": "fine", "title": "t", "updatedAt": "2025-01-01T00:00:00Z", "listPrice": 1}]')
    rows = to_rows(EntityType.PRODUCT, page, first_seq=0)
    assert rows.id == [None, "ok", "fine"]
    assert rows.reason[0] == rows.reason[1] and "surrogate" in rows.reason[0] and rows.reason[2] is None
    assert b"\\ud800" in rows.raw_of(0) and b'"title":"\\udfff"' in rows.raw_of(1)


def test_a_list_page_is_read_with_its_records_as_the_bytes_sent():
    from sync_pipeline import jsontext

    body = b'{"data": [{"id": "a", "n": 1.10}, {"id": "b"}], "meta": {"nextCursor": "c2"}}'
    page = jsontext.loads_page(body)
    assert [bytes(raw) for raw in page.data] == [b'{"id": "a", "n": 1.10}', b'{"id": "b"}']
    assert page.meta == {"nextCursor": "c2"} and jsontext.loads(page.data[0])["n"].text == "1.10"
    # what is not a plain list page is left to `loads`, which retries or names the problem
    assert jsontext.loads_page(b'{"data": [{"id": "a", "t": "\xff"}], "meta": {}}') is None  # not UTF-8
    assert jsontext.loads_page(b'{"data": [{"id": "\\ud800"}], "meta": {}}') is None  # a lone surrogate
    assert jsontext.loads_page(b'{"data": {}, "meta": {}}') is None
    assert jsontext.loads_page(b'{"data": [') is None
    with pytest.raises(ValueError):
        jsontext.loads(b'{"data": [{"id": "a", "t": "\xff"}], "meta": {}}')


def test_page_rows_hold_every_records_json_in_one_arrow_ready_buffer():
    from sync_pipeline.staging import PageRows

    rows, raws = PageRows(), [b'{"a":1}', b"", "{\"b\":\"\u00e9\"}".encode(), b"[]"]
    for raw in raws:
        rows.add_raw(raw)
    column = rows.raw_column()
    column.validate(full=True)
    assert column.to_pylist() == raws == [rows.raw_of(i) for i in range(len(raws))]
    assert PageRows().raw_column().to_pylist() == []


@given(st.lists(st.binary(max_size=3000), max_size=20))
def test_listed_digests_of_many_are_each_records_listed_digest(raws):
    import msgspec

    from sync_pipeline.staging import listed_digest, listed_digests_of

    as_listed = [msgspec.Raw(raw) for raw in raws]  # as a page read unparsed hands them over
    assert listed_digests_of(as_listed) == listed_digests_of(raws) == [listed_digest(raw) for raw in raws]


def test_a_listed_digest_is_the_one_the_state_store_holds_from_earlier_releases():
    """Rules 2's digest of a record's bytes, fixed: a change of the hash or its key must come
    with a new LISTED_RULES (every record parsed again once), never unnoticed."""
    from sync_pipeline.staging import listed_digest, listed_digests_of

    assert listed_digest(b'{"id":"a"}').hex() == listed_digests_of([b'{"id":"a"}'])[0].hex() == (
        "4ce34da423c7a4a104d55fd4e82d72df"
    )
