"""The state store's writes made behind: in order, and a failed write fails what follows."""

from concurrent.futures import wait

import pytest

from sync_pipeline.writebehind import StateWriteError, WriteBehind


def test_writes_run_one_after_the_other_in_the_order_asked_for():
    done: list[int] = []
    with WriteBehind() as writes:
        for n in range(500):
            writes(done.append, n)
    assert done == list(range(500))


def test_a_failed_write_is_raised_by_every_later_call_and_by_close_and_no_write_asked_for_after_runs():
    done: list[int] = []

    def refuse() -> None:
        raise OSError("no room")

    writes = WriteBehind()
    writes(done.append, 1)
    wait([writes(refuse)])
    with pytest.raises(StateWriteError, match="did not take a write: no room") as raised:
        writes(done.append, 2)
    assert isinstance(raised.value.__cause__, OSError)
    with pytest.raises(StateWriteError, match="no room"):
        writes.close()
    assert done == [1]


def test_a_failed_write_does_not_hide_the_error_a_block_ends_with():
    def refuse() -> None:
        raise OSError("no room")

    with pytest.raises(KeyError, match="the gateway"):
        with WriteBehind() as writes:
            wait([writes(refuse)])
            raise KeyError("the gateway")
