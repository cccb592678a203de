"""End-to-end acknowledgement bookkeeping: what a stored mark confirms, and what it does not."""

from __future__ import annotations

from producers.confirm import Offsets, Ticket, Unconfirmed
from schemas.marks import StoredMarks, decode_marks, encode_marks


def rec(n: int) -> tuple[bytes, bytes]:
    return (b"org", b'{"n":%d}' % n)


def test_a_mark_confirms_what_is_below_it_in_its_cluster_and_partition_only():
    u = Unconfirmed()
    u.add("A", [(0, 10, rec(1)), (0, 11, rec(2)), (1, 10, rec(3))])
    u.add("B", [(0, 5, rec(4))])
    assert len(u) == 4
    settled = u.mark("A", 0, 11)
    assert settled.confirmed == 1 and settled.lost == [] and len(u) == 3
    assert u.mark("B", 1, 100).confirmed == 0  # nothing of B on partition 1
    assert u.mark("A", 0, 12).confirmed == 1
    assert u.mark("A", 0, 12).confirmed == 0  # the same mark again: nothing more
    assert len(u) == 2


def test_an_acknowledgement_a_mark_already_passed_is_confirmed_at_once():
    u = Unconfirmed()
    u.mark("A", 2, 50)
    settled = u.add("A", [(2, 49, rec(1)), (2, 50, rec(2))])
    assert settled.confirmed == 1 and len(u) == 1


def test_another_cluster_confirms_nothing_and_its_records_are_handed_back():
    u = Unconfirmed()
    u.add("A", [(0, 1, rec(1)), (3, 7, rec(2))])
    assert u.mark("B", 0, 1_000).confirmed == 0  # a new broker's offsets mean nothing for A's
    again = u.take_others("B")
    assert sorted(again) == [rec(1), rec(2)] and len(u) == 0


def test_an_event_acknowledged_in_a_gap_is_handed_back_not_confirmed():
    u = Unconfirmed()
    u.add("A", [(3, 6, rec(1)), (3, 7, rec(2)), (3, 829, rec(3)), (3, 830, rec(4))])
    settled = u.mark("A", 3, 900, gaps=[(7, 829)])
    assert settled.confirmed == 2
    assert settled.lost == [rec(2), rec(3)]
    assert len(u) == 0
    # An acknowledgement that comes after the mark is judged by its gaps too.
    late = u.add("A", [(3, 8, rec(5))])
    assert late.confirmed == 0 and late.lost == [rec(5)]


def test_a_ticket_is_done_when_all_its_records_are_confirmed():
    u = Unconfirmed()
    ticket = Ticket(3)
    u.add("A", [(0, 1, rec(1)), (1, 1, rec(2)), (1, 2, rec(3))], ticket)
    assert u.mark("A", 0, 2).done == [] and not ticket.done
    assert u.mark("A", 1, 3).done == [ticket] and ticket.done


def test_a_ticket_with_a_record_handed_back_is_never_done():
    u = Unconfirmed()
    ticket = Ticket(2)
    u.add("A", [(0, 1, rec(1)), (0, 2, rec(2))], ticket)
    settled = u.mark("A", 0, 3, gaps=[(2, 2)])
    assert settled.done == [] and ticket.lost and not ticket.done


def test_records_of_a_durable_ticket_are_never_handed_back():
    u = Unconfirmed()
    spooled = Ticket(2, durable=True)
    u.add("A", [(0, 1, rec(1)), (0, 2, rec(2))], spooled)
    u.add("A", [(0, 3, rec(3))])
    assert u.take_others("B") == [rec(3)]  # the spool still has the other two
    assert spooled.lost and len(u) == 0
    kept = Ticket(1, durable=True)
    u.add("B", [(0, 9, rec(4))], kept)
    assert u.mark("B", 0, 10, gaps=[(9, 9)]).lost == [] and kept.lost


def test_take_all_keeps_what_close_must_write_to_the_spool():
    u = Unconfirmed()
    u.add("A", [(0, 1, rec(1))])
    u.add("A", [(0, 2, rec(2))], Ticket(1, durable=True))
    assert u.take_all() == [rec(1)] and len(u) == 0


def test_the_mark_message_round_trips_and_anything_else_is_ignored():
    marks = StoredMarks("tally-embedded-x", "e", 1, {0: 5, 3: 9}, {3: [(1, 2)]})
    assert decode_marks(encode_marks(marks)) == marks
    for junk in (b"", b"[]", b'{"cluster": 1}', b"not json", None):
        assert decode_marks(junk) is None


def test_an_offset_acknowledged_twice_means_the_log_was_rewritten():
    """Two batches given the same offsets by one broker: one of them is not in its log,
    whatever a mark says, so everything that broker did not confirm goes back."""
    u = Unconfirmed()
    first = u.add("A", [(3, 490, rec(1)), (3, 491, rec(2)), (1, 7, rec(3))])
    assert not first.rewritten
    assert u.add("A", [(3, 492, rec(4))]).rewritten is False
    again = u.add("A", [(3, 491, rec(5)), (3, 493, rec(6))])
    assert again.rewritten and again.confirmed == 0
    u.add("B", [(3, 491, rec(7))])  # another broker's offsets are its own
    back = u.take_cluster("A")
    assert sorted(back) == sorted(rec(n) for n in (1, 2, 3, 4, 5, 6)) and len(u) == 1
    # Judged afresh from then on: its earlier offsets and marks are forgotten.
    assert not u.add("A", [(3, 491, rec(8))]).rewritten
    assert u.mark("A", 3, 492).confirmed == 1


def test_an_offset_below_a_mark_acknowledged_again_is_a_rewrite_not_a_confirmation():
    u = Unconfirmed()
    u.add("A", [(0, 10, rec(1))])
    assert u.mark("A", 0, 11).confirmed == 1
    late = u.add("A", [(0, 10, rec(2))])  # offset 10 again: the stored one is rec(1)
    assert late.rewritten and late.confirmed == 0
    assert u.take_cluster("A") == [rec(2)]


def test_offsets_are_kept_as_few_ranges_and_bounded():
    offsets = Offsets()
    assert all(offsets.add(o) for o in [5, 7, 6, 1, 2, 3, 10])
    assert len(offsets) == 3  # 1-3, 5-7 and 10
    assert offsets.add(4) and len(offsets) == 2  # 1-7 and 10
    assert not any(offsets.add(o) for o in [1, 4, 7, 10])
    many = Offsets()
    for o in range(0, 2 * Offsets.MAX_RANGES * 2 + 2, 2):
        many.add(o)
    assert len(many) == Offsets.MAX_RANGES
    assert many.add(0)  # the lowest were forgotten
    assert not many.add(2 * Offsets.MAX_RANGES * 2)
