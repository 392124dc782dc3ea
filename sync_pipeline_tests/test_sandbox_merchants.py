"""The sandbox plays many merchants (CONTRACT §6): a product service each under /m/{id}, one
gateway keeping a catalogue per gateway token, and the default merchant exactly as before."""

import hashlib
import time
from datetime import datetime, timezone

import pytest
import requests

from sync_pipeline.sandbox.app import SandboxConfig
from sync_pipeline.sandbox.catalogue import Catalogue
from sync_pipeline.sandbox.merchants import merchant_credentials, merchant_seed
from sync_pipeline.sandbox.process import start_in_thread

GATEWAY = "/product-gateway/v1/catalog"

# Computed from the code before merchants existed: generation, then a few admin changes.
DEFAULT_CATALOGUE_DIGESTS = {
    (5000, 200, 42): (
        "c55aa7ac0e9150e2b6938aabd46adb5a089c978e3218b2201bc8924ac9e8438c",
        "e214cdb3936a90620866762aeefcb887eccea65f9a1849508ae292ccbcb23c31",
    ),
    (2500, 50, 42): (
        "0dfbc61fc2125b1761f8f75919c0b8e9f0c9bd93a0d062c313cc2edb26317fd3",
        "1569b6eab3e7beaf4820bc20fb216b8a9f63e891b7a225890ef52775c4b25d4b",
    ),
}


def catalogue_digest(catalogue: Catalogue) -> str:
    digest = hashlib.sha256()
    for entity in (catalogue.products, catalogue.collections):
        for key in entity.keys:
            digest.update(f"{key[0]}|{key[1]}|".encode())
            digest.update(entity.records[key[1]])
            digest.update(b"\n")
        digest.update(repr(sorted(entity.invalid)).encode())
        digest.update(repr(sorted(entity.refused)).encode())
    return digest.hexdigest()


@pytest.fixture
def box():
    """Default merchant of 300 products, and merchants m0001 and m0002 of 40."""
    sandbox = start_in_thread(
        SandboxConfig(products=300, collections=20, merchants=2, merchant_products=40, merchant_collections=4,
                      queue_delay=0.005, process_delay=0.005)
    )
    yield sandbox
    sandbox.stop()


def auth(token: str, **headers) -> dict:
    return {"Authorization": f"Bearer {token}", **headers}


def creds(box, merchant_id: str) -> dict:
    return merchant_credentials(box.url, merchant_id)


def submit(box, merchant_id: str, body: dict, key: str, entity: str = "PRODUCT") -> requests.Response:
    headers = auth(creds(box, merchant_id)["gatewayToken"], **{"Idempotency-Key": key})
    return requests.post(f"{box.url}{GATEWAY}/{entity}/batches", json=body, headers=headers, timeout=10)


def get_batch(box, batch_id: str, token: str) -> requests.Response:
    return requests.get(f"{box.url}{GATEWAY}/batches/{batch_id}", headers=auth(token), timeout=10)


def wait_done(box, merchant_id: str, batch_id: str) -> dict:
    for _ in range(200):
        data = get_batch(box, batch_id, creds(box, merchant_id)["gatewayToken"]).json()["data"]
        if data["batchStatus"] in ("COMPLETED", "FAILED"):
            return data
        time.sleep(0.01)
    raise AssertionError(f"batch {batch_id} never finished")


def read(box, merchant_id: str, path: str, token: str | None = None, **params) -> requests.Response:
    """GET from a merchant's product service, with its own token unless told otherwise."""
    merchant = creds(box, merchant_id)
    headers = auth(token or merchant["productServiceToken"])
    return requests.get(f"{merchant['productServiceUrl']}{path}", params=params, headers=headers, timeout=30)


def admin(box, path: str, merchant_id: str = "default", method: str = "GET", **kwargs) -> requests.Response:
    prefix = "" if merchant_id == "default" else f"/m/{merchant_id}"
    return requests.request(method, f"{box.url}{prefix}/_admin{path}", timeout=10, **kwargs)


