"""The requester's own record of the jobs it posts, so a job can be followed again after a crash.

A :class:`RecordStore` lives in the requester account's data folder (``flopex`` uses
``.flopex/requester-ADDRESS``). Each job posted through it leaves:

- ``bundles/HASH.tar.gz``: the bundle archive, written before the job is posted (named by the
  bundle hash the job carries on chain, so resubmitting a bundle reuses it);
- ``jobs/CHAIN-MARKET/job-ID.json``: a :class:`JobRecord` (job id, bundle hash, archive, bundle
  folder, output folder, options), written right after the post's receipt.

Both are written atomically (a temporary file renamed over the target), so a process killed at
any moment leaves either the whole file or none. :meth:`RecordStore.hold` takes an exclusive lock
on one job while it is followed, so two processes never upload, accept or dispute it at once; the
kernel drops the lock when its holder dies.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from marketplace.errors import ConfigError

__all__ = ["JobRecord", "RecordStore"]

_VERSION = 1


@dataclass(frozen=True)
class JobRecord:
    """What the requester knew when it posted a job: enough to pick it up again anywhere."""

    job_id: int
    chain_id: int
    market: str
    requester: str
    bundle_hash: str
    """The bundle hash posted on chain (hex, no 0x)."""
    archive: str | None
    """The archive's file name in the store's ``bundles/`` folder."""
    bundle_dir: str | None
    """The bundle folder it was packed from (absolute)."""
    out_dir: str | None
    """Where the results go (absolute); None: ``./results-ID`` of whoever follows the job."""
    options: dict[str, Any] = field(default_factory=dict)
    posted_at: int = 0
    """The chain time the job was posted at."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {"version": _VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> JobRecord:
        """Read a record back; raises :class:`ConfigError` on one this code cannot read."""
        if not isinstance(document, dict) or document.get("version") != _VERSION:
            raise ConfigError("not a job record of this flopex version")
        fields = {k: v for k, v in document.items() if k != "version"}
        try:
            return cls(**fields)
        except TypeError as exc:
            raise ConfigError(f"a malformed job record: {exc}") from None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class RecordStore:
    """The job records of one requester account, in its data folder ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _jobs(self, chain_id: int, market: str) -> Path:
        return self.root / "jobs" / f"{chain_id}-{market.lower()}"

    def record_path(self, chain_id: int, market: str, job_id: int) -> Path:
        """Where job ``job_id``'s record lives."""
        return self._jobs(chain_id, market) / f"job-{job_id}.json"

    def save_archive(self, bundle_hash: bytes, archive: bytes) -> str:
        """Keep a bundle archive (before its job is posted); returns its file name in ``bundles/``."""
        name = f"{bundle_hash.hex()}.tar.gz"
        path = self.root / "bundles" / name
        try:
            if not (path.is_file() and path.stat().st_size == len(archive) and path.read_bytes() == archive):
                _write_atomically(path, archive)
        except OSError as exc:
            raise ConfigError(f"cannot keep the bundle archive in {path.parent}: {exc.strerror}") from exc
        return name

    def archive(self, record: JobRecord) -> bytes | None:
        """The record's bundle archive, or None when it is gone."""
        if record.archive is None:
            return None
        try:
            return (self.root / "bundles" / Path(record.archive).name).read_bytes()
        except OSError:
            return None

    def save(self, record: JobRecord) -> Path:
        """Write (or replace) a job's record; returns its path."""
        path = self.record_path(record.chain_id, record.market, record.job_id)
        data = json.dumps(record.to_json(), indent=2, sort_keys=True).encode() + b"\n"
        try:
            _write_atomically(path, data)
        except OSError as exc:
            raise ConfigError(f"cannot write the record of job {record.job_id} to {path}: {exc.strerror}") from exc
        return path

    def load(self, chain_id: int, market: str, job_id: int) -> JobRecord | None:
        """Job ``job_id``'s record on this market, or None when there is none.

        Raises :class:`ConfigError` when the file is there but cannot be read.
        """
        path = self.record_path(chain_id, market, job_id)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            return JobRecord.from_json(json.loads(text))
        except (ValueError, ConfigError) as exc:
            raise ConfigError(f"{path} is not a readable job record ({exc})") from None

    @contextmanager
    def hold(self, chain_id: int, market: str, job_id: int) -> Iterator[None]:
        """Lock job ``job_id`` for this process while the block runs; refuse when another holds it."""
        path = self._jobs(chain_id, market) / f"job-{job_id}.lock"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("a+")
        except OSError as exc:
            raise ConfigError(f"cannot lock job {job_id} in {path.parent}: {exc.strerror}") from exc
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise ConfigError(f"job {job_id} is being followed by {holder}; wait for it or stop it") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()}")
            handle.flush()
            try:
                yield
            finally:
                handle.seek(0)
                handle.truncate()
                fcntl.flock(handle, fcntl.LOCK_UN)
