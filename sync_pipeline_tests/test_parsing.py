"""Listed records parsed in a process of their own stage exactly as those parsed in the sync's."""

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest

from sync_pipeline.domain import EntityType, Window, utcnow
from sync_pipeline.pipeline import SyncScratch, fetch_and_stage
from sync_pipeline.settings import SANDBOX_PRODUCT_TOKEN
from sync_pipeline.sources import ProductServiceClient
from sync_pipeline.staging import StagingStore, connect_scratch, parse_listed
from sync_pipeline.staging.parsing import ParseProcess
from sync_pipeline.state import StateStore

NOW = "2025-03-01T10:00:00Z"
# Every way a record can come: valid; invalid by each kind of rule; numbers that must go out as
# written; a number no double holds; a lone surrogate; not an object; nested deep; no id at all.
RAWS = [
    b'{"id": "p1", "title": "Caf\xc3\xa9", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1299, "x": null}',
    b'{"id": "p2", "title": " ", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1}',
    b'{"id": "p3", "title": "t", "updatedAt": "2025-03-01T10:00:00+02:00", "listPrice": -1}',
    b'{"id": "p4", "title": "t", "updatedAt": "2025-03-01t10:00:00z", "listPrice": 12.5}',
    b'{"id": "p5", "title": "t", "updatedAt": "last Tuesday", "listPrice": 5}',
    b'{"listPrice": 18446744073709551616, "id": "p6", "title": "t", "updatedAt": "2025-03-01T10:00:00Z",'
    b' "m": {"long": 0.1000000000000000055511151231257827, "kept": 1.50, "exp": 1E5}}',
    b'{"id": "p7", "title": "t", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1, "m": {"x": 1e400}}',
    b'{"id": "p8", "title": "\\ud800", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1}',
    b'["p9"]',
    b'{"id": "p10", "title": "t", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1, "deep": '
    + b"[" * 600 + b"]" * 600 + b"}",
    b'{"title": "no id", "updatedAt": "2025-03-01T10:00:00Z", "listPrice": 1}',
    b"{}",
]


def here_and_apart(raws: list[bytes], entity: EntityType = EntityType.PRODUCT):
    seqs = [10 + i for i in range(len(raws))]
    hashes = [f"{i:032x}" for i in range(len(raws))]
    with ParseProcess(entity) as parsing:
        apart = parsing.submit(raws, seqs, hashes).result(timeout=60)
    return parse_listed(entity, raws, seqs, hashes).table(), apart


@pytest.mark.parametrize("entity", list(EntityType))
def test_a_chunk_parsed_apart_is_the_chunk_parsed_here_column_for_column(entity):
    here, apart = here_and_apart(RAWS, entity)
    assert apart.schema == here.schema
    assert apart.to_pylist() == here.to_pylist()
    reasons = dict(zip(here["seq"].to_pylist(), here["reason"].to_pylist()))
    assert reasons[10] is None and "out of range" in reasons[16] and "surrogate" in reasons[17]


def test_many_chunks_come_back_in_order_and_an_empty_one_too():
    records = [orjson.dumps({"id": f"p{i}", "title": "t", "updatedAt": NOW, "listPrice": i}) for i in range(3000)]
    with ParseProcess(EntityType.PRODUCT) as parsing:
        futures = [parsing.submit(records[i : i + 700], range(i, i + len(records[i : i + 700])), ["h"] * len(records[i : i + 700]))
                   for i in range(0, 3000, 700)]
        futures.append(parsing.submit([], [], []))
        tables = [future.result(timeout=60) for future in futures]
    assert [seq for table in tables for seq in table["seq"].to_pylist()] == list(range(3000))
    assert tables[-1].num_rows == 0


def test_what_parsing_raises_apart_is_raised_here_and_the_process_goes_on():
    with ParseProcess(EntityType.PRODUCT) as parsing:
        with pytest.raises(ValueError) as apart:
            parsing.submit([b"not json"], [0], ["h"]).result(timeout=60)
        assert parsing.submit(RAWS[:1], [0], ["h"]).result(timeout=60).num_rows == 1
    with pytest.raises(ValueError) as here:
        parse_listed(EntityType.PRODUCT, [b"not json"], [0], ["h"])
    assert type(apart.value) is type(here.value) and str(apart.value) == str(here.value)


def test_a_parsing_process_that_dies_fails_its_chunks_and_does_not_hang():
    with ParseProcess(EntityType.PRODUCT) as parsing:
        parsing._process.kill()
        with pytest.raises(RuntimeError, match="process parsing listed records ended"):
            parsing.submit(RAWS, range(len(RAWS)), ["h"] * len(RAWS)).result(timeout=60)


def test_a_sync_failing_while_chunks_are_handed_apart_ends_the_process_at_once(capfd):
    """The chunks in flight are of no use to a failing sync: the child is ended, not left to
    finish them or to read half a chunk."""
    records = [orjson.dumps({"id": f"p{i}", "title": "t" * 200, "updatedAt": NOW, "listPrice": i}) for i in range(40_000)]
    with pytest.raises(KeyError), ParseProcess(EntityType.PRODUCT) as parsing:
        for start in range(0, len(records), 10_000):
            parsing.submit(records[start : start + 10_000], range(start, start + 10_000), ["h"] * 10_000)
        started = time.monotonic()
        raise KeyError("the sync failed")
    assert time.monotonic() - started < 2
    assert parsing._process.returncode == -signal.SIGKILL
    assert "Error" not in capfd.readouterr().err  # no traceback of a half-read chunk