@pytest.mark.parametrize("sizes", sorted(DEFAULT_CATALOGUE_DIGESTS))
def test_default_catalogue_is_the_one_from_before_merchants(sizes):
    catalogue = Catalogue(*sizes)
    generated, changed = DEFAULT_CATALOGUE_DIGESTS[sizes]
    assert catalogue_digest(catalogue) == generated
    now = datetime(2026, 12, 1, tzinfo=timezone.utc)
    catalogue.update("products", ids=None, count=150, now=now)
    catalogue.create("products", count=5, now=now)
    catalogue.create("collections", count=3, now=now)
    catalogue.delete("products", ids=None, count=4)
    catalogue.update("collections", ids=None, count=2, now=now)
    assert catalogue_digest(catalogue) == changed


def test_default_merchant_serves_its_catalogue_at_the_root_with_the_old_tokens(box):
    assert merchant_credentials(box.url, "default") == {
        "productServiceUrl": box.url,
        "productServiceToken": "sandbox-product-token",
        "gatewayToken": "sandbox-gateway-token",
    }
    expected = Catalogue(300, 20, 42).products
    records = b",".join(expected.records[key[1]] for key in expected.keys)
    response = requests.get(f"{box.url}/products", params={"limit": 1000}, headers=auth("sandbox-product-token"), timeout=10)
    assert response.content == b'{"data":[' + records + b'],"meta":{"nextCursor":null}}'
    stats = admin(box, "/stats").json()
    assert {"requests", "gateway", "fault", "faultSides", "faultsInjected"} <= stats.keys()
    assert stats["merchants"] == 2 and stats["requests"] == {"product": 1, "gateway": 0}


def test_each_merchant_has_its_own_product_service_bound_to_its_token(box):
    pages = {}
    for merchant_id in ("m0001", "m0002"):
        merchant = creds(box, merchant_id)
        assert merchant["productServiceUrl"] == f"{box.url}/m/{merchant_id}"
        assert merchant["productServiceToken"] == f"sandbox-product-token-{merchant_id}"
        pages[merchant_id] = read(box, merchant_id, "/products", limit=1000).json()["data"]
        assert len(pages[merchant_id]) == 40
        first = pages[merchant_id][0]
        assert read(box, merchant_id, f"/products/{first['id']}").json() == first
    assert pages["m0001"] != pages["m0002"]
    expected = Catalogue(40, 4, merchant_seed(42, "m0001")).products
    assert [r["id"] for r in pages["m0001"]] == [k[1] for k in expected.keys]
    for merchant_id, path, token in [
        ("m0001", "/products", "sandbox-product-token-m0002"),
        ("m0001", "/products", "sandbox-product-token"),
        ("default", "/products", "sandbox-product-token-m0001"),
        ("m0001", "/collections/coll-0000001", "sandbox-product-token-m0002"),
    ]:
        refused = read(box, merchant_id, path, token=token)
        assert refused.status_code == 401 and refused.json()["title"] == "Unauthorised token provided"
    unknown = requests.get(f"{box.url}/m/nobody/products", headers=auth("sandbox-product-token-nobody"), timeout=10)
    assert unknown.status_code == 404 and not unknown.json()["type"].endswith("entity-not-found")


def test_merchant_seeds_are_stable_and_distinct():
    assert merchant_seed(42, "m0001") == 3317860954  # crc32: the same in every process
    assert len({merchant_seed(42, f"m{n:04d}") for n in range(1, 201)}) == 200


def test_hundreds_of_merchants_start_at_once_and_generate_on_first_use():
    started = time.monotonic()
    sandbox = start_in_thread(SandboxConfig(products=10, collections=2, merchants=200))
    try:
        assert time.monotonic() - started < 10
        merchants = sandbox.app.state.sandbox.merchants
        assert sorted(merchants)[::199] == ["m0001", "m0200"]
        assert all(m._catalogue is None for m in merchants.values())
        assert len(read(sandbox, "m0200", "/collections").json()["data"]) == 50
        assert [m_id for m_id, m in merchants.items() if m._catalogue is not None] == ["m0200"]
    finally:
        sandbox.stop()


