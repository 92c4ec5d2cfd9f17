"""One learning loop: the learner worker over the wire and a benchmark's driver make the same versions.

The same experiences go (a) to the experiences topic, where ``recsys-stream learn
--until-caught-up`` (a subprocess, the embedded broker, the replay store on disk) trains
on them and publishes, and (b) straight into ``ContinualLoop.learn_backlog`` in this
process, as ``bench movielens`` and ``bench quality`` feed it, with the same replay store,
catalogue and seed. The published versions must be the same states, in the same order:
the worker adds Kafka around the loop and nothing to the learning. One partition, so the
order records are read in is the data's; one torch thread on both sides, so sums are
taken in the same order.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from bench.served import ServedVersions
from models.agent import Agent, AgentConfig
from models.encoders import TextEncoder
from models.loop import ContinualLoop, LoopConfig
from models.policy import PolicyConfig
from stream import schemas
from stream.items.embeddings import Catalogue
from stream.kafka.clients import make_admin
from stream.kafka.producer import EventProducer
from stream.kafka.topics import ensure_topics
from stream.learner.batches import ExperienceBatcher
from stream.learner.sources import StoreReplay, StreamExperiences
from stream.policy.bus import read_versions
from stream.replay.service import default_store_path
from stream.replay.store import ReplaySampler, ReplayStore
from tests.conftest import cli_command

pytestmark = pytest.mark.slow

ITEMS = [f"item-{i}" for i in range(40)]
PUBLISH_EVERY = 8       # updates: a full turn (8 updates) makes a version


def experiences(n: int, start: float, prefix: str, seed: int, width: int) -> list[schemas.Experience]:
    """A shop's joined outcomes: mostly top-of-slate decisions, some lower positions, a few purchases."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        candidates = [ITEMS[j] for j in rng.choice(len(ITEMS), size=6, replace=False)]
        slot = int(rng.integers(6))
        position = 0 if rng.random() < 0.8 else 1
        kind = "purchase" if rng.random() < 0.03 else ("click" if rng.random() < 0.2 else "no_click")
        reward = {"purchase": 3.0, "click": 1.0, "no_click": 0.0}[kind]
        out.append(schemas.Experience(
            event_id=f"{prefix}{i}:{kind}", request_id=f"{prefix}{i}", user_id=f"user-{int(rng.integers(97))}",
            action=candidates[slot], position=position, propensity=1 / 6, reward=reward,
            reward_parts=schemas.RewardParts(click=float(kind != "no_click"), purchase=float(kind == "purchase")),
            kind=kind, policy_version=1, ts=start + i, candidates=candidates if position == 0 else [],
            context=schemas.Context(features=[round(float(x), 3) for x in rng.normal(size=width)])))
    return out


def test_the_worker_and_the_benchmark_driver_publish_the_same_versions(settings, cli_env, tmp_path):
    settings = settings.model_copy(update={"partitions": 1})
    ensure_topics(make_admin(settings), settings)
    width = settings.user_features
    items = [schemas.Item(item_id=item, title=f"Thing {i}", description=f"a thing of kind {i % 5}",
                          category=f"kind-{i % 5}", ts=1_763_800_000.0) for i, item in enumerate(ITEMS)]
    fresh = experiences(5000, 1_763_900_000.0, "req-", seed=1, width=width)
    producer = EventProducer(settings, component="test")
    for item in items:
        producer.send("items", item)
    for e in fresh:
        producer.send("experiences", e)
    producer.close()
    # Yesterday's outcomes in the replay store: what the updates replay and the meta tasks' histories.
    store_path = default_store_path(settings)
    store = ReplayStore(store_path)
    store.add(experiences(1500, 1_763_800_000.0, "old-", seed=2, width=width))
    store.close()

    env = {**cli_env, "RECSYS_PARTITIONS": "1"}
    learned = subprocess.run(cli_command("learn", "--until-caught-up", "--threads", "1", "--publish-every",
                                         str(PUBLISH_EVERY), "--metrics-port", "0"),
                             env=env, capture_output=True, text=True, timeout=300)
    assert learned.returncode == 0, learned.stderr[-3000:]
    on_topic = [v.header.state for v in read_versions(settings)]

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = TextEncoder()
        catalogue = Catalogue(encoder, "bench")
        catalogue.add(items)
        model = PolicyConfig(text_dim=encoder.dim, user_features=width)
        batcher = ExperienceBatcher(model, catalogue)
        sampler = ReplaySampler(store_path)
        agent = Agent(model, AgentConfig(publish_every_updates=PUBLISH_EVERY), seed=LoopConfig().seed)
        versions = ServedVersions(checksums=True)
        loop = ContinualLoop(agent, StreamExperiences(batcher, sampler, agent.config.history), versions,
                             StoreReplay(batcher, sampler), LoopConfig())
        publications = loop.learn_backlog(fresh)
        sampler.close()
    finally:
        torch.set_num_threads(threads)

    # ~4,500 trainable records: turns of 2,048 (8 updates each), a version after each; the gate judged all
    # but the first on the held-out top-of-slate decisions read so far (174, then 348 and 373 when written).
    assert len(versions.checksums) >= 3
    assert sum(p.verdict.reason == "passed" for p in publications) >= 2
    assert on_topic == versions.checksums
