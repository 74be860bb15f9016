"""When a session's next live question is due: from three regular gaps between its last ones, else never."""

from __future__ import annotations

import pytest

from gateway.core.cadence import Cadence


def asked(*times: float) -> Cadence:
    cadence = Cadence()
    for t in times:
        cadence.asked(t)
    return cadence


def test_three_regular_gaps_make_a_clock_and_the_next_question_is_due_after_the_shortest() -> None:
    assert asked(10.0, 15.5, 21.0, 26.2).next_expected() == pytest.approx(31.4)


def test_fewer_than_three_gaps_say_nothing() -> None:
    assert asked().next_expected() is None
    assert asked(10.0, 15.0, 20.0).next_expected() is None


def test_gaps_varying_by_more_than_half_the_shortest_are_no_clock() -> None:
    """A person asking now and then: no question is expected."""
    assert asked(10.0, 12.0, 20.0, 22.5).next_expected() is None
    assert asked(10.0, 12.0, 15.0, 17.0).next_expected() == pytest.approx(19.0)  # 2, 3, 2: within half of 2


def test_only_the_last_four_questions_count() -> None:
    """A bot that started on a clock after a person's irregular questions is read by its clock alone."""
    assert asked(0.0, 1.0, 30.0, 40.0, 50.0, 60.0).next_expected() == pytest.approx(70.0)


def test_questions_at_one_instant_are_no_clock() -> None:
    assert asked(5.0, 5.0, 5.0, 5.0).next_expected() is None


def test_an_announced_question_is_due_when_announced_until_the_next_one_is_asked() -> None:
    """A watch says when its next turn comes: that, with no clock to read; the ask itself clears it."""
    cadence = asked(10.0)
    cadence.announce(12.5)
    assert cadence.next_expected() == 12.5
    cadence.asked(12.6)
    assert cadence.next_expected() is None
