"""The requester's side of the worker API: :class:`WorkerClient`.

Every call has a deadline. Calls that are safe to repeat (GetInfo, QueryUpload, GetJob, StartJob,
CancelJob, WatchJob, DownloadResults) are retried with exponential backoff on UNAVAILABLE and
DEADLINE_EXCEEDED only, each attempt signed afresh (nonces are single-use). Uploads resume from
the offset the worker reports after a broken connection. Results are verified on arrival: each
file's sha256, the Merkle root recomputed from the files, and the worker's receipt signature.
Errors surface as :class:`~marketplace.errors.WorkerError` whose ``code`` names the gRPC status.
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc

from marketplace.errors import BundleError, VerificationError, WorkerError
from marketplace.protocol.auth import Domain, payload_digest, sign_request
from marketplace.protocol.bundle import safe_relpath
from marketplace.protocol.capacity import verify_rows
from marketplace.protocol.merkle import CHUNK_SIZE, FileEntry, ResultManifest, chunk_leaf, file_sha256, merkle_root
from marketplace.protocol.receipts import SignedReceipt, UsageReceipt, verify_receipt
from marketplace.protocol.tls import worker_channel
from marketplace.rpc import worker_pb2 as pb
from marketplace.rpc import worker_pb2_grpc as pb_grpc

__all__ = ["DownloadedResults", "WorkerClient", "receipt_from_proto"]

_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
# an upload stream broken off by one of these resumes from what the worker holds
_RESUMABLE = _RETRYABLE | {grpc.StatusCode.ABORTED, grpc.StatusCode.CANCELLED}
_T = TypeVar("_T")


class _UploadStatus(Protocol):
    """What UploadStatus and DatasetStatus share: the bytes of the upload the worker holds."""

    @property
    def received_bytes(self) -> int: ...


_S = TypeVar("_S", bound=_UploadStatus)
MAX_MESSAGE_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class DownloadedResults:
    """Results fetched and verified: where they are, their manifest, final state and receipt."""

    directory: Path
    manifest: ResultManifest
    state: int
    receipt: SignedReceipt | None


def receipt_from_proto(r: pb.Receipt) -> SignedReceipt:
    """Convert a wire receipt to a :class:`SignedReceipt`."""
    return SignedReceipt(
        UsageReceipt(
            job_id=r.job_id,
            provider=r.provider,
            result_root=r.result_root,
            device_seconds=r.device_seconds,
            cpu_millis=r.cpu_millis,
            peak_memory_bytes=r.peak_memory_bytes,
            exit_code=r.exit_code,
        ),
        r.signature,
    )


def _error(exc: grpc.RpcError) -> WorkerError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return WorkerError(details or code.name, code=code.name)


class _StreamVerifier:
    """Hashes result files as they arrive, in a thread (hashlib and keccak release the GIL).

    Files must arrive in manifest order; gives each file's sha256 and the Merkle root.
    """

    def __init__(self, order: list[str]) -> None:
        self._order = order
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(maxsize=64)
        self._sha = {name: hashlib.sha256() for name in order}
        self._leaves: dict[str, list[bytes]] = {name: [] for name in order}
        self._pending = {name: b"" for name in order}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="result-verifier", daemon=True)
        self._thread.start()

    def feed(self, name: str, data: bytes) -> None:
        """Queue the next bytes of file ``name``."""
        self._queue.put((name, data))

    def _run(self) -> None:
        try:
            while (item := self._queue.get()) is not None:
                name, data = item
                self._sha[name].update(data)
                buf = self._pending[name] + data if self._pending[name] else data
                pos = 0
                leaves = self._leaves[name]
                while len(buf) - pos >= CHUNK_SIZE:
                    leaves.append(chunk_leaf(name, len(leaves), buf[pos : pos + CHUNK_SIZE]))
                    pos += CHUNK_SIZE
                self._pending[name] = buf[pos:]
        except BaseException as exc:  # reported by finish()
            self._error = exc
            while self._queue.get() is not None:
                pass

    def finish(self) -> tuple[dict[str, bytes], bytes]:
        """Wait for the hashing to end; return the files' sha256 and the Merkle root."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error
        leaves: list[bytes] = []
        for name in self._order:
            mine = self._leaves[name]
            if self._pending[name] or not mine:
                mine.append(chunk_leaf(name, len(mine), self._pending[name]))
            leaves.extend(mine)
        return {n: h.digest() for n, h in self._sha.items()}, merkle_root(leaves)


