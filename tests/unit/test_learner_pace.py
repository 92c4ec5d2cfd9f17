"""The streaming learner's pace: how many steps fit before the next version is due."""

import pytest

from stream.learner.pace import Pace

pytestmark = pytest.mark.unit


def test_no_cap_until_an_update_has_been_timed():
    assert Pace().steps_until(deadline=10.0, now=0.0) is None


def test_the_steps_that_fit_leave_room_for_the_publish():
    pace = Pace(weight=1.0)
    pace.updated(0.125)
    assert pace.steps_until(deadline=1.0, now=0.0) == 7       # and the step just before the publish
    pace.published(0.25)
    assert pace.steps_until(deadline=1.0, now=0.0) == 5       # 0.75 s left after the publish


def test_a_deadline_already_passed_still_allows_one_step():
    pace = Pace(weight=1.0)
    pace.updated(0.1)
    pace.published(0.5)
    assert pace.steps_until(deadline=1.0, now=2.0) == 1


def test_costs_are_smoothed_so_one_slow_update_does_not_stall_the_learner():
    pace = Pace(weight=0.2)
    for _ in range(20):
        pace.updated(0.05)
    pace.updated(1.0)                       # one update behind a garbage collection
    assert pace.update_seconds == pytest.approx(0.05 + 0.2 * 0.95)
    assert pace.steps_until(deadline=1.0, now=0.0) == 3


def test_a_weight_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="weight"):
        Pace(weight=0.0)
