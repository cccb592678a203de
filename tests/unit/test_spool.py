"""The disk spool: FIFO across restarts, torn writes cut off, bounded, one owner at a time."""

from __future__ import annotations

import pytest

from producers.spool import Spool, SpoolFull, SpoolLocked, encode


def records(start: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(b"org-%d" % (i % 3), b'{"n":%d}' % i) for i in range(start, start + n)]


def drain(spool: Spool, chunk: int = 7) -> list[tuple[bytes, bytes]]:
    out = []
    while True:
        got, pos = spool.read(chunk)
        if not got:
            return out
        out.extend(got)
        spool.commit(pos)


def test_records_come_back_in_order_and_the_spool_empties(tmp_path):
    with Spool(tmp_path, segment_bytes=200) as spool:
        spool.append_many(records(0, 50))
        assert spool.pending_bytes == sum(len(encode(k, v)) for k, v in records(0, 50))
        assert drain(spool) == records(0, 50)
        assert spool.empty
    assert list(tmp_path.glob("*.spool")) == []


def test_undelivered_records_survive_a_restart_and_delivered_ones_do_not_return(tmp_path):
    with Spool(tmp_path, segment_bytes=300) as spool:
        spool.append_many(records(0, 40))
        got, pos = spool.read(15)
        spool.commit(pos)
        got2, _ = spool.read(5)  # read but never committed: not delivered
    assert got == records(0, 15) and got2 == records(15, 5)
    with Spool(tmp_path, segment_bytes=300) as spool:
        spool.append_many(records(40, 10))
        assert drain(spool) == records(15, 35)


def test_a_torn_record_at_the_tail_is_cut_off(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append_many(records(0, 5))
    segment = next(tmp_path.glob("*.spool"))
    whole = encode(b"org-9", b'{"n":999}')
    with open(segment, "ab") as f:
        f.write(whole[:-3])  # the process died in the middle of this write
    with Spool(tmp_path) as spool:
        spool.append(b"org-1", b'{"n":5}')
        assert drain(spool) == [*records(0, 5), (b"org-1", b'{"n":5}')]


def test_prepended_records_come_first(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append_many(records(10, 5))
        spool.prepend(records(0, 10))
        spool.append_many(records(15, 5))
    with Spool(tmp_path) as spool:
        assert drain(spool, chunk=4) == records(0, 20)


def test_prepend_after_a_partial_read_keeps_the_undelivered_rest(tmp_path):
    with Spool(tmp_path) as spool:
        spool.append_many(records(10, 10))
        _, pos = spool.read(3)
        spool.commit(pos)
        spool.prepend(records(0, 2))
        assert drain(spool) == records(0, 2) + records(13, 7)


def test_a_full_spool_refuses_with_a_clear_error(tmp_path):
    one = len(encode(b"org-0", b'{"n":0}'))
    with Spool(tmp_path, max_bytes=3 * one) as spool:
        spool.append_many(records(0, 3))
        with pytest.raises(SpoolFull) as info:
            spool.append(b"org-0", b'{"n":0}')
        assert "is full" in str(info.value) and "spool_max_bytes" in str(info.value)
        got, pos = spool.read(1)
        spool.commit(pos)
        spool.append(b"org-0", b'{"n":0}')  # room again once one was delivered


def test_one_owner_at_a_time(tmp_path):
    with Spool(tmp_path), pytest.raises(SpoolLocked, match="in use by another emitter"):
        Spool(tmp_path).open()
    with Spool(tmp_path):
        pass  # released on close
