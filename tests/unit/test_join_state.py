"""The join's changelog: a processor rebuilt from it at any checkpoint continues exactly as the original."""

from __future__ import annotations

import json
import random

import pytest

from stream.join import state as join_state
from stream.join.processor import SOURCES, Coordinates, RewardProcessor
from stream.join.reward_join import JoinConfig
from tests.unit.test_reward_processor import T0, clk, imp

CONFIG = JoinConfig(click_window=30, purchase_window=120, grace=5)


def purchase(event: str, user: str, item: str, ts: float, request: str) -> bytes:
    return json.dumps({"event_id": event, "request_id": request, "user_id": user, "item_id": item,
                       "value": 12.5, "ts": ts}).encode()


def script(seed: int, clicks_ahead: float = 0.0) -> list[tuple[str, bytes]]:
    """Impressions over 400 s of event time with clicks (some early, some duplicated, some
    orphaned, some without request_id), purchases, and a malformed line; ``clicks_ahead``: seconds of
    event time by which clicks are read before impressions (a backlog fetched unevenly)."""
    rng = random.Random(seed)
    events: list[tuple[float, str, bytes]] = []
    for r in range(120):
        ts = T0 + r * 3.3
        user, items = f"u{r % 7}", [f"i{(r + k) % 11}" for k in range(3)]
        events.append((ts, "impressions", imp(f"r{r}", user, items, ts)))
        for k, item in enumerate(items):
            roll = rng.random()
            if roll < 0.35:
                cts = ts + rng.uniform(-2, 25)           # may overtake its impression (parked)
                request = f"r{r}" if rng.random() < 0.8 else None
                events.append((cts, "clicks", clk(f"c{r}-{k}", user, item, cts, request)))
                if rng.random() < 0.2:
                    events.append((cts + 1, "clicks", clk(f"c{r}-{k}", user, item, cts, request)))
                if rng.random() < 0.3:
                    pts = cts + rng.uniform(1, 60)
                    events.append((pts, "purchases", purchase(f"p{r}-{k}", user, item, pts, f"r{r}")))
        if rng.random() < 0.05:
            events.append((ts, "clicks", clk(f"orphan{r}", user, "zz", ts, "missing")))
    events.append((T0 + 50, "clicks", b"{not json"))
    # Mild disorder within grace, and clicks read ahead if asked.
    events.sort(key=lambda e: e[0] + rng.uniform(-1.5, 1.5) - (clicks_ahead if e[1] == "clicks" else 0.0))
    return [(topic, raw) for _, topic, raw in events]


def drive(proc: RewardProcessor, steps: list[tuple[str, bytes]], start: int, offsets: dict[str, int]):
    results = []
    for logical, raw in steps:
        where = Coordinates(f"p.{logical}", 0, offsets[logical], b"k")
        offsets[logical] += 1
        out = proc.handle(logical, raw, where)
        results += [e.event_id for e in out.experiences] + [(d.reason, d.offset) for d in out.dead_letters]
    return results


def finish(proc: RewardProcessor) -> list:
    out = []
    for logical in SOURCES:
        o = proc.reached_end(logical, 0)
        out += [e.event_id for e in o.experiences] + [(d.reason, d.offset) for d in o.dead_letters]
    for _ in range(200):
        o = proc.idle(0, 1.0)
        out += [e.event_id for e in o.experiences] + [(d.reason, d.offset) for d in o.dead_letters]
    return out


# 300 s: clicks read that far ahead (a backlog fetched unevenly) are parked and then meet an earlier
# impression of the same user and item (they recur every 77 requests, 254 s) before their own.
@pytest.mark.parametrize("clicks_ahead", [0.0, 300.0])
@pytest.mark.parametrize("cut", [1, 40, 150, 260])
def test_restored_processor_continues_exactly_like_the_original(cut, clicks_ahead):
    steps = script(seed=cut, clicks_ahead=clicks_ahead)
    original = RewardProcessor(CONFIG)
    changelog: list[tuple[bytes, bytes | None]] = []
    offsets = dict.fromkeys(SOURCES, 0)
    # Checkpoints every 17 messages, as a worker does per batch.
    for begin in range(0, cut, 17):
        drive(original, steps[begin:min(begin + 17, cut)], begin, offsets)
        changelog += original.changes(0)
    restored = RewardProcessor(CONFIG)
    restored.restore(0, join_state.latest(changelog))
    assert restored.joins[0].open_requests == original.joins[0].open_requests
    assert restored.joins[0].parked == original.joins[0].parked
    rest_a = drive(original, steps[cut:], cut, dict(offsets)) + finish(original)
    rest_b = drive(restored, steps[cut:], cut, dict(offsets)) + finish(restored)
    assert rest_b == rest_a
    assert any(isinstance(x, str) and x.endswith(":no_click") for x in rest_a)


