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


class StoreReplay:
    """``models.loop.Replay`` from the replay store: uniform rows of the policy's width."""

    def __init__(self, batcher: ExperienceBatcher, store: ReplaySampler) -> None:
        self.batcher, self.store = batcher, store

    def sample(self, n: int) -> list[schemas.Experience]:
        return [e for e in self.store.sample(n) if self.batcher.fits(e)]
