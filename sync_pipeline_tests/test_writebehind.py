"""The state store's writes made behind: in order, and a failed write fails what follows."""

from concurrent.futures import wait

import pytest

from sync_pipeline.writebehind import WriteBehind


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
    with pytest.raises(OSError, match="no room"):
        writes(done.append, 2)
    with pytest.raises(OSError, match="no room"):
        writes.close()
    assert done == [1]