def test_replaying_inputs_already_in_the_state_emits_nothing_twice():
    """A crash after the changelog was written but before offsets were committed re-reads inputs."""
    steps = script(seed=3)
    proc = RewardProcessor(CONFIG)
    offsets = dict.fromkeys(SOURCES, 0)
    first = drive(proc, steps[:100], 0, offsets)
    restored = RewardProcessor(CONFIG)
    restored.restore(0, join_state.latest(proc.changes(0)))
    again = drive(restored, steps[60:100], 60, {k: 0 for k in SOURCES})
    assert [x for x in again if isinstance(x, str)] == []     # every experience was already paid out
    assert first


def test_tombstones_remove_forgotten_requests():
    proc = RewardProcessor(CONFIG)
    proc.handle("impressions", imp("r1", "u1", ["a"], T0), Coordinates("p.impressions", 0, 0))
    live = join_state.latest(proc.changes(0))
    assert join_state.request_key("r1") in live
    for logical in SOURCES:
        proc.reached_end(logical, 0)
    proc.idle(0, 1.0)
    proc.handle("impressions", imp("r2", "u1", ["a"], T0 + 500), Coordinates("p.impressions", 0, 1))
    live = join_state.latest(list(live.items()) + proc.changes(0))
    # Forgotten, r1 keeps its one record (its event ids still deduplicate a re-read) until the
    # checkpointed event time leaves it behind the dedupe horizon; then a tombstone removes it.
    assert join_state.request_key("r1") in live and join_state.request_key("r2") in live
    proc.handle("impressions", imp("r3", "u1", ["a"], T0 + 600), Coordinates("p.impressions", 0, 2))
    live = join_state.latest(list(live.items()) + proc.changes(0))
    assert join_state.request_key("r1") not in live and join_state.request_key("r2") in live
    assert not any(key.startswith(join_state.FORGOTTEN) for key in live)


def test_replaying_inputs_of_forgotten_requests_is_not_an_orphan():
    """Changelog written, offsets not committed, crash: the re-read clicks belong to requests the
    state has already forgotten. They must count as duplicates, not as orphans."""
    config = JoinConfig(click_window=30, purchase_window=40, grace=5)
    steps = script(seed=4)
    proc = RewardProcessor(config)
    first = drive(proc, steps[:200], 0, dict.fromkeys(SOURCES, 0))
    restored = RewardProcessor(config)
    restored.restore(0, join_state.latest(proc.changes(0)))
    assert restored.joins[0].open_requests < 60          # most requests were forgotten
    again = drive(restored, steps[:200], 0, dict.fromkeys(SOURCES, 0))
    assert [x for x in again if isinstance(x, str)] == []                 # nothing paid twice
    # The original, fed the same repeats, answers exactly the same: parked events that run out
    # of grace are rejected by both, and malformed input is refused again by both (dead letters
    # of a crash window may repeat); no click of a forgotten request becomes an orphan.
    assert again == drive(proc, steps[:200], 0, dict.fromkeys(SOURCES, 0))
    assert any(isinstance(x, tuple) and x[0] == "orphan" for x in first)


