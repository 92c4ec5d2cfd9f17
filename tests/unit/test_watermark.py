"""The multi-input watermark never runs ahead of a lagging input, and idle inputs do not stall it."""

from __future__ import annotations

from stream.join.watermark import InputWatermarks


def test_watermark_is_the_slowest_lagging_input():
    marks = InputWatermarks()
    for key in ("impressions", "clicks"):
        marks.register(key)
    marks.observe("impressions", 100.0)
    assert marks.value() == float("-inf")     # clicks have said nothing yet
    marks.observe("clicks", 40.0)
    assert marks.value() == 40.0               # impressions read ahead must not close windows
    marks.observe("clicks", 30.0)              # an out-of-order event never moves it back
    assert marks.value() == 40.0


def test_inputs_at_their_end_do_not_hold_it_back():
    marks = InputWatermarks()
    marks.observe("impressions", 100.0)
    marks.observe("clicks", 90.0)
    marks.reached_end("purchases")             # idle topic
    assert marks.value() == 90.0
    marks.reached_end("clicks")
    assert marks.value() == 100.0
    marks.reached_end("impressions")
    assert marks.value() == 100.0              # all caught up: the newest event time seen
    marks.observe("clicks", 95.0)              # a late event: time does not go back
    assert marks.value() == 100.0
    marks.observe("clicks", 120.0)
    marks.observe("impressions", 130.0)
    assert marks.value() == 120.0


def test_silence_lets_event_time_run_on():
    marks = InputWatermarks()
    assert marks.advance_by(5.0) == float("-inf")   # nothing seen yet: nothing to run on from
    marks.observe("impressions", 100.0)
    marks.reached_end("impressions")
    assert marks.value() == 100.0
    assert marks.advance_by(2.5) == 102.5 and marks.value() == 102.5
    marks.observe("impressions", 101.0)             # a late event does not pull it back
    assert marks.value() == 102.5


def test_an_input_with_unread_records_again_holds_time_back_at_its_progress():
    marks = InputWatermarks()
    marks.observe("impressions", 100.0)
    marks.reached_end("clicks")                # never read anything, judged caught up
    assert marks.value() == 100.0
    marks.fell_behind("clicks")                # the broker has clicks we have not fetched
    marks.observe("impressions", 200.0)
    assert marks.value() == 100.0              # held where it was, not run on with impressions
    marks.observe("clicks", 150.0)
    assert marks.value() == 150.0
