"""No record lost, corrupted or stuck at the edges: one bad record never blocks a sync, the status
tells the truth, failed deletions are kept, a published record that becomes invalid is visible."""

import json
from datetime import timedelta

import dagster as dg
import pytest
import requests

from sync_pipeline.cli import main
from sync_pipeline.domain import EntityType, SyncStatus, format_time, parse_time, utcnow
from sync_pipeline.settings import state_url
from sync_pipeline.state import StateStore

from .test_e2e import expected_gateway


def last(entity=EntityType.PRODUCT):
    store = StateStore(state_url())
    try:
        return store.history(entity, 1)[0]
    finally:
        store.dispose()


def check(key: str, name: str):
    with dg.DagsterInstance.get() as instance:
        record = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(key), name)]
        )[dg.AssetCheckKey(dg.AssetKey(key), name)]
    return record.event.asset_check_evaluation


def test_one_record_the_gateway_finds_malformed_is_refused_alone_and_the_rest_is_published(sync_env, sandbox):
    poisoned = sandbox.source("products")["records"][1234]["id"]
    sandbox.admin("PUT", "/poison", json={"ids": [poisoned]})
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    sync = last()
    refused = set(sandbox.source("products")["refused"])
    assert sync.status is SyncStatus.PARTIAL_SUCCESS and sync.failed == len(refused) + 1
    held = sandbox.gateway("PRODUCT")
    expected = expected_gateway(sandbox, "PRODUCT")
    assert poisoned not in held and held == {k: v for k, v in expected.items() if k != poisoned}
    store = StateStore(state_url())
    with store.engine.connect() as conn:
        [(reason,)] = conn.exec_driver_sql(
            "SELECT refused_reason FROM records WHERE record_id = ?", (poisoned,)
        ).fetchall()
    assert "HTTP 400" in reason and f"record {poisoned}" in reason  # the gateway's own detail
    store.dispose()
    sandbox.admin("PUT", "/poison", json={"ids": []})
    assert main(["sync", "PRODUCT"]) == 0  # owed: fetched by id and sent again
    assert sandbox.gateway("PRODUCT")[poisoned] == expected[poisoned]


def test_a_permanently_refused_record_is_parked_and_the_catalogue_reads_success(sync_env, sandbox, capsys):
    refused = sorted(sandbox.source("collections")["refused"])
    assert main(["sync", "COLLECTION"]) == 0  # first: a full sync, refused once
    assert (last(EntityType.COLLECTION).status, last(EntityType.COLLECTION).parked) == (SyncStatus.PARTIAL_SUCCESS, 0)
    assert main(["sync", "COLLECTION"]) == 0  # owed, sent again, refused again at the same version: parked
    second = last(EntityType.COLLECTION)
    assert (second.status, second.failed, second.parked) == (SyncStatus.PARTIAL_SUCCESS, len(refused), len(refused))
    applied = sandbox.stats()["gateway"]["itemsRefused"]
    assert main(["sync", "COLLECTION"]) == 0
    third = last(EntityType.COLLECTION)
    assert (third.status, third.failed, third.parked) == (SyncStatus.SUCCESS, 0, len(refused))
    assert sandbox.stats()["gateway"]["itemsRefused"] == applied  # not sent again
    evaluation = check("collections_published", "parked_records")
    assert not evaluation.passed and all(i in evaluation.metadata["first_ids"].value for i in refused)
    capsys.readouterr()
    assert main(["status", "COLLECTION"]) == 0
    assert "parked" in capsys.readouterr().out


def test_a_batch_that_fails_as_a_whole_ends_the_sync_4200_not_2100(sync_env, sandbox):
    sandbox.admin("PUT", "/faults", json={"name": "batch-failed:gateway"})
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 1
    sync = last()
    assert sync.status is SyncStatus.GATEWAY_UNAVAILABLE and "ended FAILED" in sync.error_message
    sandbox.admin("PUT", "/faults", json={"name": "none"})
    assert main(["sync", "PRODUCT"]) == 0  # the watermark did not move: the same window again
    assert sandbox.gateway("PRODUCT") == expected_gateway(sandbox, "PRODUCT")


