"""The requester's side of datasets by hash: put, query, list, fetch, and the local index.

:func:`put_dataset` uploads a directory once to a worker, resuming from what the worker holds
after any break (the archive is canonical, so packing the same tree again gives the same bytes);
the worker recomputes the dataset hash and refuses a mismatch. :class:`DatasetIndex` remembers,
in the requester's data folder, which local directory each dataset put from here came from, so
that :func:`ensure_datasets` can upload what a provider lacks before a job's bundle — and
nothing when the provider holds it already.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marketplace.errors import BundleError, ConfigError, VerificationError
from marketplace.protocol.auth import Domain, payload_digest
from marketplace.protocol.datasets import (
    dataset_hash,
    dataset_request_digest,
    datasets_of_archive,
    format_dataset,
    pack_dataset,
)
from marketplace.requester.client import WorkerClient, _check_chunk_size
from marketplace.rpc import worker_pb2 as pb

__all__ = [
    "DatasetIndex",
    "PutResult",
    "dataset_from_job",
    "download_dataset",
    "ensure_datasets",
    "fetch_datasets",
    "has_dataset",
    "list_datasets",
    "open_provider",
    "put_dataset",
    "query_dataset",
]

_ZERO = b"\0" * 32


@dataclass(frozen=True, slots=True)
class PutResult:
    """What a put did: the dataset's name, the bytes sent this time (0: the worker held it) and the time."""

    hash: bytes
    bytes_sent: int
    archive_bytes: int
    size_bytes: int
    files: int
    seconds: float
    already_held: bool

    @property
    def name(self) -> str:
        """``data:<hex>``."""
        return format_dataset(self.hash)

    def to_json(self) -> dict[str, Any]:
        """The ``--json`` document of ``flopex data put``."""
        return {
            "dataset": self.name,
            "bytes_sent": self.bytes_sent,
            "archive_bytes": self.archive_bytes,
            "size_bytes": self.size_bytes,
            "files": self.files,
            "seconds": round(self.seconds, 3),
            "already_held": self.already_held,
        }


def open_provider(endpoint: str, key: bytes | str, **kw: Any) -> WorkerClient:
    """A client of the worker at ``endpoint`` signing with ``key`` in the worker's own EIP-712 domain."""
    client = WorkerClient(endpoint, requester_key=key, **kw)
    info = client.info()
    client._domain = Domain(int(info.chain_id), info.market_address)
    return client


def query_dataset(client: WorkerClient, dataset: bytes, archive_sha256: bytes = _ZERO) -> pb.DatasetStatus:
    """Whether the worker holds ``dataset`` (and how much of this archive's upload)."""
    digest = dataset_request_digest(dataset, archive_sha256)
    return client._retrying(
        lambda: client._stub.QueryDataset(
            pb.QueryDatasetRequest(
                dataset_hash=dataset, archive_sha256=archive_sha256, auth=client.auth(0, "QueryDataset", digest)
            ),
            timeout=client.timeout_s,
        )
    )


def has_dataset(client: WorkerClient, dataset: bytes) -> bool:
    """Whether the worker holds ``dataset``."""
    return bool(query_dataset(client, dataset).present)


def list_datasets(client: WorkerClient) -> pb.DatasetList:
    """The datasets this account holds on the worker, and its quota there."""
    digest = hashlib.sha256(b"").digest()
    return client._retrying(
        lambda: client._stub.ListDatasets(
            pb.ListDatasetsRequest(auth=client.auth(0, "ListDatasets", digest)), timeout=client.timeout_s
        )
    )


def put_dataset(
    client: WorkerClient,
    directory: str | os.PathLike[str],
    *,
    chunk_size: int = 1 << 20,
    max_attempts: int = 6,
    chunk_hashes: bool = False,
    stop_after: int | None = None,
    expect: bytes | None = None,
) -> PutResult:
    """Upload the dataset in ``directory`` unless the worker holds it; resume after breaks.

    The worker checks the whole archive against its sha256 (signed in the header) before it keeps
    any of it; ``chunk_hashes`` also sends each chunk's sha256, for the worker to refuse a damaged
    chunk at once rather than at the end. With ``expect``, a directory that no longer holds that
    dataset is a :class:`ConfigError` and nothing is sent. ``stop_after`` ends the first stream
    after that many bytes (to exercise resumption).
    """
    _check_chunk_size(chunk_size)
    started = time.monotonic()
    root, archive = pack_dataset(directory)
    if expect is not None and root != expect:
        raise ConfigError(f"{directory} no longer holds {format_dataset(expect)} (it hashes to {format_dataset(root)})")
    sha = hashlib.sha256(archive).digest()
    size = len(archive)
    digest = dataset_request_digest(root, sha)

    def header(offset: int) -> pb.DatasetChunk:
        auth = client.auth(0, "PutDataset", digest)
        return pb.DatasetChunk(
            header=pb.DatasetHeader(dataset_hash=root, archive_size=size, archive_sha256=sha, offset=offset, auth=auth)
        )

    status, sent, streamed = client._resumable_upload(
        lambda messages, timeout: client._stub.PutDataset(messages, timeout=timeout),
        lambda: query_dataset(client, root, sha),
        lambda status: bool(status.present),
        header,
        pb.DatasetChunk,
        archive,
        size,
        chunk_size=chunk_size,
        max_attempts=max_attempts,
        chunk_hashes=chunk_hashes,
        failed=f"the upload of {format_dataset(root)} did not complete",
        stop_after=stop_after,
    )
    already_held = not streamed and sent == 0
    return PutResult(root, sent, size, status.size_bytes, status.files, time.monotonic() - started, already_held)


