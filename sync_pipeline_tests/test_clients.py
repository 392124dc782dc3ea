"""The product service and gateway clients against the real sandbox over HTTP."""

from datetime import datetime, timezone

import pytest

from sync_pipeline.domain import EntityType, Window, utcnow
from sync_pipeline.errors import GatewayError, SourceError
from sync_pipeline.gateway import BatchWatcher, GatewayClient, Operation, idempotency_key
from sync_pipeline.settings import SANDBOX_GATEWAY_TOKEN, SANDBOX_PRODUCT_TOKEN
from sync_pipeline.sources import ProductServiceClient

from .conftest import free_port


def test_pages_stream_the_whole_window(shared_sandbox):
    client = ProductServiceClient(shared_sandbox.url, SANDBOX_PRODUCT_TOKEN, page_size=1000)
    pages = list(client.fetch_pages(EntityType.PRODUCT, Window(None, utcnow())))
    assert [len(p.records) for p in pages] == [1000, 1000, 500]
    assert pages[-1].next_cursor is None


def test_a_window_limits_the_records(shared_sandbox):
    client = ProductServiceClient(shared_sandbox.url, SANDBOX_PRODUCT_TOKEN)
    window = Window(datetime(2025, 3, 1, tzinfo=timezone.utc), datetime(2025, 4, 1, tzinfo=timezone.utc))
    records = [r for p in client.fetch_pages(EntityType.PRODUCT, window) for r in p.records]
    assert records and all("2025-03" in r["updatedAt"] for r in records if "Z" in r.get("updatedAt", ""))


def test_a_wrong_token_is_a_clear_error_naming_the_url_and_detail(shared_sandbox):
    client = ProductServiceClient(shared_sandbox.url, "wrong")
    with pytest.raises(SourceError, match=r"/products: HTTP 401 .*Unauthorised token provided"):
        next(client.fetch_pages(EntityType.PRODUCT, Window(None, utcnow())))


def test_an_unreachable_service_is_a_source_error():
    url = f"http://127.0.0.1:{free_port()}"
    client = ProductServiceClient(url, "t", retries=1, backoff=0.01)
    with pytest.raises(SourceError, match="unreachable"):
        next(client.fetch_pages(EntityType.PRODUCT, Window(None, utcnow())))


def test_get_one_tells_a_deleted_record_by_its_404(shared_sandbox):
    client = ProductServiceClient(shared_sandbox.url, SANDBOX_PRODUCT_TOKEN)
    assert client.get_one(EntityType.PRODUCT, "prod-0000001")["id"] == "prod-0000001"
    assert client.get_one(EntityType.PRODUCT, "no-such-product") is None


def test_a_batch_is_followed_to_its_end_and_a_replayed_key_is_not_applied_twice(shared_sandbox):
    client = GatewayClient(shared_sandbox.url, SANDBOX_GATEWAY_TOKEN)
    records = ['{"id":"p-client-1","title":"A"}', '{"id":"p-client-2","title":"B"}']
    key = idempotency_key(EntityType.PRODUCT, Operation.UPSERT, ["p-client-1:None:h1", "p-client-2:None:h2"])
    before = shared_sandbox.stats()["gateway"]
    first = client.submit_upsert(EntityType.PRODUCT, records, key)
    second = client.submit_upsert(EntityType.PRODUCT, records, key)
    assert first == second
    with BatchWatcher(client) as watcher:
        outcome = watcher.follow(first)
    assert (outcome.batch_status, outcome.success_count, outcome.fail_count) == ("COMPLETED", 2, 0)
    after = shared_sandbox.stats()["gateway"]
    assert after["itemsApplied"] - before["itemsApplied"] == 2
    assert after["batches"] - before["batches"] == 1


def test_batches_hold_at_most_1000_items(shared_sandbox):
    client = GatewayClient(shared_sandbox.url, SANDBOX_GATEWAY_TOKEN)
    with pytest.raises(ValueError, match="1000"):
        client.submit_delete(EntityType.PRODUCT, [str(i) for i in range(1001)], "k")


def test_a_gateway_refusal_is_a_gateway_error(shared_sandbox):
    client = GatewayClient(shared_sandbox.url, "wrong")
    with pytest.raises(GatewayError, match="HTTP 401"):
        client.submit_delete(EntityType.PRODUCT, ["x"], "k")
