"""The whole loop on the broker, one run, one test per scenario.

The run's chaos steps are a small state machine: each step fires when the state that
makes it meaningful is reached (a version exists, the scorer's rejection counter
moved, the learner checkpointed, the restarted learner published), not at a fixed
second, and every outcome is read from metrics or from the policies topic.
"""

from __future__ import annotations

import signal
import time
import uuid

import pytest

from models.policy import PolicyConfig, TwoTowerPolicy
from models.serialization import PolicyIntegrityError, pack
from stream.config import Settings
from stream.demo.closed_loop import LoopOptions, run_closed_loop
from stream.ops.allocator import find_jemalloc
from stream.policy.bus import PolicyPublisher, read_versions, rollback
from tests.conftest import scraped
from tests.test_grafana_dashboard import metric_names_in_dashboard
from tests.test_prometheus_config import metric_names_in_rules

STEPS = ("tampered", "rejected", "checkpointed", "killed", "republished", "rolled_back", "built_on_rollback")


class Chaos:
    """Tamper → refused → kill the learner after a checkpoint → it republishes → roll back → it builds on it."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}        # step -> wall-clock time it happened
        self.tampered: set[int] = set()
        self.killed_version = 0
        self.rolled_back = 0
        self.rollback_of = 0
        self.built_on = 0
        self.first_after_kill = 0

    def step(self) -> str | None:
        return next((s for s in STEPS if s not in self.at), None)

    def _done(self, step: str) -> None:
        self.at[step] = time.time()

    def _tamper(self, settings: Settings, latest: int) -> None:
        # A few numbers ahead: the learner publishes every second, and a number it writes first is refused to
        # the forger as taken, not for its checksum.
        number = latest + 3
        header, blob = pack(TwoTowerPolicy(PolicyConfig()), settings.policy_name, number, parent=latest,
                            key=settings.hmac_key.get_secret_value().encode())
        publisher = PolicyPublisher(settings, "test")
        publisher.publish_packed(header, blob[:-1] + bytes([blob[-1] ^ 1]))
        publisher.close()
        self.tampered.add(number)
        self.at.setdefault("tampered", time.time())
        self.last_tamper = time.time()

    def __call__(self, _t: float, roles, settings: Settings) -> None:
        step = self.step()
        if step is None:
            return
        versions = read_versions(settings)
        if step == "tampered" and versions:
            self._tamper(settings, versions[-1].version)
        elif step == "rejected":
            if scraped(roles.score_port, "recsys_policy_rejections_total", 'reason="checksum"') >= 1:
                self._done("rejected")
            elif time.time() - self.last_tamper > 8:
                # The learner took that number first (a scorer never goes back a number): tamper again.
                self._tamper(settings, versions[-1].version)
        elif step == "checkpointed":
            if scraped(roles.metrics["learn"], "recsys_learner_checkpoints_total") >= 1:
                self._done("checkpointed")
        elif step == "killed":
            learner = roles.procs["learn"]
            learner.send_signal(signal.SIGSTOP)          # frozen: the topic's latest is final until it dies
            self.killed_version = read_versions(settings)[-1].version   # numbering resumes above it
            learner.kill()
            learner.wait()
            self._done("killed")
            roles.launch("learn")
        elif step == "republished":
            after = [v.version for v in versions if v.header.created_at > self.at["killed"]
                     and v.version not in self.tampered]
            if after:
                self.first_after_kill = min(after)
                self._done("republished")
        elif step == "rolled_back":
            # Paused, so the learner cannot take the number between the rollback's scan and its write
            # (unpaused, the rollback would detect that and fail with PolicyRaceError).
            learner = roles.procs["learn"]
            learner.send_signal(signal.SIGSTOP)
            try:
                for target in reversed(versions[:-1]):       # the newest earlier version that verifies
                    try:
                        self.rolled_back = rollback(settings, target.version, component="test").version
                    except PolicyIntegrityError:             # a tampered one
                        continue
                    self.rollback_of = target.version
                    self._done("rolled_back")
                    break
            finally:
                learner.send_signal(signal.SIGCONT)
        elif step == "built_on_rollback":
            # Read while the run goes on: the learner retains 20 versions, so by the end it may be gone.
            built = [v.version for v in versions if v.header.parent == self.rolled_back]
            if built:
                self.built_on = built[0]
                self._done("built_on_rollback")


@pytest.fixture(scope="module")
def loop(bootstrap_servers, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loop")
    settings = Settings(bootstrap_servers=bootstrap_servers, topic_prefix=f"t{uuid.uuid4().hex[:10]}.", partitions=2,
                        data_dir=tmp / "data", hmac_key=uuid.uuid4().hex)
    chaos = Chaos()
    # 100 s: enough for every step on a loaded 2-core machine (a killed learner takes 20-30 s to come
    # back, and its gate may refuse candidates for a while during the drift at 50-80%).
    report = run_closed_loop(settings, LoopOptions(duration=100, rate=60, plot=tmp / "reward.png",
                                                   log_dir=tmp / "logs", on_second=chaos), lambda line: None)
    return settings, report, chaos, tmp


def test_every_scenario_step_happened(loop):
    _settings, _report, chaos, _tmp = loop
    assert chaos.step() is None, f"the run ended at step {chaos.step()!r}; reached {sorted(chaos.at, key=chaos.at.get)}"


def test_the_loop_learns_and_serves_every_version_without_a_failed_request(loop):
    _settings, report, chaos, tmp = loop
    assert report["failed_requests"] == 0 and report["requests"] > 3000
    published = report["versions_published"]       # the retained ones (last 20, all since the newest snapshot)
    assert published[-1] >= 3 and published == list(range(published[0], published[-1] + 1))
    # Every version was served but: possibly the newest (published as traffic ended); a number the test
    # tampered with; and one the learner was still writing when the rollback took the next number.
    not_served = chaos.tampered | {chaos.rolled_back - 1}
    assert set(published[:-1]) - not_served <= set(report["versions_served"]), (chaos.at, report["versions_served"])
    last = report["last_window"]
    assert last["ctr_learned"] > 1.2 * last["ctr_random"], last
    assert last["reward_learned"] > 1.2 * last["reward_random"], last
    assert report["exit_codes"] == {"process": 0, "replay": 0, "learn": 0, "score": 0}
    assert report["dead_letters"] == {}
    # The default allocator choice, as each role reports it: jemalloc for every role where installed.
    malloc = "jemalloc" if find_jemalloc() is not None else "glibc"
    assert report["allocators"] == {"process": malloc, "replay": malloc, "learn": malloc, "score": malloc}
    assert (tmp / "reward.png").stat().st_size > 10_000


def test_a_tampered_version_is_refused_without_a_failed_request(loop):
    """The scorer counts the tampered version as refused for its checksum, mid-traffic. That a refused
    version is never served is checked where the served version is exact per request
    (tests/integration/test_scorer.py); here its number may later be taken by the learner's own."""
    _settings, report, chaos, _tmp = loop
    assert "rejected" in chaos.at, "the scorer's recsys_policy_rejections_total{reason=checksum} never moved"
    assert report["failed_requests"] == 0


