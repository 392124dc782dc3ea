"""The `sync-pipeline` command: sync, status, merchants, api, sandbox (CONTRACT §5, §6)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from contextlib import contextmanager
from datetime import datetime

from .domain import (
    DEFAULT_MERCHANT, EntityType, SyncMode, SyncStatus, check_merchant_id, format_time, parse_time, resolve_window, utcnow,
)
from .errors import EntityBusy

EXIT_OK, EXIT_FAILED, EXIT_BAD_ARGS, EXIT_BUSY = 0, 1, 2, 3


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one clear line, exit 2
        self.exit(EXIT_BAD_ARGS, f"sync-pipeline: error: {message}\n")


def _time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _entities(text: str) -> list[EntityType]:
    if text == "all":
        return list(EntityType)
    try:
        return [EntityType.parse(text)]
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _entity(text: str) -> EntityType:
    try:
        return EntityType.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _merchant(text: str) -> str:
    try:
        return check_merchant_id(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sync-pipeline", description="Catalogue sync: product service -> gateway.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=ArgumentParser)

    sync = commands.add_parser("sync", help="run one sync through Dagster, in this process")
    sync.add_argument("entity", type=_entities, metavar="{PRODUCT,COLLECTION,all}")
    sync.add_argument("--mode", choices=[m.value for m in SyncMode], default=SyncMode.LATEST.value)
    sync.add_argument("--sync-to", type=_time, help="latest: up to this time, exclusive (default now)")
    sync.add_argument("--start", type=_time, help="historic: records updated from this time (inclusive)")
    sync.add_argument("--end", type=_time, help="historic: up to this time (exclusive)")
    sync.add_argument("--allow-deletions", action="store_true", help="full: delete even above the safety share")
    sync.add_argument("--merchant", type=_merchant, default=DEFAULT_MERCHANT, help="whose catalogue (default: default)")
    sync.add_argument("--verbose", action="store_true", help="show the Dagster run's log")

    sandbox = commands.add_parser("sandbox", help="serve the sandbox product service and gateway")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8765)
    sandbox.add_argument("--products", type=int, default=5000)
    sandbox.add_argument("--collections", type=int, default=200)
    sandbox.add_argument("--seed", type=int, default=42)
    sandbox.add_argument("--faults", default="none")
    sandbox.add_argument("--state-file", help="keep the gateway's holdings in this file across restarts")
    sandbox.add_argument("--merchants", type=int, default=0, help="merchants besides default: m0001... under /m/{id}")
    sandbox.add_argument("--merchant-products", type=int, default=2000)
    sandbox.add_argument("--merchant-collections", type=int, default=50)
    sandbox.add_argument("--batch-seconds", type=_seconds_range, metavar="S or LOW-HIGH",
                         help="how long the gateway takes over each batch: 0 completes it at once, 0.05-0.2 a"
                              " random time in that range (default: 0.02 queued, then 0.03 processing)")

    api = commands.add_parser("api", help="serve the Sync API (needs SYNC_API_TOKEN)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    api.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")

    status = commands.add_parser("status", help="print sync status and recent history")
    status.add_argument("entity", nargs="?", type=_entities, default=list(EntityType), metavar="ENTITY")
    status.add_argument("--limit", type=int, default=10)
    status.add_argument("--merchant", type=_merchant, default=DEFAULT_MERCHANT)

    explain = commands.add_parser("explain", help="why a record is, or is not, at the gateway")
    explain.add_argument("entity", type=_entity, metavar="{PRODUCT,COLLECTION}")
    explain.add_argument("record_id", metavar="ID")
    explain.add_argument("--merchant", type=_merchant, default=DEFAULT_MERCHANT)
    explain.add_argument("--json", action="store_true", help="the whole answer as JSON")

    merchants = commands.add_parser("merchants", help="the merchant registry: add, list, enable, disable")
    actions = merchants.add_subparsers(dest="action", required=True, parser_class=ArgumentParser)
    add = actions.add_parser("add", help="add a merchant, or update one, from a JSON object")
    add.add_argument("--file", required=True, help="a JSON file, or - for standard input")
    actions.add_parser("list", help="one line per merchant, no secret")
    for action in ("enable", "disable"):
        actions.add_parser(action, help=f"{action} a merchant").add_argument("merchant_id", type=_merchant, metavar="ID")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "sync":
        return _sync(args)
    if args.command == "sandbox":
        return _sandbox(args)
    if args.command == "api":
        return _api(args)
    if args.command == "merchants":
        return _merchants(args)
    if args.command == "explain":
        return _explain(args)
    return _status(args)


def _check_sync_args(parser_error, args) -> None:
    mode = SyncMode(args.mode)
    if mode is SyncMode.HISTORIC:
        if args.start is None or args.end is None:
            parser_error("--mode historic needs --start and --end")
    elif args.start is not None or args.end is not None:
        parser_error("--start and --end are for --mode historic")
    if args.sync_to is not None and mode is not SyncMode.LATEST:
        parser_error("--sync-to is for --mode latest")
    try:
        resolve_window(mode, now=utcnow(), watermark=None, sync_to=args.sync_to, start=args.start, end=args.end)
    except ValueError as error:
        parser_error(str(error))


def _sync(args) -> int:
    def bad(message: str) -> None:
        print(f"sync-pipeline: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_ARGS)

    _check_sync_args(bad, args)
    _default_dagster_home()
    from dagster import DagsterInstance

    from .defs import build_defs
    from .defs.partitions import ensure_merchant_partitions
    from .defs.runs import close_abandoned, run_tags_for
    from .defs.runs import job_name
    from .merchants import MerchantRegistry
    from .settings import state_url
    from .state import open_state_store

    state = open_state_store(state_url())
    merchant = args.merchant
    known = MerchantRegistry(state).get(merchant)
    if known is None:
        bad(f"no merchant {merchant!r}: add it with `sync-pipeline merchants add`")
    if not known.enabled:
        bad(f"merchant {merchant} is disabled: enable it with `sync-pipeline merchants enable {merchant}`")
    defs = build_defs()
    mode = SyncMode(args.mode)
    worst = EXIT_OK
    whose = "" if merchant == DEFAULT_MERCHANT else f" of merchant {merchant}"
    with DagsterInstance.get() as instance:
        ensure_merchant_partitions(instance, [merchant])
        for entity in args.entity:
            for abandoned in close_abandoned(state, instance, entity, merchant):
                print(f"{entity.value}: closed sync {abandoned.sync_id} as 4900 Abandoned: {abandoned.error_message}")
            try:
                sync = state.enqueue_sync(
                    entity, mode, origin="cli", merchant=merchant, sync_to=args.sync_to, start=args.start,
                    end=args.end, allow_deletions=args.allow_deletions,
                )
            except EntityBusy as busy:
                print(f"sync-pipeline: {busy}", file=sys.stderr)
                worst = max(worst, EXIT_BUSY)
                continue
            except ValueError as error:
                print(f"sync-pipeline: error: {error}", file=sys.stderr)
                worst = max(worst, EXIT_BAD_ARGS)
                continue
            print(f"{entity.value}: sync {sync.sync_id} ({sync.mode.value}){whose} started", flush=True)
            with _progress_bar(entity, enabled=not args.verbose and sys.stderr.isatty()):
                result = defs.resolve_job_def(job_name(entity)).execute_in_process(
                    instance=instance,
                    partition_key=merchant,
                    tags=run_tags_for(sync),
                    # the run's log is in the instance (and the UI) either way; on the terminal only if asked
                    run_config={"loggers": {"console": {"config": {"log_level": "INFO" if args.verbose else "CRITICAL"}}}},
                    raise_on_error=False,
                )
            final = state.get_sync(sync.sync_id)
            if final.status.is_active:  # the run died before a step could close the sync
                message = f"run {result.run_id} ended without finishing the sync"
                final = state.finish_sync(sync.sync_id, SyncStatus.FAILED, error_message=message)
            print(_summary(final))
            if not final.status.is_success:
                worst = max(worst, EXIT_FAILED)
    return worst


@contextmanager
def _progress_bar(entity: EntityType, *, enabled: bool):
    """A one-line progress bar on the terminal while the sync runs: pages, records, records/s."""
    if not enabled:
        yield
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from . import progress

    # the terminal itself: Dagster captures the step's stderr into its compute logs
    terminal = os.fdopen(os.dup(sys.stderr.fileno()), "w")
    with terminal, Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                            console=Console(file=terminal), transient=True) as bar:
        task = bar.add_task(f"{entity.value}: starting")

        def show(event) -> None:
            bar.update(task, description=f"{entity.value} {event.phase}: {event.describe()}", refresh=True)

        progress.add_listener(show)
        try:
            yield
        finally:
            progress.remove_listener(show)


def _summary(sync) -> str:
    """One line: how the sync ended and its counts, or, if it failed, why."""
    if not sync.status.is_success:  # the reason, in one line; the exit code says the rest
        return f"{sync.entity_type.value}: {sync.status.code} {sync.status.text}: {sync.error_message or 'no reason given'}"
    line = (
        f"{sync.entity_type.value}: {sync.status.code} {sync.status.text}: fetched {sync.fetched},"
        f" rejected {sync.rejected}, published {sync.published}, refused {sync.failed},"
        f" deleted {sync.deleted}, batches {sync.batches}"
    )
    if sync.parked:
        line += f", parked {sync.parked}"
    if sync.invalid_held:
        line += f", held though now invalid {sync.invalid_held}"
    if sync.num_records is not None:
        line += f"; the gateway holds {sync.num_records}"
    if sync.started_at and sync.finished_at:
        line += f" ({(sync.finished_at - sync.started_at).total_seconds():.1f}s)"
    return line


def _seconds_range(text: str) -> tuple[float, float | None]:
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(?:-\s*(\d+(?:\.\d*)?)\s*)?", text)
    if not match or (match[2] is not None and float(match[2]) < float(match[1])):
        raise argparse.ArgumentTypeError(f"not seconds, or a range of them from low to high (0.05-0.2): {text!r}")
    return float(match[1]), None if match[2] is None else float(match[2])


def _sandbox(args) -> int:
    from .sandbox.app import SandboxConfig, serve
    from .sandbox.faults import make_fault

    try:
        make_fault(args.faults)
    except ValueError as error:
        print(f"sync-pipeline: error: {error}", file=sys.stderr)
        return EXIT_BAD_ARGS
    config = SandboxConfig(
        products=args.products, collections=args.collections, seed=args.seed, faults=args.faults,
        state_file=args.state_file, merchants=args.merchants, merchant_products=args.merchant_products,
        merchant_collections=args.merchant_collections,
        **({} if args.batch_seconds is None else
           {"queue_delay": 0.0, "process_delay": args.batch_seconds[0], "process_delay_max": args.batch_seconds[1]}),
    )
    print(f"sandbox: product service and gateway on http://{args.host}:{args.port}", flush=True)
    serve(config, host=args.host, port=args.port)
    return EXIT_OK


def _api(args) -> int:
    if not os.environ.get("SYNC_API_TOKEN"):
        print("sync-pipeline: error: SYNC_API_TOKEN is not set; the Sync API will not start without it", file=sys.stderr)
        return EXIT_BAD_ARGS
    _default_dagster_home()
    import uvicorn

    print(f"Sync API on http://{args.host}:{args.port}/product-gateway/v1 (OpenAPI: /product-gateway/v1/openapi.json)", flush=True)
    uvicorn.run(
        "sync_pipeline.api.server:app", factory=False, host=args.host, port=args.port, workers=args.workers,
        log_level="warning",
    )
    return EXIT_OK


def _explain(args) -> int:
    import json

    from .settings import record_policy, state_url
    from .state import open_state_store
    from .trail import record_trail

    trail = record_trail(
        open_state_store(state_url()), args.entity, args.record_id, merchant=args.merchant,
        park_after=record_policy()["park_after"],
    )
    if trail is None:
        whose = "" if args.merchant == DEFAULT_MERCHANT else f" of merchant {args.merchant}"
        print(f"sync-pipeline: no sync has seen {args.entity.value} {args.record_id!r}{whose}", file=sys.stderr)
        return EXIT_FAILED
    answer = trail.as_dict()
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
        return EXIT_OK
    print(f"{args.entity.value} {args.record_id}: {answer['explanation']}")
    source, gateway = answer["source"], answer["gateway"]
    print(f"  source   updatedAt {source['updatedAt']}, hash {source['contentHash']}, fetched by sync"
          f" {source['fetchedBySync']} at {source['fetchedAt']}"
          + (f"; invalid since {source['rejectedSince']}: {source['rejectedReason']}" if not source["valid"] else "; valid"))
    print(f"  gateway  hash {gateway['contentHash'] or '-'}, batch {gateway['batchId'] or '-'}, at {gateway['appliedAt'] or '-'}")
    if answer["refusal"]:
        refusal = answer["refusal"]
        print(f"  refused  {refusal['times']}x at hash {refusal['contentHash']}, last {refusal['at']}: {refusal['reason']}"
              + (" (parked)" if refusal["parked"] else ""))
    deletion = answer["deletion"]
    if deletion["pending"] or deletion["batchId"]:
        print(f"  deletion {'owed' if deletion['pending'] else 'done'}"
              + (f", batch {deletion['batchId']} at {deletion['deletedAt']}" if deletion["batchId"] else ""))
    if answer["events"]:
        print("  events, newest first:")
        for event in answer["events"]:
            extra = ", ".join(filter(None, [event["batchId"] and f"batch {event['batchId']}", event["detail"]]))
            by = f"sync {event['syncId']}" if event["syncId"] else "sync unknown (its batch is no longer in the state store)"
            print(f"    {event['at']}  {event['event']:9} {by}" + (f"  {extra}" if extra else ""))
    return EXIT_OK


def _merchants(args) -> int:
    import orjson

    from .crypto import SecretKeyError
    from .merchants import InvalidMerchant, MerchantRegistry, UnknownMerchant, parse_spec
    from .settings import state_url
    from .state import open_state_store

    registry = MerchantRegistry(open_state_store(state_url()))
    if args.action == "list":
        print(f"{'merchant':40}  {'enabled':7}  {'hour':>4}  product service")
        for merchant in registry.list():
            print(
                f"{merchant.merchant_id:40}  {'yes' if merchant.enabled else 'no':7}  {merchant.sync_hour_utc:>4}"
                f"  {merchant.product_service_url or '-'}"
            )
        return EXIT_OK
    try:
        if args.action == "add":
            text = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
            try:
                data = orjson.loads(text)
            except orjson.JSONDecodeError as error:
                raise InvalidMerchant(f"not valid JSON: {error}") from None
            spec = parse_spec(data)
            created = registry.put(spec)
            _add_merchant_partition(spec.merchantId)
            print(f"merchant {spec.merchantId} {'added' if created else 'updated'}")
        else:
            registry.set_enabled(args.merchant_id, args.action == "enable")
            print(f"merchant {args.merchant_id} {args.action}d")
    except (InvalidMerchant, UnknownMerchant, SecretKeyError, OSError) as error:
        message = error.args[0] if isinstance(error, UnknownMerchant) else str(error)
        print(f"sync-pipeline: error: {message}", file=sys.stderr)
        return EXIT_BAD_ARGS
    return EXIT_OK


def _add_merchant_partition(merchant_id: str) -> None:
    """Show the merchant in the Dagster UI at once (the merchant_partitions sensor would too)."""
    _default_dagster_home()
    from dagster import DagsterInstance

    from .defs.partitions import ensure_merchant_partitions

    with DagsterInstance.get() as instance:
        ensure_merchant_partitions(instance, [merchant_id])


def _status(args) -> int:
    from .settings import state_url
    from .state import open_state_store

    state = open_state_store(state_url())
    merchant = args.merchant
    header = f"{'sync id':36}  {'mode':8} {'status':22} {'requested':20} {'window':43} {'fetched':>8} {'rejected':>8} {'published':>9} {'refused':>7} {'deleted':>7} {'parked':>6} {'held':>7}"
    for entity in args.entity:
        last = state.last_successful(entity, merchant=merchant)
        print(f"== {entity.value}" + ("" if merchant == DEFAULT_MERCHANT else f" of merchant {merchant}"))
        if last is None:
            print("   never synced successfully")
        else:
            print(f"   last successful sync: {format_time(last.finished_at)}, the gateway holds {last.num_records} records")
        history = state.history(entity, args.limit, merchant=merchant)
        if not history:
            continue
        print("   " + header)
        for sync in history:
            window = f"{_short(sync.window_start) or '-':>20} .. {_short(sync.window_end) or '-':20}"
            print(
                f"   {sync.sync_id:36}  {sync.mode.value:8} {f'{sync.status.code} {sync.status.text}':22}"
                f" {_short(sync.requested_at):20} {window:43} {sync.fetched:>8} {sync.rejected:>8}"
                f" {sync.published:>9} {sync.failed:>7} {sync.deleted:>7} {sync.parked:>6} {sync.num_records if sync.num_records is not None else '-':>7}"
            )
            if sync.error_message and not sync.status.is_success:
                print(f"      {sync.error_message}")
    return EXIT_OK


def _short(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value else ""


def _default_dagster_home() -> None:
    """DAGSTER_HOME defaults to the repository root (CONTRACT §5), where dagster.yaml lives; its
    run queue reads the deployment's cap on concurrent syncs from SYNC_MAX_CONCURRENT_SYNCS."""
    from .settings import REPO_ROOT, max_concurrent_syncs

    os.environ.setdefault("SYNC_MAX_CONCURRENT_SYNCS", str(max_concurrent_syncs()))
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(REPO_ROOT)


if __name__ == "__main__":
    sys.exit(main())
