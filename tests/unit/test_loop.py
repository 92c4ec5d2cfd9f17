"""The continual-learning loop's own decisions: the hold-out split, turns, the gate, the sink, determinism.

The loop runs on the stream's experiences (``stream/learner/sources.py``) with an
empty replay store and a sink that records what it is given; no broker.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from models.agent import Agent, AgentConfig
from models.delta import apply_delta, cpu_state, state_checksum
from models.gate import GateConfig
from models.loop import ContinualLoop, LoopConfig
from models.policy import PolicyConfig
from stream.items.embeddings import Catalogue
from stream.learner.batches import ExperienceBatcher
from stream.learner.sources import StoreReplay, StreamExperiences
from stream.replay.store import ReplaySampler
from tests.unit.conftest import decisions, preferring

SMALL = AgentConfig(update_size=16, max_turn=64, publish_every_updates=3, gate=GateConfig(min_decisions=50))


class Recorded:
    """A sink that takes every version (or refuses them all, as a broker that is away)."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.checksums: list[str] = []
        self.metrics: list[dict[str, float]] = []

    def publish(self, version, live, metrics, changes=None) -> bool:
        # The delta the loop hands over rebuilds the version from its parent, as readers will.
        assert (live is None) == (changes is None)
        if changes is not None:
            rebuilt = apply_delta(cpu_state(live), changes)
            assert state_checksum(rebuilt) == state_checksum(cpu_state(version))
        if self.accept:
            self.checksums.append(state_checksum(cpu_state(version)))
            self.metrics.append(metrics)
        return self.accept


def make_loop(text_encoder, tmp_path, seed: int = 0, agent: AgentConfig = SMALL, sink: Recorded | None = None,
              holdout_share: float = 0.1) -> ContinualLoop:
    model = PolicyConfig(text_dim=text_encoder.dim)
    batcher = ExperienceBatcher(model, Catalogue(text_encoder, "unit"))
    store = ReplaySampler(tmp_path / "no-store.sqlite")       # never written: no replay, no histories
    return ContinualLoop(Agent(model, agent, seed=seed), StreamExperiences(batcher, store, agent.history),
                         sink or Recorded(), StoreReplay(batcher, store),
                         LoopConfig(holdout_share=holdout_share, seed=seed))


def test_the_split_is_by_request_and_held_out_decisions_join_the_gates_logs(text_encoder, tmp_path):
    loop = make_loop(text_encoder, tmp_path)
    records = decisions(1000)
    held = [e for e in records if not loop.trains_on(e)]
    assert all((zlib.crc32(e.request_id.encode()) % 1000 < 100) == (e in held) for e in records)
    assert 60 < len(held) < 140                              # ~10% of 1,000 requests
    turn = loop.turn(records)
    assert len(turn.trained) == SMALL.max_turn                 # a turn trains on at most max_turn
    assert turn.consumed == len(turn.trained) + len(turn.held)
    assert turn.held == [e for e in records[:turn.consumed] if e in held]
    assert list(loop.holdout) == turn.held                      # every one a full decision
    assert sum(u.fresh for u in turn.updates) == SMALL.max_turn and len(turn.updates) == 4
    assert loop.updates_since_publish == 4 and loop.publish_due


def test_the_gate_refuses_a_clearly_worse_candidate_and_the_live_version_stays(text_encoder, tmp_path):
    sink = Recorded()
    loop = make_loop(text_encoder, tmp_path, sink=sink)
    loop.holdout.extend(decisions())
    model = loop.agent.model
    model.load_state_dict(preferring(model, "good", 1.0).state_dict())
    live = loop.live = loop.agent.candidate()       # published versions carry their resolved exploration
    model.load_state_dict(preferring(model, "good", -1.0).state_dict())
    outcome = loop.publish()
    assert not outcome.published and outcome.verdict.reason == "refused"
    assert outcome.metrics["dr"] < outcome.metrics["dr_live"] and outcome.metrics["dr_diff_high"] < 0
    assert loop.live is live and not sink.checksums and loop.agent.published == 0


def test_the_gate_publishes_a_candidate_equal_to_the_live_version(text_encoder, tmp_path):
    sink = Recorded()
    loop = make_loop(text_encoder, tmp_path, sink=sink)
    loop.holdout.extend(decisions())
    loop.live = loop.agent.candidate()
    outcome = loop.publish()
    assert outcome.published and outcome.verdict.reason == "passed"
    assert outcome.metrics["dr"] == pytest.approx(outcome.metrics["dr_live"], abs=1e-6)
    assert sink.checksums == [state_checksum(cpu_state(loop.live))] and loop.agent.published == 1


def test_the_gate_publishes_while_there_are_too_few_held_out_decisions(text_encoder, tmp_path):
    loop = make_loop(text_encoder, tmp_path)
    loop.holdout.extend(decisions(10))
    loop.live = preferring(loop.agent.model, "good", 5.0)
    loop.agent.model.load_state_dict(preferring(loop.agent.model, "good", -5.0).state_dict())
    outcome = loop.publish()
    assert outcome.published and outcome.verdict.reason == "too_few_decisions"
    assert outcome.metrics["gate_decisions"] == 10.0 and "dr" not in outcome.metrics


def test_a_version_the_sink_could_not_take_leaves_the_live_one_unconsolidated(text_encoder, tmp_path):
    loop = make_loop(text_encoder, tmp_path, sink=Recorded(accept=False))
    loop.turn(decisions(100))
    outcome = loop.publish()
    assert outcome.verdict.publish and not outcome.published
    assert loop.live is None and loop.agent.published == 0 and loop.updates_since_publish == 0


def test_a_version_is_the_live_one_plus_the_rows_that_moved(text_encoder, tmp_path):
    """What is gated and served is what a reader holds after applying the delta: a row that moved by less
    than the tolerance keeps the live value until it moves enough."""
    loop = make_loop(text_encoder, tmp_path, holdout_share=0.0)
    loop.learn_backlog(decisions(64))
    live = cpu_state(loop.live)
    with torch.no_grad():
        loop.agent.model.item_bias.weight[3] += 1e-8            # below the delta's tolerance
        loop.agent.model.item_bias.weight[5] += 0.5
    loop.publish()
    now = cpu_state(loop.live)
    assert torch.equal(now["item_bias.weight"][3], live["item_bias.weight"][3])
    assert not torch.equal(now["item_bias.weight"][5], live["item_bias.weight"][5])


@pytest.mark.slow
def test_the_same_records_and_seed_make_the_same_versions(text_encoder, tmp_path):
    records = decisions(600)
    runs = []
    for seed in (7, 7, 8):
        sink = Recorded()
        loop = make_loop(text_encoder, tmp_path, seed=seed, sink=sink)
        publications = loop.learn_backlog(records)
        assert len(publications) == len(sink.checksums)
        runs.append(sink.checksums)
    # Turns of 64 trainable records (4 updates each: a version is due after every one), the rest at the end.
    trainable = sum(make_loop(text_encoder, tmp_path).trains_on(e) for e in records)
    assert len(runs[0]) == -(-trainable // SMALL.max_turn)
    assert runs[0] == runs[1]
    assert runs[0][0] != runs[2][0]                # another seed: other initial weights
