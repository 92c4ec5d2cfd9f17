"""How many optimiser steps a streaming turn may take and still let the next version out on time.

Under load every update is a fixed cost whatever its size (meta tasks, replay, the
optimiser over the touched rows), so a turn of ``max_updates_per_turn`` steps could
take most of a second and hold the next version back by as much: at twice the demo's
load the learner published 45-49 versions a minute instead of 60. The pace takes the
same records in fewer, bigger steps when the publish deadline is near, so versions
keep their cadence and a click waits for one turn less. Only the streaming worker is
paced: a backfill and every benchmark plan turns by the records alone.
"""

from __future__ import annotations

import math
import time


class Pace:
    """Running costs of an update and of a publish (exponentially weighted), and the steps that fit before a
    deadline."""

    def __init__(self, weight: float = 0.2) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], not {weight}")
        self.weight = weight
        self.update_seconds: float | None = None
        self.publish_seconds = 0.0

    def updated(self, seconds: float) -> None:
        self.update_seconds = seconds if self.update_seconds is None else \
            self.update_seconds + self.weight * (seconds - self.update_seconds)

    def published(self, seconds: float) -> None:
        self.publish_seconds += self.weight * (seconds - self.publish_seconds)

    def steps_until(self, deadline: float, now: float | None = None) -> int | None:
        """Steps that end early enough before ``deadline`` (monotonic seconds) to leave room for the publish and
        the one step before it (what was read meanwhile); at least one. None (no cap) until an update was timed."""
        if self.update_seconds is None or self.update_seconds <= 0:
            return None
        now = time.monotonic() if now is None else now
        room = deadline - now - self.publish_seconds
        return max(1, math.floor(room / self.update_seconds) - 1)
