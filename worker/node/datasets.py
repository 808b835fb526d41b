"""The worker's content-addressed dataset store: datasets put once, read by many jobs.

A dataset is kept under ``<data_dir>/datasets/trees/<hex>`` where ``<hex>`` is its hash (the
Merkle root of its files, :mod:`marketplace.protocol.datasets`), read-only, and bound read-only
into each job that names it. Its archive arrives resumably (``PutDataset``: a part file per
signer and archive that grows until complete), is checked against its sha256, unpacked within
the limits below and hashed again: a tree whose hash is not the name it was put under is refused
and nothing of it is kept.

What bounds a provider's exposure (see docs/datasets.md for the reasoning and the numbers):

- ``max_dataset_bytes`` / ``max_files``: one dataset, counted while unpacking;
- ``account_quota_bytes``: what one account may hold here (datasets it put, from-job datasets and
  its unfinished uploads); ``stranger_quota_bytes`` for an account that never ran a job here;
- ``disk_budget_bytes``: everything together; to make room the least recently used datasets no
  live job reads are evicted, and an account that never ran a job here can only ever evict
  datasets of such accounts (``stranger_budget_bytes`` of the budget in all) — so keys made for
  free cannot push out a customer's data, only each other's;
- ``upload_idle_s``: an unfinished upload left this long is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from marketplace.errors import BundleError, WorkerError
from marketplace.protocol.bundle import MAX_ENTRIES, unpack_tree
from marketplace.protocol.datasets import format_dataset
from marketplace.protocol.merkle import ResultManifest, file_sha256, manifest_of

__all__ = ["DatasetInfo", "DatasetLimits", "DatasetStore"]

_READ = 1 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    hash BLOB PRIMARY KEY,
    owner TEXT NOT NULL,
    size INTEGER NOT NULL,
    files INTEGER NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS holders (
    hash BLOB NOT NULL,
    account TEXT NOT NULL,
    PRIMARY KEY (hash, account)
);
CREATE TABLE IF NOT EXISTS readers (
    job_id INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (job_id, hash)
);
CREATE TABLE IF NOT EXISTS customers (
    account TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS parts (
    account TEXT NOT NULL,
    hash BLOB NOT NULL,
    archive_sha256 BLOB NOT NULL,
    size INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (account, hash, archive_sha256)
);
"""


@dataclass(frozen=True, slots=True)
class DatasetLimits:
    """What one worker lets datasets take (every figure in bytes unless named otherwise)."""

    max_dataset_bytes: int = 8 << 30
    """One dataset's files, unpacked (its archive may be no larger either)."""
    max_files: int = MAX_ENTRIES
    """Files and directories of one dataset."""
    account_quota_bytes: int = 32 << 30
    """What one account that ran a job here may hold: its datasets and unfinished uploads."""
    stranger_quota_bytes: int = 1 << 30
    """What an account that never ran a job here may hold."""
    disk_budget_bytes: int = 128 << 30
    """All datasets and unfinished uploads together."""
    stranger_budget_bytes: int = 8 << 30
    """All datasets and uploads of accounts that never ran a job here together."""
    upload_idle_s: float = 24 * 3600.0
    """An unfinished upload untouched this long is deleted."""
    keep_after_job_s: float = 24 * 3600.0
    """A dataset stays pinned this long after the last job reading it ended, so that a verifier
    can still fetch it to re-run the job while its result may be checked."""


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """One dataset held."""

    hash: bytes
    owner: str
    size: int
    files: int
    last_used: float
    pinned: bool

    @property
    def name(self) -> str:
        """``data:<hex>``."""
        return format_dataset(self.hash)


def _full(what: str) -> WorkerError:
    return WorkerError(f"datasets: {what}", code="RESOURCE_EXHAUSTED")


