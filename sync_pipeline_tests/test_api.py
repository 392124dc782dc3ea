"""The Sync API (CONTRACT §4) served by `sync-pipeline api`: every call, every status, the envelope."""

import subprocess
import sys
from datetime import timedelta

import orjson
import pytest
import requests
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_pipeline.domain import EntityType, SyncMode, SyncStatus, format_time, utcnow
from sync_pipeline.state import StateStore
from sync_pipeline.state.schema import batches, syncs

from .conftest import dagster_home, start_api, stop_process

WRITE = {"Authorization": "Bearer write-token"}
READ = {"Authorization": "Bearer read-token"}


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("api")
    url = f"sqlite:///{tmp_path / 'state.db'}"
    store = StateStore(url)
    server = start_api(url, dagster_home(tmp_path / "dagster"))
    yield server, store
    stop_process(server.process)
    store.dispose()


@pytest.fixture
def api(api_server):
    """The module's API server, over a state store emptied for each test."""
    _, store = api_server
    with store.engine.begin() as conn:
        conn.execute(sa.delete(batches))
        conn.execute(sa.delete(syncs))
    return api_server


def assert_envelope(response: requests.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    [error] = response.json()["error"]
    assert error["status"] == str(status) and error["title"] and error["detail"]
    return error["detail"]


def finished_sync(store: StateStore, entity=EntityType.PRODUCT, status=SyncStatus.SUCCESS, num_records=42):
    sync = store.enqueue_sync(entity, SyncMode.FULL, origin="test")
    store.start_sync(sync.sync_id, run_id="r")
    return store.finish_sync(sync.sync_id, status, num_records=num_records, published=40, failed=2, rejected=3, data_pushed=True)


def test_status_is_404_until_a_sync_succeeds_then_the_last_one(api):
    server, store = api
    assert "no PRODUCT sync" in assert_envelope(requests.get(f"{server.url}/sync/PRODUCT", headers=READ), 404)
    sync = finished_sync(store)
    finished_sync(store, status=SyncStatus.GATEWAY_UNAVAILABLE)
    body = requests.get(f"{server.url}/sync/PRODUCT", headers=READ).json()
    assert body["data"] == {"entityType": "PRODUCT", "updatedAt": format_time(sync.finished_at), "numRecords": 42}
    assert body["meta"]["syncId"] == sync.sync_id


def test_put_queues_one_sync_and_a_second_gets_429_naming_it(api):
    server, _ = api
    first = requests.put(f"{server.url}/sync/COLLECTION", headers=WRITE)
    assert first.status_code == 202
    data = first.json()["data"]
    assert (data["entityType"], data["syncStatus"], data["syncStatusCode"]) == ("COLLECTION", "Queued", 1000)
    assert first.json()["meta"] == {}
    second = requests.put(f"{server.url}/sync/COLLECTION", headers=WRITE)
    assert data["syncId"] in assert_envelope(second, 429)
    assert int(second.headers["Retry-After"]) > 0
    assert requests.post(f"{server.url}/sync/COLLECTION/latest", headers=WRITE, json={}).status_code == 429
    historic = {"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:00Z"}
    assert requests.post(f"{server.url}/sync/COLLECTION/historic", headers=WRITE, json=historic).status_code == 429
    assert requests.put(f"{server.url}/sync/PRODUCT", headers=WRITE).status_code == 202


def test_latest_takes_an_optional_sync_to(api):
    server, _ = api
    sync_to = format_time(utcnow() - timedelta(hours=1))
    response = requests.post(f"{server.url}/sync/PRODUCT/latest", headers=WRITE, json={"syncTo": sync_to})
    assert response.status_code == 202 and response.json()["data"]["syncTo"] == sync_to


def test_any_offset_and_a_lowercase_z_are_read_as_utc(api):
    server, _ = api
    body = {"start": "2025-03-01T01:00:00+01:00", "end": "2025-04-01t00:00:00z"}
    data = requests.post(f"{server.url}/sync/PRODUCT/historic", headers=WRITE, json=body).json()["data"]
    assert (data["windowStart"], data["windowEnd"]) == ("2025-03-01T00:00:00Z", "2025-04-01T00:00:00Z")


@pytest.mark.parametrize(
    "body, detail",
    [
        ({"syncTo": "soon"}, "not an ISO-8601 time"),
        ({"syncTo": "0001-01-01T00:00:00+01:00"}, "out of range"),
        ({"syncTo": "2999-01-01T00:00:00Z"}, "future"),
        ({"syncTo": 5}, "syncTo"),
        ({"synTo": "2025-01-01T00:00:00Z"}, "synTo"),
        ([1, 2], "JSON object"),
    ],
)
def test_latest_with_a_bad_sync_to_is_400(api, body, detail):
    server, _ = api
    assert detail in assert_envelope(requests.post(f"{server.url}/sync/PRODUCT/latest", headers=WRITE, json=body), 400)


def test_latest_before_the_last_successful_sync_is_400(api):
    server, store = api
    finished_sync(store)
    body = {"syncTo": format_time(utcnow() - timedelta(days=1))}
    assert "not after" in assert_envelope(requests.post(f"{server.url}/sync/PRODUCT/latest", headers=WRITE, json=body), 400)


def test_historic_queues_its_range(api):
    server, _ = api
    body = {"start": "2025-03-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}
    data = requests.post(f"{server.url}/sync/PRODUCT/historic", headers=WRITE, json=body).json()["data"]
    assert (data["mode"], data["windowStart"], data["windowEnd"]) == ("historic", body["start"], body["end"])


@pytest.mark.parametrize(
    "body, detail",
    [
        (None, "body is required"),
        ({"start": "2025-03-01T00:00:00Z"}, "end"),
        ({"end": "2025-03-01T00:00:00Z"}, "start"),
        ({"start": "March", "end": "2025-04-01T00:00:00Z"}, "not an ISO-8601"),
        ({"start": "2025-04-01T00:00:00Z", "end": "2025-03-01T00:00:00Z"}, "not before"),
        ({"start": "2025-04-01T00:00:00Z", "end": "2025-04-01T00:00:00Z"}, "not before"),
        ({"start": "2025-04-01T00:00:00Z", "end": "2999-04-01T00:00:00Z"}, "future"),
    ],
)
def test_historic_with_a_bad_range_is_400(api, body, detail):
    server, _ = api
    response = requests.post(f"{server.url}/sync/PRODUCT/historic", headers=WRITE, json=body)
    assert detail in assert_envelope(response, 400)


def test_malformed_and_oversized_bodies_get_the_envelope(api):
    server, _ = api
    url = f"{server.url}/sync/PRODUCT/latest"
    assert "not valid JSON" in assert_envelope(requests.post(url, headers=WRITE, data=b'{"syncTo": '), 400)
    assert_envelope(requests.post(url, headers=WRITE, data=b"\xff\xfe"), 400)
    assert_envelope(requests.post(url, headers=WRITE, data=b"{" + b" " * 100_000 + b"}"), 413)


def test_history_is_newest_first_with_every_field(api):
    server, store = api
    first = finished_sync(store)
    second = finished_sync(store, status=SyncStatus.PARTIAL_SUCCESS)
    data = requests.get(f"{server.url}/sync/PRODUCT/history", headers=READ).json()["data"]
    assert [item["syncId"] for item in data] == [second.sync_id, first.sync_id]
    item = data[0]
    for field in ("syncId", "entityType", "syncStatusCode", "syncStatus", "syncUtc", "dataPushed", "windowStart",
                  "windowEnd", "numRecords", "rejectedCount", "failCount", "errorMessage"):
        assert field in item
    assert (item["syncStatusCode"], item["syncStatus"], item["dataPushed"], item["rejectedCount"], item["failCount"]) == (
        2100, "PartialSuccess", True, 3, 2)
    one = requests.get(f"{server.url}/sync/PRODUCT/history", headers=READ, params={"limit": 1}).json()["data"]
    assert len(one) == 1
    for bad in ("0", "101", "ten", "-1"):
        assert_envelope(requests.get(f"{server.url}/sync/PRODUCT/history", headers=READ, params={"limit": bad}), 400)


def test_a_batch_is_returned_as_recorded(api):
    server, store = api
    sync = finished_sync(store)
    store.record_batch(batch_id="b-1", sync_id=sync.sync_id, entity=EntityType.PRODUCT, operation="UPSERT", idempotency_key="k", item_count=3)
    store.record_batch_outcome("b-1", batch_status="COMPLETED", success_count=2, fail_count=1,
                               failed_products=[{"id": "p9", "reason": "blocked"}], ratio="66.67")
    data = requests.get(f"{server.url}/batches/b-1", headers=READ).json()["data"]
    assert {k: data[k] for k in ("batchId", "batchStatus", "successCount", "failCount", "failedProducts", "ratio", "bulkOperationType")} == {
        "batchId": "b-1", "batchStatus": "COMPLETED", "successCount": 2, "failCount": 1,
        "failedProducts": [{"id": "p9", "reason": "blocked"}], "ratio": "66.67", "bulkOperationType": "UPSERT"}
    assert_envelope(requests.get(f"{server.url}/batches/nope", headers=READ), 404)


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/sync/PRODUCT"), ("PUT", "/sync/PRODUCT"), ("POST", "/sync/PRODUCT/latest"),
     ("POST", "/sync/PRODUCT/historic"), ("GET", "/sync/PRODUCT/history"), ("GET", "/batches/x")],
)
def test_every_call_needs_a_known_token(api, method, path):
    server, _ = api
    assert_envelope(requests.request(method, server.url + path), 401)
    assert_envelope(requests.request(method, server.url + path, headers={"Authorization": "Bearer nope"}), 401)
    assert_envelope(requests.request(method, server.url + path, headers={"Authorization": "Basic d3JpdGUtdG9rZW4="}), 401)


