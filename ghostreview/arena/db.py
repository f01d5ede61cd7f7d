"""The arena's vote database: SQLite in WAL mode (``data/arena/votes.sqlite`` by default).

Why SQLite and how it is used:
- every accepted vote is one transaction committed (``synchronous=FULL``) before the server answers, so a vote the
  voter saw acknowledged survives a killed server (WAL: readers never block the writer);
- ``vote_id`` is the primary key: it is the nonce of the signed pair id the vote answers, so a replayed pair id hits
  the key and is refused (``Duplicate``), never stored twice;
- refused requests are only counted, per reason, in ``rejects``: nothing of their bodies is stored;
- ``meta`` holds the server's signing secret, so pair ids and voter cookies stay valid across a restart.

Votes follow LMArena's layout: ``model_a`` < ``model_b`` (sorted names), ``winner`` one of :data:`WINNERS`;
``left`` records which of the two was shown on the left (for position bias).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from dataclasses import astuple, dataclass, fields
from pathlib import Path

WINNERS = ("model_a", "model_b", "tie", "both_bad")  # LMArena's outcome names
SIDES = ("model_a", "model_b")  # which model the voter saw on the left
ORIGINS = ("arena", "synthetic")  # people's votes, or the demo kit's drawn ones

SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    vote_id TEXT PRIMARY KEY, voter TEXT NOT NULL, task TEXT NOT NULL, item TEXT NOT NULL, seed INTEGER NOT NULL,
    model_a TEXT NOT NULL, model_b TEXT NOT NULL, image_a TEXT NOT NULL, image_b TEXT NOT NULL,
    winner TEXT NOT NULL CHECK (winner IN ('model_a', 'model_b', 'tie', 'both_bad')),
    left_side TEXT NOT NULL CHECK (left_side IN ('model_a', 'model_b')),
    origin TEXT NOT NULL CHECK (origin IN ('arena', 'synthetic')),
    served_ms INTEGER NOT NULL, voted_ms INTEGER NOT NULL,
    CHECK (model_a < model_b)
);
CREATE TABLE IF NOT EXISTS rejects (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Vote:
    """One stored vote (the columns of ``votes``, in order)."""

    vote_id: str
    voter: str
    task: str
    item: str
    seed: int
    model_a: str
    model_b: str
    image_a: str
    image_b: str
    winner: str
    left_side: str
    origin: str
    served_ms: int
    voted_ms: int

    def __post_init__(self) -> None:
        if not self.model_a < self.model_b:
            raise ValueError(f"model_a {self.model_a!r} must sort before model_b {self.model_b!r} (LMArena layout)")
        for name, value, allowed in (("winner", self.winner, WINNERS), ("left_side", self.left_side, SIDES),
                                     ("origin", self.origin, ORIGINS)):
            if value not in allowed:
                raise ValueError(f"{name} {value!r} is not one of {', '.join(allowed)}")


VOTE_COLUMNS = tuple(f.name for f in fields(Vote))


class Duplicate(Exception):
    """The vote's id is already stored: a replayed pair id."""


class VoteDB:
    """One connection to the vote database, shared by the server's threads behind a lock (SQLite serializes writers
    anyway; one connection keeps each commit's fsync in one place)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the vote is acknowledged
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(self, vote: Vote) -> None:
        """Store and commit ``vote``; :class:`Duplicate` when its id is stored already."""
        marks = ", ".join("?" * len(VOTE_COLUMNS))
        with self._lock:
            try:
                self._conn.execute(f"INSERT INTO votes ({', '.join(VOTE_COLUMNS)}) VALUES ({marks})", astuple(vote))
            except sqlite3.IntegrityError as err:
                if "UNIQUE" in str(err) or "PRIMARY KEY" in str(err):
                    raise Duplicate(vote.vote_id) from err
                raise

    def add_many(self, votes: list[Vote]) -> None:
        """Store ``votes`` in one transaction (the demo kit's synthetic file, tests)."""
        marks = ", ".join("?" * len(VOTE_COLUMNS))
        with self._lock:
            self._conn.execute("BEGIN")
            self._conn.executemany(f"INSERT INTO votes ({', '.join(VOTE_COLUMNS)}) VALUES ({marks})",
                                   [astuple(v) for v in votes])
            self._conn.execute("COMMIT")

    def votes(self) -> Iterator[Vote]:
        """Every stored vote, sorted by (voted_ms, vote_id): the export's order."""
        with self._lock:
            rows = self._conn.execute(f"SELECT {', '.join(VOTE_COLUMNS)} FROM votes ORDER BY voted_ms, vote_id")
            fetched = rows.fetchall()
        return (Vote(*r) for r in fetched)

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    def reject(self, reason: str) -> None:
        """Count one refused request under ``reason`` (its body is not kept)."""
        with self._lock:
            self._conn.execute("INSERT INTO rejects (reason, count) VALUES (?, 1) "
                               "ON CONFLICT(reason) DO UPDATE SET count = count + 1", (reason,))

    def rejects(self) -> Mapping[str, int]:
        with self._lock:
            return dict(self._conn.execute("SELECT reason, count FROM rejects ORDER BY reason").fetchall())

    def secret(self) -> bytes:
        """The server's signing key, made once per database and kept in it (pair ids outlive a restart)."""
        with self._lock:
            self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('secret', ?)",
                               (secrets.token_hex(32),))
            return bytes.fromhex(self._conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0])
