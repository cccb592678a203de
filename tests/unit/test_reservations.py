"""Session reservations: held until the counter shows the session, or the TTL ends."""

import pytest

from tally.domain.reservations import Held, reserve, settle


def test_first_look_holds_nothing():
    assert settle(None, 2, 0.0) == Held((), 2)


def test_reservations_count_until_the_counter_rises():
    h = reserve(settle(None, 0, 0.0), 2, 0.0, 10.0)
    assert h.count == 2
    h = settle(h, 0, 1.0)
    assert h.count == 2  # nothing started yet
    h = settle(h, 1, 2.0)
    assert (h.count, h.seen_active) == (1, 1)  # the oldest started
    h = settle(h, 3, 3.0)
    assert (h.count, h.seen_active) == (0, 3)


def test_expired_reservations_are_released():
    h = reserve(settle(None, 0, 0.0), 1, 0.0, 10.0)
    h = reserve(h, 1, 5.0, 10.0)
    assert settle(h, 0, 10.0).expiries == (15.0,)
    assert settle(h, 0, 15.0).count == 0


def test_sessions_ending_do_not_release_reservations():
    h = reserve(settle(None, 3, 0.0), 1, 0.0, 10.0)
    h = settle(h, 1, 1.0)  # two ended
    assert (h.count, h.seen_active) == (1, 1)
    h = settle(h, 2, 2.0)  # one started: the reserved one
    assert h.count == 0


def test_reserve_needs_a_positive_amount():
    with pytest.raises(ValueError):
        reserve(Held(), 0, 0.0, 1.0)
