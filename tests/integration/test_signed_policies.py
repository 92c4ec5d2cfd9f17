"""Signed by default, over the wire: unsigned versions refused, no key no start, a key rotation's window."""

from __future__ import annotations

import signal
import subprocess
import time

import torch
from pydantic import SecretStr

from models.policy import PolicyConfig, TwoTowerPolicy
from stream.policy.bus import PolicyPublisher, PolicySubscriber, newest_verified, read_versions
from stream.policy.trust import trust_of
from tests.conftest import cli_command
from tests.waiting import wait_for

SMALL = PolicyConfig(user_features=4, text_dim=8, dim=8, hidden=8, item_buckets=256, user_buckets=256, fast_dim=2)


def model(seed: int) -> TwoTowerPolicy:
    torch.manual_seed(seed)
    return TwoTowerPolicy(SMALL)


def test_with_a_key_set_an_unsigned_version_is_refused_by_scorer_and_learner(settings, topics):
    PolicyPublisher(settings, "learner").publish(model(1), 1)
    unsigned = settings.model_copy(update={"hmac_key": None, "allow_unsigned": True})
    PolicyPublisher(unsigned, "attacker").publish(model(2), 2, metrics={"rollback_of": 1.0})
    scorer = PolicySubscriber(settings, "scorer").start()
    # The learner follows rollbacks with the same check, and numbers on from what verifies.
    learner = PolicySubscriber(settings, "learner", accept=lambda header: "rollback_of" in header.metrics).start()
    try:
        assert scorer.live.version == 1 and (2, "unsigned") in scorer.rejections
        assert learner.live is None and (2, "unsigned") in learner.rejections
        assert newest_verified(read_versions(settings), trust_of(settings)).version == 1
    finally:
        scorer.stop()
        learner.stop()


def test_without_a_key_the_learner_refuses_to_start_unless_unsigned_is_allowed(cli_env, topics, tmp_path):
    env = {k: v for k, v in cli_env.items() if k != "RECSYS_HMAC_KEY"}
    refused = subprocess.run(cli_command("learn", "--metrics-port", "0"), env=env, capture_output=True, text=True,
                             timeout=120)
    assert refused.returncode == 2 and "RECSYS_HMAC_KEY is not set" in refused.stderr
    log = tmp_path / "learn.log"
    allowed = subprocess.Popen(cli_command("learn", "--metrics-port", "0", "--threads", "1"),
                               env=dict(env, RECSYS_ALLOW_UNSIGNED="1"), stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        wait_for(lambda: "RECSYS_ALLOW_UNSIGNED=1" in log.read_text() and "learner: running" in log.read_text(), 120,
                 "the learner to start unsigned, saying so", logs=[log])
    finally:
        allowed.send_signal(signal.SIGTERM)
        assert allowed.wait(60) == 0, log.read_text()[-2000:]


def test_versions_signed_with_the_previous_key_verify_during_the_window_and_not_after(settings, topics):
    old = settings.model_copy(update={"hmac_key": SecretStr("old-key")})
    PolicyPublisher(old, "learner").publish(model(1), 1)
    rotating = settings.model_copy(update={"hmac_key": SecretStr("new-key"), "hmac_previous_key": SecretStr("old-key"),
                                           "hmac_previous_key_until": time.time() + 300})
    expired = rotating.model_copy(update={"hmac_previous_key_until": time.time() - 1})
    during = PolicySubscriber(rotating, "scorer").start()
    after = PolicySubscriber(expired, "scorer").start()
    try:
        assert during.live is not None and during.live.version == 1
        assert after.live is None and after.rejections == [(1, "signature")]
        # The learner, on the new key, publishes v2: both readers take it.
        PolicyPublisher(rotating, "learner").publish(model(2), 2, parent=1)
        assert during.wait_for_version(2, 20) and after.wait_for_version(2, 20)
    finally:
        during.stop()
        after.stop()
