"""The limit of a sync on one machine: moving the records. Pages the whole catalogue through the
same HTTP stack and parses it (the fetch half), then posts the same records unchanged as gateway
batches and waits for them, as many at once as a sync keeps in flight and followed by the same
watcher; no staging, validation or diffing. Prints JSON."""

import json
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import orjson

from sync_pipeline.domain import EntityType, Window, utcnow
from sync_pipeline.gateway import BatchWatcher, GatewayClient, Operation, idempotency_key
from sync_pipeline.pipeline import prefetch
from sync_pipeline.settings import SANDBOX_GATEWAY_TOKEN, SANDBOX_PRODUCT_TOKEN, gateway_in_flight
from sync_pipeline.sources import ProductServiceClient


def fetch_only(url: str) -> dict:
    client = ProductServiceClient(url, SANDBOX_PRODUCT_TOKEN)
    started = time.perf_counter()
    records = sum(len(page.records) for page in prefetch(client.fetch_pages(EntityType.PRODUCT, Window(None, utcnow()))))
    return {"records": records, "seconds": round(time.perf_counter() - started, 3)}


def fetch_and_post(url: str) -> dict:
    workers = gateway_in_flight()
    source = ProductServiceClient(url, SANDBOX_PRODUCT_TOKEN)
    gateway = GatewayClient(url, SANDBOX_GATEWAY_TOKEN, pool_size=workers * 2)
    started = time.perf_counter()
    records = 0

    def post(batch: list[str], number: int) -> None:
        key = idempotency_key(EntityType.PRODUCT, Operation.UPSERT, [f"baseline:{started}:{number}"])
        submitted = time.monotonic()
        watcher.follow(gateway.submit_upsert(EntityType.PRODUCT, batch, key), submitted)

    with BatchWatcher(gateway, max_in_flight=workers) as watcher, ThreadPoolExecutor(workers) as pool:
        futures = []
        for number, page in enumerate(prefetch(source.fetch_pages(EntityType.PRODUCT, Window(None, utcnow())))):
            records += len(page.records)
            futures.append(pool.submit(post, [orjson.dumps(r).decode() for r in page.records], number))
            if len(futures) > workers * 2:
                futures.pop(0).result()
        for future in futures:
            future.result()
    return {"records": records, "seconds": round(time.perf_counter() - started, 3)}


if __name__ == "__main__":
    what, url = sys.argv[1], sys.argv[2]
    result = fetch_only(url) if what == "fetch" else fetch_and_post(url)
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    result["cpu_seconds"] = round(own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3)
    result["peak_rss_mib"] = round(own.ru_maxrss / 1024, 1)
    print("BENCH " + json.dumps(result))
