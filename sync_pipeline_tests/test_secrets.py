"""No secret leaks (CONTRACT §6): a merchant's planted tokens are searched for in every log line,
the Dagster instance (run config, tags, event logs: everything the UI shows), the state store
and the data directory on disk, `merchants list`, and the Sync API's answers and access log."""

import json

import dagster as dg
import requests

from sync_pipeline.cli import main
from sync_pipeline.defs import build_defs
from sync_pipeline.defs.resources import StateStoreResource
from sync_pipeline.sandbox.merchants import merchant_credentials
from sync_pipeline.settings import data_dir, state_url

from .conftest import OPERATOR_TOKEN, SECRET_KEY, start_api, start_sandbox, stop_process, stop_sandbox

API_TOKEN = "planted-api-token-4f9c2e1d7b"
READ_TOKEN = "planted-read-token-8a6b3c5e0f"


def files_under(*roots):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                yield path


def test_a_merchants_tokens_appear_nowhere(sync_env, monkeypatch, tmp_path, capfd):
    monkeypatch.setenv("SYNC_SECRET_KEY", SECRET_KEY)
    box = start_sandbox("--merchants", "1", "--merchant-products", "120", "--merchant-collections", "5")
    credentials = merchant_credentials(box.url, "m0001")
    planted = [credentials["productServiceToken"], credentials["gatewayToken"], API_TOKEN, READ_TOKEN, SECRET_KEY]
    monkeypatch.setenv("GATEWAY_URL", box.url)
    log = tmp_path / "api-access.log"
    api = start_api(state_url(), sync_env / "dagster_home", log=log)
    try:
        spec = tmp_path / "m0001.json"
        spec.write_text(json.dumps({"merchantId": "m0001", **credentials, "apiToken": API_TOKEN, "apiReadToken": READ_TOKEN}))
        assert main(["merchants", "add", "--file", str(spec)]) == 0
        assert main(["sync", "all", "--merchant", "m0001", "--mode", "full"]) == 0
        assert main(["merchants", "list"]) == 0
        assert main(["status", "--merchant", "m0001"]) == 0
        # a sync asked for through the API, launched by the sensor, run on the instance
        auth = {"Authorization": f"Bearer {API_TOKEN}"}
        assert requests.put(f"{api.url}/sync/PRODUCT", headers=auth).status_code == 202
        defs = build_defs()
        with dg.DagsterInstance.get() as instance:
            with dg.build_sensor_context(
                instance=instance, resources={"state_store": StateStoreResource(url=state_url())}
            ) as context:
                [request] = defs.resolve_sensor_def("sync_requests").evaluate_tick(context).run_requests
            assert defs.resolve_job_def(request.job_name).execute_in_process(instance=instance, tags=request.tags).success
            runs = instance.get_runs()
            shown = [json.dumps(run.run_config) + json.dumps(run.tags) for run in runs]
            shown += [str(entry) for run in runs for entry in instance.all_logs(run.run_id)]
        answers = [
            requests.get(f"{api.url}/merchants", headers={"Authorization": f"Bearer {OPERATOR_TOKEN}"}).text,
            requests.get(f"{api.url}/sync/PRODUCT/history", headers=auth).text,
            requests.get(f"{api.url}/sync/PRODUCT", headers={"Authorization": f"Bearer {READ_TOKEN}"}).text,
        ]
    finally:
        stop_process(api.process)
        stop_sandbox(box)
    output = capfd.readouterr()
    assert len(runs) == 3 and all(run.status is dg.DagsterRunStatus.SUCCESS for run in runs)
    texts = {"stdout and stderr, Dagster's logs included": output.out + output.err,
             "run config, tags and event logs": "\n".join(shown), "API answers": "\n".join(answers)}
    disk = {str(path): path.read_bytes() for path in files_under(sync_env / "dagster_home", data_dir(), tmp_path)
            if path != spec}
    assert any(path.endswith("state.db") for path in disk) and log.read_text()
    for secret in planted:
        for where, text in texts.items():
            assert secret not in text, f"{secret[:12]}… in {where}"
        for path, content in disk.items():
            assert secret.encode() not in content, f"{secret[:12]}… in {path}"
