"""The fault matrix: each fault on each side; the sync ends equal to the expected catalogue, or
failed with the right code and equal after a clean rerun. Nothing is ever applied twice."""

import pytest

from sync_pipeline.cli import main
from sync_pipeline.domain import EntityType, SyncStatus
from sync_pipeline.settings import REPO_ROOT, state_url
from sync_pipeline.state import StateStore

from .test_e2e import expected_gateway

MATRIX = REPO_ROOT / "test-artifacts" / "fault-matrix.tsv"

# fault, the status of the sync under it (a clean rerun follows a failure)
CASES = [
    ("flaky:product", SyncStatus.PARTIAL_SUCCESS),
    ("flaky:gateway", SyncStatus.PARTIAL_SUCCESS),
    ("slow:product", SyncStatus.PARTIAL_SUCCESS),
    ("slow:gateway", SyncStatus.PARTIAL_SUCCESS),
    ("garbage:product", SyncStatus.PARTIAL_SUCCESS),
    ("garbage-always:product", SyncStatus.SOURCE_UNAVAILABLE),
    ("batch-failed:gateway", SyncStatus.GATEWAY_UNAVAILABLE),  # a batch FAILED as a whole: not a partial success
    ("too-large:gateway", SyncStatus.PARTIAL_SUCCESS),
    ("poll-refused:gateway", SyncStatus.GATEWAY_UNAVAILABLE),  # taken, then never answered for: not sent again
    ("auth:product", SyncStatus.SOURCE_UNAVAILABLE),
    ("auth:gateway", SyncStatus.GATEWAY_UNAVAILABLE),
]


def last_sync():
    store = StateStore(state_url())
    try:
        return store.history(EntityType.PRODUCT, 1)[0]
    finally:
        store.dispose()


@pytest.mark.parametrize("fault, status", CASES, ids=[c[0] for c in CASES])
def test_a_sync_under_a_fault_converges(fault, status, sync_env, sandbox):
    sandbox.admin("PUT", "/faults", json={"name": fault})
    code = main(["sync", "PRODUCT", "--mode", "full"])
    under_fault = last_sync()
    stats = sandbox.stats()
    assert under_fault.status is status, under_fault.error_message
    assert code == (0 if status.is_success else 1)
    assert stats["faultsInjected"] > 0
    expected = expected_gateway(sandbox, "PRODUCT")
    if status.is_success:
        assert sandbox.gateway("PRODUCT") == expected
    else:
        assert under_fault.error_message
        if fault.startswith("batch-failed"):
            assert "ended FAILED" in under_fault.error_message
            assert under_fault.failed > len(sandbox.source("products")["refused"])
        if fault.startswith("garbage-always"):
            assert "cursor" in under_fault.error_message and "/products" in under_fault.error_message
            assert sandbox.gateway("PRODUCT") == {}  # nothing built from a bad page is published
        if fault.startswith("poll-refused"):  # the batches were taken: none is split and sent again
            assert "HTTP 400" in under_fault.error_message and under_fault.parked == 0
        if fault.startswith("auth"):
            assert "HTTP 401" in under_fault.error_message or "HTTP 403" in under_fault.error_message
    sandbox.admin("PUT", "/faults", json={"name": "none"})
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    assert sandbox.gateway("PRODUCT") == expected
    final = sandbox.stats()["gateway"]
    assert final["itemsAppliedTwice"] == 0
    MATRIX.parent.mkdir(exist_ok=True)
    with MATRIX.open("a") as out:
        out.write(
            f"{fault}\t{under_fault.status.code} {under_fault.status.text}\t{stats['faultsInjected']}"
            f"\t{final['replays']}\t{final['itemsAppliedTwice']}\tequal after {'the sync' if status.is_success and not fault.startswith('batch') else 'a clean rerun'}\n"
        )
