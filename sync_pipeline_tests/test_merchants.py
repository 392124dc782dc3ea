"""The merchant registry (CONTRACT §6): add, update, enable, disable and list merchants from the
CLI with no redeploy; tokens for outside services encrypted, Sync API tokens kept as hashes;
the merchant `default` described by the environment; syncs of several merchants side by side."""

import io
import json

import pytest
import requests
import sqlalchemy as sa

from sync_pipeline.cli import main
from sync_pipeline.crypto import SecretBox, SecretKeyError, hash_token
from sync_pipeline.domain import EntityType, SyncStatus
from sync_pipeline.merchants import InvalidMerchant, MerchantRegistry, MerchantSpec, Principal
from sync_pipeline.sandbox.merchants import merchant_credentials
from sync_pipeline.settings import state_url
from sync_pipeline.state import StateStore
from sync_pipeline.state.schema import merchants

from .conftest import SECRET_KEY, start_sandbox, stop_sandbox
from .test_e2e import expected_gateway

ACME = dict(
    merchantId="acme", productServiceUrl="https://acme.example/api", productServiceToken="acme-product-secret",
    gatewayToken="acme-gateway-secret", apiToken="acme-api-token-0123456789", syncHourUtc=5,
)


@pytest.fixture
def registry(state_store, monkeypatch):
    monkeypatch.setenv("SYNC_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("SYNC_API_TOKEN", "default-write-token")
    monkeypatch.setenv("SYNC_API_READ_TOKEN", "default-read-token")
    monkeypatch.setenv("SYNC_OPERATOR_TOKEN", "operator-token-0123456789")
    return MerchantRegistry(state_store)


def stored(store: StateStore, merchant_id: str):
    with store.engine.connect() as conn:
        return conn.execute(sa.select(merchants).where(merchants.c.merchant_id == merchant_id)).one()


def test_a_merchant_is_added_then_updated_with_only_the_fields_given(registry):
    assert registry.put(MerchantSpec(**ACME)) is True
    assert registry.put(MerchantSpec(merchantId="acme", syncHourUtc=7)) is False
    acme = registry.get("acme")
    assert (acme.sync_hour_utc, acme.enabled, acme.product_service_url) == (7, True, ACME["productServiceUrl"])
    connection = registry.connection("acme")
    assert (connection.product_service_token, connection.gateway_token) == ("acme-product-secret", "acme-gateway-secret")
    assert "secret" not in repr(connection)


def test_tokens_are_stored_encrypted_and_api_tokens_only_as_hashes(registry):
    registry.put(MerchantSpec(**ACME, apiReadToken="acme-read-token-0123456789"))
    row = stored(registry.store, "acme")
    assert "acme-product-secret" not in row.product_service_token and "acme-gateway-secret" not in row.gateway_token
    assert row.api_token_hash == hash_token(ACME["apiToken"]) and ACME["apiToken"] not in str(tuple(row))
    with pytest.raises(SecretKeyError, match="not the key"):
        MerchantRegistry(registry.store, SecretBox("another-secret-key-of-32-characters-or-more")).connection("acme")


def test_a_token_tells_whose_it_is_and_what_it_may_do(registry):
    registry.put(MerchantSpec(**ACME, apiReadToken="acme-read-token-0123456789"))
    assert registry.principal_for(ACME["apiToken"]) == Principal("acme", True)
    assert registry.principal_for("acme-read-token-0123456789") == Principal("acme", False)
    assert registry.principal_for("default-write-token") == Principal("default", True)
    assert registry.principal_for("default-read-token") == Principal("default", False)
    assert registry.principal_for("operator-token-0123456789").is_operator
    assert registry.principal_for("nobody-knows-this-token") is None


def test_a_disabled_merchant_is_not_due_and_its_tokens_are_refused(registry):
    registry.put(MerchantSpec(**{**ACME, "syncHourUtc": 2}))
    assert registry.due_at(2) == ["default", "acme"]
    registry.set_enabled("acme", False)
    assert registry.due_at(2) == ["default"]
    assert registry.principal_for(ACME["apiToken"]) is None
    registry.set_enabled("default", False)
    assert registry.due_at(2) == [] and registry.principal_for("default-write-token") is None
    registry.set_enabled("acme", True)
    assert registry.principal_for(ACME["apiToken"]) == Principal("acme", True)


@pytest.mark.parametrize(
    "spec, reason",
    [
        ({"merchantId": "Acme!"}, "merchantId"),
        ({"merchantId": "x" * 41}, "merchantId"),
        ({**ACME, "productServiceUrl": "ftp://acme"}, "http"),
        ({**ACME, "syncHourUtc": 24}, "syncHourUtc"),
        ({**ACME, "apiToken": "short"}, "apiToken"),
        ({**ACME, "colour": "blue"}, "colour"),
        ({"merchantId": "newco", "productServiceUrl": "https://n.example"}, "needs productServiceToken"),
        ({"merchantId": "default", "productServiceToken": "x"}, "configured by the environment"),
        ({**ACME, "apiToken": "default-write-token-is-taken"}, None),
    ],
)
def test_an_invalid_merchant_is_refused_with_the_reason(registry, monkeypatch, spec, reason):
    from sync_pipeline.merchants import parse_spec

    if reason is None:  # a token another principal already has
        monkeypatch.setenv("SYNC_API_TOKEN", "default-write-token-is-taken")
        reason = "already in use"
    with pytest.raises(InvalidMerchant, match=reason):
        registry.put(parse_spec(spec))
    assert registry.get("acme") is None and registry.get("newco") is None


def test_the_merchant_default_needs_no_row_and_takes_only_an_hour_and_a_switch(registry):
    default = registry.get("default")
    assert (default.enabled, default.sync_hour_utc) == (True, 2)
    registry.put(MerchantSpec(merchantId="default", syncHourUtc=4))
    assert registry.get("default").sync_hour_utc == 4 and registry.due_at(4) == ["default"]


# --- the command line ---------------------------------------------------------------------


@pytest.fixture
def cli_env(sync_env, monkeypatch):
    monkeypatch.setenv("SYNC_SECRET_KEY", SECRET_KEY)
    return sync_env


def test_merchants_add_list_disable_enable_from_the_cli(cli_env, tmp_path, capsys, monkeypatch):
    spec = tmp_path / "acme.json"
    spec.write_text(json.dumps(ACME))
    assert main(["merchants", "add", "--file", str(spec)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps({"merchantId": "acme", "syncHourUtc": 9})))
    assert main(["merchants", "add", "--file", "-"]) == 0
    assert main(["merchants", "disable", "acme"]) == 0
    capsys.readouterr()
    assert main(["merchants", "list"]) == 0
    out = capsys.readouterr().out
    [line] = [line for line in out.splitlines() if line.startswith("acme ")]
    assert line.split()[1:3] == ["no", "9"] and "https://acme.example/api" in line
    assert "default" in out
    for secret in (ACME["productServiceToken"], ACME["gatewayToken"], ACME["apiToken"]):
        assert secret not in out
    assert main(["merchants", "enable", "acme"]) == 0


@pytest.mark.parametrize(
    "argv_or_text, needs",
    [
        ('{"merchantId": "acme"', "not valid JSON"),
        ('{"merchantId": "acme", "productServiceUrl": "https://a.example"}', "needs"),
        (["merchants", "disable", "nobody"], "no merchant"),
        (["merchants", "disable", "Not An Id"], "merchantId"),
    ],
)
def test_a_bad_merchant_exits_2_with_the_reason(cli_env, tmp_path, capsys, argv_or_text, needs):
    if isinstance(argv_or_text, str):
        spec = tmp_path / "bad.json"
        spec.write_text(argv_or_text)
        argv = ["merchants", "add", "--file", str(spec)]
    else:
        argv = argv_or_text
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse refuses a malformed id itself
        code = exit_.code
    assert code == 2
    assert needs in capsys.readouterr().err


def test_adding_a_merchant_without_a_secret_key_exits_2(sync_env, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SYNC_SECRET_KEY", raising=False)
    spec = tmp_path / "acme.json"
    spec.write_text(json.dumps(ACME))
    assert main(["merchants", "add", "--file", str(spec)]) == 2
    assert "SYNC_SECRET_KEY" in capsys.readouterr().err


# --- several merchants synced side by side ------------------------------------------------


@pytest.fixture
def merchant_sandbox():
    box = start_sandbox("--merchants", "2", "--merchant-products", "400", "--merchant-collections", "20")
    yield box
    stop_sandbox(box)


def register(sandbox_url: str, merchant_id: str, tmp_path) -> None:
    spec = tmp_path / f"{merchant_id}.json"
    spec.write_text(json.dumps({
        "merchantId": merchant_id, **merchant_credentials(sandbox_url, merchant_id),
        "apiToken": f"{merchant_id}-api-token-0123456789",
    }))
    assert main(["merchants", "add", "--file", str(spec)]) == 0


def merchant_admin(box, merchant_id: str, path: str) -> dict:
    response = requests.get(f"{box.url}/m/{merchant_id}/_admin{path}", timeout=30)
    response.raise_for_status()
    return response.json()


def merchant_gateway(box, merchant_id: str, entity_type: str) -> dict:
    return merchant_admin(box, merchant_id, f"/gateway/{entity_type}")["records"]


def merchant_expected(box, merchant_id: str, kind: str) -> dict:
    source = merchant_admin(box, merchant_id, f"/source/{kind}")
    skip = set(source["invalid"]) | set(source["refused"])
    return {r["id"]: r for r in source["records"] if r.get("id") not in skip}


def test_each_merchant_syncs_into_its_own_gateway_catalogue(cli_env, merchant_sandbox, monkeypatch, tmp_path, capsys):
    box = merchant_sandbox
    monkeypatch.setenv("PRODUCT_SERVICE_URL", box.url)
    monkeypatch.setenv("GATEWAY_URL", box.url)
    for merchant_id in ("m0001", "m0002"):
        register(box.url, merchant_id, tmp_path)
    assert main(["sync", "PRODUCT", "--merchant", "m0001", "--mode", "full"]) == 0
    assert main(["sync", "all", "--merchant", "m0002", "--mode", "full"]) == 0
    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0  # default, as ever
    assert merchant_gateway(box, "m0001", "PRODUCT") == merchant_expected(box, "m0001", "products")
    assert merchant_gateway(box, "m0002", "PRODUCT") == merchant_expected(box, "m0002", "products")
    assert merchant_gateway(box, "m0002", "COLLECTION") == merchant_expected(box, "m0002", "collections")
    assert merchant_gateway(box, "m0001", "COLLECTION") == {}
    assert box.gateway("PRODUCT") == expected_gateway(box, "PRODUCT")
    store = StateStore(state_url())
    for merchant_id in ("m0001", "m0002", "default"):
        [sync] = store.history(EntityType.PRODUCT, merchant=merchant_id)
        assert sync.status in (SyncStatus.SUCCESS, SyncStatus.PARTIAL_SUCCESS) and sync.merchant_id == merchant_id
        assert sync.num_records == store.count_held(EntityType.PRODUCT, merchant=merchant_id) > 0
    capsys.readouterr()
    assert main(["status", "PRODUCT", "--merchant", "m0001"]) == 0
    out = capsys.readouterr().out
    assert "of merchant m0001" in out and store.history(EntityType.PRODUCT, merchant="m0001")[0].sync_id in out
    store.dispose()


def test_a_disabled_or_unknown_merchant_is_never_synced(cli_env, merchant_sandbox, tmp_path, capsys):
    register(merchant_sandbox.url, "m0001", tmp_path)
    assert main(["merchants", "disable", "m0001"]) == 0
    for merchant_id, reason in (("m0001", "disabled"), ("nobody", "no merchant")):
        with pytest.raises(SystemExit) as exit_:
            main(["sync", "PRODUCT", "--merchant", merchant_id])
        assert exit_.value.code == 2 and reason in capsys.readouterr().err
