"""A role asked to stop ends within its grace even when its last step cannot finish (``StopDeadline``)."""

from __future__ import annotations

import threading

from stream.ops.lifecycle import STOP_OVERDUE_EXIT, StopDeadline


def test_an_armed_deadline_exits_with_its_status_after_the_grace():
    exited: list[int] = []
    done = threading.Event()
    deadline = StopDeadline("test", 0.05, exit_now=lambda code: (exited.append(code), done.set()))
    assert not deadline.armed
    deadline.arm()
    assert deadline.armed
    assert done.wait(5), "the deadline never fired"
    assert exited == [STOP_OVERDUE_EXIT]


def test_a_second_signal_does_not_start_a_second_countdown():
    exited: list[int] = []
    fired, release = threading.Event(), threading.Event()

    def exit_now(code: int) -> None:   # holds its thread, as os._exit would never return
        exited.append(code)
        fired.set()
        release.wait(5)

    deadline = StopDeadline("twice", 0.05, exit_now=exit_now)
    deadline.arm()
    deadline.arm()
    try:
        assert fired.wait(5), "the deadline never fired"
        assert [t.name for t in threading.enumerate() if t.name == "twice-stop-deadline"] == ["twice-stop-deadline"]
        assert exited == [STOP_OVERDUE_EXIT]
    finally:
        release.set()


def test_an_unarmed_deadline_never_exits():
    exited: list[int] = []
    StopDeadline("test", 0.01, exit_now=exited.append)
    assert not any(t.name == "test-stop-deadline" for t in threading.enumerate())
    assert exited == []
