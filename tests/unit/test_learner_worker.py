"""The learner worker's own decisions, without a broker: the publish gate, adopting a rollback, resuming.

The worker is built against an address nothing listens on; these tests call its
decision methods directly and never produce or consume.
"""

from __future__ import annotations

import copy
import time
from dataclasses import replace

import pytest
import torch

from models.agent import AgentConfig
from models.checkpoint import CheckpointError
from models.checkpoint import load as load_checkpoint
from models.exploration import Exploration
from models.gate import GateConfig
from models.policy import PolicyConfig, TwoTowerPolicy
from stream import schemas
from stream.learner.worker import LearnerWorker, LearnerWorkerConfig
from stream.policy.bus import LivePolicy
from tests.unit.conftest import decisions, offline_settings, preferring


@pytest.fixture()
def worker(text_encoder, tmp_path):
    settings = offline_settings(data_dir=tmp_path / "data", topic_prefix="unit.")
    built = LearnerWorker(settings, text_encoder, LearnerWorkerConfig(),
                          AgentConfig(gate=GateConfig(min_decisions=50)),
                          model_config=PolicyConfig(text_dim=text_encoder.dim), checkpoint_path=tmp_path / "l.ckpt")
    yield built
    built.publisher.close()


def test_a_context_of_the_wrong_width_is_refused_and_counted_never_cut(worker):
    from stream.learner.worker import REFUSED

    before = REFUSED.labels("width")._value.get()
    wide = decisions(3, features=[0.5] * 20)
    assert not any(worker._accept(e, 0, i) for i, e in enumerate(wide))
    assert REFUSED.labels("width")._value.get() == before + 3
    assert not worker.fresh and not worker.loop.holdout
    fitting = decisions(2, seed=1, features=[0.5] * worker.learner.model.config.user_features)
    assert all(worker._accept(e, 0, i) for i, e in enumerate(fitting))
    with pytest.raises(ValueError, match="20 user features"):
        worker.batcher.batch(wide)


def live_version(model: TwoTowerPolicy, version: int, rollback_of: int) -> LivePolicy:
    header = schemas.PolicyHeader(name="default", version=version, created_at=time.time(), checksum="0" * 64,
                                  total_bytes=1, n_chunks=1, parent=version - 1,
                                  metrics={"rollback_of": float(rollback_of)})
    return LivePolicy(version, model, header, time.time())


def test_a_rollback_above_the_learners_version_is_adopted(worker):
    worker.chain.version = 6
    # Some optimiser state to be dropped, and a batch for the regularisers to anchor on.
    worker.loop.holdout.extend(decisions(60))
    batch = worker.batcher.batch(list(worker.loop.holdout))
    worker.learner.update(batch)
    worker.loop.recent.append(batch)
    assert worker.learner.optimizer.state
    target = preferring(TwoTowerPolicy(worker.learner.model.config), "good", 3.0)

    worker._on_policy(live_version(target, 5, rollback_of=2))     # an older number: not a rollback to adopt
    assert worker._rollback is None
    worker._on_policy(live_version(target, 7, rollback_of=2))
    assert worker._rollback is not None
    worker._adopt_rollback(worker._rollback)

    assert worker.version == 7 and worker.loop.live is target and worker.loop.updates_since_publish == 0
    for name, tensor in target.state_dict().items():
        assert torch.equal(worker.learner.model.state_dict()[name], tensor), name
    assert not worker.learner.optimizer.state          # moments of the abandoned weights are gone
    assert worker.chain.retained[-1].version == 7
    assert not worker.chain.delta_due(worker.loop.live)                      # a full snapshot comes next


def test_a_rollback_written_while_following_is_adopted_even_below_the_learners_number(worker):
    """The learner may have written its own v9 and v10 on a state the readers dropped for the rollback's v9:
    it adopts the rollback, and its next version is a full snapshot numbered above all of them."""
    worker.chain.version = worker.chain.last_number = 10
    worker.loop.live = copy.deepcopy(worker.learner.model).eval()
    worker.chain.last_full_at = time.monotonic()
    assert worker.chain.delta_due(worker.loop.live)
    target = preferring(TwoTowerPolicy(worker.learner.model.config), "good", 3.0)
    worker._on_policy(live_version(target, 9, rollback_of=2))
    assert worker._rollback is None                     # while catching up: the checkpoint is newer
    worker.policies._caught_up.set()                    # following: written since this learner started
    worker._on_policy(live_version(target, 9, rollback_of=2))
    worker._adopt_rollback(worker._rollback)
    assert worker.version == 9 and worker.loop.live is target and worker.chain.last_number == 10
    assert not worker.chain.delta_due(worker.loop.live)
    assert [h.version for h in worker.chain.retained] == [9]