def test_a_parsing_process_ends_when_the_sync_that_started_it_is_killed():
    """A sync killed mid-listing (SIGKILL: nothing of it runs after) leaves no process behind."""
    script = (
        "import os, signal\n"
        "from sync_pipeline.domain import EntityType\n"
        "from sync_pipeline.staging.parsing import ParseProcess\n"
        "parsing = ParseProcess(EntityType.PRODUCT)\n"
        "print(parsing._process.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    # the child's stderr is not the run's: the run returns when the sync dies, not when the child does
    sync = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, timeout=60)
    assert sync.returncode == -signal.SIGKILL
    child = int(sync.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def staged_rows(tmp_path, sandbox, name: str, parse_apart: bool, state_url: str | None = None) -> tuple[list, object]:
    """A full sync's listing of the sandbox staged in a fresh scratch, with the records parsed in
    chunks of 700: here, or (after the first 1,400) apart; from a state store of its own, empty,
    or from `state_url`'s."""
    directory = tmp_path / name
    directory.mkdir()
    state = StateStore(state_url or f"sqlite:///{directory / 'state.db'}")
    source = ProductServiceClient(sandbox.url, SANDBOX_PRODUCT_TOKEN)
    try:
        with connect_scratch(directory / "staging.duckdb") as connection:
            scratch = SyncScratch(
                state=state, staging=StagingStore(connection), directory=directory, merchant="default",
                entity=EntityType.PRODUCT, sync_id=f"sync-{name}",
            )
            result = fetch_and_stage(source, scratch, Window(None, utcnow()), full=True, chunk_rows=700,
                                     parse_apart=parse_apart)
            rows = connection.execute(
                "SELECT seq, id, updated_at, raw, reason, content_hash, listed_hash, unparsed FROM fetched ORDER BY seq"
            ).fetchall()
            known = connection.execute("SELECT * EXCLUDE (source_seen_at, source_sync_id, rejected_at) FROM known ORDER BY record_id").fetchall()
            return rows + known, result.counts
    finally:
        source.close()
        state.dispose()


def handed_apart(monkeypatch, after: int = 1400) -> list[int]:
    """How many records each chunk handed to a parsing process held (the chunk is still parsed),
    once `after` have been parsed here."""
    handed = []
    submit = ParseProcess.submit
    monkeypatch.setattr(ParseProcess, "submit", lambda self, raws, *rest: handed.append(len(raws)) or submit(self, raws, *rest))
    monkeypatch.setattr("sync_pipeline.pipeline.PARSE_APART_AFTER", after)
    return handed


def test_a_full_sync_stages_the_same_rows_with_its_records_parsed_here_or_apart(tmp_path, sandbox, monkeypatch):
    handed = handed_apart(monkeypatch)
    here_rows, here_counts = staged_rows(tmp_path, sandbox, "here", parse_apart=False)
    assert handed == []
    apart_rows, apart_counts = staged_rows(tmp_path, sandbox, "apart", parse_apart=True)
    assert sum(handed) >= 3000  # all but the first pages (2,000 records) went apart
    assert apart_counts == here_counts and here_counts.rejected > 0
    assert apart_rows == here_rows


def test_a_full_re_sync_stages_the_same_rows_with_the_changed_records_parsed_here_or_apart(sync_env, sandbox, monkeypatch):
    """After a first sync, most records are listed as the gateway holds them (taken unparsed, by
    the index), and the state store's rows are loaded while the listing pages. What is parsed
    goes apart from the first record on: the few invalid or refused records of a chunk otherwise
    held, and the updated ones, listed last."""
    from sync_pipeline.cli import main
    from sync_pipeline.settings import state_url

    assert main(["sync", "PRODUCT", "--mode", "full"]) == 0
    sandbox.admin("POST", "/source/products/update", json={"count": 2500})
    handed = handed_apart(monkeypatch, after=1)
    here_rows, here_counts = staged_rows(sync_env, sandbox, "here", parse_apart=False, state_url=state_url())
    apart_rows, apart_counts = staged_rows(sync_env, sandbox, "apart", parse_apart=True, state_url=state_url())
    assert min(handed) < 100 and max(handed) == 1000  # a few of a held chunk; a chunk of updated ones
    assert apart_counts == here_counts
    assert apart_rows == here_rows
    assert sum(1 for row in here_rows[: here_counts.fetched] if row[7]) > 2000  # taken unparsed


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "100000 100000\n"}, 1.0),  # a pod limited to one CPU: parsed in the sync's process
    ({"cpu.max": "150000 100000\n"}, 1.5),
    ({"cpu.max": "max 100000\n"}, None),  # no quota: the cores it may run on
    ({"cfs_quota_us": "50000\n", "cfs_period_us": "100000\n"}, 0.5),  # cgroup v1
    ({"cfs_quota_us": "-1\n", "cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_the_cores_a_sync_may_use_are_those_it_may_run_on_within_its_cgroup_s_quota(tmp_path, monkeypatch, files, expected):
    from sync_pipeline import settings

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(settings, "_CPU_QUOTAS", (
        (str(tmp_path / "cpu.max"), None), (str(tmp_path / "cfs_quota_us"), str(tmp_path / "cfs_period_us")),
    ))
    may_run_on = len(os.sched_getaffinity(0))
    assert settings.usable_cores() == (min(may_run_on, expected) if expected is not None else may_run_on)
