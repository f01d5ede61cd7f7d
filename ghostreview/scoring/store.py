"""The score store: every value a scorer computed, addressed by the image and by everything else it depends on.

One SQLite file (``<paths.cache>/scores.sqlite``, WAL mode) shared by every workspace on the machine, like the image
store. An entry is ``(key, image_hash) -> payload``; the key is the sha256 of the scorer's *identity*: the metric and
its version, the weights' sha256s, the settings that change a value's bits (batch size, device, CPU threads: see
``ghostreview.scoring.batching``) and, per row, the other inputs (the prompt for CLIPScore, the reference statistics
for StyleLoss). So the score stage of a model recomputes exactly the values whose identity is new: adding a judge
computes only that judge, a new StyleLoss image size only StyleLoss, a new style reference only that style's
values; everything else is read back. ``keys`` keeps each key's identity in clear, for whoever inspects the file.

It is a cache: deleting it costs only recomputation. A file that is not a readable store is an error naming it and
that fix, before any scorer loads. Each scorer's new values are committed in one transaction as soon as they are
computed, so a killed stage keeps every scorer it finished.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from ghostreview.errors import UserError

SCHEMA_VERSION = 1
QUERY_CHUNK = 500  # image hashes per SELECT (SQLite's default limit on bound variables is 32766; keep it small)


class ScoreStoreError(UserError, RuntimeError):
    """The score store file cannot be used; the message names it and the fix."""


def identity_key(identity: Mapping) -> str:
    """sha256 of the identity as canonical JSON (sorted keys, no whitespace): equal settings, equal key."""
    return hashlib.sha256(canonical(identity).encode()).hexdigest()


def canonical(identity: Mapping) -> str:
    return json.dumps(identity, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class ScoreStore:
    """Computed values by (identity key, image hash); ``computed`` and ``reused`` count them per label this run."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.computed: Counter[str] = Counter()
        self.reused: Counter[str] = Counter()
        self._known: set[str] = set()
        fix = (f"It is only a cache of computed scores: delete {self.path} (and its -wal/-shm files) and run again, "
               f"or point paths.cache in params.yaml elsewhere.")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=120)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: a commit survives a killed process
            with self.db:
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID")
                self.db.execute("CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, identity TEXT) WITHOUT ROWID")
                self.db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT, image_hash TEXT, payload BLOB, "
                                "PRIMARY KEY (key, image_hash)) WITHOUT ROWID")
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            (schema,) = self.db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        except (sqlite3.DatabaseError, OSError) as exc:
            raise ScoreStoreError(f"{self.path} is not a usable score store ({exc}). {fix}") from exc
        if schema != str(SCHEMA_VERSION):
            raise ScoreStoreError(f"{self.path} is a score store of schema {schema}, this GhostReview writes "
                                  f"{SCHEMA_VERSION}. {fix}")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ScoreStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def key(self, identity: Mapping) -> str:
        """The key of ``identity``, recorded in ``keys`` (once)."""
        key = identity_key(identity)
        if key not in self._known:
            with self.db:
                self.db.execute("INSERT OR IGNORE INTO keys VALUES (?, ?)", (key, canonical(identity)))
            self._known.add(key)
        return key

    def get(self, key: str, hashes: Iterable[str]) -> dict[str, bytes]:
        """The stored payloads of ``hashes`` under ``key`` (absent ones left out)."""
        wanted = list(dict.fromkeys(hashes))
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), QUERY_CHUNK):
            part = wanted[start : start + QUERY_CHUNK]
            marks = ",".join("?" * len(part))
            found.update(self.db.execute(f"SELECT image_hash, payload FROM entries WHERE key = ? AND image_hash IN "
                                         f"({marks})", (key, *part)))
        return found

    def put(self, key: str, payloads: Mapping[str, bytes]) -> None:
        """Store ``payloads`` (image hash -> bytes) under ``key`` in one transaction."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?)",
                                ((key, h, p) for h, p in payloads.items()))

    def count(self, label: str, computed: int, reused: int) -> None:
        self.computed[label] += computed
        self.reused[label] += reused

    def summary(self, labels: Sequence[str] | None = None) -> str:
        """``aesthetic 3 computed, 5 from the store; ...`` for every label counted (in ``labels`` order if given)."""
        names = labels if labels is not None else sorted(set(self.computed) | set(self.reused))
        return "; ".join(f"{n} {self.computed[n]} computed, {self.reused[n]} from the store" for n in names)
