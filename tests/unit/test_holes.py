"""Holes in a partition's offsets: read again until they fill, or taken as gaps at last."""

from dataclasses import dataclass

from streams.holes import HoleCheck


@dataclass(frozen=True)
class Rec:
    offset: int


def recs(*offsets: int) -> list[Rec]:
    return [Rec(o) for o in offsets]


def offsets(taken) -> list[int]:
    return [r.offset for r in taken.records]


def test_contiguous_records_are_all_taken():
    check = HoleCheck()
    taken = check.take(0, 10, recs(10, 11, 12), now=0.0)
    assert offsets(taken) == [10, 11, 12]
    assert taken.reread_from is None and taken.gaps == []


def test_records_stop_at_a_hole_which_is_read_again_and_fills():
    check = HoleCheck()
    taken = check.take(0, 10, recs(10, 11, 14, 15), now=0.0)  # 12 and 13 missing
    assert offsets(taken) == [10, 11]
    assert taken.reread_from == 12
    # The second read has them.
    taken = check.take(0, 12, recs(12, 13, 14, 15), now=0.01)
    assert offsets(taken) == [12, 13, 14, 15]
    assert taken.reread_from is None and taken.gaps == []


def test_a_hole_at_the_first_offset_takes_nothing_yet():
    check = HoleCheck()
    taken = check.take(3, 100, recs(105, 106), now=0.0)
    assert taken.records == [] and taken.reread_from == 100


def test_a_hole_that_stays_is_a_gap_only_after_enough_reads_and_time():
    check = HoleCheck(reads=3, wait_s=0.2)
    fetch = recs(10, 12)
    assert check.take(0, 10, fetch, now=0.0).reread_from == 11  # read 1
    # Taken with its record 10 each time: the caller read on from 11.
    assert check.take(0, 11, recs(12), now=0.05).reread_from == 11  # read 2
    assert check.take(0, 11, recs(12), now=0.1).reread_from == 11  # read 3, too soon
    assert check.take(0, 11, recs(12), now=0.15).reread_from == 11  # still too soon
    taken = check.take(0, 11, recs(12, 13), now=0.25)
    assert offsets(taken) == [12, 13]
    assert taken.gaps == [(11, 11)] and taken.reread_from is None


def test_time_alone_does_not_make_a_gap():
    check = HoleCheck(reads=3, wait_s=0.2)
    assert check.take(0, 5, recs(7), now=0.0).reread_from == 5
    assert check.take(0, 5, recs(7), now=10.0).reread_from == 5  # only the second read
    assert check.take(0, 5, recs(7), now=10.1).gaps == [(5, 6)]


def test_a_new_hole_starts_its_count_afresh():
    check = HoleCheck(reads=2, wait_s=0.0)
    assert check.take(0, 0, recs(0, 2), now=0.0).reread_from == 1
    # Offset 1 came back; now 3 is missing: a hole of its own, read again too.
    taken = check.take(0, 1, recs(1, 2, 4), now=0.1)
    assert offsets(taken) == [1, 2] and taken.reread_from == 3
    taken = check.take(0, 3, recs(4), now=0.2)
    assert offsets(taken) == [4] and taken.gaps == [(3, 3)]


def test_after_an_accepted_gap_a_later_hole_in_the_same_fetch_is_read_again():
    check = HoleCheck(reads=2, wait_s=0.0)
    assert check.take(0, 0, recs(2), now=0.0).reread_from == 0  # the hole at 0: read 1
    taken = check.take(0, 0, recs(2, 3, 6), now=1.0)  # read 2: a gap; then 4-5 missing
    assert taken.gaps == [(0, 1)]
    assert offsets(taken) == [2, 3] and taken.reread_from == 4


def test_partitions_are_apart_and_forget_drops_a_hole():
    check = HoleCheck(reads=2, wait_s=0.0)
    assert check.take(0, 0, recs(1), now=0.0).reread_from == 0
    assert check.take(1, 0, recs(0, 1), now=0.0).reread_from is None
    check.forget(0)  # the partition was sought elsewhere (a rebalance, a new log)
    assert check.take(0, 0, recs(1), now=0.1).reread_from == 0  # its first read again
    assert check.take(0, 0, recs(1), now=0.2).gaps == [(0, 0)]


def test_waiting_says_how_long_the_oldest_hole_has_been_read_again():
    check = HoleCheck(reads=2, wait_s=5.0)
    for i in range(5):
        taken = check.take(0, 5, recs(7, 8), now=float(i))
        assert taken.records == [] and taken.reread_from == 5 and taken.gaps == []
    assert check.waiting(now=4.0) == 4.0
    taken = check.take(0, 5, recs(5, 6, 7, 8), now=4.5)  # it filled
    assert offsets(taken) == [5, 6, 7, 8] and check.waiting(now=4.5) == 0.0