@pytest.mark.parametrize("method, path", [("PUT", "/sync/PRODUCT"), ("POST", "/sync/PRODUCT/latest"), ("POST", "/sync/PRODUCT/historic")])
def test_the_read_token_gets_403_on_writes(api, method, path):
    server, _ = api
    assert "only read" in assert_envelope(requests.request(method, server.url + path, headers=READ, json={}), 403)


@pytest.mark.parametrize(
    "method, path",
    [("GET", "/sync/SHOES"), ("PUT", "/sync/product"), ("POST", "/sync/PRODUCTS/latest"), ("GET", "/sync/x/history")],
)
def test_an_unknown_entity_type_is_400(api, method, path):
    server, _ = api
    assert "PRODUCT or COLLECTION" in assert_envelope(requests.request(method, server.url + path, headers=WRITE, json={}), 400)


def test_unknown_routes_and_methods_get_the_envelope(api):
    server, _ = api
    assert_envelope(requests.get(f"{server.url}/nothing/here", headers=READ), 404)
    assert_envelope(requests.delete(f"{server.url}/sync/PRODUCT", headers=WRITE), 405)
    assert_envelope(requests.post(f"{server.url}/sync/PRODUCT", headers=WRITE), 405)


def test_health_and_openapi_need_no_token(api):
    server, _ = api
    assert requests.get(f"{server.url}/healthz").json() == {"status": "ok", "stateStore": "reachable"}
    document = requests.get(f"{server.url}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/sync/{entityType}", "/sync/{entityType}/latest", "/sync/{entityType}/historic",
                                      "/sync/{entityType}/history", "/batches/{batchId}", "/healthz",
                                      "/merchants", "/merchants/{merchantId}", "/syncs", "/records/{entityType}/{recordId}"}
    assert set(document["paths"]["/sync/{entityType}"]) == {"get", "put"}


