"""Where the learning loop's data comes from in production: the experiences topic and the replay store.

``models/loop.py`` asks its caller how records become tensors (``Experiences``) and
where rows from the past come from (``Replay``). For the learner worker a record is a
``schemas.Experience`` read from Kafka; a user's outcomes before it, the support of a
meta task, and the replayed rows both come from the replay store that ``recsys-stream
replay`` writes.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.batch import Batch, TaskBatch
from stream import schemas
from stream.learner.batches import ExperienceBatcher, is_full_decision
from stream.replay.store import ReplaySampler


class StreamExperiences:
    """``models.loop.Experiences`` for experiences as the stream carries them."""

    def __init__(self, batcher: ExperienceBatcher, store: ReplaySampler, history: int) -> None:
        self.batcher, self.store, self.history = batcher, store, history

    def request_key(self, e: schemas.Experience) -> bytes:
        return e.request_id.encode()

    def is_decision(self, e: schemas.Experience) -> bool:
        return is_full_decision(e)

    def is_outcome(self, e: schemas.Experience) -> bool:
        return e.kind != "purchase"

    def batch(self, experiences: Sequence[schemas.Experience]) -> Batch:
        return self.batcher.batch(experiences)

    def tasks(self, queries: Sequence[schemas.Experience]) -> TaskBatch | None:
        return self.batcher.tasks(queries, [self.store.history_before(e.user_id, e.ts, self.history) for e in queries])


#: Draws from the store to fill a replay batch with one arm's rows when an experiment shares the store.
ARM_DRAWS = 4


def trains_arm(event: schemas.Experience, arm: str | None) -> bool:
    """Whether the learner of ``arm`` trains on ``event``: its arm's traffic (on-policy for that arm, whatever
    served it), and records from before arms existed or imported logs (arm None), the history every arm shares.
    ``arm`` None: every record."""
    return arm is None or event.arm is None or event.arm == arm


class StoreReplay:
    """``models.loop.Replay`` from the replay store: uniform rows of the policy's width and of the learner's
    experiment arm (rows of no arm, the shared history, included)."""

    def __init__(self, batcher: ExperienceBatcher, store: ReplaySampler, arm: str | None = None) -> None:
        self.batcher, self.store, self.arm = batcher, store, arm

    def sample(self, n: int) -> list[schemas.Experience]:
        rows: list[schemas.Experience] = []
        for _ in range(ARM_DRAWS):
            drawn = [e for e in self.store.sample(n - len(rows)) if self.batcher.fits(e)]
            own = [e for e in drawn if trains_arm(e, self.arm)]
            rows.extend(own)
            if len(own) == len(drawn) or len(rows) >= n:
                break       # nothing of another arm was drawn (outside experiments: always), or the batch is full
        return rows[:n]
