"""The sandbox's edge cases for reliability work: late commits, records that must survive
exactly (big integers, long decimals), a poisoned record, instant batches, and a state file
that keeps every merchant's holdings."""

import json
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
import requests

from sync_pipeline.domain import parse_time
from sync_pipeline.sandbox.app import SandboxConfig
from sync_pipeline.sandbox.merchants import merchant_credentials
from sync_pipeline.sandbox.process import start_in_thread

GATEWAY = "/product-gateway/v1/catalog"

# Each number here is one orjson would change: over 64 bits, more digits than a double, beyond one.
EXACT_RECORD = (
    '{"id": "prod-exact-1",  "title": "Exact", "listPrice": 18446744073709551616,\n'
    ' "updatedAt": "2025-06-01T00:00:00Z", "ratio": 0.1000000000000000055511151231257827,\n'
    ' "huge": 1e400, "negative": -18446744073709551617, "trailing": 1.50, "zero": -0,'
    ' "deep": ' + "[" * 60 + '{"x": 12345678901234567890123}' + "]" * 60 + "}"
)


@pytest.fixture
def box():
    sandbox = start_in_thread(
        SandboxConfig(products=200, collections=10, merchants=1, merchant_products=30, merchant_collections=3,
                      queue_delay=0.005, process_delay=0.005)
    )
    yield sandbox
    sandbox.stop()


def auth(token: str, **headers) -> dict:
    return {"Authorization": f"Bearer {token}", **headers}


def prefix(merchant_id: str) -> str:
    return "" if merchant_id == "default" else f"/m/{merchant_id}"


def read(url: str, merchant_id: str, path: str, **params) -> requests.Response:
    """GET from a merchant's product service with its token."""
    merchant = merchant_credentials(url, merchant_id)
    headers = auth(merchant["productServiceToken"])
    return requests.get(f"{merchant['productServiceUrl']}{path}", params=params, headers=headers, timeout=10)


def submit_raw(url: str, merchant_id: str, body: bytes, key: str) -> requests.Response:
    token = merchant_credentials(url, merchant_id)["gatewayToken"]
    headers = auth(token, **{"Idempotency-Key": key, "Content-Type": "application/json"})
    return requests.post(f"{url}{GATEWAY}/PRODUCT/batches", data=body, headers=headers, timeout=10)


def poll(url: str, batch_id: str, merchant_id: str = "default") -> dict:
    headers = auth(merchant_credentials(url, merchant_id)["gatewayToken"])
    return requests.get(f"{url}{GATEWAY}/batches/{batch_id}", headers=headers, timeout=10).json()["data"]


def wait_done(url: str, merchant_id: str, batch_id: str) -> dict:
    for _ in range(500):
        data = poll(url, batch_id, merchant_id)
        if data["batchStatus"] in ("COMPLETED", "FAILED"):
            return data
        time.sleep(0.01)
    raise AssertionError(f"batch {batch_id} never finished")


def exact(text: str | bytes):
    """JSON read without losing a digit, to compare numbers as sent."""
    return json.loads(text, parse_float=Decimal)


@pytest.mark.parametrize("merchant_id", ["default", "m0001"])
def test_a_late_commit_is_dated_in_the_past(box, merchant_id):
    create = f"{box.url}{prefix(merchant_id)}/_admin/source/products/create"
    before = datetime.now(timezone.utc)
    made = requests.post(create, json={"count": 2, "updatedAtOffsetSeconds": -30}, timeout=10).json()["ids"]
    after = datetime.now(timezone.utc)
    for record_id in made:
        record = read(box.url, merchant_id, f"/products/{record_id}").json()
        assert before - timedelta(seconds=30) <= parse_time(record["updatedAt"]) <= after - timedelta(seconds=30)
    since, until = before - timedelta(seconds=31), before - timedelta(seconds=20)
    listed = read(box.url, merchant_id, "/products", updatedSince=since.isoformat(), updatedBefore=until.isoformat())
    assert [r["id"] for r in listed.json()["data"]] == made
    refused = requests.post(create, json={"count": 1, "updatedAtOffsetSeconds": "soon"}, timeout=10)
    assert refused.status_code == 400


def test_records_put_as_text_are_served_byte_for_byte(box):
    second = '{"id": "prod-exact-2", "title": "Two", "updatedAt": "2025-06-01T00:00:01Z"}'
    put = requests.post(f"{box.url}/_admin/source/products/put", data=f"[{EXACT_RECORD}, {second}]".encode(), timeout=10)
    assert put.json() == {"ids": ["prod-exact-1", "prod-exact-2"]}
    assert read(box.url, "default", "/products/prod-exact-1").content == EXACT_RECORD.encode()
    page = read(box.url, "default", "/products", updatedSince="2025-06-01T00:00:00Z", updatedBefore="2025-06-01T00:00:02Z")
    assert EXACT_RECORD.encode() in page.content
    assert [r["id"] for r in exact(page.content)["data"]][-2:] == ["prod-exact-1", "prod-exact-2"]


@pytest.mark.parametrize("body", [
    b'[{"id": "p", "title": "t", "updatedAt": "last Tuesday"}]',
    b'[{"id": "p", "title": "t"}]',
    b'[{"title": "t", "updatedAt": "2025-01-01T00:00:00Z"}]',
    b'{"id": "p"}',
    b"[{]",
])
def test_a_put_with_a_bad_record_stores_nothing(box, body):
    before = requests.get(f"{box.url}/_admin/source/products", timeout=10).json()["records"]
    assert requests.post(f"{box.url}/_admin/source/products/put", data=body, timeout=10).status_code == 400
    assert requests.get(f"{box.url}/_admin/source/products", timeout=10).json()["records"] == before


