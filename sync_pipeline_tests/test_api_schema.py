"""Schemathesis against /openapi.json: no server errors, no response that breaks the document."""

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from .conftest import OPERATOR_TOKEN, dagster_home, start_api, stop_process

AUTH = {"Authorization": "Bearer write-token"}
OPERATOR = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}


@pytest.fixture(scope="module")
def api_base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schema")
    server = start_api(f"sqlite:///{tmp / 'state.db'}", dagster_home(tmp / "dagster"))
    yield server.url
    stop_process(server.process)


@pytest.fixture(scope="module")
def api_schema(api_base):
    document = requests.get(f"{api_base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.update(base_url=api_base)
    return schema


OPERATOR_CALLS = ("putMerchant", "listMerchants", "disableMerchant", "listSyncs")


def operation_ids() -> list[str]:
    return ["getSyncStatus", "enqueueSync", "enqueueLatestSync", "enqueueHistoricSync", "getSyncHistory", "getBatch",
            "explainRecord", "health", *OPERATOR_CALLS]


@pytest.mark.parametrize("operation_id", operation_ids())
def test_the_api_keeps_to_its_document(api_schema, operation_id):
    operation = api_schema.find_operation_by_id(operation_id)

    @given(case=operation.as_strategy())
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        # Semantic checks (end not in the future, start before end, one sync at a time) are
        # stricter than a schema can say, so schema-valid data may rightly get a documented 400/429.
        headers = OPERATOR if operation_id in OPERATOR_CALLS else AUTH
        case.call_and_validate(headers=headers, excluded_checks=[schemathesis.checks.positive_data_acceptance])

    check()