def dataset_from_job(client: WorkerClient, job_id: int) -> bytes:
    """Have the worker keep job ``job_id``'s output folder as a dataset; return its hash."""
    digest = payload_digest("DatasetFromJob")
    status: pb.DatasetStatus = client._retrying(
        lambda: client._stub.DatasetFromJob(
            pb.DatasetFromJobRequest(job_id=job_id, auth=client.auth(job_id, "DatasetFromJob", digest)),
            timeout=client.timeout_s + 600,
        )
    )
    return bytes(status.dataset_hash)


def download_dataset(client: WorkerClient, job_id: int, dataset: bytes, dest: str | os.PathLike[str]) -> Path:
    """Fetch a dataset job ``job_id`` reads into ``dest``, checked file by file and against its hash."""
    digest = payload_digest("DownloadDataset")
    out = Path(dest)

    def fetch() -> Path:
        manifest, _m = client._stream_files(
            lambda: client._stub.DownloadDataset(
                pb.DownloadDatasetRequest(
                    job_id=job_id, dataset_hash=dataset, auth=client.auth(job_id, "DownloadDataset", digest)
                ),
                timeout=client.timeout_s + 600,
            ),
            out,
        )
        if manifest.root != dataset:
            raise VerificationError(
                f"the dataset's files hash to {format_dataset(manifest.root)}, not {format_dataset(dataset)}"
            )
        return out

    return client._retrying(fetch)


class DatasetIndex:
    """Which local directory each dataset put from here came from (``datasets.json`` in ``root``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.path = Path(root) / "datasets.json"

    def _read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def remember(self, dataset: bytes, directory: str | os.PathLike[str]) -> None:
        """Note that ``directory`` holds ``dataset``."""
        data = self._read()
        data[format_dataset(dataset)] = str(Path(directory).resolve())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".datasets-")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, self.path)

    def directory(self, dataset: bytes, *, check: bool = True) -> Path | None:
        """The directory that held ``dataset`` when it was put, if it still does (rehashed unless not ``check``)."""
        found = self._read().get(format_dataset(dataset))
        if found is None or not Path(found).is_dir():
            return None
        if not check:
            return Path(found)
        try:
            return Path(found) if dataset_hash(found) == dataset else None
        except BundleError:
            return None


def ensure_datasets(
    client: WorkerClient,
    archive: bytes,
    index: DatasetIndex | None,
    say: Callable[[str], None] = lambda _line: None,
) -> int:
    """Put on the worker every dataset the bundle ``archive`` names that it lacks; return the bytes sent.

    A dataset the worker lacks and this requester cannot find locally is one line: its name and
    the ``flopex data put`` command.
    """
    sent = 0
    for name, digest in datasets_of_archive(archive):
        if has_dataset(client, digest):
            say(f"dataset {name} = {format_dataset(digest)[:21]}…: the provider holds it; nothing to upload")
            continue
        folder = index.directory(digest, check=False) if index is not None else None
        missing = ConfigError(
            f"job.datasets.{name}: {format_dataset(digest)} is not on the provider and no folder here holds it; "
            "put it first: flopex data put DIR --provider ENDPOINT"
        )
        if folder is None:
            raise missing
        try:
            result = put_dataset(client, folder, expect=digest)  # hashed once, while packed
        except ConfigError:
            raise missing from None
        sent += result.bytes_sent
        say(f"dataset {name} = {result.name[:21]}…: uploaded {result.bytes_sent} bytes from {folder}")
    return sent


def fetch_datasets(
    client: WorkerClient, job_id: int, bundle_dir: str | os.PathLike[str], dest: Path
) -> dict[str, Path]:
    """Download every dataset the bundle in ``bundle_dir`` reads into ``dest/<name>``, each checked by its hash.

    What a verifier does before it re-runs job ``job_id``; returns ``name -> folder``.
    """
    from marketplace.protocol.bundle import load_bundle

    out: dict[str, Path] = {}
    for name, digest in load_bundle(bundle_dir).spec.job.datasets:
        folder = Path(dest) / name
        if folder.is_dir() and dataset_hash(folder) == digest:
            out[name] = folder
            continue
        shutil.rmtree(folder, ignore_errors=True)
        out[name] = download_dataset(client, job_id, digest, folder)
    return out