def test_a_deletion_that_failed_is_kept_and_a_latest_sync_sends_it(sync_env, sandbox):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    gone = sandbox.admin("POST", "/source/products/delete", json={"count": 3})["ids"]
    sandbox.admin("PUT", "/faults", json={"name": "auth:gateway"})  # the deletions cannot be sent
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 1
    assert last().status is SyncStatus.GATEWAY_UNAVAILABLE
    assert set(gone) <= set(sandbox.gateway("PRODUCT"))
    sandbox.admin("PUT", "/faults", json={"name": "none"})
    assert main(["sync", "PRODUCT"]) == 0  # a latest sync: it does not list them, yet owes them
    assert last().deleted == 3 and not set(gone) & set(sandbox.gateway("PRODUCT"))


def put_record(sandbox, record: dict) -> None:
    requests.post(f"{sandbox.url}/_admin/source/products/put", data=json.dumps([record]), timeout=10).raise_for_status()


@pytest.mark.parametrize("withdraw", [False, True])
def test_a_published_record_that_becomes_invalid_is_kept_or_withdrawn_and_always_visible(sync_env, sandbox, monkeypatch, withdraw):
    if withdraw:
        monkeypatch.setenv("SYNC_WITHDRAW_INVALID", "true")
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    victim = next(r for r in sandbox.source("products")["records"] if r["id"] not in sandbox.source("products")["refused"]
                  and r["id"] not in sandbox.source("products")["invalid"])
    published = sandbox.gateway("PRODUCT")[victim["id"]]
    put_record(sandbox, {**victim, "listPrice": -5, "updatedAt": format_time(utcnow())})
    assert main(["sync", "PRODUCT"]) == 0
    sync = last()
    assert sync.rejected == 1
    if withdraw:
        assert sync.deleted == 1 and victim["id"] not in sandbox.gateway("PRODUCT")
        assert sync.invalid_held == 0
    else:
        assert sandbox.gateway("PRODUCT")[victim["id"]] == published  # its last valid version
        assert sync.invalid_held == 1
        evaluation = check("products_published", "invalid_but_held")
        assert not evaluation.passed and victim["id"] in evaluation.metadata["first_ids"].value
        assert "listPrice is negative" in evaluation.metadata["first_ids"].value


@pytest.mark.parametrize("lookback, caught", [("10m", True), ("0", False)])
def test_a_late_committed_record_is_caught_by_the_lookback(sync_env, sandbox, monkeypatch, lookback, caught):
    monkeypatch.setenv("SYNC_LOOKBACK", lookback)
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    first = last()
    # committed after the sync ended, stamped 30 s before: inside the window already synced
    [late] = sandbox.admin("POST", "/source/products/create", json={"count": 1, "updatedAtOffsetSeconds": -30})["ids"]
    late_at = {r["id"]: r for r in sandbox.source("products")["records"] if "id" in r}[late]["updatedAt"]
    assert late_at < format_time(first.window_end)
    assert main(["sync", "PRODUCT"]) == 0
    second = last()
    assert (late in sandbox.gateway("PRODUCT")) is caught
    if caught:  # the history shows the window actually read
        assert second.window_start == first.window_end - timedelta(minutes=10)
        assert second.published == 1  # the overlap re-read everything else unchanged: nothing else sent


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:30:00-01:00", "2025-02-30T00:00:00Z"])
def test_a_time_out_of_range_is_a_clear_error_not_a_traceback(sync_env, capsys, text):
    with pytest.raises(SystemExit) as exit_:
        main(["sync", "PRODUCT", "--sync-to", text])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and "error" in err[0] and "Traceback" not in err[0]


def test_times_take_any_offset_and_a_lowercase_z(sync_env, sandbox):
    assert main(["sync", "COLLECTION", "--mode", "historic", "--start", "2025-03-01t00:00:00z",
                 "--end", "2025-03-31T23:00:00-01:00"]) == 0
    sync = last(EntityType.COLLECTION)
    assert (format_time(sync.window_start), format_time(sync.window_end)) == ("2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z")


