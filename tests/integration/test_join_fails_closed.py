"""The join worker fails closed: an exception at any step of output -> state -> offsets commits nothing
past state that was not durably written, not even on the revocation that closing the consumer runs.

Each case injects one failure into a real worker on the embedded broker (a poison batch, a
delivery failure, a state record that cannot be written), lets the worker die, starts a clean
worker in the same group, and checks the exact experiences the script implies.
"""

from __future__ import annotations

import pytest

from stream.join.reward_join import JoinConfig
from stream.join.worker import JoinWorker
from stream.kafka.producer import DeliveryError, EventProducer
from tests.integration.test_join_recovery import assert_exact, assert_no_dead_letters, on_topic, script

JOIN = JoinConfig(click_window=5, purchase_window=20, grace=2)


class Injected(RuntimeError):
    """The failure a case injects."""


def fail_on_call(method, n: int, error: BaseException, before=None):
    """``method``, but its ``n``-th call runs ``before()`` (what the real failure destroys) and raises
    ``error`` after ``method`` did its work (as an encoding error after the changes were taken)."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] != n:
            return method(*args, **kwargs)
        if before is not None:
            before()
        method(*args, **kwargs)
        raise error
    return wrapped


def inject(worker: JoinWorker, step: str) -> None:
    if step == "while joining":          # mid-batch: some outputs produced, nothing checkpointed
        worker._emit = fail_on_call(worker._emit, 400, Injected("poison"))
    elif step == "acknowledging outputs":  # queued experiences never reach the broker
        purge = worker.output._producer.purge
        worker.output.flush = fail_on_call(worker.output.flush, 3, DeliveryError("broker refused"), before=purge)
    elif step == "writing state":        # the changes are taken, then encoding them fails (an OverflowError once)
        worker.processor.changes = fail_on_call(worker.processor.changes, 3, OverflowError("int too big"))
    elif step == "committing offsets":   # state written and acknowledged, the commit never happens
        flush = worker.output.flush
        state_flushes = {"n": 0}

        def flush_then_fail(*args, **kwargs):
            flush(*args, **kwargs)
            state_flushes["n"] += 1
            if state_flushes["n"] == 4:
                raise Injected("died before the commit")
        worker.output.flush = flush_then_fail
    else:
        raise ValueError(step)


@pytest.mark.parametrize("step", ["while joining", "acknowledging outputs", "writing state", "committing offsets"])
def test_a_failure_at_any_step_loses_and_double_pays_nothing(settings, topics, step):
    events, expected = script(impressions=1500, seed=17)
    producer = EventProducer(settings, component="test")
    for logical, event in events:
        producer.send(logical, event)
    producer.close()

    failing = JoinWorker(settings, JOIN, batch=300, until_caught_up=True)
    inject(failing, step)
    with pytest.raises((Injected, DeliveryError, OverflowError)):
        failing.run()
    assert failing.failed is not None

    JoinWorker(settings, JOIN, batch=300, until_caught_up=True).run()
    distinct, _repeats = on_topic(settings)
    assert_exact(distinct, expected)
    assert_no_dead_letters(settings)
