"""Each bad request gets its own status code, and the worker keeps serving."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from eth_account.signers.local import LocalAccount

from marketplace.errors import WorkerError
from marketplace.protocol.auth import payload_digest, sign_request
from marketplace.requester.client import WorkerClient
from marketplace.rpc import worker_pb2 as pb
from marketplace.rpc import worker_pb2_grpc as pb_grpc
from tests.worker.workerkit import DOMAIN, BundleFactory, WorkerProcess, lease_for, next_job_id


@pytest.fixture
def stub(worker: WorkerProcess) -> Iterator[pb_grpc.WorkerServiceStub]:
    """A raw stub, to send requests the client would never build."""
    with grpc.insecure_channel(worker.target) as channel:
        yield pb_grpc.WorkerServiceStub(channel)


@pytest.fixture(autouse=True)
def _worker_still_serves(worker: WorkerProcess) -> Iterator[None]:
    yield
    with WorkerClient(worker.target, timeout_s=10) as c:
        assert c.info().provider_address == worker.provider


def _code(exc: pytest.ExceptionInfo[WorkerError]) -> str | None:
    return exc.value.code


def _auth(key: bytes, job_id: int, method: str, digest: bytes, **kw: int) -> pb.RequestAuth:
    signed = sign_request(key, DOMAIN, job_id, method, digest, **kw)
    return pb.RequestAuth(nonce=signed.nonce.to_bytes(32, "big"), expiry=signed.expiry, signature=signed.signature)


def test_a_malformed_bundle__is_invalid_argument(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    archive = tmp_path / "junk.tar.gz"
    archive.write_bytes(b"this is not a gzip file at all")
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, b"\x00" * 32))
    with pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, archive)
    assert _code(exc) == "INVALID_ARGUMENT" and "tar.gz" in exc.value.message


def test_a_bundle_with_a_bad_job_toml__is_invalid_argument_naming_the_key(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    _, bhash = make_bundle("print(1)\n")
    # Rebuild the archive with an unknown key by hand: pack_bundle refuses invalid bundles.
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        for name, content in (
            ("job.toml", b'[job]\nentrypoint = "main.py"\nfrobnicate = 1\n[market]\nmax_price = "1"\n'),
            ("main.py", b"print(1)\n"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    with pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, data.getvalue())
    assert _code(exc) == "INVALID_ARGUMENT" and "frobnicate" in exc.value.message


def test_a_bundle_that_is_not_the_leased_one__is_permission_denied(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    archive, _ = make_bundle("print(1)\n")
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, b"\x11" * 32))
    with pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, archive)
    assert _code(exc) == "PERMISSION_DENIED" and "bundle hash" in exc.value.message


def test_a_request_signed_by_a_stranger__is_permission_denied(
    worker: WorkerProcess, requester: LocalAccount, stranger: LocalAccount, make_bundle: BundleFactory
) -> None:
    archive, bhash = make_bundle("print(1)\n")
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    with WorkerClient(worker.target, requester_key=stranger.key, domain=DOMAIN) as foreign:
        with pytest.raises(WorkerError) as exc:
            foreign.upload_bundle(job_id, archive)
    assert _code(exc) == "PERMISSION_DENIED" and "no lease" in exc.value.message


def test_an_expired_signature__is_permission_denied(
    worker: WorkerProcess, requester: LocalAccount, stub: pb_grpc.WorkerServiceStub
) -> None:
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, b"\x00" * 32))
    auth = _auth(requester.key, job_id, "GetJob", payload_digest("GetJob"), expiry=int(time.time()) - 5)
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetJob(pb.GetJobRequest(job_id=job_id, auth=auth), timeout=10)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "expired" in str(exc.value.details())


def test_a_replayed_request__is_permission_denied(
    worker: WorkerProcess,
    requester: LocalAccount,
    client: WorkerClient,
    make_bundle: BundleFactory,
    stub: pb_grpc.WorkerServiceStub,
) -> None:
    archive, bhash = make_bundle("print(1)\n")
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    client.upload_bundle(job_id, archive)
    request = pb.GetJobRequest(job_id=job_id, auth=_auth(requester.key, job_id, "GetJob", payload_digest("GetJob")))
    assert stub.GetJob(request, timeout=10).state == pb.JOB_STATE_READY
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetJob(request, timeout=10)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED and "replayed" in str(exc.value.details())


def test_a_signature_for_another_method__is_permission_denied(
    worker: WorkerProcess, requester: LocalAccount, stub: pb_grpc.WorkerServiceStub
) -> None:
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, b"\x00" * 32))
    auth = _auth(requester.key, job_id, "GetJob", payload_digest("CancelJob"))
    with pytest.raises(grpc.RpcError) as exc:
        stub.CancelJob(pb.CancelJobRequest(job_id=job_id, auth=auth), timeout=10)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_request_without_a_signature__is_unauthenticated(
    worker: WorkerProcess, stub: pb_grpc.WorkerServiceStub
) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        stub.GetJob(pb.GetJobRequest(job_id=1), timeout=10)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_lease_naming_another_provider__is_permission_denied(
    worker: WorkerProcess, requester: LocalAccount, stranger: LocalAccount, client: WorkerClient
) -> None:
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, stranger.address, b"\x00" * 32))
    with pytest.raises(WorkerError) as exc:
        client.get_job(job_id)
    assert _code(exc) == "PERMISSION_DENIED" and "does not name this worker" in exc.value.message


def test_a_job_without_a_lease__is_permission_denied_like_someone_elses(
    worker: WorkerProcess, requester: LocalAccount, stranger: LocalAccount
) -> None:
    with WorkerClient(worker.target, requester_key=stranger.key, domain=DOMAIN, timeout_s=20) as theirs:
        with pytest.raises(WorkerError) as unleased:
            theirs.get_job(next_job_id())
        job_id = next_job_id()
        worker.add_lease(lease_for(job_id, requester.address, worker.provider, b"\x00" * 32))
        with pytest.raises(WorkerError) as leased:
            theirs.get_job(job_id)
    assert _code(unleased) == _code(leased) == "PERMISSION_DENIED" and "no lease" in unleased.value.message


def test_a_leased_job_never_uploaded__is_not_found(
    worker: WorkerProcess, requester: LocalAccount, client: WorkerClient
) -> None:
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, b"\x00" * 32))
    with pytest.raises(WorkerError) as exc:
        client.get_job(job_id)
    assert _code(exc) == "NOT_FOUND"


def test_an_oversized_upload__is_resource_exhausted(
    worker: WorkerProcess, requester: LocalAccount, client: WorkerClient, make_bundle: BundleFactory
) -> None:
    import os

    archive, bhash = make_bundle("print(1)\n", files={"big.bin": os.urandom(5 << 20)})
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    with pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, archive)
    assert _code(exc) == "RESOURCE_EXHAUSTED"


def test_a_corrupted_chunk__is_data_loss(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, stub: pb_grpc.WorkerServiceStub
) -> None:
    archive, bhash = make_bundle("print(1)\n")
    data = archive.read_bytes()
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    sha = hashlib.sha256(data).digest()
    header = pb.UploadHeader(
        job_id=job_id,
        archive_size=len(data),
        archive_sha256=sha,
        offset=0,
        auth=_auth(requester.key, job_id, "UploadBundle", sha),
    )
    messages = [pb.UploadChunk(header=header), pb.UploadChunk(data=data, sha256=hashlib.sha256(b"other").digest())]
    with pytest.raises(grpc.RpcError) as exc:
        stub.UploadBundle(iter(messages), timeout=10)
    assert exc.value.code() == grpc.StatusCode.DATA_LOSS


def test_a_device_request_the_worker_cannot_meet__is_failed_precondition(
    worker: WorkerProcess, requester: LocalAccount, client: WorkerClient, make_bundle: BundleFactory
) -> None:
    for device, gpus in (("cuda", 1), ("cpu", 3)):
        archive, bhash = make_bundle("print(1)\n", device=device, gpus=gpus)
        job_id = next_job_id()
        worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash, kind=device, count=gpus))
        with pytest.raises(WorkerError) as exc:
            client.upload_bundle(job_id, archive)
        assert _code(exc) == "FAILED_PRECONDITION", exc.value.message


def test_results_of_a_job_not_yet_run__are_failed_precondition(
    worker: WorkerProcess, requester: LocalAccount, client: WorkerClient, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    archive, bhash = make_bundle("print(1)\n")
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    client.upload_bundle(job_id, archive)
    with pytest.raises(WorkerError) as exc:
        client.download_results(job_id, tmp_path / "r")
    assert _code(exc) == "FAILED_PRECONDITION"


def test_an_upload_at_the_wrong_offset__is_failed_precondition(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, stub: pb_grpc.WorkerServiceStub
) -> None:
    archive, bhash = make_bundle("print(1)\n")
    data = archive.read_bytes()
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    sha = hashlib.sha256(data).digest()
    header = pb.UploadHeader(
        job_id=job_id,
        archive_size=len(data),
        archive_sha256=sha,
        offset=100,
        auth=_auth(requester.key, job_id, "UploadBundle", sha),
    )
    with pytest.raises(grpc.RpcError) as exc:
        stub.UploadBundle(iter([pb.UploadChunk(header=header)]), timeout=10)
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_an_oversized_capacity_challenge__is_invalid_argument(client: WorkerClient) -> None:
    with pytest.raises(WorkerError) as exc:
        client.capacity_challenge(seed=1, n=100_000)
    assert _code(exc) == "INVALID_ARGUMENT"


def test_an_expired_lease__refuses_new_uploads(
    worker: WorkerProcess, requester: LocalAccount, client: WorkerClient, make_bundle: BundleFactory
) -> None:
    archive, bhash = make_bundle("print(1)\n")
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash, deadline=int(time.time()) - 1))
    with pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, archive)
    assert _code(exc) == "FAILED_PRECONDITION" and "lease" in exc.value.message
