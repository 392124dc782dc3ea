"""Times and windows: how a requested mode becomes the window actually synced."""

from datetime import datetime, timedelta, timezone

import pytest

from sync_pipeline.domain import SyncMode, Window, format_time, parse_time, resolve_window

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


def test_times_round_trip_as_utc_with_z():
    assert format_time(parse_time("2024-05-01T02:00:00+02:00")) == "2024-05-01T00:00:00Z"
    assert parse_time("2024-05-01T00:00:00") == datetime(2024, 5, 1, tzinfo=timezone.utc)
    assert format_time(datetime(2024, 5, 1, 0, 0, 0, 123000, tzinfo=timezone.utc)) == "2024-05-01T00:00:00.123000Z"


@pytest.mark.parametrize("text", ["", "yesterday", "2024-13-01T00:00:00Z", None])
def test_unparseable_times_are_errors(text):
    with pytest.raises(ValueError):
        parse_time(text)


def test_first_latest_sync_is_a_full_one():
    assert resolve_window(SyncMode.LATEST, now=NOW, watermark=None) == (SyncMode.FULL, Window(None, NOW))


def test_latest_starts_at_the_watermark_and_ends_at_sync_to():
    mode, window = resolve_window(SyncMode.LATEST, now=NOW, watermark=NOW - 5 * HOUR, sync_to=NOW - HOUR)
    assert mode is SyncMode.LATEST
    assert window == Window(NOW - 5 * HOUR, NOW - HOUR)


def test_latest_up_to_a_time_before_the_watermark_is_refused():
    with pytest.raises(ValueError, match="not after the end of the last successful sync"):
        resolve_window(SyncMode.LATEST, now=NOW, watermark=NOW - HOUR, sync_to=NOW - 2 * HOUR)


def test_sync_to_in_the_future_is_refused():
    with pytest.raises(ValueError, match="future"):
        resolve_window(SyncMode.LATEST, now=NOW, watermark=None, sync_to=NOW + HOUR)


def test_historic_needs_an_ordered_past_range():
    assert resolve_window(SyncMode.HISTORIC, now=NOW, watermark=None, start=NOW - 2 * HOUR, end=NOW - HOUR)[1] == Window(
        NOW - 2 * HOUR, NOW - HOUR
    )
    with pytest.raises(ValueError, match="not before"):
        resolve_window(SyncMode.HISTORIC, now=NOW, watermark=None, start=NOW - HOUR, end=NOW - HOUR)
    with pytest.raises(ValueError, match="future"):
        resolve_window(SyncMode.HISTORIC, now=NOW, watermark=None, start=NOW - HOUR, end=NOW + HOUR)
    with pytest.raises(ValueError, match="needs both"):
        resolve_window(SyncMode.HISTORIC, now=NOW, watermark=None, start=NOW - HOUR)


def test_full_ignores_the_watermark():
    assert resolve_window(SyncMode.FULL, now=NOW, watermark=NOW - HOUR) == (SyncMode.FULL, Window(None, NOW))


def test_a_sync_process_keeps_two_malloc_arenas_unless_the_operator_chose(monkeypatch):
    from sync_pipeline.memory import limit_malloc_arenas

    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True  # glibc, as on every machine this runs on
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False  # glibc read it at start; left as the operator set it