@pytest.mark.parametrize("merchant_id", ["default", "m0001"])
def test_the_gateway_holds_exactly_what_it_was_sent(box, merchant_id):
    body = ('{"operation": "UPSERT", "records": [' + EXACT_RECORD + "]}").encode()
    batch_id = submit_raw(box.url, merchant_id, body, "exact").json()["data"]["batchId"]
    assert wait_done(box.url, merchant_id, batch_id)["successCount"] == 1
    held = requests.get(f"{box.url}{prefix(merchant_id)}/_admin/gateway/PRODUCT", timeout=10)
    assert EXACT_RECORD.encode() in held.content
    assert exact(held.content)["records"]["prod-exact-1"] == exact(EXACT_RECORD)


def test_a_compact_batch_is_held_as_sent_too(box):
    records = requests.get(f"{box.url}/_admin/source/products", timeout=10).json()["records"][:50]
    body = orjson.dumps({"operation": "UPSERT", "records": records})
    batch_id = submit_raw(box.url, "default", body, "compact").json()["data"]["batchId"]
    assert wait_done(box.url, "default", batch_id)["batchStatus"] == "COMPLETED"
    held = requests.get(f"{box.url}/_admin/gateway/PRODUCT", timeout=10).json()["records"]
    assert all(held[r["id"]] == r for r in records if r.get("id") in held)


def test_a_poisoned_record_fails_its_whole_batch_with_400(box):
    poison = requests.put(f"{box.url}/_admin/poison", json={"ids": ["prod-0000042"]}, timeout=10)
    assert poison.json() == {"ids": ["prod-0000042"]}
    records = [{"id": "prod-0000001", "title": "a"}, {"id": "prod-0000042", "title": "b"}]
    poisoned = {"operation": "UPSERT", "records": records}
    refused = submit_raw(box.url, "default", orjson.dumps(poisoned), "p1")
    assert refused.status_code == 400
    assert refused.json()["error"][0]["detail"].startswith("record prod-0000042: ")
    clean = {"operation": "UPSERT", "records": [{"id": "prod-0000001", "title": "a"}]}
    assert submit_raw(box.url, "default", orjson.dumps(clean), "p2").status_code == 202
    delete = {"operation": "DELETE", "ids": ["prod-0000042"]}
    assert submit_raw(box.url, "default", orjson.dumps(delete), "p3").status_code == 202
    assert submit_raw(box.url, "m0001", orjson.dumps(poisoned), "p1").status_code == 202  # another merchant's catalogue
    requests.put(f"{box.url}/_admin/poison", json={"ids": []}, timeout=10)
    assert submit_raw(box.url, "default", orjson.dumps(poisoned), "p1").status_code == 202
    assert requests.get(f"{box.url}/_admin/stats", timeout=10).json()["gateway"]["batches"] == 3


def test_batches_with_no_delays_complete_as_fast_as_they_are_polled():
    sandbox = start_in_thread(SandboxConfig(products=10, collections=2, queue_delay=0, process_delay=0))
    try:
        body = orjson.dumps({"operation": "DELETE", "ids": ["x"]})
        for n in range(20):
            batch_id = submit_raw(sandbox.url, "default", body, f"i{n}").json()["data"]["batchId"]
            polls = 1
            while poll(sandbox.url, batch_id)["batchStatus"] != "COMPLETED":
                polls += 1
            assert polls <= 3
    finally:
        sandbox.stop()


def test_the_state_file_keeps_every_tokens_holdings_exactly(tmp_path):
    state = tmp_path / "gateway.json"
    config = SandboxConfig(products=50, collections=5, merchants=1, merchant_products=10, merchant_collections=2,
                           queue_delay=0, process_delay=0, state_file=str(state))
    first = start_in_thread(config)
    try:
        made = requests.put(f"{first.url}/_admin/merchants/late", json={"products": 7, "seed": 3}, timeout=10)
        assert made.status_code == 201
        body = ('{"operation": "UPSERT", "records": [' + EXACT_RECORD + "]}").encode()
        for merchant_id in ("default", "m0001", "late"):
            batch_id = submit_raw(first.url, merchant_id, body, "s").json()["data"]["batchId"]
            wait_done(first.url, merchant_id, batch_id)
    finally:
        first.stop()
    saved = json.loads(state.read_text(), parse_float=Decimal)
    assert set(saved) == {"PRODUCT", "COLLECTION", "merchants"} and set(saved["merchants"]) == {"m0001", "late"}
    second = start_in_thread(config)
    try:
        for merchant_id in ("default", "m0001", "late"):
            held = requests.get(f"{second.url}{prefix(merchant_id)}/_admin/gateway/PRODUCT", timeout=10)
            assert held.content == b'{"records":{"prod-exact-1":' + EXACT_RECORD.encode() + b"}}"
        assert len(read(second.url, "late", "/products").json()["data"]) == 7
    finally:
        second.stop()


def test_a_state_file_from_before_merchants_is_read(tmp_path):
    state = tmp_path / "gateway.json"
    state.write_text('{"PRODUCT": {"p1": {"id": "p1", "title": "old"}}, "COLLECTION": {}}')
    sandbox = start_in_thread(SandboxConfig(products=10, collections=2, state_file=str(state)))
    try:
        held = requests.get(f"{sandbox.url}/_admin/gateway/PRODUCT", timeout=10).json()["records"]
        assert held == {"p1": {"id": "p1", "title": "old"}}
    finally:
        sandbox.stop()