def test_a_merchant_is_made_and_listed_through_the_admin_surface(box):
    made = admin(box, "/merchants/acme-2", method="PUT", json={"products": 30, "collections": 3, "seed": 7})
    assert made.status_code == 201
    assert made.json() == {"merchantId": "acme-2", **merchant_credentials(box.url, "acme-2")}
    assert len(read(box, "acme-2", "/products").json()["data"]) == 30
    again = admin(box, "/merchants/acme-2", method="PUT", json={"products": 5})
    assert again.status_code == 200
    assert len(read(box, "acme-2", "/products").json()["data"]) == 5
    listed = admin(box, "/merchants").json()["merchants"]
    assert [m["merchantId"] for m in listed] == ["acme-2", "m0001", "m0002"]
    assert listed[1] == {"merchantId": "m0001", **creds(box, "m0001")}
    bad = [("Acme", {}), ("default", {}), ("-x", {}), ("x" * 41, {}), ("ok", {"products": -1}), ("ok", {"faults": "nope"})]
    for bad_id, body in bad:
        assert admin(box, f"/merchants/{bad_id}", method="PUT", json=body).status_code == 400


def test_a_gateway_token_sees_only_its_own_batches_and_holdings(box):
    record = {"id": "shared-id", "title": "from m0001"}
    batch_id = submit(box, "m0001", {"operation": "UPSERT", "records": [record]}, "k1").json()["data"]["batchId"]
    assert wait_done(box, "m0001", batch_id)["successCount"] == 1
    for other in ("m0002", "default"):
        peek = get_batch(box, batch_id, creds(box, other)["gatewayToken"])
        assert peek.status_code == 404 and peek.json()["error"][0]["status"] == "404"
        assert admin(box, "/gateway/PRODUCT", other).json()["records"] == {}
    assert admin(box, "/gateway/PRODUCT", "m0001").json()["records"] == {"shared-id": record}
    assert admin(box, "/stats", "m0001").json()["gateway"]["itemsApplied"] == 1
    assert admin(box, "/stats").json()["gateway"]["itemsApplied"] == 0
    assert get_batch(box, batch_id, "sandbox-gateway-token-nobody").status_code == 401


def test_the_same_idempotency_key_from_two_merchants_makes_two_batches(box):
    body = {"operation": "DELETE", "ids": ["prod-0000001"]}
    first = submit(box, "m0001", body, "same-key").json()["data"]["batchId"]
    second = submit(box, "m0002", body, "same-key").json()["data"]["batchId"]
    replay = submit(box, "m0001", body, "same-key").json()["data"]["batchId"]
    assert first != second and replay == first
    stats = {m: admin(box, "/stats", m).json()["gateway"] for m in ("m0001", "m0002")}
    assert (stats["m0001"]["batches"], stats["m0001"]["replays"]) == (1, 1)
    assert (stats["m0002"]["batches"], stats["m0002"]["replays"]) == (1, 0)


def test_refusals_are_planted_per_merchant_catalogue(box):
    for merchant_id in ("m0001", "default"):
        refused = admin(box, "/source/products", merchant_id).json()["refused"]
        source = admin(box, "/source/products", merchant_id).json()["records"]
        records = [r for r in source if r.get("id")][:5]
        if refused:
            records.append(next(r for r in source if r.get("id") == refused[0]))
        submitted = submit(box, merchant_id, {"operation": "UPSERT", "records": records}, f"refusals-{merchant_id}")
        outcome = wait_done(box, merchant_id, submitted.json()["data"]["batchId"])
        assert [f["id"] for f in outcome["failedProducts"]] == refused[:1]


def test_a_merchants_fault_touches_only_that_merchant(box):
    assert admin(box, "/faults", "m0001", method="PUT", json={"name": "auth"}).json() == {"fault": "auth"}
    assert read(box, "m0001", "/products").status_code == 401
    assert read(box, "m0002", "/products").status_code == 200
    assert submit(box, "m0001", {"operation": "DELETE", "ids": ["x"]}, "f1").status_code == 401  # its first on that side
    assert submit(box, "m0002", {"operation": "DELETE", "ids": ["x"]}, "f1").status_code == 202
    assert submit(box, "m0001", {"operation": "DELETE", "ids": ["x"]}, "f1").status_code == 403
    assert admin(box, "/stats", "m0001").json()["faultsInjected"] == 3
    assert admin(box, "/stats").json()["fault"] == "none"


def test_garbage_reaches_listings_under_a_prefix(box):
    admin(box, "/faults", "m0002", method="PUT", json={"name": "garbage-always:product"})
    cursor = read(box, "m0002", "/products", limit=10).json()["meta"]["nextCursor"]
    spoiled = read(box, "m0002", "/products", limit=10, cursor=cursor)
    with pytest.raises(ValueError):
        spoiled.json()
    assert read(box, "m0001", "/products", limit=10, cursor=cursor).json()["data"]
