"""The worker's durable state: jobs, their events and used request nonces, in SQLite.

One database file in the worker's data directory. A restarted worker reads it back: finished
jobs keep serving their results and events, and jobs that were queued or running when the
worker stopped are marked failed with the reason (see :meth:`JobStore.fail_interrupted`).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["TERMINAL", "JobRecord", "JobStore", "NonceReplayed"]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
"""States a job never leaves."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY,
    requester TEXT NOT NULL,
    state TEXT NOT NULL,
    archive_sha256 BLOB,
    archive_size INTEGER,
    bundle_hash BLOB,
    seed INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    exit_code INTEGER NOT NULL DEFAULT 0,
    result_root BLOB,
    metering TEXT,
    receipt TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL
);
CREATE TABLE IF NOT EXISTS events (
    job_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event BLOB NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS nonces (
    signer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expiry INTEGER NOT NULL,
    PRIMARY KEY (signer, nonce)
);
"""


class NonceReplayed(Exception):
    """Raised when a request nonce was already used by the same signer."""


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as stored."""

    job_id: int
    requester: str
    state: str
    archive_sha256: bytes | None
    archive_size: int | None
    bundle_hash: bytes | None
    seed: int | None
    reason: str
    exit_code: int
    result_root: bytes | None
    metering: dict[str, Any] | None
    receipt: dict[str, Any] | None
    created: float
    started: float | None
    finished: float | None

    @property
    def terminal(self) -> bool:
        """Whether the job has ended."""
        return self.state in TERMINAL


class JobStore:
    """Thread-safe access to the worker's SQLite database."""

    def __init__(self, path: str | Path) -> None:
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- nonces -----------------------------------------------------------------------------

    def use_nonce(self, signer: str, nonce: int, expiry: int) -> None:
        """Record a nonce as used; raise :class:`NonceReplayed` if it was. Forgets expired ones."""
        with self._tx() as db:
            db.execute("DELETE FROM nonces WHERE expiry < ?", (int(time.time()) - 60,))
            try:
                db.execute(
                    "INSERT INTO nonces (signer, nonce, expiry) VALUES (?, ?, ?)",
                    (signer.lower(), format(nonce, "x"), expiry),
                )
            except sqlite3.IntegrityError:
                raise NonceReplayed(f"nonce {nonce:#x} was already used") from None

    # -- jobs -------------------------------------------------------------------------------

    def get(self, job_id: int) -> JobRecord | None:
        """Return the job, or None."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else self._record(row)

    @staticmethod
    def _record(row: tuple[Any, ...]) -> JobRecord:
        (
            job_id,
            requester,
            state,
            sha,
            size,
            bhash,
            seed,
            reason,
            code,
            root,
            meter,
            receipt,
            created,
            started,
            finished,
        ) = row
        return JobRecord(
            job_id,
            requester,
            state,
            sha,
            size,
            bhash,
            seed,
            reason,
            code,
            root,
            json.loads(meter) if meter else None,
            json.loads(receipt) if receipt else None,
            created,
            started,
            finished,
        )

    def upsert_upload(self, job_id: int, requester: str, archive_sha256: bytes, archive_size: int) -> JobRecord:
        """Create the job in state ``uploading`` (or reset its upload to a new archive)."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO jobs (job_id, requester, state, archive_sha256, archive_size, created) "
                "VALUES (?, ?, 'uploading', ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                "archive_sha256 = excluded.archive_sha256, archive_size = excluded.archive_size, "
                "state = 'uploading'",
                (job_id, requester, archive_sha256, archive_size, time.time()),
            )
        record = self.get(job_id)
        assert record is not None
        return record

    def update(self, job_id: int, **fields: Any) -> None:
        """Set columns of a job (``metering`` and ``receipt`` given as dicts)."""
        for key in ("metering", "receipt"):
            if key in fields and fields[key] is not None:
                fields[key] = json.dumps(fields[key])
        columns = ", ".join(f"{k} = ?" for k in fields)
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {columns} WHERE job_id = ?", (*fields.values(), job_id))

    def jobs_in(self, *states: str, ids: tuple[int, int] | None = None) -> list[JobRecord]:
        """Jobs in any of ``states``, oldest first; only ids in ``[lo, hi]`` when ``ids`` is given."""
        marks = ", ".join("?" for _ in states)
        where, args = f"state IN ({marks})", tuple[str | int, ...](states)
        if ids is not None:
            where, args = where + " AND job_id BETWEEN ? AND ?", (*args, *ids)
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE {where} ORDER BY created", args)
            return [self._record(r) for r in rows.fetchall()]

    # -- events -----------------------------------------------------------------------------

    def add_event(self, job_id: int, make: Any) -> tuple[int, bytes]:
        """Append an event; ``make(seq)`` returns its serialized bytes. Returns ``(seq, bytes)``."""
        with self._tx() as db:
            row = db.execute("SELECT COALESCE(MAX(seq) + 1, 0) FROM events WHERE job_id = ?", (job_id,)).fetchone()
            seq = int(row[0])
            data: bytes = make(seq)
            db.execute("INSERT INTO events (job_id, seq, event) VALUES (?, ?, ?)", (job_id, seq, data))
        return seq, data

    def events(self, job_id: int, from_seq: int = 0) -> list[tuple[int, bytes]]:
        """Events of a job from ``from_seq`` on."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, event FROM events WHERE job_id = ? AND seq >= ? ORDER BY seq", (job_id, from_seq)
            ).fetchall()
        return [(int(s), bytes(e)) for s, e in rows]

    def event_count(self, job_id: int) -> int:
        """Number of events of a job."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM events WHERE job_id = ?", (job_id,)).fetchone()[0])
