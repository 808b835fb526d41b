"""The worker's gRPC service and the server factory.

:func:`create_server` wires the parts (store, sandbox, devices, job manager, challenge runner,
health, reflection) and binds the port; :class:`WorkerServicer` implements
``flopex.v1.WorkerService``. Every domain error is mapped to an explicit status code
(:func:`status_of`); an unexpected exception becomes INTERNAL with a generic message and is
logged — nothing escapes as UNKNOWN.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import logging
import platform
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

import marketplace
from marketplace.errors import (
    BundleError,
    ConfigError,
    FlopexError,
    SandboxError,
    SignatureError,
    VerificationError,
    WorkerError,
)
from marketplace.protocol.auth import Domain, SignedRequest, payload_digest, recover_request_signer, verify_request
from marketplace.protocol.merkle import ResultManifest
from marketplace.protocol.tls import Endpoint, spki_sha256
from marketplace.rpc import SERVICE_NAME
from marketplace.rpc import worker_pb2 as pb
from marketplace.rpc import worker_pb2_grpc as pb_grpc
from worker.node.admission import Admission, TokenBucket, Watchdog, peer_host
from worker.node.challenges import ChallengeRunner
from worker.node.config import WorkerConfig, load_or_create_key
from worker.node.devices import DeviceInfo, detect_devices
from worker.node.jobs import JobManager, device_proto, metering_proto
from worker.node.leases import Lease
from worker.node.store import JobRecord, JobStore, NonceReplayed
from worker.sandbox.runner import Sandbox

__all__ = ["MAX_MESSAGE_BYTES", "WorkerServer", "WorkerServicer", "create_server", "status_of"]

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 8 << 20
"""Largest message the server accepts (upload chunks are at most 4 MiB)."""
DOWNLOAD_CHUNK = 1 << 20
MANIFEST_PAGE_BYTES = 1 << 20
"""About how many bytes of file list one download message carries (the list may be far longer)."""
HEALTH_THREADS = 8
"""Threads of the server's pool beyond every admitted call: health checks and reflection always find one."""
VERIFIER_METHODS = frozenset({"GetJob", "DownloadResults", "DownloadBundle", "DownloadDataset"})
"""Read-only rpcs a registered verifier may call for a committed result (see ``_signer``)."""

_F = TypeVar("_F", bound=Callable[..., Any])

_STATE = {
    "uploading": pb.JOB_STATE_UPLOADING,
    "ready": pb.JOB_STATE_READY,
    "queued": pb.JOB_STATE_QUEUED,
    "running": pb.JOB_STATE_RUNNING,
    "succeeded": pb.JOB_STATE_SUCCEEDED,
    "failed": pb.JOB_STATE_FAILED,
    "cancelled": pb.JOB_STATE_CANCELLED,
}


