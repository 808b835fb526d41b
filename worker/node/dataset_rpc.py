"""The dataset rpcs of ``flopex.v1.WorkerService`` (QueryDataset, PutDataset, ListDatasets,
DatasetFromJob, DownloadDataset), served over a :class:`~worker.node.datasets.DatasetStore`.

Requests about the signer's own datasets carry no job: they are signed with job id 0 and the
signer is the account charged (its quota, its uploads). Requests about a job's datasets are
signed as that job's other requests are and authorized the same way (the requester, or for
DownloadDataset a verifier of a committed result, as for DownloadBundle).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from typing import Any

import grpc

from marketplace.errors import SignatureError, WorkerError
from marketplace.protocol.auth import SignedRequest, verify_request
from marketplace.protocol.datasets import dataset_request_digest, format_dataset
from marketplace.protocol.merkle import ResultManifest
from marketplace.rpc import worker_pb2 as pb
from worker.node.datasets import DatasetStore, iter_chunks
from worker.node.store import NonceReplayed

__all__ = ["DatasetRpcs"]

_ZERO = b"\0" * 32


class DatasetRpcs:
    """The dataset rpcs, for a :class:`WorkerServicer` (which routes its methods here)."""

    def __init__(self, servicer: Any, store: DatasetStore) -> None:
        """``servicer``: the :class:`~worker.node.service.WorkerServicer` whose config, domain,
        nonces and lease authorization these rpcs share."""
        self.servicer = servicer
        self.store = store

    def _account(self, method: str, auth: pb.RequestAuth, digest: bytes) -> str:
        """The account that signed a job-less request (job id 0); the nonce is used up."""
        if not auth.signature:
            raise WorkerError(f"{method} needs a RequestAuth signed by your account (job id 0)", code="UNAUTHENTICATED")
        if len(auth.signature) != 65 or len(auth.nonce) != 32:
            raise WorkerError(
                "malformed RequestAuth: a 32-byte nonce and a 65-byte signature are required", code="UNAUTHENTICATED"
            )
        req = SignedRequest(0, method, digest, int.from_bytes(auth.nonce, "big"), auth.expiry, auth.signature)
        config = self.servicer.config
        from marketplace.protocol.auth import recover_request_signer

        claimed = recover_request_signer(self.servicer.domain, req)
        verify_request(
            self.servicer.domain,
            req,
            expected_signer=claimed,
            method=method,
            job_id=0,
            digest=digest,
            now=time.time(),
            max_ttl_s=config.max_request_ttl_s,
        )
        try:
            self.servicer.manager.store.use_nonce(claimed, req.nonce, req.expiry)
        except NonceReplayed as exc:
            raise SignatureError(f"replayed request: {exc}") from None
        return claimed

    def _status(self, account: str, dataset: bytes, received: int) -> pb.DatasetStatus:
        info = self.store.info(dataset)
        return pb.DatasetStatus(
            dataset_hash=dataset,
            present=info is not None,
            received_bytes=received,
            size_bytes=info.size if info else 0,
            files=info.files if info else 0,
            quota_used_bytes=self.store.used(account),
            quota_bytes=self.store.quota(account),
        )

    @staticmethod
    def _hash(value: bytes, what: str = "dataset_hash") -> bytes:
        if len(value) != 32:
            raise WorkerError(f"{what} must be 32 bytes", code="INVALID_ARGUMENT")
        return value

    def query(self, request: pb.QueryDatasetRequest, context: grpc.ServicerContext) -> pb.DatasetStatus:
        dataset = self._hash(request.dataset_hash)
        sha = self._hash(request.archive_sha256 or _ZERO, "archive_sha256")
        account = self._account("QueryDataset", request.auth, dataset_request_digest(dataset, sha))
        held = 0 if sha == _ZERO else self.store.held(account, dataset, sha)
        return self._status(account, dataset, held)

    def put(self, messages: Iterator[pb.DatasetChunk], context: grpc.ServicerContext) -> pb.DatasetStatus:
        messages = self.servicer._timed(messages, context)
        first = next(messages, None)
        if first is None or not first.HasField("header"):
            raise WorkerError("the first upload message must carry the header", code="INVALID_ARGUMENT")
        head = first.header
        dataset = self._hash(head.dataset_hash)
        sha = self._hash(head.archive_sha256, "archive_sha256")
        account = self._account("PutDataset", head.auth, dataset_request_digest(dataset, sha))
        if head.archive_size > self.store.limits.max_dataset_bytes:
            raise WorkerError(
                f"datasets: an archive of {head.archive_size} bytes exceeds this worker's limit of "
                f"{self.store.limits.max_dataset_bytes} bytes per dataset",
                code="RESOURCE_EXHAUSTED",
            )

        def rest() -> Iterator[tuple[bytes, bytes]]:
            for message in messages:
                if message.HasField("header"):
                    raise WorkerError("only the first upload message may carry a header", code="INVALID_ARGUMENT")
                yield message.data, message.sha256

        _present, held = self.store.receive(
            account, dataset, head.archive_size, sha, head.offset, iter_chunks((first.data, first.sha256), rest())
        )
        return self._status(account, dataset, held)

    def list(self, request: pb.ListDatasetsRequest, context: grpc.ServicerContext) -> pb.DatasetList:
        account = self._account("ListDatasets", request.auth, hashlib.sha256(b"").digest())
        return pb.DatasetList(
            datasets=[
                pb.DatasetInfo(
                    dataset_hash=d.hash, size_bytes=d.size, files=d.files, last_used=d.last_used, pinned=d.pinned
                )
                for d in self.store.list(account)
            ],
            quota_used_bytes=self.store.used(account),
            quota_bytes=self.store.quota(account),
        )

    def from_job(self, request: pb.DatasetFromJobRequest, context: grpc.ServicerContext) -> pb.DatasetStatus:
        from marketplace.protocol.auth import payload_digest

        lease = self.servicer._authorize(
            context, "DatasetFromJob", request.job_id, request.auth, payload_digest("DatasetFromJob")
        )
        job, _manifest, folder = self.servicer.manager.results(request.job_id)
        if job.state != "succeeded":
            raise WorkerError(
                f"job {request.job_id} {job.state}; only a succeeded job's outputs become a dataset",
                code="FAILED_PRECONDITION",
            )
        dataset = self.store.add_tree(lease.requester, folder / "output")
        return self._status(lease.requester, dataset, 0)

    def download(self, request: pb.DownloadDatasetRequest, context: grpc.ServicerContext) -> tuple[ResultManifest, Any]:
        """The manifest and folder of a dataset job ``request.job_id`` reads, once the caller may have it."""
        from marketplace.protocol.auth import payload_digest

        dataset = self._hash(request.dataset_hash)
        self.servicer._authorize(
            context, "DownloadDataset", request.job_id, request.auth, payload_digest("DownloadDataset")
        )
        if not self.store.reads(request.job_id, dataset):
            raise WorkerError(
                f"job {request.job_id} does not read {format_dataset(dataset)} on this worker", code="NOT_FOUND"
            )
        return self.store.manifest(dataset), self.store.tree(dataset)
