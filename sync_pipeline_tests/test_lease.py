"""One sync per entity type, however many ask at once: the hammer, across processes and backends."""

import threading

import pytest
import requests

from sync_pipeline.domain import EntityType
from sync_pipeline.state import StateStore

from .conftest import dagster_home, start_api, stop_process

WRITE = {"Authorization": "Bearer write-token"}


def hammer(urls: list[str], count: int = 50) -> list[requests.Response]:
    """`count` PUTs for one entity type at the same instant, each on its own connection,
    spread over the given API servers."""
    barrier = threading.Barrier(count)
    responses: list[requests.Response] = [None] * count  # type: ignore[list-item]

    def put(index: int) -> None:
        with requests.Session() as session:
            barrier.wait()
            responses[index] = session.put(f"{urls[index % len(urls)]}/sync/PRODUCT", headers=WRITE, timeout=60)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


def assert_exactly_one_accepted(responses: list[requests.Response], store: StateStore) -> None:
    codes = sorted(r.status_code for r in responses)
    others = [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (202, 429)]
    assert codes.count(202) == 1, others
    assert codes.count(429) == len(responses) - 1, others
    [accepted] = [r for r in responses if r.status_code == 202]
    sync_id = accepted.json()["data"]["syncId"]
    for refused in (r for r in responses if r.status_code == 429):
        assert sync_id in refused.json()["error"][0]["detail"]
        assert refused.headers["Retry-After"]
    assert [s.sync_id for s in store.history(EntityType.PRODUCT, 100)] == [sync_id]


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.mark.parametrize("servers", [1, 2])
def test_fifty_concurrent_puts_give_exactly_one_202(state_url, servers, tmp_path):
    store = StateStore(state_url)  # the schema exists before the servers race
    apis = [start_api(state_url, dagster_home(tmp_path / f"dagster{i}")) for i in range(servers)]
    try:
        assert_exactly_one_accepted(hammer([api.url for api in apis]), store)
    finally:
        for api in apis:
            stop_process(api.process)
        store.dispose()