class _Unauthenticated(SignatureError):
    """Raised when a request carries no usable signature at all."""


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status code a domain error maps to."""
    if isinstance(exc, WorkerError) and exc.code:
        return getattr(grpc.StatusCode, exc.code, grpc.StatusCode.INTERNAL)
    if isinstance(exc, _Unauthenticated):
        return grpc.StatusCode.UNAUTHENTICATED
    if isinstance(exc, SignatureError):
        return grpc.StatusCode.PERMISSION_DENIED
    if isinstance(exc, SandboxError):
        return grpc.StatusCode.FAILED_PRECONDITION
    if isinstance(exc, BundleError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(exc, VerificationError):
        return grpc.StatusCode.DATA_LOSS
    if isinstance(exc, ConfigError):
        return grpc.StatusCode.FAILED_PRECONDITION
    return grpc.StatusCode.INTERNAL


def _message(exc: BaseException) -> str:
    if isinstance(exc, WorkerError):
        return exc.message
    if isinstance(exc, FlopexError):
        return str(exc)
    return f"internal error ({type(exc).__name__}); see the worker's log"


def _guard(fn: _F) -> _F:
    """Turn exceptions of a handler (unary or streaming) into explicit status codes."""

    def fail(context: grpc.ServicerContext, exc: Exception) -> None:
        if not context.is_active() or isinstance(exc, grpc.RpcError):
            # The client cancelled, its deadline passed or the connection dropped: nothing to answer.
            log.info("%s from %s ended by the client (%s)", fn.__name__, context.peer(), type(exc).__name__)
            return
        if not isinstance(exc, FlopexError):
            log.exception("unexpected error in %s", fn.__name__)
        context.abort(status_of(exc), _message(exc))

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from fn(self, request, context)
            except Exception as exc:
                fail(context, exc)

        return stream  # type: ignore[return-value]

    @functools.wraps(fn)
    def unary(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:
            fail(context, exc)
            return None  # the client is gone: no answer reaches it

    return unary  # type: ignore[return-value]


class WorkerServicer(pb_grpc.WorkerServiceServicer):
    """Implements ``flopex.v1.WorkerService`` on top of a :class:`JobManager`."""

    def __init__(
        self, config: WorkerConfig, manager: JobManager, challenges: ChallengeRunner, devices: list[DeviceInfo]
    ) -> None:
        self.config = config
        self.manager = manager
        self.challenges = challenges
        self.devices = devices
        self.address = manager.signer.address
        self.domain = manager.domain
        self.watchdog = Watchdog()
        self.advertised_provider: str | None = None
        """The staked account whose offer this worker serves (set by the provider daemon once registered)."""
        self.advertised_prices: dict[str, int] | None = None
        """The registered prices per device-hour by device kind (None: the configured ones)."""
        lim = config.admission
        self.lookups = TokenBucket(
            lim.lookup_rate_per_peer, lim.lookup_burst_per_peer, lim.lookup_rate, lim.lookup_burst
        )
        from worker.node.dataset_rpc import DatasetRpcs

        self.dataset_rpcs = DatasetRpcs(self, manager.datasets)

    # -- authorization ------------------------------------------------------------------------

    def _authorize(
        self, context: grpc.ServicerContext, method: str, job_id: int, auth: pb.RequestAuth, digest: bytes
    ) -> Lease:
        """The lease a request may act on; the signature is checked before the lease is looked up.

        Everything a signature can be checked for without the lease (form, expiry, reach into the
        future, a recoverable signer) is checked first, so garbage never costs a chain look-up.
        A signer who is not the lease's requester (nor an admitted verifier) gets the same answer
        whether or not the job is leased here, so strangers learn nothing about the leases.
        """
        if not auth.signature:
            raise _Unauthenticated(f"{method} needs a RequestAuth signed by the job's requester")
        if len(auth.signature) != 65 or len(auth.nonce) != 32:
            raise _Unauthenticated("malformed RequestAuth: a 32-byte nonce and a 65-byte signature are required")
        req = SignedRequest(job_id, method, digest, int.from_bytes(auth.nonce, "big"), auth.expiry, auth.signature)
        now = time.time()
        if req.expiry < now:
            raise SignatureError(f"auth: signature expired at {req.expiry}")
        if req.expiry > now + self.config.max_request_ttl_s:
            raise SignatureError(f"auth: signature expiry is more than {self.config.max_request_ttl_s} s ahead")
        claimed = recover_request_signer(self.domain, req)
        if not self.lookups.take(peer_host(context.peer() or "")):
            raise WorkerError("too many lease look-ups from this peer; retry later", code="RESOURCE_EXHAUSTED")
        try:
            lease = self.config.leases.lease(job_id)
        except FlopexError as exc:
            raise WorkerError(f"cannot read the lease of job {job_id}: {exc}", code="UNAVAILABLE") from None
        refused = SignatureError(
            f"auth: signed by {claimed}: no lease here, or not the job's requester, for job {job_id} on this worker"
        )
        if lease is None:
            raise refused
        if claimed.lower() != lease.requester.lower() and method not in VERIFIER_METHODS:
            raise refused
        signer = self._signer(lease, req, method, claimed, refused)
        if not lease.names(self.address):
            raise WorkerError(
                f"the lease of job {job_id} does not name this worker ({self.address})", code="PERMISSION_DENIED"
            )
        verify_request(
            self.domain,
            req,
            expected_signer=signer,
            method=method,
            job_id=job_id,
            digest=digest,
            now=now,
            max_ttl_s=self.config.max_request_ttl_s,
        )
        try:
            self.manager.store.use_nonce(signer, req.nonce, req.expiry)
        except NonceReplayed as exc:
            raise SignatureError(f"replayed request: {exc}") from None
        if method in ("UploadBundle", "StartJob") and lease.deadline < time.time():
            raise WorkerError(f"the lease of job {job_id} ended at {lease.deadline}", code="FAILED_PRECONDITION")
        return lease

    def _signer(self, lease: Lease, req: SignedRequest, method: str, claimed: str, refused: SignatureError) -> str:
        """Who signed ``req`` (``claimed``): the lease's requester, or a verifier allowed to read a committed result.

        A staked, registered verifier may read (GetJob, DownloadResults, DownloadBundle) a job whose
        result this worker's provider has committed on chain: the commitment binds the provider
        before anyone checks it, and the verifier's stake answers for what it does with the data.
        The lease lookup decides (``verifier_may_read``); lookups without it admit only requesters.
        Anyone else is ``refused``, with the answer a job without a lease gets.
        """
        if claimed.lower() == lease.requester.lower():
            return lease.requester
        may_read = getattr(self.config.leases, "verifier_may_read", None)
        if method not in VERIFIER_METHODS or may_read is None:
            raise refused
        try:
            allowed = bool(may_read(lease.job_id, claimed, self.address))
        except FlopexError as exc:
            raise WorkerError(f"cannot check verifier {claimed}: {exc}", code="UNAVAILABLE") from None
        if not allowed:
            raise refused
        return claimed

    def _timed(self, messages: Iterator[pb.UploadChunk], context: grpc.ServicerContext) -> Iterator[pb.UploadChunk]:
        """``messages``, cancelling the call after ``upload_first_message_s`` or ``upload_silence_s`` of silence."""
        limit = self.config.upload_first_message_s
        while True:
            alarm = self.watchdog.arm(limit, context.cancel)
            try:
                message = next(messages, None)
            finally:
                self.watchdog.disarm(alarm)
            if message is None:
                return
            yield message
            limit = self.config.upload_silence_s

    def _status(self, job: JobRecord) -> pb.JobStatus:
        status = pb.JobStatus(
            job_id=job.job_id,
            state=_STATE[job.state],
            reason=job.reason,
            exit_code=job.exit_code,
            result_root=job.result_root or b"",
            queue_position=self.manager.queue_position(job.job_id),
            bundle_hash=job.bundle_hash or b"",
            seed=job.seed or 0,
        )
        metering = metering_proto(job.metering)
        if metering is not None:
            status.metering.CopyFrom(metering)
        return status

    # -- rpcs ---------------------------------------------------------------------------------

    @_guard
    def GetInfo(self, request: pb.GetInfoRequest, context: grpc.ServicerContext) -> pb.WorkerInfo:
        """Describe the worker."""
        busy = self.manager.busy_devices()
        queued, running = self.manager.counts()
        from importlib import metadata

        try:
            torch_version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            torch_version = ""
        kinds = {d.kind for d in self.devices}
        prices = self.advertised_prices
        if prices is None:
            prices = {k: v for k, v in self.config.prices.items() if k in kinds}
        return pb.WorkerInfo(
            provider_address=self.advertised_provider or self.address,
            receipt_signer=self.address,
            worker_version=marketplace.__version__,
            protocol_version="flopex.v1",
            python_version=platform.python_version(),
            torch_version=torch_version,
            devices=[device_proto(d, i in busy) for i, d in enumerate(self.devices)],
            prices=[pb.Price(device_kind=k, price_per_hour=str(v)) for k, v in sorted(prices.items())],
            max_bundle_bytes=self.config.max_bundle_bytes,
            chain_id=self.config.chain_id,
            market_address=self.domain.verifying_contract,
            sandboxed=self.manager.sandbox.sandboxed,
            queued_jobs=queued,
            running_jobs=running,
        )

    @_guard
    def QueryUpload(self, request: pb.QueryUploadRequest, context: grpc.ServicerContext) -> pb.UploadStatus:
        """How much of an upload the worker holds."""
        sha = request.archive_sha256
        if len(sha) != 32:
            raise WorkerError("archive_sha256 must be 32 bytes", code="INVALID_ARGUMENT")
        self._authorize(
            context, "QueryUpload", request.job_id, request.auth, payload_digest("QueryUpload", archive_sha256=sha)
        )
        held, complete = self.manager.upload_offset(request.job_id, sha)
        job = self.manager.store.get(request.job_id)
        return pb.UploadStatus(
            job_id=request.job_id,
            received_bytes=held,
            complete=complete,
            archive_size=(job.archive_size or 0) if job else 0,
            bundle_hash=(job.bundle_hash or b"") if job and complete else b"",
        )

    @_guard
    def UploadBundle(
        self, request_iterator: Iterator[pb.UploadChunk], context: grpc.ServicerContext
    ) -> pb.UploadStatus:
        """Receive (part of) a bundle archive; a stream silent too long (see ``_timed``) is cancelled."""
        request_iterator = self._timed(request_iterator, context)
        first = next(request_iterator, None)
        if first is None or not first.HasField("header"):
            raise WorkerError("the first upload message must carry the header", code="INVALID_ARGUMENT")
        head = first.header
        if len(head.archive_sha256) != 32:
            raise WorkerError("archive_sha256 must be 32 bytes", code="INVALID_ARGUMENT")
        lease = self._authorize(
            context,
            "UploadBundle",
            head.job_id,
            head.auth,
            payload_digest("UploadBundle", archive_sha256=head.archive_sha256),
        )

        def chunks() -> Iterator[tuple[bytes, bytes]]:
            if first.data:
                yield first.data, first.sha256
            for message in request_iterator:
                if message.HasField("header"):
                    raise WorkerError("only the first upload message may carry a header", code="INVALID_ARGUMENT")
                yield message.data, message.sha256

        job, held = self.manager.receive_upload(lease, head.archive_size, head.archive_sha256, head.offset, chunks())
        if not context.is_active():
            log.info("UploadBundle from %s ended by the client at %d bytes of job %d", context.peer(), held, job.job_id)
        return pb.UploadStatus(
            job_id=job.job_id,
            received_bytes=held,
            archive_size=head.archive_size,
            complete=job.state != "uploading",
            bundle_hash=job.bundle_hash or b"",
        )

    @_guard
    def StartJob(self, request: pb.StartJobRequest, context: grpc.ServicerContext) -> pb.JobStatus:
        """Queue an uploaded job."""
        lease = self._authorize(
            context, "StartJob", request.job_id, request.auth, payload_digest("StartJob", seed=request.seed)
        )
        return self._status(self.manager.start(request.job_id, request.seed, lease))

    @_guard
    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> pb.JobStatus:
        """A job's state."""
        self._authorize(context, "GetJob", request.job_id, request.auth, payload_digest("GetJob"))
        return self._status(self.manager.get(request.job_id))

    @_guard
    def WatchJob(self, request: pb.WatchJobRequest, context: grpc.ServicerContext) -> Iterator[pb.JobEvent]:
        """Stream a job's events until its final one."""
        self._authorize(context, "WatchJob", request.job_id, request.auth, payload_digest("WatchJob"))
        self.manager.get(request.job_id)
        seq = request.from_seq
        quiet_since: float | None = None
        while context.is_active():
            events, ended = self.manager.wait_events(request.job_id, seq, timeout=1.0)
            final = False
            for number, data in events:
                event = pb.JobEvent.FromString(data)
                final = final or event.WhichOneof("kind") in ("finished", "failed")
                yield event
                seq = number + 1
            if final:
                return
            if ended and not events:
                # The job's state is stored a moment before its final event: wait for the event,
                # but not forever (a job that ended without one, from an older worker, still ends).
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 2.0:
                    return
            else:
                quiet_since = None

    @_guard
    def DownloadResults(
        self, request: pb.DownloadResultsRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ResultChunk]:
        """Stream the manifest (its file list in pages when it is long), then every result file."""
        self._authorize(context, "DownloadResults", request.job_id, request.auth, payload_digest("DownloadResults"))
        job, manifest, folder = self.manager.results(request.job_id)
        from worker.node.jobs import receipt_proto

        yield from _manifest_messages(manifest, _STATE[job.state], receipt_proto(job.receipt))
        yield from _file_chunks(manifest, folder, context)

    @_guard
    def DownloadBundle(
        self, request: pb.DownloadBundleRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ResultChunk]:
        """Stream the job's unpacked bundle: a manifest, then every file."""
        self._authorize(context, "DownloadBundle", request.job_id, request.auth, payload_digest("DownloadBundle"))
        job, manifest, folder = self.manager.bundle_files(request.job_id)
        yield from _manifest_messages(manifest, _STATE[job.state], None)
        yield from _file_chunks(manifest, folder, context)

    @_guard
    def CancelJob(self, request: pb.CancelJobRequest, context: grpc.ServicerContext) -> pb.JobStatus:
        """Cancel a job."""
        self._authorize(context, "CancelJob", request.job_id, request.auth, payload_digest("CancelJob"))
        return self._status(self.manager.cancel(request.job_id))

    @_guard
    def CapacityChallenge(
        self, request: pb.CapacityChallengeRequest, context: grpc.ServicerContext
    ) -> pb.CapacityChallengeResult:
        """Run a timed, seeded matrix product."""
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        result = self.challenges.run(request.seed, request.n, request.device_kind, cancelled)
        return pb.CapacityChallengeResult(
            challenge_id=result.challenge_id,
            rows_root=result.root,
            elapsed_seconds=result.elapsed_s,
            flops=result.flops,
            device=device_proto(result.device),
            n=result.n,
        )

    @_guard
    def ChallengeRows(self, request: pb.ChallengeRowsRequest, context: grpc.ServicerContext) -> pb.ChallengeRowsReply:
        """Rows of a challenge's product with proofs."""
        rows = self.challenges.rows(request.challenge_id, list(request.rows))
        return pb.ChallengeRowsReply(rows=[pb.ChallengeRow(index=i, data=d, proof=p) for i, d, p in rows])

    # -- datasets (worker/node/dataset_rpc.py) --------------------------------------------------

    @_guard
    def QueryDataset(self, request: pb.QueryDatasetRequest, context: grpc.ServicerContext) -> pb.DatasetStatus:
        """Whether a dataset is held, and how much of the signer's upload of it."""
        return self.dataset_rpcs.query(request, context)

    @_guard
    def PutDataset(
        self, request_iterator: Iterator[pb.DatasetChunk], context: grpc.ServicerContext
    ) -> pb.DatasetStatus:
        """Receive (part of) a dataset archive; the dataset is kept once its hash is checked."""
        return self.dataset_rpcs.put(request_iterator, context)

    @_guard
    def ListDatasets(self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext) -> pb.DatasetList:
        """The signer's datasets and quota."""
        return self.dataset_rpcs.list(request, context)

    @_guard
    def DatasetFromJob(self, request: pb.DatasetFromJobRequest, context: grpc.ServicerContext) -> pb.DatasetStatus:
        """Keep a succeeded job's output folder as a dataset."""
        return self.dataset_rpcs.from_job(request, context)

    @_guard
    def DownloadDataset(
        self, request: pb.DownloadDatasetRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.ResultChunk]:
        """Stream a dataset a job reads: its manifest, then its files."""
        manifest, folder = self.dataset_rpcs.download(request, context)
        yield from _manifest_messages(manifest, pb.JOB_STATE_SUCCEEDED, None)
        yield from _file_chunks(manifest, folder, context)