def _prepend(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


def _check_chunk_size(chunk_size: int) -> None:
    if not 0 < chunk_size <= 4 << 20:
        raise ValueError("chunk_size must be between 1 byte and 4 MiB")


def _pieces(source: bytes | Path, start: int, size: int, chunk_size: int) -> Iterator[bytes]:
    """``source``'s bytes from ``start`` in pieces of ``chunk_size`` (a file: to its end)."""
    if isinstance(source, bytes):
        view = memoryview(source)
        for pos in range(start, size, chunk_size):
            yield bytes(view[pos : pos + chunk_size])
        return
    with open(source, "rb") as fh:
        fh.seek(start)
        while data := fh.read(chunk_size):
            yield data


class WorkerClient:
    """A connection to one worker, signing requests with the requester's key."""

    def __init__(
        self,
        target: str,
        *,
        requester_key: bytes | str | None = None,
        domain: Domain | None = None,
        root_certificates: bytes | None = None,
        timeout_s: float = 30.0,
        retries: int = 4,
        backoff_s: float = 0.2,
        server_name: str | None = None,
        allow_plaintext: bool = False,
    ) -> None:
        """Connect to ``target``: an offer's endpoint (``host:port#tls-spki=<hex>`` for TLS pinned to the
        worker's key, see :mod:`marketplace.protocol.tls`; plaintext ``host:port`` only on loopback
        unless ``allow_plaintext``), or ``host:port`` with ``root_certificates`` to trust.

        The pinned certificate is fetched and checked on the first call; a key that is not the pinned
        one is a :class:`WorkerError` (``PERMISSION_DENIED``) and nothing is sent.
        """
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ]
        if server_name:
            options.append(("grpc.ssl_target_name_override", server_name))
        self._target = target
        self._options = options
        self._allow_plaintext = allow_plaintext
        self._channel: grpc.Channel | None = None
        self._stub_cache: pb_grpc.WorkerServiceStub | None = None
        self._open_lock = threading.Lock()
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self._channel = grpc.secure_channel(target, creds, options=options)
            self._stub_cache = pb_grpc.WorkerServiceStub(self._channel)
        self._key = requester_key
        self._domain = domain
        self.timeout_s = timeout_s
        self.retries = max(1, retries)
        self.backoff_s = backoff_s

    @property
    def _stub(self) -> pb_grpc.WorkerServiceStub:
        """The stub, opening the channel (and checking a TLS pin) on first use."""
        with self._open_lock:
            if self._stub_cache is None:
                self._channel = worker_channel(
                    self._target,
                    options=self._options,
                    allow_plaintext=self._allow_plaintext,
                    timeout_s=min(self.timeout_s, 30.0),
                )
                self._stub_cache = pb_grpc.WorkerServiceStub(self._channel)
            return self._stub_cache

    def close(self) -> None:
        """Close the channel."""
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    def auth(self, job_id: int, method: str, digest: bytes) -> pb.RequestAuth:
        """A fresh signature for one request."""
        if self._key is None or self._domain is None:
            raise WorkerError("this client has no requester key and domain to sign with", code="UNAUTHENTICATED")
        signed = sign_request(self._key, self._domain, job_id, method, digest)
        return pb.RequestAuth(nonce=signed.nonce.to_bytes(32, "big"), expiry=signed.expiry, signature=signed.signature)

    def _sleep(self, attempt: int) -> None:
        time.sleep(self.backoff_s * (2**attempt) * (0.5 + random.random()))

    def _retrying(self, call: Callable[[], _T], idempotent: bool = True) -> _T:
        for attempt in range(self.retries):
            try:
                return call()
            except grpc.RpcError as exc:
                if idempotent and exc.code() in _RETRYABLE and attempt + 1 < self.retries:
                    self._sleep(attempt)
                    continue
                raise _error(exc) from None
        raise AssertionError("unreachable")

    # -- calls --------------------------------------------------------------------------------

    def info(self) -> pb.WorkerInfo:
        """The worker's description."""
        return self._retrying(lambda: self._stub.GetInfo(pb.GetInfoRequest(), timeout=self.timeout_s))

    def query_upload(self, job_id: int, archive_sha256: bytes) -> pb.UploadStatus:
        """How many bytes of this archive the worker holds."""
        digest = payload_digest("QueryUpload", archive_sha256=archive_sha256)
        return self._retrying(
            lambda: self._stub.QueryUpload(
                pb.QueryUploadRequest(
                    job_id=job_id, archive_sha256=archive_sha256, auth=self.auth(job_id, "QueryUpload", digest)
                ),
                timeout=self.timeout_s,
            )
        )

    def upload_bundle(
        self,
        job_id: int,
        archive: bytes | str | os.PathLike[str],
        *,
        chunk_size: int = 1 << 20,
        max_attempts: int = 6,
        chunk_hashes: bool = False,
        archive_sha256: bytes | None = None,
    ) -> pb.UploadStatus:
        """Upload a bundle archive, resuming from what the worker holds after any break.

        The worker uses nothing before it is proven: by the bundle hash the lease names, or by the
        archive's sha256 (signed in the header) when the lease names none; a damaged archive is
        refused as DATA_LOSS either way, keeping nothing. ``chunk_hashes`` also sends each chunk's
        sha256, for the worker to refuse a damaged chunk at once rather than at the end (a second
        pass over every byte on each side). The archive's sha256, which also names the partial
        archive an upload resumes, is ``archive_sha256`` when given, the one :func:`pack_bundle
        <marketplace.protocol.bundle.pack_bundle>` hashed while packing when ``archive`` is its
        result, and is hashed here otherwise.
        """
        _check_chunk_size(chunk_size)
        if archive_sha256 is not None and len(archive_sha256) != 32:
            raise ValueError("archive_sha256 must be 32 bytes")
        sha = archive_sha256 or getattr(archive, "sha256", None)
        source: bytes | Path
        if isinstance(archive, bytes):
            source, size = archive, len(archive)
            sha = sha or hashlib.sha256(archive).digest()
        else:
            source = Path(archive)
            size = source.stat().st_size
            sha = sha or file_sha256(source)
        digest = payload_digest("UploadBundle", archive_sha256=sha)

        def header(offset: int) -> pb.UploadChunk:
            auth = self.auth(job_id, "UploadBundle", digest)
            return pb.UploadChunk(
                header=pb.UploadHeader(job_id=job_id, archive_size=size, archive_sha256=sha, offset=offset, auth=auth)
            )

        status, _sent, _streamed = self._resumable_upload(
            lambda messages, timeout: self._stub.UploadBundle(messages, timeout=timeout),
            lambda: self.query_upload(job_id, sha),
            lambda status: bool(status.complete),
            header,
            pb.UploadChunk,
            source,
            size,
            chunk_size=chunk_size,
            max_attempts=max_attempts,
            chunk_hashes=chunk_hashes,
            failed=f"upload of job {job_id} did not complete",
        )
        return status

    def _resumable_upload(
        self,
        rpc: Callable[[Iterator[Any], float], _S],
        query: Callable[[], _S],
        complete: Callable[[_S], bool],
        header: Callable[[int], Any],
        chunk: Callable[..., Any],
        source: bytes | Path,
        size: int,
        *,
        chunk_size: int,
        max_attempts: int,
        chunk_hashes: bool,
        failed: str,
        stop_after: int | None = None,
    ) -> tuple[_S, int, bool]:
        """Stream ``source`` (``size`` bytes) with ``rpc``, resuming from what the worker holds after any break.

        Each of up to ``max_attempts`` attempts asks ``query`` for the upload's status (returned
        as it is when ``complete``), then calls ``rpc(messages, deadline)`` with ``header(offset)``
        (built as the stream starts, so each stream is signed afresh) and the bytes from the offset
        the status reports, as ``chunk(data=...)`` messages of ``chunk_size`` bytes, with
        ``sha256=`` each chunk's digest only when ``chunk_hashes`` (the worker checks the whole
        archive's digest, signed in the header, before it keeps anything). A stream broken off by
        UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED or CANCELLED is retried after a backoff; any other
        error raises at once. ``stop_after`` ends the first stream after that many bytes (to exercise
        resumption). Returns the final status, the bytes sent, and whether that status came from a
        stream (False: from ``query``). Raises the last error, or ``failed`` as UNAVAILABLE, when no
        attempt completes the upload.
        """
        sent = 0
        last: WorkerError | None = None
        for attempt in range(max_attempts):
            status = query()
            if complete(status):
                return status, sent, False
            offset = int(status.received_bytes)

            def messages(start: int = offset, limit: int | None = stop_after) -> Iterator[Any]:
                nonlocal sent
                yield header(start)
                streamed = 0
                for data in _pieces(source, start, size, chunk_size):
                    if limit is not None and streamed >= limit:
                        return
                    streamed += len(data)
                    sent += len(data)
                    yield chunk(data=data, sha256=hashlib.sha256(data).digest()) if chunk_hashes else chunk(data=data)

            deadline = self.timeout_s + (size - offset) / (2 << 20)
            try:
                result = rpc(messages(), deadline)
            except grpc.RpcError as exc:
                last = _error(exc)
                if exc.code() in _RESUMABLE:
                    self._sleep(min(attempt, 4))
                    continue
                raise last from None
            stop_after = None  # only the first stream is cut short
            if complete(result):
                return result, sent, True
        raise last or WorkerError(failed, code="UNAVAILABLE")

    def start_job(self, job_id: int, seed: int = 0) -> pb.JobStatus:
        """Queue an uploaded job with ``seed``."""
        digest = payload_digest("StartJob", seed=seed)
        return self._retrying(
            lambda: self._stub.StartJob(
                pb.StartJobRequest(job_id=job_id, seed=seed, auth=self.auth(job_id, "StartJob", digest)),
                timeout=self.timeout_s,
            )
        )

    def get_job(self, job_id: int) -> pb.JobStatus:
        """A job's state."""
        digest = payload_digest("GetJob")
        return self._retrying(
            lambda: self._stub.GetJob(
                pb.GetJobRequest(job_id=job_id, auth=self.auth(job_id, "GetJob", digest)), timeout=self.timeout_s
            )
        )

    def cancel(self, job_id: int) -> pb.JobStatus:
        """Cancel a job (its process tree is killed)."""
        digest = payload_digest("CancelJob")
        return self._retrying(
            lambda: self._stub.CancelJob(
                pb.CancelJobRequest(job_id=job_id, auth=self.auth(job_id, "CancelJob", digest)),
                timeout=self.timeout_s + 30,
            )
        )

    def watch(self, job_id: int, *, from_seq: int = 0, timeout_s: float = 3600.0) -> Iterator[pb.JobEvent]:
        """Yield a job's events until its final one, reconnecting after a broken stream."""
        digest = payload_digest("WatchJob")
        deadline = time.monotonic() + timeout_s
        seq = from_seq
        attempt = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerError(f"watching job {job_id} timed out", code="DEADLINE_EXCEEDED")
            try:
                stream = self._stub.WatchJob(
                    pb.WatchJobRequest(job_id=job_id, from_seq=seq, auth=self.auth(job_id, "WatchJob", digest)),
                    timeout=remaining,
                )
                for event in stream:
                    seq = event.seq + 1
                    attempt = 0
                    yield event
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and attempt + 1 < self.retries:
                    self._sleep(attempt)
                    attempt += 1
                    continue
                raise _error(exc) from None

    def wait(self, job_id: int, *, timeout_s: float = 3600.0) -> pb.JobEvent:
        """Follow a job to its final event (finished or failed) and return it."""
        final = None
        for event in self.watch(job_id, timeout_s=timeout_s):
            if event.WhichOneof("kind") in ("finished", "failed"):
                final = event
        if final is None:
            raise WorkerError(f"job {job_id}'s events ended without a final one", code="INTERNAL")
        return final

    def download_results(
        self, job_id: int, dest: str | os.PathLike[str], *, provider: str | None = None
    ) -> DownloadedResults:
        """Fetch an ended job's results into ``dest`` and verify them.

        Checks each file's size and sha256, recomputes the Merkle root from the files written and,
        when ``provider`` is given, the receipt's signature and that it commits to the same root.
        Raises :class:`VerificationError` when anything does not match.
        """
        digest = payload_digest("DownloadResults")
        out = Path(dest)

        def fetch() -> DownloadedResults:
            manifest, m = self._stream_files(
                lambda: self._stub.DownloadResults(
                    pb.DownloadResultsRequest(job_id=job_id, auth=self.auth(job_id, "DownloadResults", digest)),
                    timeout=self.timeout_s + 600,
                ),
                out,
            )
            receipt = receipt_from_proto(m.receipt) if m.HasField("receipt") else None
            if provider is not None:
                if receipt is None:
                    raise VerificationError("results: no receipt")
                verify_receipt(self._domain_or_fail(), receipt, provider)
            if receipt is not None and receipt.receipt.result_root != manifest.root:
                raise VerificationError("results: the receipt commits to another root")
            return DownloadedResults(out, manifest, m.state, receipt)

        return self._retrying(fetch)

    def download_bundle(self, job_id: int, dest: str | os.PathLike[str]) -> ResultManifest:
        """Fetch a job's unpacked bundle into ``dest`` (verifiers; check its bundle hash against the chain)."""
        digest = payload_digest("DownloadBundle")
        out = Path(dest)

        def fetch() -> ResultManifest:
            manifest, _m = self._stream_files(
                lambda: self._stub.DownloadBundle(
                    pb.DownloadBundleRequest(job_id=job_id, auth=self.auth(job_id, "DownloadBundle", digest)),
                    timeout=self.timeout_s + 600,
                ),
                out,
            )
            return manifest

        return self._retrying(fetch)

    def _stream_files(self, call: Callable[[], Any], out: Path) -> tuple[ResultManifest, Any]:
        """Receive a manifest (and the pages of a long file list) and its files into ``out``.

        Checks each path, each file's size and sha256 and the Merkle root. Files arrive in manifest
        order and are opened one at a time, so a result of many files needs no more handles.
        """
        out.mkdir(parents=True, exist_ok=True)
        stream = call()
        first = next(stream)
        if first.WhichOneof("kind") != "manifest":
            raise VerificationError("results: the stream did not start with a manifest")
        m = first.manifest
        files = list(m.files)
        message: Any = None
        for message in stream:
            if message.WhichOneof("kind") != "files" or len(files) >= m.total_files:
                break
            files.extend(message.files.files)
            message = None
        if len(files) < m.total_files:
            raise VerificationError(f"results: the manifest lists {len(files)} of its {m.total_files} files")
        expected = {f.path: f for f in files}
        if len(expected) != len(files):
            raise VerificationError("results: the manifest lists a file twice")
        for name in expected:
            try:
                safe_relpath("result path", name)
            except BundleError as exc:
                raise VerificationError(f"results: unsafe path in manifest: {exc}") from None
        order = list(expected)
        verifier = _StreamVerifier(order)
        position = -1
        handle: Any = None

        def advance_to(name: str) -> Any:
            nonlocal position, handle
            while position < len(order) - 1:
                if handle is not None:
                    handle.close()
                position += 1
                target = out / order[position]
                target.parent.mkdir(parents=True, exist_ok=True)
                handle = open(target, "wb")
                if order[position] == name:
                    return handle
            raise VerificationError(f"results: unexpected file {name!r}")

        try:
            rest = stream if message is None else _prepend(message, stream)
            for message in rest:
                chunk = message.chunk
                if message.WhichOneof("kind") != "chunk":
                    raise VerificationError("results: a manifest page after the file chunks")
                path, data = chunk.path, chunk.data  # each read of a bytes field is a copy
                if path not in expected:
                    raise VerificationError(f"results: unexpected file {path!r}")
                fh = handle if position >= 0 and order[position] == path else advance_to(path)
                fh.write(data)
                verifier.feed(path, data)
            if position < len(order) - 1:
                advance_to(order[-1])  # the files no chunk was sent for (empty ones) exist too
        finally:
            if handle is not None:
                handle.close()
            digests, root = verifier.finish()
        for name, entry in expected.items():
            if digests[name] != entry.sha256 or (out / name).stat().st_size != entry.size:
                raise VerificationError(f"results: {name} does not match its sha256 in the manifest")
        if root != m.result_root:
            raise VerificationError("results: the files do not give the manifest's Merkle root")
        manifest = ResultManifest(tuple(FileEntry(f.path, f.size, f.sha256, f.chunks) for f in files), root)
        return manifest, m

    def _domain_or_fail(self) -> Domain:
        if self._domain is None:
            raise VerificationError("results: no EIP-712 domain to check the receipt in")
        return self._domain

    def capacity_challenge(
        self, seed: int, n: int, device_kind: str = "", timeout_s: float = 600.0
    ) -> pb.CapacityChallengeResult:
        """Ask the worker for a timed product (not retried: it is expensive)."""
        return self._retrying(
            lambda: self._stub.CapacityChallenge(
                pb.CapacityChallengeRequest(seed=seed, n=n, device_kind=device_kind), timeout=timeout_s
            ),
            idempotent=False,
        )

    def challenge_rows(self, challenge_id: str, rows: list[int]) -> pb.ChallengeRowsReply:
        """Rows of a challenge's product with their proofs."""
        return self._retrying(
            lambda: self._stub.ChallengeRows(
                pb.ChallengeRowsRequest(challenge_id=challenge_id, rows=rows), timeout=self.timeout_s
            )
        )

    def verify_capacity(
        self, seed: int, n: int, *, samples: int = 8, device_kind: str = ""
    ) -> pb.CapacityChallengeResult:
        """Run a challenge and spot-check ``samples`` random rows; raise VerificationError on a bad row."""
        result = self.capacity_challenge(seed, n, device_kind)
        picks = random.SystemRandom().sample(range(n), min(samples, n))
        reply = self.challenge_rows(result.challenge_id, picks)
        rows = {r.index: (r.data, list(r.proof)) for r in reply.rows}
        if sorted(rows) != sorted(picks):
            raise VerificationError("capacity: the worker did not return the rows asked for")
        verify_rows(seed, n, result.rows_root, rows)
        return result
