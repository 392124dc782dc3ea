"""The Sync API with many merchants (CONTRACT §6): the token decides the merchant, a merchant never
sees another's syncs or batches, the operator manages the registry and reads the sync health list,
and one sync per (merchant, type) holds under a hammer from two merchants at once."""

import threading
from datetime import timedelta

import pytest
import requests
import sqlalchemy as sa

from sync_pipeline.domain import EntityType, SyncMode, SyncStatus, utcnow
from sync_pipeline.merchants import MerchantRegistry, MerchantSpec
from sync_pipeline.state import StateStore
from sync_pipeline.state.schema import batches, merchants, syncs

from .conftest import OPERATOR_TOKEN, SECRET_KEY, dagster_home, start_api, stop_process
from .test_api import assert_envelope

OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
DEFAULT = {"Authorization": "Bearer write-token"}


def spec(merchant_id: str, **fields) -> dict:
    return {
        "productServiceUrl": f"https://{merchant_id}.example/api", "productServiceToken": f"{merchant_id}-product-secret",
        "gatewayToken": f"{merchant_id}-gateway-secret", "apiToken": f"{merchant_id}-api-token-0123456789", **fields,
    }


def auth(merchant_id: str, read: bool = False) -> dict:
    return {"Authorization": f"Bearer {merchant_id}-{'read' if read else 'api'}-token-0123456789"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api-merchants")
    url = f"sqlite:///{tmp / 'state.db'}"
    store = StateStore(url)
    api = start_api(url, dagster_home(tmp / "dagster"), log=tmp / "access.log")
    yield api, store, tmp / "access.log"
    stop_process(api.process)
    store.dispose()


@pytest.fixture
def api(server, monkeypatch):
    """The module's server, over an emptied state store, with merchants acme and zeta."""
    api, store, log = server
    with store.engine.begin() as conn:
        for table in (batches, syncs, merchants):
            conn.execute(sa.delete(table))
    for merchant_id in ("acme", "zeta"):
        body = spec(merchant_id, apiReadToken=f"{merchant_id}-read-token-0123456789")
        assert requests.put(f"{api.url}/merchants/{merchant_id}", headers=OPERATOR, json=body).status_code == 201
    return api.url, store, log


def finished(store: StateStore, merchant: str, entity=EntityType.PRODUCT, status=SyncStatus.SUCCESS):
    sync = store.enqueue_sync(entity, SyncMode.FULL, origin="test", merchant=merchant)
    store.start_sync(sync.sync_id, run_id="r")
    return store.finish_sync(sync.sync_id, status, num_records=7, published=7)


def test_the_token_decides_the_merchant(api):
    url, store, _ = api
    acme = finished(store, "acme")
    assert requests.get(f"{url}/sync/PRODUCT", headers=auth("acme")).json()["meta"]["syncId"] == acme.sync_id
    assert_envelope(requests.get(f"{url}/sync/PRODUCT", headers=auth("zeta")), 404)
    assert_envelope(requests.get(f"{url}/sync/PRODUCT", headers=DEFAULT), 404)
    queued = requests.put(f"{url}/sync/COLLECTION", headers=auth("zeta")).json()["data"]
    assert store.get_sync(queued["syncId"]).merchant_id == "zeta"
    history = requests.get(f"{url}/sync/PRODUCT/history", headers=auth("acme", read=True)).json()["data"]
    assert [item["syncId"] for item in history] == [acme.sync_id] and history[0]["merchantId"] == "acme"
    assert requests.get(f"{url}/sync/PRODUCT/history", headers=auth("zeta", read=True)).json()["data"] == []
    assert "only read" in assert_envelope(requests.put(f"{url}/sync/PRODUCT", headers=auth("acme", read=True)), 403)


def test_a_merchant_never_sees_another_merchants_batch_or_names_another_merchant(api):
    url, store, _ = api
    sync = finished(store, "acme")
    store.record_batch(batch_id="b-acme", sync_id=sync.sync_id, entity=EntityType.PRODUCT, operation="UPSERT",
                       idempotency_key="k", item_count=1, merchant="acme")
    assert requests.get(f"{url}/batches/b-acme", headers=auth("acme")).status_code == 200
    assert_envelope(requests.get(f"{url}/batches/b-acme", headers=auth("zeta")), 404)
    assert_envelope(requests.get(f"{url}/batches/b-acme", headers=DEFAULT), 404)
    assert_envelope(requests.get(f"{url}/sync/PRODUCT", headers=auth("zeta"), params={"merchantId": "acme"}), 404)
    assert_envelope(requests.put(f"{url}/sync/PRODUCT", headers=auth("zeta"), params={"merchantId": "acme"}), 404)
    assert store.active_syncs() == []
    own = requests.get(f"{url}/sync/PRODUCT", headers=auth("acme"), params={"merchantId": "acme"})
    assert own.status_code == 200


def test_the_operator_names_the_merchant_of_every_sync_call(api):
    url, store, _ = api
    finished(store, "zeta")
    assert "merchantId" in assert_envelope(requests.get(f"{url}/sync/PRODUCT", headers=OPERATOR), 400)
    assert_envelope(requests.get(f"{url}/sync/PRODUCT", headers=OPERATOR, params={"merchantId": "nobody"}), 404)
    data = requests.get(f"{url}/sync/PRODUCT", headers=OPERATOR, params={"merchantId": "zeta"}).json()["data"]
    assert data["numRecords"] == 7
    accepted = requests.put(f"{url}/sync/PRODUCT", headers=OPERATOR, params={"merchantId": "acme"})
    assert accepted.status_code == 202 and store.get_sync(accepted.json()["data"]["syncId"]).merchant_id == "acme"


def test_the_operator_manages_the_registry_and_never_sees_a_secret(api):
    url, _, _ = api
    created = requests.put(f"{url}/merchants/newco", headers=OPERATOR, json=spec("newco", syncHourUtc=6))
    assert created.status_code == 201 and created.json()["data"]["syncHourUtc"] == 6
    updated = requests.put(f"{url}/merchants/newco", headers=OPERATOR, json={"syncHourUtc": 8})
    assert updated.status_code == 200 and updated.json()["data"]["syncHourUtc"] == 8
    listed = requests.get(f"{url}/merchants", headers=OPERATOR)
    assert [m["merchantId"] for m in listed.json()["data"]] == ["default", "acme", "newco", "zeta"]
    for secret in ("newco-product-secret", "newco-gateway-secret", "newco-api-token", "acme-api-token"):
        assert secret not in listed.text and secret not in created.text
    assert requests.get(f"{url}/sync/PRODUCT/history", headers=auth("newco")).status_code == 200
    disabled = requests.delete(f"{url}/merchants/newco", headers=OPERATOR)
    assert disabled.status_code == 200 and disabled.json()["data"]["enabled"] is False
    assert_envelope(requests.get(f"{url}/sync/PRODUCT/history", headers=auth("newco")), 401)
    assert "disabled" in assert_envelope(
        requests.put(f"{url}/sync/PRODUCT", headers=OPERATOR, params={"merchantId": "newco"}), 409
    )
    assert_envelope(requests.delete(f"{url}/merchants/nobody", headers=OPERATOR), 404)


@pytest.mark.parametrize(
    "path, body, detail",
    [
        ("/merchants/newco", {"productServiceUrl": "https://n.example"}, "needs"),
        ("/merchants/newco", {**spec("newco"), "merchantId": "other"}, "path"),
        ("/merchants/Bad!", spec("x"), "merchantId"),
        ("/merchants/newco", {**spec("newco"), "syncHourUtc": -1}, "syncHourUtc"),
        ("/merchants/newco", {**spec("newco"), "apiToken": "acme-api-token-0123456789"}, "already in use"),
    ],
)
def test_an_invalid_merchant_is_a_400(api, path, body, detail):
    url, _, _ = api
    assert detail in assert_envelope(requests.put(f"{url}{path}", headers=OPERATOR, json=body), 400)


@pytest.mark.parametrize("method, path", [("GET", "/merchants"), ("PUT", "/merchants/x"), ("DELETE", "/merchants/x"),
                                          ("GET", "/syncs")])
def test_operator_calls_need_the_operator_token(api, method, path):
    url, _, _ = api
    assert_envelope(requests.request(method, url + path, json=spec("x")), 401)
    assert "operator" in assert_envelope(requests.request(method, url + path, headers=DEFAULT, json=spec("x")), 403)
    assert_envelope(requests.request(method, url + path, headers=auth("acme"), json=spec("x")), 403)


def test_the_sync_health_list_filters_pages_and_totals_by_status_code(api):
    url, store, _ = api
    for _ in range(3):
        finished(store, "acme")
    finished(store, "zeta", status=SyncStatus.SOURCE_UNAVAILABLE)
    finished(store, "zeta", EntityType.COLLECTION, status=SyncStatus.PARTIAL_SUCCESS)
    body = requests.get(f"{url}/syncs", headers=OPERATOR).json()
    assert body["meta"]["totals"] == {"2000": 3, "2100": 1, "4100": 1} and len(body["data"]) == 5
    stamps = [item["syncUtc"] for item in body["data"]]
    assert stamps == sorted(stamps, reverse=True)
    zeta = requests.get(f"{url}/syncs", headers=OPERATOR, params={"merchantId": "zeta", "statusCode": 4100}).json()
    assert [(i["merchantId"], i["syncStatusCode"]) for i in zeta["data"]] == [("zeta", 4100)]
    assert zeta["meta"]["totals"] == {"4100": 1}
    seen, cursor = [], None
    while True:
        page = requests.get(f"{url}/syncs", headers=OPERATOR, params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        seen += [item["syncId"] for item in page["data"]]
        cursor = page["meta"]["nextCursor"]
        if cursor is None:
            break
    assert seen == [item["syncId"] for item in body["data"]]
    future = (utcnow() + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert requests.get(f"{url}/syncs", headers=OPERATOR, params={"since": future}).json()["data"] == []
    assert requests.get(f"{url}/syncs", headers=OPERATOR, params={"until": future}).json()["meta"]["totals"]["2000"] == 3
    for bad in ({"cursor": "nope"}, {"statusCode": "ok"}, {"since": "yesterday"}, {"limit": 0}, {"merchantId": "A B"}):
        assert_envelope(requests.get(f"{url}/syncs", headers=OPERATOR, params=bad), 400)


def test_every_request_leaves_one_access_log_line_without_a_token(api):
    url, _, log = api
    requests.get(f"{url}/sync/PRODUCT/history", headers=auth("acme"), params={"limit": 3})
    requests.get(f"{url}/sync/PRODUCT", headers={"Authorization": "Bearer wrong-token-xyz"})
    import json

    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    mine = [line for line in lines if line["path"].endswith("/sync/PRODUCT/history") and line["merchant"] == "acme"]
    assert mine and mine[-1]["status"] == 200 and mine[-1]["method"] == "GET" and mine[-1]["durationMs"] >= 0
    refused = [line for line in lines if line["status"] == 401]
    assert refused and refused[-1]["merchant"] is None
    text = log.read_text()
    assert "token" not in text.replace('"path"', "")  # no bearer token, no token name, in any line


def test_puts_from_two_merchants_at_once_give_one_202_per_merchant_and_type(tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv("SYNC_SECRET_KEY", SECRET_KEY)
    store = StateStore(postgres_url)
    registry = MerchantRegistry(store)
    for merchant_id in ("acme", "zeta"):
        registry.put(MerchantSpec(merchantId=merchant_id, **spec(merchant_id)))
    apis = [start_api(postgres_url, dagster_home(tmp_path / f"dagster{i}")) for i in range(2)]
    calls = [(merchant, entity) for merchant in ("acme", "zeta") for entity in ("PRODUCT", "COLLECTION")] * 12
    barrier = threading.Barrier(len(calls))
    responses = [None] * len(calls)

    def put(index: int) -> None:
        merchant, entity = calls[index]
        with requests.Session() as session:
            barrier.wait()
            responses[index] = session.put(f"{apis[index % 2].url}/sync/{entity}", headers=auth(merchant), timeout=60)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(calls))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        for api in apis:
            stop_process(api.process)
    accepted = {}
    for (merchant, entity), response in zip(calls, responses):
        assert response.status_code in (202, 429), response.text
        if response.status_code == 202:
            assert (merchant, entity) not in accepted
            accepted[(merchant, entity)] = response.json()["data"]["syncId"]
    assert len(accepted) == 4
    assert sorted((s.merchant_id, s.entity_type.value) for s in store.active_syncs()) == sorted(accepted)
    store.dispose()


def test_a_records_trail_is_read_by_its_merchant_only(api):
    from sync_pipeline.state.schema import records

    url, store, _ = api
    now = utcnow()
    with store.engine.begin() as conn:
        conn.execute(sa.delete(records))
        conn.execute(records.insert().values(
            merchant_id="acme", entity_type="PRODUCT", record_id="p/1", source_hash="h1", source_seen_at=now,
            source_updated_at=now, source_sync_id="s1", held_hash="h1", held_batch_id="b1", held_at=now,
            refused_times=0, pending=0,
        ))
    own = requests.get(f"{url}/records/PRODUCT/p/1", headers=auth("acme", read=True))
    assert own.status_code == 200 and own.json()["data"]["explanation"].startswith("Current at the gateway")
    assert own.json()["data"]["gateway"]["batchId"] == "b1"
    assert_envelope(requests.get(f"{url}/records/PRODUCT/p/1", headers=auth("zeta")), 404)
    assert_envelope(requests.get(f"{url}/records/PRODUCT/nope", headers=auth("acme")), 404)
    assert requests.get(f"{url}/records/PRODUCT/p/1", headers=OPERATOR, params={"merchantId": "acme"}).status_code == 200
    assert_envelope(requests.get(f"{url}/records/SHOES/p/1", headers=auth("acme")), 400)
    document = requests.get(f"{url}/openapi.json").json()
    assert "get" in document["paths"]["/records/{entityType}/{recordId}"]