def _manifest_messages(
    manifest: ResultManifest, state: pb.JobState, receipt: pb.Receipt | None
) -> Iterator[pb.ResultChunk]:
    """The manifest message, then the rest of its file list in pages of about MANIFEST_PAGE_BYTES.

    A short list fits the manifest whole, as older clients expect; ``total_files`` says how many
    files the whole list has, so newer clients read the pages that follow.
    """
    head = pb.ResultManifest(result_root=manifest.root, state=state, total_files=len(manifest.files))
    if receipt is not None:
        head.receipt.CopyFrom(receipt)
    page: list[pb.ResultFile] = []
    size = 0
    first = True
    for f in manifest.files:
        entry = pb.ResultFile(path=f.path, size=f.size, sha256=f.sha256, chunks=f.chunks)
        size += entry.ByteSize() + 8
        page.append(entry)
        if size >= MANIFEST_PAGE_BYTES:
            if first:
                head.files.extend(page)
                yield pb.ResultChunk(manifest=head)
                first = False
            else:
                yield pb.ResultChunk(files=pb.ResultFilesPage(files=page))
            page, size = [], 0
    if first:
        head.files.extend(page)
        yield pb.ResultChunk(manifest=head)
    elif page:
        yield pb.ResultChunk(files=pb.ResultFilesPage(files=page))


