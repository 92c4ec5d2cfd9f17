"""Event-time watermark over several inputs (a partition of impressions, clicks, purchases).

The join may close a click window only once every input has moved past it. Taking
the maximum timestamp seen anywhere would close windows early whenever one topic is
read ahead of another (a backlog after a restart reads impressions far ahead of
clicks); so the watermark is the minimum over the inputs' progress. An input that
has caught up with its partition's end holds nothing back: no event can be waiting
in it, and an idle topic (no purchases for an hour) must not stall the join.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field


@dataclass
class InputWatermarks:
    progress: dict[Hashable, float] = field(default_factory=dict)
    caught_up: set[Hashable] = field(default_factory=set)
    last: float = float("-inf")

    def register(self, key: Hashable) -> None:
        """An input that exists but has produced nothing yet still holds the watermark back."""
        self.progress.setdefault(key, float("-inf"))

    def observe(self, key: Hashable, ts: float) -> None:
        if ts > self.progress.get(key, float("-inf")):
            self.progress[key] = ts
        self.caught_up.discard(key)

    def reached_end(self, key: Hashable) -> None:
        self.progress.setdefault(key, float("-inf"))
        self.caught_up.add(key)

    def fell_behind(self, key: Hashable) -> None:
        """An input judged caught up has unread records again: it holds time back at its progress."""
        self.caught_up.discard(key)

    def advance_by(self, seconds: float) -> float:
        """Let event time run on with the wall clock while every input is silent (no event can
        come that should have been waited for, and open windows must still close)."""
        if self.last > float("-inf"):
            self.last += seconds
        return self.last

    def value(self) -> float:
        """Event time that every input has passed (-inf until each lagging input has spoken).

        Monotonic: an event arriving late on an input that had caught up is the join's
        grace period to absorb, never a reason to move time backwards.
        """
        if self.progress:
            lagging = [ts for key, ts in self.progress.items() if key not in self.caught_up]
            current = min(lagging) if lagging else max(self.progress.values())
            self.last = max(self.last, current)
        return self.last