def test_a_checkpoint_cut_short_by_a_crash_still_recovers():
    """A crash while a checkpoint's changelog records are being written leaves a prefix of them;
    re-reading the batch from the last committed offsets must neither lose, add nor contradict
    an experience, nor turn a repeat into an orphan."""
    config = JoinConfig(click_window=30, purchase_window=40, grace=5)
    steps = script(seed=6)
    original = RewardProcessor(config)
    drive(original, steps[:150], 0, dict.fromkeys(SOURCES, 0))
    committed = original.changes(0)
    offsets = dict.fromkeys(SOURCES, 0)
    for logical, _ in steps[:150]:
        offsets[logical] += 1
    running = dict(offsets)
    batch_out = drive(original, steps[150:230], 150, running)
    batch_changes = original.changes(0)
    # The batch lets requests leave the dedupe horizon (their records become tombstones): the part of
    # the state that only a re-read repeat depends on is cut too.
    assert any(key.startswith(join_state.REQUEST) and value is None for key, value in batch_changes)
    rest = drive(original, steps[230:], 230, running) + finish(original)
    want_ids = {x for x in batch_out + rest if isinstance(x, str)}
    want_letters = {x for x in batch_out + rest if isinstance(x, tuple)}
    cuts = sorted({*range(0, len(batch_changes), max(1, len(batch_changes) // 12)), len(batch_changes) - 1,
                   len(batch_changes)})
    for cut in cuts:
        restored = RewardProcessor(config)
        read_back = join_state.committed(committed + batch_changes[:cut])
        restored.restore(0, read_back.live)
        again = drive(restored, steps[150:], 150, dict(offsets)) + finish(restored)
        ids = {x for x in again if isinstance(x, str)}
        if cut < len(batch_changes):
            # The cut batch counts as never written: it is replayed whole, every experience of it
            # emitted again (same ids) and none contradicted.
            assert ids == want_ids, cut
            assert len(read_back.rollback) == len({k for k, _ in batch_changes[:cut]}), cut
        else:
            # The whole checkpoint landed but its offsets were not committed: the re-read batch
            # pays nothing twice.
            assert ids <= want_ids and want_ids - ids == {x for x in batch_out if isinstance(x, str)}
            assert read_back.rollback == []
        assert {x for x in again if isinstance(x, tuple)} <= want_letters, cut
        # The restoring worker writes the rollback over the cut tail: what follows it then reads
        # back as exactly the committed state, however the log continues.
        healed = committed + batch_changes[:cut] + read_back.rollback + restored.progress_marker(0)
        assert join_state.latest(healed) == {**read_back.live, join_state.PROGRESS: restored.progress_marker(0)[0][1]}


def test_only_records_closed_by_a_progress_record_are_committed():
    r1, r2 = join_state.request_key("a"), join_state.request_key("b")
    log = [(r1, b"1"), (join_state.PROGRESS, b"w1"), (r1, b"2"), (r2, b"x"), (r1, None)]
    read_back = join_state.committed(log)
    assert read_back.live == {r1: b"1", join_state.PROGRESS: b"w1"}
    assert read_back.rollback == [(r1, b"1"), (r2, None)]
    assert join_state.latest(log + [(join_state.PROGRESS, b"w2")]) == {r2: b"x", join_state.PROGRESS: b"w2"}


def test_closing_a_click_window_writes_no_request_record_and_survives_a_restore():
    """The close is derived from the checkpoint's watermark: no rewrite of the request, and a restored
    join still refuses a click that comes after the window (its no_click is already out)."""
    proc = RewardProcessor(CONFIG)
    proc.handle("impressions", imp("r1", "u1", ["a", "b"], T0), Coordinates("p.impressions", 0, 0))
    changelog = proc.changes(0)
    proc.handle("impressions", imp("r2", "u2", ["a"], T0 + 60), Coordinates("p.impressions", 0, 1))
    closed = [proc.reached_end(logical, 0) for logical in SOURCES] + [proc.idle(0, 1.0)]
    assert {e.event_id for o in closed for e in o.experiences} >= {"r1:a:no_click", "r1:b:no_click"}
    later = proc.changes(0)
    assert join_state.request_key("r1") not in dict(later)
    changelog += later
    restored = RewardProcessor(CONFIG)
    restored.restore(0, join_state.latest(changelog))
    late = restored.handle("clicks", clk("c1", "u1", "a", T0 + 20, "r1"), Coordinates("p.clicks", 0, 0))
    assert late.experiences == [] and [d.reason for d in late.dead_letters] == ["late"]


def test_a_changelog_with_forgotten_records_of_the_old_layout_still_restores_and_expires():
    """Before a forgotten request stayed under its request's key it had a record of its own
    (``f/``): a worker restoring such a changelog still treats a re-read click of it as a repeat,
    refuses its request id, and tombstones that record once it leaves the dedupe horizon."""
    proc = RewardProcessor(CONFIG)
    proc.handle("impressions", imp("r0", "u1", ["a"], T0 + 200), Coordinates("p.impressions", 0, 0))
    progress = dict(proc.changes(0))[join_state.PROGRESS]
    old = {join_state.forgotten_key("r1"): join_state.encode(join_state.ForgottenRecord(T0 + 10, ["imp-r1", "c1"])),
           join_state.PROGRESS: progress}
    restored = RewardProcessor(CONFIG)
    restored.restore(0, old)
    again = restored.handle("clicks", clk("c1", "u1", "a", T0 + 12, "r1"), Coordinates("p.clicks", 0, 0))
    assert again.experiences == [] and again.dead_letters == []
    reopened = restored.handle("impressions", imp("r1", "u1", ["a"], T0 + 210), Coordinates("p.impressions", 0, 1))
    assert reopened.experiences == [] and join_state.request_key("r1") not in dict(restored.changes(0))
    later = []
    for n, ts in enumerate((T0 + 400, T0 + 500), start=2):
        for logical in SOURCES:
            restored.reached_end(logical, 0)
        restored.idle(0, 1.0)
        restored.handle("impressions", imp(f"r{n}", "u1", ["a"], ts), Coordinates("p.impressions", 0, n))
        later += restored.changes(0)
    assert (join_state.forgotten_key("r1"), None) in later


def test_a_click_parked_again_after_another_impression_survives_a_restore():
    """A click without request_id that overtook its impression is released by an earlier impression of the same
    user and item, matches nothing there (outside that window) and is parked again: its parked record must still
    be in the changelog, or a restore drops it and its request later closes with a no_click (found by SIGKILL
    of the join in tests/integration/test_join_recovery.py)."""
    proc = RewardProcessor(CONFIG)
    offsets = dict.fromkeys(SOURCES, 0)
    drive(proc, [("clicks", clk("c-late", "u1", "i1", T0 + 200))], 0, offsets)     # parked: no impression yet
    assert proc.joins[0].parked == 1
    drive(proc, [("impressions", imp("r-old", "u1", ["i1", "i2"], T0 + 100))], 0, offsets)   # too old for it
    assert proc.joins[0].parked == 1
    restored = RewardProcessor(CONFIG)
    restored.restore(0, join_state.latest(proc.changes(0)))
    assert restored.joins[0].parked == 1
    paid = drive(restored, [("impressions", imp("r-new", "u1", ["i1", "i3"], T0 + 190))], 0, offsets)
    assert paid == ["r-new:i1:click"]
    assert "r-new:i1:no_click" not in finish(restored)
