"""Where the learning loop's versions go in production: a numbered chain on the policies topic.

``models/loop.py`` hands each version that passed its gate to a ``Sink``. On the topic
a version needs a number no writer has claimed (readers keep the first claimant), and
most versions travel as deltas of their parent (the rows that moved, ``models/delta.py``)
with a full snapshot every ``full_every`` versions or ``full_every_seconds`` (and the first
after a start), which a late reader catches up from. Only the last ``retain`` versions stay
on the topic, and never a delta without the snapshot it builds on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from prometheus_client import Counter

from models.delta import State, cpu_state
from models.policy import TwoTowerPolicy
from stream import schemas
from stream.policy.bus import POLICY_LOADED_AT, POLICY_VERSION, PolicyPublisher

log = logging.getLogger(__name__)

PUBLISH_FAILURES = Counter("recsys_learner_publish_failures_total",
                           "Versions that passed the gate but could not be written to the policies topic.")


class VersionChain:
    def __init__(self, publisher: PolicyPublisher, full_every: int, full_every_seconds: float, retain: int,
                 metrics: Callable[[], dict[str, float]] = dict) -> None:
        self.publisher = publisher
        self.full_every, self.full_every_seconds, self.retain = full_every, full_every_seconds, retain
        self.metrics = metrics
        #: The live version: what the next delta applies onto.
        self.version = 0
        #: The highest number this learner has written, tried to write, or found written by a trusted writer:
        #: the next version takes the one after it, so no number is claimed twice.
        self.last_number = 0
        self.retained: deque[schemas.PolicyHeader] = deque()
        self.deltas_since_full = 0
        self.last_full_at = float("-inf")    # the first version after a start is always full

    def delta_due(self, live: TwoTowerPolicy | None) -> bool:
        return (live is not None and self.deltas_since_full < self.full_every - 1
                and time.monotonic() - self.last_full_at < self.full_every_seconds)

    def publish(self, version: TwoTowerPolicy, live: TwoTowerPolicy | None, metrics: dict[str, float],
                changes: State | None = None) -> bool:
        """``models.loop.Sink``: write ``version`` as the next number, a delta of ``live`` when one is due."""
        metrics = {**metrics, **self.metrics()}
        number = max(self.version, self.last_number) + 1
        self.last_number = number       # taken even if the publish fails: its chunks may have landed
        delta = self.delta_due(live)
        try:
            if delta:
                header = self.publisher.publish_delta(version, cpu_state(live), number, self.version, metrics,
                                                      changes)
            else:
                header = self.publisher.publish(version, number, parent=self.version or None, metrics=metrics)
        except Exception as exc:  # noqa: BLE001 - the broker may be away: keep learning, try again next time
            PUBLISH_FAILURES.inc()
            log.error("publishing v%d failed (%s); keeping v%d live and learning on", number, exc, self.version)
            return False
        if delta:
            self.deltas_since_full += 1
        else:
            self.deltas_since_full, self.last_full_at = 0, time.monotonic()
        self.retained.append(header)
        self._retire_beyond_retention()
        self.version = number
        self.export()
        return True

    def adopt(self, header: schemas.PolicyHeader) -> None:
        """An operator's rollback is the live version now. Versions this learner wrote after its number chain
        onto a state no reader holds: a full snapshot next, above them, lets every reader move on."""
        self.last_number = max(self.last_number, self.version, header.version)
        self.version = header.version
        self.last_full_at = float("-inf")
        if all(h.version != header.version for h in self.retained):     # retired in its turn, like our own
            self.retained = deque(sorted([*self.retained, header], key=lambda h: h.version))
        self.export()

    def export(self) -> None:
        """The version this learner last published (or found on the topic), as the scorers export theirs."""
        POLICY_VERSION.labels("learner").set(self.version)
        POLICY_LOADED_AT.labels("learner").set(time.time())

    def _retire_beyond_retention(self) -> None:
        """Keep the last ``retain`` versions, and never a delta without the snapshot it builds on: the oldest
        version kept is always a full snapshot (so there may be more, until the next snapshot)."""
        excess = len(self.retained) - self.retain
        if excess <= 0:
            return
        cut = max((i for i, h in enumerate(self.retained) if i <= excess and h.kind == "full"), default=0)
        self.publisher.retire(*(self.retained.popleft() for _ in range(cut)))