def test_collections_naming_products_the_gateway_does_not_hold_are_listed(sync_env, sandbox):
    assert main(["sync", "COLLECTION", "--mode", "full"]) == 0  # before any product: every reference is missing
    early = check("collections_published", "products_referenced_are_held")
    assert not early.passed and early.metadata["collections_with_missing_products"].value > 0
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    assert main(["sync", "COLLECTION", "--mode", "full"]) == 0
    later = check("collections_published", "products_referenced_are_held")
    # left: collections naming the products the gateway refuses or the source has invalid
    unheld = set(sandbox.source("products")["refused"]) | set(sandbox.source("products")["invalid"])
    named = {c["id"] for c in sandbox.source("collections")["records"]
             if "id" in c and set(c.get("productIds") or []) & unheld}
    assert later.metadata["collections_with_missing_products"].value <= len(named)


def test_the_gateway_check_stays_green_when_records_change_during_a_full_sync(sync_env, sandbox):
    import threading
    import time

    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    sandbox.admin("PUT", "/faults", json={"name": "slow:product"})  # 0.2 s a page: time to change things
    changed: list[str] = []

    def change_while_listing() -> None:
        deadline = time.monotonic() + 30
        while sandbox.stats()["requests"]["product"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        # across the catalogue: some already listed, some not yet; all move past the window's end
        changed.extend(sandbox.admin("POST", "/source/products/update", json={"count": 40})["ids"])

    helper = threading.Thread(target=change_while_listing)
    helper.start()
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    helper.join()
    assert changed
    evaluation = check("products_published", "gateway_matches_staging")
    assert evaluation.passed, evaluation.metadata
    assert last().deleted == 0  # moved out of the window is not gone
    sandbox.admin("PUT", "/faults", json={"name": "none"})
    assert main(["sync", "PRODUCT"]) == 0
    assert sandbox.gateway("PRODUCT") == expected_gateway(sandbox, "PRODUCT")


BIG = (
    '{"id": "prod-exact-1", "title": "Exact numbers", "listPrice": 100, "updatedAt": "%s",'
    ' "meta": {"big": 18446744073709551616, "negative": -9223372036854775809, "long": 0.1000000000000000055511151231257827,'
    ' "kept": 1.50, "exp": 1E5, "deep": [[[[[[[[[[{"n": 123456789012345678901234567890}]]]]]]]]]]}}'
)


def test_numbers_go_out_exactly_as_the_source_wrote_them_and_1e400_rejects_only_its_record(sync_env, sandbox):
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    now = format_time(utcnow())
    exact = BIG % now
    out_of_range = '{"id": "prod-exact-2", "title": "Too big", "listPrice": 1, "updatedAt": "%s", "meta": {"x": 1e400}}' % now
    requests.post(f"{sandbox.url}/_admin/source/products/put", data=f"[{exact}, {out_of_range}]", timeout=10).raise_for_status()
    changed = sandbox.admin("POST", "/source/products/update", json={"count": 3})["ids"]
    assert main(["sync", "PRODUCT"]) == 0
    sync = last()
    assert sync.rejected == 1 and sync.published >= 1 + 3
    text = requests.get(f"{sandbox.url}/_admin/gateway/PRODUCT", timeout=10).text
    for token in ("18446744073709551616", "-9223372036854775809", "0.1000000000000000055511151231257827",
                  "1.50", "1E5", "123456789012345678901234567890"):
        assert token in text, token
    held = sandbox.gateway("PRODUCT")
    assert "prod-exact-2" not in held and all(i in held for i in changed)  # the rest of the page went
    store = StateStore(state_url())
    [(record_id, reason, raw)] = store.rejections_for_sync(sync.sync_id)
    assert record_id == "prod-exact-2" and "meta.x" in reason and "1e400" in raw
    before = sandbox.stats()["gateway"]["itemsApplied"]
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0  # the same content hashes the same way
    assert last().published == 0 and sandbox.stats()["gateway"]["itemsApplied"] == before
    store.dispose()


def test_explain_says_why_a_record_is_or_is_not_at_the_gateway(sync_env, sandbox, capsys):
    from sync_pipeline.settings import state_url as url
    from sync_pipeline.trail import record_trail

    refused = sorted(sandbox.source("products")["refused"])[0]
    victim = next(r for r in sandbox.source("products")["records"] if r["id"] not in sandbox.source("products")["refused"]
                  and r["id"] not in sandbox.source("products")["invalid"])
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    put_record(sandbox, {**victim, "listPrice": -5, "updatedAt": format_time(utcnow())})
    assert main(["sync", "PRODUCT"]) == 0  # the refused one is refused again: parked; the victim rejected
    store = StateStore(url())
    parked = record_trail(store, EntityType.PRODUCT, refused, merchant="default", park_after=2)
    assert "parked" in parked.sentence() and "sku is blocked" in parked.sentence()
    assert [e["event"] for e in parked.events][:3] == ["parked", "refused", "refused"]
    invalid = record_trail(store, EntityType.PRODUCT, victim["id"], merchant="default", park_after=2)
    assert invalid.sentence().startswith("The gateway holds the last valid version") and "listPrice is negative" in invalid.sentence()
    assert [e["event"] for e in invalid.events] == ["rejected", "published", "seen"]
    published, seen = invalid.events[1:]  # the record's row: the version it holds, and the one seen
    assert published["batchId"] and seen["batchId"] is None and seen["detail"] is published["detail"] is None
    assert parse_time(seen["at"]) < parse_time(published["at"])
    assert seen["contentHash"] == published["contentHash"] and seen["syncId"] == published["syncId"]
    assert invalid.as_dict()["lastRejection"]["raw"].startswith("{")
    current_id = sorted(sandbox.gateway("PRODUCT"))[0]
    current = record_trail(store, EntityType.PRODUCT, current_id, merchant="default", park_after=2)
    assert current.sentence().startswith("Current at the gateway")
    # a new version: the row says it, and the trail keeps the one before as its sync wrote it
    sandbox.admin("POST", "/source/products/update", json={"ids": [current_id]})
    assert main(["sync", "PRODUCT"]) == 0
    changed = record_trail(store, EntityType.PRODUCT, current_id, merchant="default", park_after=2)
    assert changed.sentence().startswith("Current at the gateway")
    shown = [(e["event"], e["contentHash"]) for e in changed.events]
    old, new = current.state["held_hash"], changed.state["held_hash"]
    assert old != new and shown == [("published", new), ("seen", new), ("published", old), ("seen", old)]
    assert changed.events[2:] == current.events
    capsys.readouterr()
    assert main(["explain", "PRODUCT", refused]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"PRODUCT {refused}: Not at the gateway") and "parked" in out
    assert main(["explain", "PRODUCT", "no-such-id"]) == 1
    assert "no sync has seen" in capsys.readouterr().err
    store.dispose()


def staged_metadata() -> dict:
    with dg.DagsterInstance.get() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("products_staged"))
    return {name: value.value for name, value in event.asset_materialization.metadata.items()}