def _file_chunks(manifest: ResultManifest, folder: Path, context: grpc.ServicerContext) -> Iterator[pb.ResultChunk]:
    """Every file's bytes in manifest order, in chunks of DOWNLOAD_CHUNK."""
    for entry in manifest.files:
        with open(folder / entry.path, "rb") as fh:
            offset = 0
            while context.is_active():
                data = fh.read(DOWNLOAD_CHUNK)
                if not data:
                    break
                yield pb.ResultChunk(chunk=pb.FileChunk(path=entry.path, offset=offset, data=data))
                offset += len(data)


class WorkerServer:
    """A running worker: the gRPC server plus the parts it owns. Stop it with :meth:`stop`."""

    def __init__(
        self, server: grpc.Server, manager: JobManager, health_servicer: health.HealthServicer, port: int
    ) -> None:
        self.server = server
        self.manager = manager
        self.health = health_servicer
        self.port = port
        self.tls_pin: bytes | None = None
        """sha256 of the TLS certificate's public key (what an offer's endpoint pins), None in plaintext."""

    servicer: WorkerServicer | None = None
    admission: Admission | None = None
    """The admission interceptor: its ``slots.in_use(cls)`` counts the calls of a class now admitted."""

    def advertise(self, provider: str, prices: dict[str, int]) -> None:
        """Say in GetInfo which staked account this worker serves and the prices it registered."""
        if self.servicer is not None:
            self.servicer.advertised_provider = provider
            self.servicer.advertised_prices = dict(prices)

    def endpoint(self, host: str) -> str:
        """The endpoint an offer registers for this worker reached at ``host``: its pin included."""
        return str(Endpoint(host, self.port, self.tls_pin))

    @property
    def provider_address(self) -> str:
        """The address that signs this worker's receipts."""
        return self.manager.signer.address

    def start(self) -> None:
        """Start serving."""
        self.server.start()

    def stop(self, grace: float | None = 2.0) -> None:
        """Stop serving, kill running jobs (marked failed) and close the store."""
        self.health.enter_graceful_shutdown()
        self.manager.shutdown()
        self.server.stop(grace).wait()
        self.manager.store.close()
        self.manager.datasets.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stops."""
        return bool(self.server.wait_for_termination(timeout))


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_options(config: WorkerConfig) -> list[tuple[str, int]]:
    """The gRPC server's channel options: message sizes, keepalive enforcement, connection limits."""
    return [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", int(config.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.min_ping_interval_without_data_ms", int(config.min_client_ping_s * 1000)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.max_connection_idle_ms", int(config.max_connection_idle_s * 1000)),
        ("grpc.max_concurrent_streams", config.max_streams_per_connection),
    ]


