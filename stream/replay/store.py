"""The replay buffer's persistent store: a recent window plus a reservoir of the long past.

SQLite in WAL mode, one transaction per consumed batch that also records the
consumer offsets it covers, so after any crash (kill -9 included) the service
resumes exactly where the durable data ends: nothing acknowledged is lost and
nothing is inserted twice. Experiences are unique by ``event_id``, which makes a
re-emitted experience (a processor replaying after its own restart) a no-op.

Bounded: the newest ``window`` experiences are kept as they are; older ones pass
into a reservoir of ``reservoir`` experiences that is a uniform sample of
everything that ever left the window (Vitter's algorithm R). A per-user index
serves meta-learning tasks (users with at least m experiences, in time order), and
batches are sampled uniformly, from the recent window, or by priority.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from stream import schemas
from stream.replay.held_rows import HeldRows

RECENT, PAST = 0, 1


@dataclass(frozen=True)
class StoreConfig:
    window: int = 200_000
    reservoir: int = 800_000
    seed: int = 0


def count_stored(path: str | Path) -> int:
    """Experiences in a store file, read-only, from another process; 0 before the store exists."""
    path = Path(path)
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM experiences").fetchone()[0]
    except sqlite3.OperationalError:  # the service has not created its tables yet
        return 0


class ReplayStore:
    def __init__(self, path: str | Path, config: StoreConfig | None = None) -> None:
        self.config = config or StoreConfig()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")  # a committed batch survives power loss, not just kill -9
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS experiences (
                seq INTEGER PRIMARY KEY,
                event_id TEXT NOT NULL UNIQUE,
                user_id TEXT NOT NULL,
                ts REAL NOT NULL,
                tier INTEGER NOT NULL,
                priority REAL NOT NULL DEFAULT 1.0,
                payload BLOB NOT NULL
            );
            CREATE INDEX IF NOT EXISTS by_user ON experiences(user_id, ts);
            CREATE INDEX IF NOT EXISTS by_tier ON experiences(tier, seq);
            CREATE TABLE IF NOT EXISTS offsets (topic TEXT, partition INTEGER, next_offset INTEGER,
                                                PRIMARY KEY (topic, partition));
            CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE IF NOT EXISTS dead_letter_outbox (id INTEGER PRIMARY KEY, letter BLOB NOT NULL);
            """
        )
        self.rng = np.random.default_rng(self.config.seed + self._counter("past_seen"))
        # In memory, the rows held, kept in step with every write (sampling costs a numpy draw, not a scan).
        recent, past = (np.fromiter((r[0] for r in self.db.execute(
            "SELECT seq FROM experiences WHERE tier = ? ORDER BY seq", (tier,))), dtype=np.int64)
            for tier in (RECENT, PAST))
        self._rows = HeldRows(recent, past, self.config.window, self.config.reservoir)

    def close(self) -> None:
        self.db.close()

    # -- counters and offsets ------------------------------------------------------------
    def _counter(self, name: str) -> int:
        row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def offsets(self) -> dict[tuple[str, int], int]:
        """Next offset to consume per (topic, partition), as durably recorded with the data."""
        return {(t, p): o for t, p, o in self.db.execute("SELECT topic, partition, next_offset FROM offsets")}

    # -- writing ---------------------------------------------------------------------------
    def add(self, experiences: Iterable[schemas.Experience],
            offsets: dict[tuple[str, int], int] | None = None,
            dead_letters: Iterable[schemas.DeadLetter] = (),
            payloads: Iterable[bytes] | None = None) -> int:
        """Insert a batch, the offsets it covers and its dead letters in one durable transaction.

        The dead letters wait in an outbox until the caller has them acknowledged by the
        broker (``outbox``/``clear_outbox``): a crash between the two re-sends them from
        the outbox instead of re-reading (and re-refusing) the messages. ``payloads``, when
        given, are the experiences' bytes as they were decoded (stored as they are, not
        encoded again). Returns rows added.
        """
        if payloads is None:
            rows = [(e.event_id, e.user_id, e.ts, RECENT, schemas.encode(e)) for e in experiences]
        else:
            rows = [(e.event_id, e.user_id, e.ts, RECENT, p) for e, p in zip(experiences, payloads, strict=True)]
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            before = self.db.total_changes
            last = self._rows.newest()
            cur.executemany(
                "INSERT OR IGNORE INTO experiences (event_id, user_id, ts, tier, payload) VALUES (?, ?, ?, ?, ?)",
                rows)
            added = self.db.total_changes - before
            fresh = np.fromiter((r[0] for r in cur.execute(
                "SELECT seq FROM experiences WHERE seq > ? ORDER BY seq", (last,))), dtype=np.int64)
            # Applied to the rows held once the transaction commits.
            leaving, slots, filled = self._age_out(cur, added)
            for (topic, partition), next_offset in (offsets or {}).items():
                cur.execute("INSERT INTO offsets VALUES (?, ?, ?) ON CONFLICT(topic, partition) "
                            "DO UPDATE SET next_offset = excluded.next_offset", (topic, partition, next_offset))
            cur.executemany("INSERT INTO dead_letter_outbox (letter) VALUES (?)",
                            [(schemas.encode(letter),) for letter in dead_letters])
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        self._rows.apply(leaving, fresh, slots, filled)
        return added

    def outbox(self) -> list[tuple[int, schemas.DeadLetter]]:
        """Dead letters stored with their batch and not yet acknowledged by the broker."""
        return [(row_id, schemas.decode("dlq", letter))
                for row_id, letter in self.db.execute("SELECT id, letter FROM dead_letter_outbox ORDER BY id")]

    def clear_outbox(self, ids: Iterable[int]) -> None:
        self.db.executemany("DELETE FROM dead_letter_outbox WHERE id = ?", [(i,) for i in ids])

    def _age_out(self, cur: sqlite3.Cursor, added: int) -> tuple[int, dict[int, int], int]:
        """Move what no longer fits the window into the reservoir (algorithm R), evicting as needed; returns
        how many rows left the window, the reservoir slots it changed (slot -> seq) and how many slots are
        filled now."""
        overflow = self._rows.recent + added - self.config.window
        if overflow <= 0:
            return 0, {}, self._rows.filled
        leaving = [r[0] for r in cur.execute(
            "SELECT seq FROM experiences WHERE tier = ? ORDER BY seq LIMIT ?", (RECENT, overflow))]
        seen = self._counter("past_seen")
        pending: dict[int, int] = {}
        filled = self._rows.filled
        for seq in leaving:
            seen += 1
            if filled < self.config.reservoir:
                cur.execute("UPDATE experiences SET tier = ? WHERE seq = ?", (PAST, seq))
                pending[filled] = seq
                filled += 1
                continue
            slot = int(self.rng.integers(0, seen))
            if slot < self.config.reservoir:
                victim = pending.get(slot, int(self._rows.slots[slot]))
                pending[slot] = seq
                cur.execute("DELETE FROM experiences WHERE seq = ?", (victim,))
                cur.execute("UPDATE experiences SET tier = ? WHERE seq = ?", (PAST, seq))
            else:
                cur.execute("DELETE FROM experiences WHERE seq = ?", (seq,))
        cur.execute("INSERT INTO counters VALUES ('past_seen', ?) ON CONFLICT(name) DO UPDATE SET value = ?",
                    (seen, seen))
        return len(leaving), pending, filled

    def set_priorities(self, event_ids: list[str], priorities: list[float]) -> None:
        if any(p <= 0 for p in priorities):
            raise ValueError("priorities must be > 0")
        with self.db:
            self.db.executemany("UPDATE experiences SET priority = ? WHERE event_id = ?",
                                list(zip(priorities, event_ids)))

    # -- reading -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM experiences").fetchone()[0]

    def sizes(self) -> dict[str, int]:
        """Rows per tier from the in-memory index (exact for this writer: counting the table took a
        scan per batch)."""
        return {"recent": self._rows.recent, "reservoir": self._rows.filled}

    def event_ids(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT event_id FROM experiences")}

    def _decode(self, payloads: Iterable[bytes]) -> list[schemas.Experience]:
        decoder = schemas.decoder_for("experiences")
        return [decoder.decode(p) for p in payloads]

    def sample(self, n: int, how: Literal["uniform", "recent", "prioritised"] = "uniform",
               recent: int = 10_000) -> list[schemas.Experience]:
        """n experiences (with replacement): uniform over the store, from the newest ``recent``, or by priority."""
        if how == "uniform":
            if not len(self._rows):
                return []
            picked = self._rows.uniform(self.rng, n)
        elif how in ("recent", "prioritised"):
            if how == "recent":
                seqs, weights = self._rows.newest_rows(recent), None
            else:
                data = np.array(self.db.execute("SELECT seq, priority FROM experiences").fetchall())
                seqs, weights = (data[:, 0].astype(np.int64), data[:, 1]) if len(data) else (np.array([]), None)
            if len(seqs) == 0:
                return []
            picked = self.rng.choice(seqs, size=n, p=None if weights is None else weights / weights.sum())
        else:
            raise ValueError(f"unknown sampling {how!r}")
        unique, counts = np.unique(picked, return_counts=True)
        found = dict(self.db.execute(
            f"SELECT seq, payload FROM experiences WHERE seq IN ({','.join('?' * len(unique))})",
            [int(s) for s in unique]).fetchall())
        decoded = dict(zip(found, self._decode(found.values())))
        return [decoded[int(s)] for s, c in zip(unique, counts) for _ in range(c) if int(s) in decoded]

    def users_with_at_least(self, m: int) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT user_id FROM experiences GROUP BY user_id HAVING COUNT(*) >= ?", (m,))]

    def user_history(self, user_id: str, limit: int | None = None) -> list[schemas.Experience]:
        """A user's experiences in time order (the newest ``limit`` when given)."""
        if limit is None:
            rows = self.db.execute("SELECT payload FROM experiences WHERE user_id = ? ORDER BY ts, seq",
                                   (user_id,)).fetchall()
        else:
            rows = self.db.execute(
                "SELECT payload FROM (SELECT payload, ts, seq FROM experiences WHERE user_id = ? "
                "ORDER BY ts DESC, seq DESC LIMIT ?) ORDER BY ts, seq", (user_id, limit)).fetchall()
        return self._decode(r[0] for r in rows)

    def sample_tasks(self, n_users: int, min_experiences: int) -> dict[str, list[schemas.Experience]]:
        """Up to n_users users with at least min_experiences each, with their experiences in time order."""
        eligible = self.users_with_at_least(min_experiences)
        if not eligible:
            return {}
        chosen = self.rng.choice(eligible, size=min(n_users, len(eligible)), replace=False)
        return {str(u): self.user_history(str(u)) for u in chosen}


class ReplaySampler:
    """Read-only sampling from a replay store another process (``recsys-stream replay``) writes.

    ``ReplayStore`` keeps an in-memory index of the rows it wrote; a reader in another
    process cannot, so this samples by seq range in SQL and sees every committed row.
    The file may not exist yet when the learner starts: ``ready`` says when it does.
    """

    def __init__(self, path: str | Path, seed: int = 0) -> None:
        self.path = Path(path)
        self.rng = np.random.default_rng(seed)
        self._db: sqlite3.Connection | None = None
        self._decoder = schemas.decoder_for("experiences")

    def ready(self) -> bool:
        if self._db is None and self.path.exists():
            try:
                db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
                db.execute("SELECT 1 FROM experiences LIMIT 1")
                self._db = db
            except sqlite3.Error:
                return False
        return self._db is not None

    def __len__(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM experiences").fetchone()[0]) if self.ready() else 0

    def sample(self, n: int) -> list[schemas.Experience]:
        """Up to n experiences drawn uniformly by seq (rows aged out since are skipped)."""
        if n <= 0 or not self.ready():
            return []
        low, high = self._db.execute("SELECT MIN(seq), MAX(seq) FROM experiences").fetchone()
        if low is None:
            return []
        picked = sorted({int(s) for s in self.rng.integers(low, high + 1, size=2 * n)})
        rows = self._db.execute(f"SELECT payload FROM experiences WHERE seq IN ({','.join('?' * len(picked))})",
                                picked).fetchall()
        found = [self._decoder.decode(r[0]) for r in rows]
        self.rng.shuffle(found)
        return found[:n]

    def history_before(self, user_id: str, ts: float, limit: int) -> list[schemas.Experience]:
        """The user's last ``limit`` outcomes (purchase follow-ups left out) before ``ts``, oldest first:
        what a scorer's memory held when it served the request at ``ts``."""
        if not self.ready() or limit <= 0:
            return []
        rows = self._db.execute(
            "SELECT payload FROM experiences WHERE user_id = ? AND ts < ? ORDER BY ts DESC, seq DESC LIMIT ?",
            (user_id, ts, 2 * limit)).fetchall()
        outcomes = [e for e in (self._decoder.decode(r[0]) for r in rows) if e.kind != "purchase"][:limit]
        return outcomes[::-1]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
