"""The sandbox plays the product service and the gateway exactly: paging, auth, errors, batches."""

import time

import requests

from sync_pipeline.settings import SANDBOX_GATEWAY_TOKEN, SANDBOX_PRODUCT_TOKEN

PRODUCT_AUTH = {"Authorization": f"Bearer {SANDBOX_PRODUCT_TOKEN}"}
GATEWAY_AUTH = {"Authorization": f"Bearer {SANDBOX_GATEWAY_TOKEN}"}


def list_all(url: str, **params) -> list[dict]:
    records, cursor = [], None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        body = requests.get(url, params=query, headers=PRODUCT_AUTH, timeout=10).json()
        records += body["data"]
        cursor = body["meta"]["nextCursor"]
        if cursor is None:
            return records


def test_paging_returns_every_live_record_once_in_updated_order(shared_sandbox):
    records = list_all(f"{shared_sandbox.url}/products", limit=7)
    source = shared_sandbox.source("products")["records"]
    assert len(records) == len(source) == 2500
    assert [r.get("id") for r in records] == [r.get("id") for r in source]


def test_equal_updated_at_across_page_boundaries_loses_nothing(shared_sandbox):
    records = list_all(f"{shared_sandbox.url}/products", limit=24)
    ids = [r.get("id") for r in records]
    assert len(ids) == len(set(ids))
    stamps = [r["updatedAt"] for r in records]
    assert len(stamps) - len(set(stamps)) > 50  # the catalogue does plant shared times


def test_window_bounds_are_inclusive_then_exclusive(shared_sandbox):
    records = list_all(f"{shared_sandbox.url}/products", limit=1000)
    stamp = records[100]["updatedAt"]
    inside = list_all(f"{shared_sandbox.url}/products", updatedSince=stamp, updatedBefore="2026-01-01T00:00:00Z")
    assert inside[0]["updatedAt"] == stamp
    before = list_all(f"{shared_sandbox.url}/products", updatedBefore=stamp)
    assert all(r["updatedAt"] != stamp for r in before if r.get("updatedAt", "").endswith("Z"))
    assert len(before) + len([r for r in records if r not in before]) == len(records)


def test_product_errors_are_problem_details(shared_sandbox):
    missing = requests.get(f"{shared_sandbox.url}/products", timeout=5)
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["title"] == "No authorisation token provided"
    wrong = requests.get(f"{shared_sandbox.url}/products", headers={"Authorization": "Bearer nope"}, timeout=5)
    assert wrong.json()["title"] == "Unauthorised token provided"
    not_found = requests.get(f"{shared_sandbox.url}/products/nope", headers=PRODUCT_AUTH, timeout=5)
    assert not_found.status_code == 404
    assert not_found.json()["type"].endswith("entity-not-found")
    bad = requests.get(f"{shared_sandbox.url}/products", params={"limit": 5000}, headers=PRODUCT_AUTH, timeout=5)
    assert bad.status_code == 400 and bad.json()["errors"]


def test_gateway_errors_use_the_envelope(shared_sandbox):
    url = f"{shared_sandbox.url}/product-gateway/v1/catalog/PRODUCT/batches"
    unauthorized = requests.post(url, json={}, timeout=5)
    assert unauthorized.status_code == 401 and unauthorized.json()["error"][0]["status"] == "401"
    too_many = requests.post(
        url, json={"operation": "DELETE", "ids": ["x"] * 1001}, headers={**GATEWAY_AUTH, "Idempotency-Key": "k"}, timeout=5
    )
    assert too_many.status_code == 400 and "1000" in too_many.json()["error"][0]["detail"]
    unknown = requests.get(f"{shared_sandbox.url}/product-gateway/v1/catalog/batches/nope", headers=GATEWAY_AUTH, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"][0]["title"]


def test_a_batch_goes_queued_processing_completed_and_honours_its_key(shared_sandbox):
    url = f"{shared_sandbox.url}/product-gateway/v1/catalog/COLLECTION/batches"
    body = {"operation": "UPSERT", "records": [{"id": "c-test-1", "title": "T", "extra": {"kept": True}}]}
    headers = {**GATEWAY_AUTH, "Idempotency-Key": "test-key-1"}
    first = requests.post(url, json=body, headers=headers, timeout=5)
    again = requests.post(url, json=body, headers=headers, timeout=5)
    assert first.status_code == again.status_code == 202
    batch_id = first.json()["data"]["batchId"]
    assert again.json()["data"]["batchId"] == batch_id
    seen = set()
    for _ in range(100):
        data = requests.get(f"{shared_sandbox.url}/product-gateway/v1/catalog/batches/{batch_id}", headers=GATEWAY_AUTH, timeout=5).json()["data"]
        seen.add(data["batchStatus"])
        if data["batchStatus"] == "COMPLETED":
            break
        time.sleep(0.005)
    assert "COMPLETED" in seen and seen <= {"QUEUED", "PROCESSING", "COMPLETED"}
    assert data["successCount"] == 1 and data["ratio"] == "100.00" and data["bulkOperationType"] == "UPSERT"
    assert shared_sandbox.gateway("COLLECTION")["c-test-1"] == body["records"][0]
    assert shared_sandbox.stats()["gateway"]["replays"] >= 1
