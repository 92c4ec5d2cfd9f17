"""The scorer over the wire: uniform before any version, hot swaps under load with no failed request,
tampered versions refused, adaptation from followed experiences, HTTP validation, the Kafka transport."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch

from models.encoders import TextEncoder
from models.policy import PolicyConfig, TwoTowerPolicy
from models.serialization import pack
from stream import schemas
from stream.kafka.producer import EventProducer
from stream.kafka.snapshot import read_topic
from stream.kafka.topics import topic_name
from stream.policy.bus import PolicyPublisher
from stream.serving.scorer import ScorerConfig
from stream.serving.service import ScorerService
from tests.waiting import wait_for

ITEMS = [schemas.Item(f"item-{i}", title, ts=1.7e9, description=desc, category=cat) for i, (title, desc, cat) in
         enumerate([("Trail running shoes", "light shoes for mountain trails", "sport"),
                    ("Espresso machine", "brews strong coffee at home", "kitchen"),
                    ("Yoga mat", "non slip mat for yoga and pilates", "sport"),
                    ("Chef knife", "sharp steel knife for the kitchen", "kitchen"),
                    ("Tent", "two person tent for camping", "outdoor"),
                    ("Headlamp", "bright lamp for night hikes", "outdoor")])]
CANDIDATES = [i.item_id for i in ITEMS]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder()


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/score", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def model(seed: int) -> TwoTowerPolicy:
    torch.manual_seed(seed)
    return TwoTowerPolicy(PolicyConfig())


@pytest.fixture()
def service(settings, topics, encoder):
    producer = EventProducer(settings, "test")
    for item in ITEMS:
        producer.send("items", item)
    producer.flush()
    svc = ScorerService(settings, encoder).start()
    yield svc
    svc.close()


def test_serves_uniform_then_swaps_under_load_without_a_failed_request(settings, service):
    status, body = post(service.url, {"user_id": "u1", "candidates": CANDIDATES, "k": 3, "request_id": "r-0"})
    assert status == 200 and body["policy_version"] == 0
    assert [s["propensity"] for s in body["slate"]] == pytest.approx([1 / 6, 1 / 5, 1 / 4])

    publisher = PolicyPublisher(settings, "learner")
    publisher.publish(model(1), 1)
    wait_for(lambda: service.scorer.version >= 1, 20, "v1 to be swapped to")
    assert service.scorer.version == 1

    seen, failures, stop = [], [], threading.Event()

    def hammer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            code, answer = post(service.url, {"user_id": f"u{n % 7}", "candidates": CANDIDATES, "k": 4})
            if code != 200:
                failures.append((code, answer))
            else:
                seen.append(answer["policy_version"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for version in (2, 3, 4):
            publisher.publish(model(version), version, parent=version - 1)
            # Swapped to under load, and served to the hammering clients before the next one comes.
            wait_for(lambda version=version: version in seen, 30, f"v{version} to be served")
        # A tampered version is refused; the scorer keeps serving v4.
        header, blob = pack(model(5), settings.policy_name, 5, parent=4, key=settings.hmac_key.get_secret_value().encode())
        publisher.publish_packed(header, blob[:-1] + bytes([blob[-1] ^ 1]))
        wait_for(lambda: service.subscriber.rejections, 30, "the tampered v5 to be refused")
        served_after_refusal = len(seen)
        wait_for(lambda: len(seen) > served_after_refusal + 10, 30, "requests served after the refusal")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == []
    assert set(seen) == {1, 2, 3, 4} and set(seen[served_after_refusal:]) == {4}
    assert service.scorer.swaps == [1, 2, 3, 4]
    assert service.subscriber.rejections == [(5, "checksum")]
    assert post(service.url, {"user_id": "u1", "candidates": CANDIDATES})[1]["policy_version"] == 4

    # Every served slate was logged as an impression with its version and propensities.
    service.scorer.events.flush()
    impressions = [schemas.decode("impressions", m.value())
                   for m in read_topic(settings, topic_name(settings, "impressions"))]
    assert len(impressions) == len(seen) + 2
    first = next(i for i in impressions if i.request_id == "r-0")
    assert first.policy_version == 0 and [s.position for s in first.shown] == [0, 1, 2]

    with urllib.request.urlopen(service.url + "/healthz", timeout=5) as resp:
        assert json.loads(resp.read())["policy_version"] == 4
    with urllib.request.urlopen(service.url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    assert 'recsys_scorer_latency_seconds_bucket{le="0.001",transport="http"}' in text
    assert 'recsys_policy_version{component="scorer"} 4.0' in text
    # Labelled by logical topic: a per-tenant prefix never multiplies the series.
    assert 'recsys_events_produced_total{component="scorer",topic="impressions"}' in text


def test_bad_requests_get_a_4xx_with_a_reason_never_a_500(service):
    cases = [
        (b"{not json", 400, "not valid JSON"),
        ({"user_id": "u"}, 422, "candidates"),
        ({"user_id": "u", "candidates": []}, 422, "candidates"),
        ({"user_id": "u", "candidates": ["a", "a"]}, 422, "distinct"),
        ({"user_id": "u", "candidates": ["a"], "k": 0}, 422, "k"),
        ({"user_id": "", "candidates": ["a"]}, 422, "user_id"),
        (b"x" * (schemas.MAX_EVENT_BYTES + 1), 413, "over"),
    ]
    for body, status, words in cases:
        code, answer = post(service.url, body)
        assert (code, words in answer["error"]) == (status, True), (body[:40], code, answer)
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(service.url + "/nope", timeout=5)
    assert err.value.code == 404


def test_features_must_fit_the_policy_and_adaptation_follows_experiences(settings, service):
    PolicyPublisher(settings, "learner").publish(model(1), 1)
    wait_for(lambda: service.scorer.version >= 1, 20, "v1 to be swapped to")
    code, answer = post(service.url, {"user_id": "u", "candidates": CANDIDATES, "context": {"features": [1.0, 2.0]}})
    assert code == 422 and "expects 16" in answer["error"]

    producer = EventProducer(settings, "test")
    for n, item in enumerate(CANDIDATES[:3]):
        producer.send("experiences", schemas.Experience(
            event_id=f"e{n}", request_id="r", user_id="fan", action=item, position=n, propensity=0.5,
            reward=1.0, reward_parts=schemas.RewardParts(click=1.0), kind="click", policy_version=1, ts=time.time()))
    producer.flush()
    deadline = time.monotonic() + 20
    while not service.scorer.memory.recent("fan", time.time()) and time.monotonic() < deadline:
        time.sleep(0.05)
    code, answer = post(service.url, {"user_id": "fan", "candidates": CANDIDATES})
    assert code == 200 and answer["personalised_from"] == 3
    assert post(service.url, {"user_id": "stranger", "candidates": CANDIDATES})[1]["personalised_from"] == 0


def test_scoring_over_kafka_answers_on_the_response_topic(settings, service):
    producer = EventProducer(settings, "test")
    producer.send("score-requests", schemas.ScoreRequest("u9", CANDIDATES, k=2, request_id="kafka-1"))
    producer.send_raw("score-requests", b'{"user_id": "u9"}')    # refused at the edge: dead-lettered
    producer.flush()
    deadline = time.monotonic() + 30
    answers = []
    while not answers and time.monotonic() < deadline:
        answers = [schemas.decode("score-responses", m.value())
                   for m in read_topic(settings, topic_name(settings, "score-responses"))]
        time.sleep(0.2)
    assert [(a.request_id, len(a.slate), a.policy_version) for a in answers] == [("kafka-1", 2, 0)]


def test_an_items_outcomes_shift_its_score_for_every_user(settings, topics, encoder):
    """Clicks on one item from many users raise its score for a user who made none of them (item evidence,
    at a fixed prior weight: the estimated one needs a thousand outcomes), by exactly the offset the evidence
    holds; the other items and items the catalogue does not know are left alone."""
    producer = EventProducer(settings, "test")
    for item in ITEMS:
        producer.send("items", item)
    producer.flush()
    service = ScorerService(settings, encoder, ScorerConfig(item_prior_weight=10.0)).start()
    try:
        _shift_and_check(settings, service, producer)
    finally:
        service.close()


def _shift_and_check(settings, service, producer) -> None:
    PolicyPublisher(settings, "learner").publish(model(1), 1)
    wait_for(lambda: service.scorer.version >= 1 and len(service.scorer.catalogue) == len(ITEMS), 20,
             "v1 and the catalogue")
    before = {s["item_id"]: s["score"] for s in post(service.url, {"user_id": "stranger", "candidates": CANDIDATES,
                                                                   "k": len(CANDIDATES)})[1]["slate"]}
    for n in range(30):
        for item in (CANDIDATES[2], "not-in-the-catalogue"):
            producer.send("experiences", schemas.Experience(
                event_id=f"ev-{item}-{n}", request_id=f"r{n}", user_id=f"clicker-{n}", action=item, position=0,
                propensity=0.5, reward=1.0, reward_parts=schemas.RewardParts(click=1.0), kind="click",
                policy_version=1, ts=time.time()))
    producer.flush()
    evidence = service.scorer.evidence[service.scorer.arms.names[0]]
    wait_for(lambda: evidence.outcomes == 30, 20, "the known item's 30 outcomes in the evidence")
    rows, _ = service.scorer.catalogue.rows(CANDIDATES, 2)
    offsets = dict(zip(CANDIDATES, evidence.offsets(rows)))
    assert offsets[CANDIDATES[2]] > 0.2 and all(offsets[i] == 0.0 for i in CANDIDATES if i != CANDIDATES[2])
    after = {s["item_id"]: s["score"] for s in post(service.url, {"user_id": "stranger", "candidates": CANDIDATES,
                                                                  "k": len(CANDIDATES)})[1]["slate"]}
    for item in CANDIDATES:
        assert after[item] == pytest.approx(before[item] + offsets[item], abs=1e-6), item
    with urllib.request.urlopen(service.url + "/metrics", timeout=5) as resp:
        assert "recsys_scorer_item_evidence_items 1.0" in resp.read().decode()