def create_server(config: WorkerConfig, address: str = "127.0.0.1:0") -> tuple[WorkerServer, int]:
    """Build a worker for ``config`` bound to ``address``; return it (not started) and its port.

    A non-loopback address needs TLS (``tls_cert``/``tls_key``) unless ``allow_insecure_public``.
    """
    host = address.rsplit(":", 1)[0]
    tls = config.tls_cert is not None and config.tls_key is not None
    if not _is_loopback(host) and not tls and not config.allow_insecure_public:
        raise ConfigError(f"worker: refusing to serve {address} without TLS; give tls_cert and tls_key")
    config.data_dir.mkdir(parents=True, exist_ok=True)
    config.data_dir.chmod(0o700)
    key_path = config.key_path()
    signer = load_or_create_key(key_path)
    sandbox = Sandbox(
        allow_unsandboxed=config.allow_unsandboxed,
        protected_paths=[config.data_dir, key_path],
        use_cgroups=config.use_cgroups,
        bwrap=config.bwrap,
    )
    devices = detect_devices(config.cpu_slots, use_gpus=config.use_gpus)
    domain = Domain(config.chain_id, config.market_address)
    store = JobStore(config.data_dir / "worker.sqlite3")
    manager = JobManager(config, store, sandbox, devices, signer, domain)
    challenges = ChallengeRunner(devices, config.max_challenge_n)

    admission = Admission(config.admission)
    threads = config.admission.threads(HEALTH_THREADS)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rpc"),
        interceptors=[admission],
        options=server_options(config),
        # A backstop on calls queued for a thread; the admission caps act long before it.
        maximum_concurrent_rpcs=4 * threads,
    )
    servicer = WorkerServicer(config, manager, challenges, devices)
    pb_grpc.add_WorkerServiceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    if tls:
        assert config.tls_cert is not None and config.tls_key is not None
        cert_pem = Path(config.tls_cert).read_bytes()
        creds = grpc.ssl_server_credentials([(Path(config.tls_key).read_bytes(), cert_pem)])
        port = server.add_secure_port(address, creds)
        pin: bytes | None = spki_sha256(cert_pem)
    else:
        port = server.add_insecure_port(address)
        pin = None
    if port == 0:
        raise ConfigError(f"worker: cannot bind {address}")
    worker = WorkerServer(server, manager, health_servicer, port)
    worker.tls_pin = pin
    worker.servicer = servicer
    worker.admission = admission
    return worker, port