def test_a_page_that_does_not_read_as_listed_bytes_is_parsed_alone_in_a_full_sync(sync_env, sandbox):
    """A full sync takes a record listed byte for byte as the gateway holds it without parsing it.
    A page whose body does not read as a plain list page (one record in it holds a lone
    surrogate) is parsed whole; the listed pages before and after it are taken as before, so
    none of their records goes missing from the listing (to be fetched by id) or is sent again."""
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    unchanged = staged_metadata()
    source = sandbox.source("products")
    owed = set(source["refused"]) | set(source["invalid"])
    victim = [r for r in source["records"] if r["id"] not in owed][len(source["records"]) // 2]
    put_record(sandbox, {**victim, "title": victim["title"] + "\ud800"})  # same updatedAt: same place, same page
    applied = sandbox.stats()["gateway"]["itemsApplied"]
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    staged, sync = staged_metadata(), last()
    assert unchanged["records_unparsed"] > 4000 and unchanged["records_fetched_by_id"] == 0
    assert staged["records_fetched_by_id"] == 0 and staged["records_rejected"] == unchanged["records_rejected"] + 1
    # only the victim's page (at most 1,000 records) was parsed besides what was parsed before
    assert 0 < unchanged["records_unparsed"] - staged["records_unparsed"] <= 1000
    assert (sync.published, sync.deleted) == (0, 0) and sandbox.stats()["gateway"]["itemsApplied"] == applied
    assert sandbox.gateway("PRODUCT")[victim["id"]]["title"] == victim["title"]  # its last valid version stays