def test_a_checkpoint_resumes_weights_version_positions_and_held_out_logs(worker, text_encoder, tmp_path):
    held = decisions(30)
    worker.loop.holdout.extend(held)
    worker.learner.update(worker.batcher.batch(held))
    worker.chain.version = 4
    worker.loop.live = worker.agent.candidate()              # as published: its exploration resolved for serving
    worker.positions = {0: 42, 1: 7}
    worker.checkpoint()

    settings = offline_settings(data_dir=tmp_path / "data", topic_prefix="unit.")
    # A restart may serve with another exploration (`learn --exploration`): the model is the same shape.
    thompson = AgentConfig(exploration=Exploration("thompson", epsilon=0.02))
    again = LearnerWorker(settings, text_encoder, agent_config=thompson, model_config=worker.learner.model.config,
                          checkpoint_path=worker.checkpoint_path)
    try:
        assert again.resume()
        assert again.version == 4 and again.positions == {0: 42, 1: 7}
        assert [e.event_id for e in again.loop.holdout] == [e.event_id for e in held]
        assert again.learner.step == worker.learner.step
        for name, tensor in worker.learner.model.state_dict().items():
            assert torch.equal(again.learner.model.state_dict()[name], tensor), name
            assert torch.equal(again.loop.live.state_dict()[name], worker.loop.live.state_dict()[name]), name
        assert again.learner.optimizer.state_dict()["state"].keys() == worker.learner.optimizer.state_dict()["state"].keys()
        assert again.agent.candidate().config.exploration.kind == "thompson"
        # The live version is judged as it was served, not with the restarted learner's settings.
        assert again.loop.live.config == worker.loop.live.config and again.loop.live.config.exploration.gamma is not None
    finally:
        again.publisher.close()


def test_checkpoints_follow_their_own_schedule_not_every_publish(worker):
    """A checkpoint is the whole state (~34 MB at the soak's load): after the first publish, then only once
    ``checkpoint_every_seconds`` have passed; what each one holds is the version as of that moment."""
    worker.learner.update(worker.batcher.batch(decisions(30)))
    every = worker.config.checkpoint_every_seconds
    assert every > 0
    worker.chain.version = 1
    assert worker._checkpoint_if_due(None, now=100.0)           # the first publish after a start
    written = worker.checkpoint_path.stat().st_mtime_ns
    worker.chain.version = 2
    assert not worker._checkpoint_if_due(None, now=100.0 + every / 2)
    assert worker.checkpoint_path.stat().st_mtime_ns == written
    worker.chain.version = 3
    assert worker._checkpoint_if_due(None, now=100.0 + every)
    assert load_checkpoint(worker.checkpoint_path)["version"] == 3


def test_checkpoint_seconds_zero_checkpoints_after_every_publish(worker):
    worker.config = replace(worker.config, checkpoint_every_seconds=0.0)
    assert all(worker._checkpoint_if_due(None, now=5.0) for _ in range(3))


def test_resume_refuses_a_pickle_or_another_models_checkpoint(worker, text_encoder, tmp_path):
    torch.save({"learner": {}}, worker.checkpoint_path)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        worker.resume()

    worker.checkpoint()
    settings = offline_settings(data_dir=tmp_path / "data", topic_prefix="unit.")
    other = LearnerWorker(settings, text_encoder, model_config=PolicyConfig(text_dim=text_encoder.dim, dim=8),
                          checkpoint_path=worker.checkpoint_path)
    try:
        with pytest.raises(CheckpointError, match="another shape"):
            other.resume()
    finally:
        other.publisher.close()


def test_a_repeated_experience_is_trained_on_once_within_the_window(worker):
    first, *rest = decisions(5)
    assert worker._accept(first, 0, 10)
    assert not worker._accept(first, 0, 11)          # the same event_id again (an at-least-once repeat)
    for offset, e in enumerate(rest, start=12):
        assert worker._accept(e, 0, offset)
    assert [e.event_id for *_, e in worker.fresh] == [e.event_id for e in [first, *rest]]


class _Record:
    """One consumed experiences message, as confluent-kafka hands it over."""

    def __init__(self, experience: schemas.Experience, offset: int) -> None:
        self._value, self._key, self._offset = schemas.encode(experience), experience.user_id.encode(), offset

    def error(self):
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return self._key

    def topic(self) -> str:
        return "unit.experiences"


class _Queue:
    """What a consumer has fetched: ``consume(n, timeout)`` hands over up to n of it (pure logic, no broker)."""

    def __init__(self, records: list[_Record]) -> None:
        self.records = records

    def consume(self, n: int, timeout: float) -> list[_Record]:
        taken, self.records = self.records[:n], self.records[n:]
        return taken


def test_a_backlog_is_read_on_to_a_whole_turn_before_training(worker):
    """A learner behind the stream once trained 1,000 read messages per turn however far behind it was, so the
    agent's bigger steps for a backlog never came; it reads on while reads come back full."""
    from stream.kafka.gaps import GapGuard
    from stream.learner.worker import READ_BATCH

    width = worker.learner.model.config.user_features
    backlog = _Queue([_Record(e, i) for i, e in enumerate(decisions(5 * READ_BATCH, features=[0.5] * width))])
    worker.guard = GapGuard(backlog, "learner")     # what ``run`` makes with its consumer (no holes here)
    assert worker._read(backlog) == READ_BATCH
    assert worker.trainable >= worker.agent.config.max_turn
    assert len(backlog.records) == 2 * READ_BATCH                 # the rest waits for the next turn
    assert worker.positions == {0: 3 * READ_BATCH}
    worker.fresh.clear()
    worker.trainable = 0
    quiet = _Queue([_Record(e, i) for i, e in enumerate(decisions(300, seed=1, features=[0.5] * width))])
    assert worker._read(quiet) == 300 and not quiet.records        # a partial read: nothing more is waiting
