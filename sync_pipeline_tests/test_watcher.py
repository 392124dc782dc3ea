"""Following many batches at once (BatchWatcher) against the real sandbox over HTTP."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from sync_pipeline.domain import EntityType
from sync_pipeline.errors import GatewayError
from sync_pipeline.gateway import BatchWatcher, GatewayClient
from sync_pipeline.sandbox.app import SandboxConfig
from sync_pipeline.sandbox.process import start_in_thread
from sync_pipeline.settings import SANDBOX_GATEWAY_TOKEN


def follow_many(url: str, count: int, in_flight: int, **watcher_options) -> tuple[list, BatchWatcher]:
    client = GatewayClient(url, SANDBOX_GATEWAY_TOKEN, pool_size=2 * in_flight)
    with BatchWatcher(client, max_in_flight=in_flight, **watcher_options) as watcher, \
            ThreadPoolExecutor(in_flight) as pool:
        def one(n: int):
            return watcher.follow(client.submit_delete(EntityType.PRODUCT, [f"gone-{n}"], f"key-{n}"))

        outcomes = list(pool.map(one, range(count)))
    client.close()
    return outcomes, watcher


def test_batches_in_flight_are_followed_together_and_asked_about_a_few_times_each(slow_gateway):
    outcomes, watcher = follow_many(slow_gateway.url, 64, 16)
    assert [o.batch_status for o in outcomes] == ["COMPLETED"] * 64
    assert watcher.peak_in_flight > 4  # many at once, not one after the other
    assert 0.1 <= watcher.typical < 2.0  # it learned how long the gateway takes
    # once learned, a batch is first asked about when it should be done: a fixed back-off from
    # 2 ms would ask a 150 ms batch about ten times
    assert watcher.polls / 64 < 6


def test_against_a_gateway_that_completes_at_once_the_watcher_learns_to_ask_soon():
    sandbox = start_in_thread(SandboxConfig(products=10, collections=2, queue_delay=0, process_delay=0))
    try:
        outcomes, watcher = follow_many(sandbox.url, 48, 16)
    finally:
        sandbox.stop()
    assert {o.batch_status for o in outcomes} == {"COMPLETED"}
    assert watcher.typical < 0.1


def test_a_batch_that_never_ends_is_an_error_naming_it(slow_gateway):
    client = GatewayClient(slow_gateway.url, SANDBOX_GATEWAY_TOKEN)
    with BatchWatcher(client, batch_timeout=0.05) as watcher:
        batch_id = client.submit_delete(EntityType.PRODUCT, ["x"], "never-ends")
        with pytest.raises(GatewayError, match=f"batch {batch_id} still (QUEUED|PROCESSING) after"):
            watcher.follow(batch_id)


def test_a_batch_the_gateway_does_not_know_is_its_error(slow_gateway):
    client = GatewayClient(slow_gateway.url, SANDBOX_GATEWAY_TOKEN)
    with BatchWatcher(client) as watcher, pytest.raises(GatewayError, match="HTTP 404"):
        watcher.follow("no-such-batch")