def test_the_api_refuses_to_start_without_a_write_token(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "SYNC_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "sync_pipeline.cli", "api"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "SYNC_API_TOKEN" in done.stderr


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: orjson.dumps(v)),
    st.fixed_dictionaries(
        {}, optional={"start": json_values | st.text(max_size=40), "end": json_values | st.text(max_size=40),
                      "syncTo": json_values | st.text(max_size=40)},
    ).map(lambda v: orjson.dumps(v)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    path=st.sampled_from(["/sync/PRODUCT/latest", "/sync/COLLECTION/historic", "/sync/PRODUCT", "/sync/%00/latest"]),
    method=st.sampled_from(["POST", "PUT", "GET"]),
    body=bodies,
    token=st.sampled_from(["Bearer write-token", "Bearer read-token", "Bearer x", "", "Basic a"]),
)
def test_no_request_can_crash_the_api_or_escape_the_envelope(api_server, path, method, body, token):
    server, store = api_server
    headers = {"Authorization": token} if token else {}
    response = requests.request(method, server.url + path, data=body, headers=headers, timeout=10)
    assert response.status_code in (200, 202, 400, 401, 403, 404, 405, 413, 429), response.text
    if response.status_code >= 400:
        assert_envelope(response, response.status_code)
    for sync in store.active_syncs():  # keep the next example free to queue
        store.finish_sync(sync.sync_id, SyncStatus.FAILED, error_message="test cleanup")
