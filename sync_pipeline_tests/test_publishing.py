"""Publishing against the real sandbox over HTTP: many batches at the gateway at once, only a few
being sent (each holding its request body) at a time."""

import threading

import pytest
import requests

from sync_pipeline.domain import EntityType, SyncMode, Window, utcnow
from sync_pipeline.errors import GatewayError
from sync_pipeline.gateway import GatewayClient
from sync_pipeline import settings
from sync_pipeline.pipeline import SyncScratch, fetch_and_stage, publish_changes
from sync_pipeline.settings import SANDBOX_GATEWAY_TOKEN, SANDBOX_PRODUCT_TOKEN
from sync_pipeline.sources import ProductServiceClient
from sync_pipeline.staging import StagingStore, connect_scratch
from sync_pipeline.state import StateStore


class CountingGateway(GatewayClient):
    """The real client, counting what it does at once: requests being sent (`sending`), and
    batches submitted and not yet seen at their end (`at_gateway`). `fail_at`: the submission
    of that number (from 1) fails as a gateway that keeps answering 500 would."""

    def __init__(self, url: str, fail_at: int | None = None):
        super().__init__(url, SANDBOX_GATEWAY_TOKEN, pool_size=32)
        self.fail_at, self.submitted = fail_at, 0
        self.lock = threading.Lock()
        self.sending = self.peak_sending = 0
        self.at_gateway: set[str] = set()
        self.peak_at_gateway = 0

    def submit_upsert_body(self, entity, body, count, key):
        with self.lock:
            self.submitted += 1
            number = self.submitted
            self.sending += 1
            self.peak_sending = max(self.peak_sending, self.sending)
        try:
            if number == self.fail_at:
                raise GatewayError("HTTP 500 from the gateway", http_status=500)
            batch_id = super().submit_upsert_body(entity, body, count, key)
        finally:
            with self.lock:
                self.sending -= 1
        with self.lock:
            self.at_gateway.add(batch_id)
            self.peak_at_gateway = max(self.peak_at_gateway, len(self.at_gateway))
        return batch_id

    def get_batch(self, batch_id):
        outcome = super().get_batch(batch_id)
        if outcome.batch_status in ("COMPLETED", "FAILED"):
            with self.lock:
                self.at_gateway.discard(batch_id)
        return outcome


@pytest.fixture
def staged(tmp_path, slow_gateway):
    """A first full sync of the slow gateway's sandbox's 600 products, staged and not yet published."""
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}")
    sync = state.enqueue_sync(EntityType.PRODUCT, SyncMode.FULL, origin="test")
    source = ProductServiceClient(slow_gateway.url, SANDBOX_PRODUCT_TOKEN)
    with connect_scratch(tmp_path / "staging.duckdb") as connection:
        scratch = SyncScratch(
            state=state, staging=StagingStore(connection), directory=tmp_path, merchant="default",
            entity=EntityType.PRODUCT, sync_id=sync.sync_id,
        )
        result = fetch_and_stage(source, scratch, Window(None, utcnow()), full=True)
        yield scratch, result.counts.valid
    source.close()
    state.dispose()


def test_many_batches_are_at_the_gateway_at_once_and_only_a_few_are_being_sent(staged, slow_gateway):
    scratch, valid = staged
    gateway = CountingGateway(slow_gateway.url)
    try:
        result = publish_changes(gateway, scratch, batch_size=20, workers=12, sending=2)
    finally:
        gateway.close()
    assert result.published + result.failed == valid and result.published > 0
    assert gateway.peak_sending == 2  # never more bodies held for sending than that
    assert gateway.peak_at_gateway > 4  # while many more are followed at the gateway
    held = requests.get(f"{slow_gateway.url}/_admin/gateway/PRODUCT", timeout=30).json()["records"]
    assert len(held) == result.published


@pytest.mark.timeout(120)
def test_a_batch_that_cannot_be_sent_fails_publishing_without_holding_up_the_rest(staged, slow_gateway):
    scratch, _ = staged
    gateway = CountingGateway(slow_gateway.url, fail_at=3)
    try:
        with pytest.raises(GatewayError, match="HTTP 500"):
            publish_changes(gateway, scratch, batch_size=20, workers=12, sending=1)
    finally:
        gateway.close()
    assert gateway.submitted > 3  # the batch that failed gave its one place back


@pytest.mark.parametrize("name", ["SYNC_GATEWAY_IN_FLIGHT", "SYNC_GATEWAY_SENDING"])
def test_the_batches_a_sync_keeps_and_sends_at_once_are_whole_numbers_from_one(monkeypatch, name):
    read = {"SYNC_GATEWAY_IN_FLIGHT": settings.gateway_in_flight, "SYNC_GATEWAY_SENDING": settings.gateway_sending}[name]
    monkeypatch.setenv(name, "")
    assert read() == {"SYNC_GATEWAY_IN_FLIGHT": 16, "SYNC_GATEWAY_SENDING": 4}[name]
    monkeypatch.setenv(name, "8")
    assert read() == 8
    for bad, message in (("0", "at least 1, not 0"), ("four", "a whole number, not 'four'")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=f"{name} must be {message}"):
            read()
