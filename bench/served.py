"""Where the learning loop's versions go in a benchmark: straight to the simulated scorer.

The learner worker writes each version that passed the gate to the policies topic and a
scorer swaps to it; a benchmark has no topic, so its ``models.loop.Sink`` serves the
version at once (``ServingPolicy``, the scorer's own serving code) and keeps each one's
checksum, the name a version has on the topic.
"""

from __future__ import annotations

from models.delta import State, cpu_state, state_checksum
from models.policy import TwoTowerPolicy
from models.serving import ServingPolicy


class ServedVersions:
    def __init__(self, checksums: bool = False) -> None:
        self.served: ServingPolicy | None = None
        self.published = 0
        #: Each published version's ``state_checksum`` when asked for (SHA-256 of ~4 MB per version).
        self.checksums: list[str] | None = [] if checksums else None

    def publish(self, version: TwoTowerPolicy, live: TwoTowerPolicy | None, metrics: dict[str, float],
                changes: State | None = None) -> bool:
        self.served = ServingPolicy(version)
        self.published += 1
        if self.checksums is not None:
            self.checksums.append(state_checksum(cpu_state(version)))
        return True
