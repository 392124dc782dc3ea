"""The peer a data engineer would pick instead: dlt's rest_api source with the cursor paginator,
fetching and staging the same catalogue into its duckdb destination. Prints JSON.
Runs in a virtual environment of its own (.venv-dlt), so dlt's pins never touch the project's."""

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import dlt
from dlt.sources.rest_api import rest_api_source



def run(url: str, token: str) -> dict:
    source = rest_api_source(
        {
            "client": {
                "base_url": url,
                "auth": {"type": "bearer", "token": token},
                "paginator": {"type": "cursor", "cursor_path": "meta.nextCursor", "cursor_param": "cursor"},
            },
            "resources": [
                {"name": "products", "endpoint": {"path": "products", "params": {"limit": 1000}, "data_selector": "data"}}
            ],
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = dlt.pipeline(
            pipeline_name="bench_dlt",
            pipelines_dir=str(Path(tmp) / "pipelines"),
            destination=dlt.destinations.duckdb(str(Path(tmp) / "dlt.duckdb")),
            dataset_name="catalogue",
        )
        started = time.perf_counter()
        info = pipeline.run(source)
        seconds = time.perf_counter() - started
        with pipeline.sql_client() as client:
            rows = client.execute_sql("SELECT count(*) FROM products")[0][0]
    assert not info.has_failed_jobs
    return {"records": rows, "seconds": round(seconds, 3)}


if __name__ == "__main__":
    result = run(sys.argv[1], sys.argv[2])
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print("BENCH " + json.dumps(result))