def test_a_killed_learner_resumes_with_the_next_version_number(loop):
    _settings, _report, chaos, _tmp = loop
    # Read while the run went on: the learner retains 20 versions, so by the end the first may be gone.
    assert chaos.first_after_kill == chaos.killed_version + 1, (chaos.killed_version, chaos.first_after_kill)


def test_the_learner_builds_on_an_operators_rollback(loop):
    _settings, _report, chaos, _tmp = loop
    assert chaos.rolled_back > chaos.rollback_of > 0
    # A version whose parent is the rollback appeared on the policies topic (seen while the run went on).
    assert chaos.built_on > chaos.rolled_back, (chaos.rolled_back, chaos.rollback_of, chaos.at)


def test_every_metric_the_alerts_and_the_dashboard_read_is_exported(loop):
    _settings, report, _chaos, _tmp = loop
    exported = {name for names in report["metric_families"].values() for name in names}
    assert metric_names_in_rules() - exported == set()
    assert metric_names_in_dashboard() - exported == set()
    # The learner re-scored its probe sets (15 s periods here) with the versions it published.
    assert report["forgetting_by_probe_age"] and all(0 <= v <= 1 for v in report["forgetting_by_probe_age"].values())
    assert "recsys_scorer_latency_seconds" in report["metric_families"]["score"]