class DatasetStore:
    """Datasets of one worker, their uploads, readers and quotas. Thread-safe.

    ``is_live(job_id)`` says whether a job that read a dataset may still run (its dataset is then
    pinned: never evicted).
    """

    def __init__(
        self, root: str | os.PathLike[str], limits: DatasetLimits, is_live: Callable[[int], bool] = lambda _j: False
    ) -> None:
        self.root = Path(root)
        self.limits = limits
        self.is_live = is_live
        for sub in ("trees", "parts", "staging"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.root / "datasets.sqlite3"), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._busy: set[tuple[str, bytes]] = set()
        shutil.rmtree(self.root / "staging", ignore_errors=True)
        (self.root / "staging").mkdir()
        self.expire_parts()

    def close(self) -> None:
        """Close the index."""
        with self._lock:
            self._db.close()

    # -- reading ----------------------------------------------------------------------------

    def tree(self, dataset: bytes) -> Path:
        """Where a held dataset's files are."""
        return self.root / "trees" / dataset.hex()

    def info(self, dataset: bytes) -> DatasetInfo | None:
        """The dataset, or None when it is not held."""
        with self._lock:
            row = self._db.execute(
                "SELECT hash, owner, size, files, last_used FROM datasets WHERE hash = ?", (dataset,)
            ).fetchone()
            return None if row is None else self._info(row)

    def _info(self, row: tuple[bytes, str, int, int, float]) -> DatasetInfo:
        digest, owner, size, files, used = row
        return DatasetInfo(bytes(digest), owner, int(size), int(files), float(used), self.pinned(bytes(digest)))

    def pinned(self, dataset: bytes) -> bool:
        """Whether a live job reads the dataset."""
        with self._lock:
            jobs = [int(r[0]) for r in self._db.execute("SELECT job_id FROM readers WHERE hash = ?", (dataset,))]
        return any(self.is_live(j) for j in jobs)

    def list(self, account: str) -> list[DatasetInfo]:
        """The datasets ``account`` put or registered, most recently used first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.hash, d.owner, d.size, d.files, d.last_used FROM datasets d JOIN holders h "
                "ON h.hash = d.hash WHERE h.account = ? ORDER BY d.last_used DESC",
                (account.lower(),),
            ).fetchall()
            return [self._info(r) for r in rows]

    def is_customer(self, account: str) -> bool:
        """Whether ``account`` ever had a bundle accepted here (a paid lease)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM customers WHERE account = ?", (account.lower(),)).fetchone()
        return row is not None

    def quota(self, account: str) -> int:
        """The bytes ``account`` may hold."""
        lim = self.limits
        return lim.account_quota_bytes if self.is_customer(account) else lim.stranger_quota_bytes

    def used(self, account: str) -> int:
        """Bytes ``account`` holds: the datasets it owns and its unfinished uploads."""
        who = account.lower()
        with self._lock:
            held = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM datasets WHERE owner = ?", (who,)).fetchone()
            parts = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM parts WHERE account = ?", (who,)).fetchone()
        return int(held[0]) + int(parts[0])

    def _total(self, strangers_only: bool) -> int:
        with self._lock:
            if not strangers_only:
                d = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM datasets").fetchone()[0]
                p = self._db.execute("SELECT COALESCE(SUM(size), 0) FROM parts").fetchone()[0]
                return int(d) + int(p)
            d = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM datasets WHERE owner NOT IN (SELECT account FROM customers)"
            ).fetchone()[0]
            p = self._db.execute(
                "SELECT COALESCE(SUM(size), 0) FROM parts WHERE account NOT IN (SELECT account FROM customers)"
            ).fetchone()[0]
            return int(d) + int(p)

    # -- room -------------------------------------------------------------------------------

    def _make_room(self, account: str, need: int, keep: bytes | None = None) -> None:
        """Check ``account``'s quota for ``need`` more bytes and free the disk budget for them.

        Evicts least recently used datasets no live job reads (a stranger: only strangers'),
        or raises RESOURCE_EXHAUSTED naming the bound.
        """
        lim = self.limits
        if need > lim.max_dataset_bytes:
            raise _full(f"{need} bytes exceed this worker's limit of {lim.max_dataset_bytes} bytes per dataset")
        quota, used = self.quota(account), self.used(account)
        if used + need > quota:
            raise _full(
                f"{account} holds {used} of its {quota} bytes here; {need} more do not fit "
                "(remove or let go of datasets, or run a job here for the larger quota)"
            )
        stranger = not self.is_customer(account)
        budgets = [(False, lim.disk_budget_bytes)] + ([(True, lim.stranger_budget_bytes)] if stranger else [])
        for strangers_only, budget in budgets:
            while self._total(strangers_only) + need > budget:
                victim = self._victim(strangers_only or stranger, keep)
                if victim is None:
                    pool = "of accounts that never ran a job here " if strangers_only else ""
                    raise _full(
                        f"the {budget}-byte budget for datasets {pool}is full of datasets live jobs read; retry later"
                    )
                self._evict(victim)

    def _victim(self, strangers_only: bool, keep: bytes | None) -> bytes | None:
        with self._lock:
            where = "WHERE owner NOT IN (SELECT account FROM customers)" if strangers_only else ""
            rows = self._db.execute(f"SELECT hash FROM datasets {where} ORDER BY last_used ASC").fetchall()
        for (digest,) in rows:
            digest = bytes(digest)
            if digest != keep and not self.pinned(digest):
                return digest
        return None

    def _evict(self, dataset: bytes) -> None:
        with self._lock:
            self._db.execute("DELETE FROM datasets WHERE hash = ?", (dataset,))
            self._db.execute("DELETE FROM holders WHERE hash = ?", (dataset,))
        self._remove(self.tree(dataset))

    def evict(self, dataset: bytes) -> bool:
        """Drop a dataset no live job reads; False when it is pinned or absent."""
        with self._lock:
            if self.info(dataset) is None or self.pinned(dataset):
                return False
            self._evict(dataset)
            return True

    def _remove(self, tree: Path) -> None:
        if tree.exists():
            for path in (tree, *tree.rglob("*")):
                if path.is_dir() and not path.is_symlink():
                    with contextlib.suppress(OSError):
                        path.chmod(0o700)
            shutil.rmtree(tree, ignore_errors=True)

    # -- uploads ----------------------------------------------------------------------------

    def part_path(self, account: str, dataset: bytes, sha: bytes) -> Path:
        """The part file of ``account``'s upload of this archive."""
        return self.root / "parts" / f"{account.lower()}-{dataset.hex()}-{sha.hex()}.part"

    def held(self, account: str, dataset: bytes, sha: bytes) -> int:
        """Bytes of ``account``'s upload of this archive held."""
        part = self.part_path(account, dataset, sha)
        return part.stat().st_size if part.exists() else 0

    def expire_parts(self) -> int:
        """Delete unfinished uploads untouched for ``upload_idle_s``; return how many."""
        cutoff = time.time() - self.limits.upload_idle_s
        with self._lock:
            rows = self._db.execute(
                "SELECT account, hash, archive_sha256 FROM parts WHERE updated < ?", (cutoff,)
            ).fetchall()
            for account, digest, sha in rows:
                if (account, bytes(digest)) in self._busy:
                    continue
                self.part_path(account, bytes(digest), bytes(sha)).unlink(missing_ok=True)
                self._db.execute(
                    "DELETE FROM parts WHERE account = ? AND hash = ? AND archive_sha256 = ?", (account, digest, sha)
                )
        return len(rows)

    def _hold(self, dataset: bytes, account: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO holders (hash, account) VALUES (?, ?)", (dataset, account.lower()))
            self._db.execute("UPDATE datasets SET last_used = ? WHERE hash = ?", (time.time(), dataset))

    def receive(
        self, account: str, dataset: bytes, size: int, sha: bytes, offset: int, chunks: Iterable[tuple[bytes, bytes]]
    ) -> tuple[bool, int]:
        """Append ``(data, sha256)`` chunks of ``account``'s upload from ``offset``; finish it when complete.

        A chunk's sha256 is checked when the client sent one (empty: the archive's digest, checked
        before anything is kept, covers it). Returns (whether the dataset is held now, bytes of the
        upload held).
        """
        if len(dataset) != 32 or len(sha) != 32:
            raise WorkerError("dataset_hash and archive_sha256 must be 32 bytes", code="INVALID_ARGUMENT")
        who = account.lower()
        if self.info(dataset) is not None:
            self._hold(dataset, who)
            return True, size
        key = (who, dataset)
        with self._lock:
            if key in self._busy:
                raise WorkerError(
                    f"another upload of {format_dataset(dataset)} by {account} is in progress", code="ABORTED"
                )
            self._busy.add(key)
        try:
            part = self.part_path(who, dataset, sha)
            held = part.stat().st_size if part.exists() else 0
            if offset != held:
                raise WorkerError(
                    f"upload offset {offset} does not match the {held} bytes held; resume from QueryDataset's "
                    "received_bytes",
                    code="FAILED_PRECONDITION",
                )
            with self._lock:
                if held == 0:
                    self._make_room(who, size, keep=dataset)
                self._db.execute(
                    "INSERT INTO parts (account, hash, archive_sha256, size, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT DO UPDATE SET updated = excluded.updated",
                    (who, dataset, sha, size, time.time()),
                )
            with open(part, "ab") as fh:
                for data, chunk_sha in chunks:
                    if chunk_sha and hashlib.sha256(data).digest() != chunk_sha:
                        raise WorkerError(f"chunk at offset {held} does not match its sha256", code="DATA_LOSS")
                    if held + len(data) > size:
                        raise WorkerError(f"upload is larger than the announced {size} bytes", code="INVALID_ARGUMENT")
                    fh.write(data)
                    held += len(data)
            if held < size:
                with self._lock:
                    self._db.execute(
                        "UPDATE parts SET updated = ? WHERE account = ? AND hash = ? AND archive_sha256 = ?",
                        (time.time(), who, dataset, sha),
                    )
                return False, held
            self._finish(who, dataset, part, sha)
            return True, held
        finally:
            with self._lock:
                self._busy.discard(key)

    def _drop_part(self, account: str, dataset: bytes, sha: bytes) -> None:
        self.part_path(account, dataset, sha).unlink(missing_ok=True)
        with self._lock:
            self._db.execute(
                "DELETE FROM parts WHERE account = ? AND hash = ? AND archive_sha256 = ?", (account, dataset, sha)
            )

    def _finish(self, account: str, dataset: bytes, part: Path, sha: bytes) -> None:
        if file_sha256(part) != sha:
            self._drop_part(account, dataset, sha)
            raise WorkerError("the dataset archive does not match its sha256; upload it again", code="DATA_LOSS")
        staging = self.root / "staging" / f"{account}-{dataset.hex()}"
        self._remove(staging)
        try:
            unpack_tree(part, staging, max_bytes=self.limits.max_dataset_bytes, max_files=self.limits.max_files)
            manifest, _ = manifest_of(staging)
        except BundleError as exc:
            self._remove(staging)
            self._drop_part(account, dataset, sha)
            raise WorkerError(f"dataset {format_dataset(dataset)}: {exc}", code="INVALID_ARGUMENT") from None
        except BaseException:
            self._remove(staging)
            raise
        self._drop_part(account, dataset, sha)
        if not manifest.files or manifest.root != dataset:
            self._remove(staging)
            raise WorkerError(
                f"the uploaded files hash to {format_dataset(manifest.root)}, not {format_dataset(dataset)}; "
                "nothing was kept",
                code="DATA_LOSS",
            )
        self._install(account, dataset, staging, manifest)

    def _install(self, account: str, dataset: bytes, staging: Path, manifest: ResultManifest) -> None:
        """Move a checked tree into place (read-only) and index it, within the bounds."""
        with self._lock:
            if self.info(dataset) is not None:  # put meanwhile by another account
                self._remove(staging)
                self._hold(dataset, account)
                return
            try:
                self._make_room(account, manifest.total_bytes, keep=dataset)
            except WorkerError:
                self._remove(staging)
                raise
            for path in sorted(staging.rglob("*"), reverse=True):
                path.chmod(0o555 if path.is_dir() else 0o444)
            staging.chmod(0o555)
            staging.rename(self.tree(dataset))
            now = time.time()
            self._db.execute(
                "INSERT INTO datasets (hash, owner, size, files, created, last_used) VALUES (?, ?, ?, ?, ?, ?)",
                (dataset, account.lower(), manifest.total_bytes, len(manifest.files), now, now),
            )
            self._hold(dataset, account)

    def add_tree(self, account: str, source: Path) -> bytes:
        """Copy a finished job's folder in as a dataset owned by ``account``; return its hash."""
        manifest, _ = manifest_of(source)
        if not manifest.files:
            raise WorkerError("the job wrote no output files to make a dataset of", code="FAILED_PRECONDITION")
        if self.info(manifest.root) is not None:
            self._hold(manifest.root, account)
            return manifest.root
        if manifest.total_bytes > self.limits.max_dataset_bytes:
            raise _full(
                f"the outputs' {manifest.total_bytes} bytes exceed the limit of {self.limits.max_dataset_bytes}"
            )
        staging = self.root / "staging" / f"{account.lower()}-{manifest.root.hex()}"
        self._remove(staging)
        staging.mkdir()
        for entry in manifest.files:
            target = staging / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / entry.path, target)
        copied, _ = manifest_of(staging)
        if copied.root != manifest.root:  # the folder changed while it was copied
            self._remove(staging)
            raise WorkerError("the job's outputs changed while they were copied", code="ABORTED")
        self._install(account.lower(), manifest.root, staging, copied)
        return manifest.root

    # -- jobs -------------------------------------------------------------------------------

    def admit_job(self, job_id: int, requester: str, datasets: Iterable[tuple[str, bytes]], endpoint_hint: str) -> None:
        """Pin the datasets a job reads; one line naming the first missing one (and how to put it)."""
        wanted = list(datasets)
        with self._lock:
            for name, digest in wanted:
                if self.info(digest) is None:
                    raise BundleError(
                        f"job.datasets.{name}: {format_dataset(digest)} is not on this provider; upload it first: "
                        f"flopex data put DIR --provider {endpoint_hint}"
                    )
            now = time.time()
            for _name, digest in wanted:
                self._db.execute("INSERT OR IGNORE INTO readers (job_id, hash) VALUES (?, ?)", (job_id, digest))
                self._db.execute("UPDATE datasets SET last_used = ? WHERE hash = ?", (now, digest))
            self._db.execute("INSERT OR IGNORE INTO customers (account) VALUES (?)", (requester.lower(),))

    def reads(self, job_id: int, dataset: bytes) -> bool:
        """Whether job ``job_id`` was admitted reading ``dataset``."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM readers WHERE job_id = ? AND hash = ?", (job_id, dataset)).fetchone()
        return row is not None

    def trees_for(self, datasets: Iterable[tuple[str, bytes]]) -> dict[str, Path]:
        """``name -> folder`` of each dataset a job reads (all held: it was admitted with them pinned)."""
        out: dict[str, Path] = {}
        for name, digest in datasets:
            tree = self.tree(digest)
            if not tree.is_dir():
                raise WorkerError(
                    f"dataset {format_dataset(digest)} is gone from this worker", code="FAILED_PRECONDITION"
                )
            out[name] = tree
        return out

    def manifest(self, dataset: bytes) -> ResultManifest:
        """The manifest of a held dataset (for downloads)."""
        tree = self.tree(dataset)
        if self.info(dataset) is None or not tree.is_dir():
            raise WorkerError(f"dataset {format_dataset(dataset)} is not held here", code="NOT_FOUND")
        manifest, _ = manifest_of(tree)
        return manifest


def iter_chunks(
    first: tuple[bytes, bytes] | None, rest: Iterator[tuple[bytes, bytes]]
) -> Iterator[tuple[bytes, bytes]]:
    """``first`` (when given) then ``rest``."""
    if first is not None and first[0]:
        yield first
    yield from rest
