"""Uploads unpacked while they arrive: nothing is used before the whole archive checks out."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from eth_account.signers.local import LocalAccount

from marketplace.protocol.auth import payload_digest, sign_request
from marketplace.requester.client import WorkerClient
from marketplace.rpc import worker_pb2 as pb
from marketplace.rpc import worker_pb2_grpc as pb_grpc
from tests.worker.workerkit import DOMAIN, BundleFactory, WorkerProcess, lease_for, next_job_id


@pytest.fixture
def stub(worker: WorkerProcess) -> Iterator[pb_grpc.WorkerServiceStub]:
    with grpc.insecure_channel(worker.target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        yield pb_grpc.WorkerServiceStub(channel)


def _send(
    stub: pb_grpc.WorkerServiceStub,
    key: bytes,
    job_id: int,
    data: bytes,
    *,
    size: int,
    sha: bytes,
    offset: int = 0,
    chunk: int = 256 << 10,
) -> pb.UploadStatus:
    """Send ``data`` (the archive's bytes from ``offset``) with no per-chunk hashes, as the client does."""
    signed = sign_request(key, DOMAIN, job_id, "UploadBundle", payload_digest("UploadBundle", archive_sha256=sha))
    auth = pb.RequestAuth(nonce=signed.nonce.to_bytes(32, "big"), expiry=signed.expiry, signature=signed.signature)
    header = pb.UploadHeader(job_id=job_id, archive_size=size, archive_sha256=sha, offset=offset, auth=auth)
    messages = [pb.UploadChunk(header=header)]
    messages += [pb.UploadChunk(data=data[i : i + chunk]) for i in range(0, len(data), chunk)]
    status: pb.UploadStatus = stub.UploadBundle(iter(messages), timeout=30)
    return status


def _job_dir(worker: WorkerProcess, job_id: int) -> Path:
    return worker.data_dir / "jobs" / str(job_id)


def _payload() -> dict[str, bytes]:
    return {"blob.bin": os.urandom(3 << 20), "notes.txt": b"the same line again\n" * 50_000}


def test_an_upload_without_chunk_hashes__is_unpacked_as_it_arrives_into_the_leased_bundle(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, stub: pb_grpc.WorkerServiceStub
) -> None:
    files = _payload()
    archive, bhash = make_bundle("print(1)\n", files=files)
    data = archive.read_bytes()
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    status = _send(stub, requester.key, job_id, data, size=len(data), sha=hashlib.sha256(data).digest())
    assert status.complete and status.bundle_hash == bhash
    bundle = _job_dir(worker, job_id) / "bundle"
    for name, content in files.items():
        assert (bundle / name).read_bytes() == content
    assert not (_job_dir(worker, job_id) / "bundle.unpacking").exists()
    assert not list((worker.data_dir / "uploads").glob(f"{job_id}-*"))


def test_a_damaged_archive_sent_without_chunk_hashes__is_data_loss_and_nothing_unpacked_is_kept(
    worker: WorkerProcess,
    requester: LocalAccount,
    make_bundle: BundleFactory,
    stub: pb_grpc.WorkerServiceStub,
    client: WorkerClient,
) -> None:
    archive, bhash = make_bundle("print(1)\n", files=_payload())
    data = archive.read_bytes()
    sha = hashlib.sha256(data).digest()
    damaged = bytearray(data)
    damaged[len(data) // 2] ^= 0x01  # inside the stored blob
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    with pytest.raises(grpc.RpcError) as exc:
        _send(stub, requester.key, job_id, bytes(damaged), size=len(data), sha=sha)
    assert exc.value.code() == grpc.StatusCode.DATA_LOSS
    assert not (_job_dir(worker, job_id) / "bundle").exists()
    assert not (_job_dir(worker, job_id) / "bundle.unpacking").exists()
    assert not list((worker.data_dir / "uploads").glob(f"{job_id}-*"))
    # the requester uploads the right bytes afterwards and gets its job
    status = client.upload_bundle(job_id, archive)
    assert status.complete and status.bundle_hash == bhash


def test_a_stream_that_breaks_off__keeps_only_the_partial_archive_and_resumes_to_the_same_bundle(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, stub: pb_grpc.WorkerServiceStub
) -> None:
    files = _payload()
    archive, bhash = make_bundle("print(1)\n", files=files)
    data = archive.read_bytes()
    sha = hashlib.sha256(data).digest()
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    half = len(data) // 2
    status = _send(stub, requester.key, job_id, data[:half], size=len(data), sha=sha)
    assert not status.complete and status.received_bytes == half
    assert not (_job_dir(worker, job_id) / "bundle").exists()
    assert not (_job_dir(worker, job_id) / "bundle.unpacking").exists()
    status = _send(stub, requester.key, job_id, data[half:], size=len(data), sha=sha, offset=half)
    assert status.complete and status.bundle_hash == bhash
    for name, content in files.items():
        assert (_job_dir(worker, job_id) / "bundle" / name).read_bytes() == content


def test_an_archive_that_is_not_a_bundle__is_invalid_argument_once_its_digest_checks_out(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, stub: pb_grpc.WorkerServiceStub
) -> None:
    _archive, bhash = make_bundle("print(1)\n")
    data = os.urandom(2 << 20)
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    with pytest.raises(grpc.RpcError) as exc:
        _send(stub, requester.key, job_id, data, size=len(data), sha=hashlib.sha256(data).digest())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "bundle archive" in (exc.value.details() or "")
    assert not _job_dir(worker, job_id).joinpath("bundle").exists()
    assert not list((worker.data_dir / "uploads").glob(f"{job_id}-*"))


def test_a_chunk_hash_when_sent__is_still_checked(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    archive, bhash = make_bundle("print(1)\n", files=_payload())
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    with WorkerClient(worker.target, requester_key=requester.key, domain=DOMAIN, timeout_s=20) as c:
        status = c.upload_bundle(job_id, archive, chunk_hashes=True)
    assert status.complete and status.bundle_hash == bhash


def test_the_digest_hashed_while_packing__is_what_the_client_sends_and_the_worker_checks(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, client: WorkerClient
) -> None:
    from marketplace.protocol.bundle import pack_bundle

    archive, bhash = make_bundle("print(1)\n", files=_payload())
    packed = pack_bundle(archive.with_suffix("").with_suffix(""))
    assert packed == archive.read_bytes() and packed.sha256 == hashlib.sha256(packed).digest()
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    status = client.upload_bundle(job_id, packed)
    assert status.complete and status.bundle_hash == bhash


def test_a_given_digest_that_does_not_match_the_archive__is_data_loss_when_the_lease_names_no_bundle_hash(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, client: WorkerClient
) -> None:
    from marketplace.errors import WorkerError

    archive, bhash = make_bundle("print(1)\n", files=_payload())
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, None))  # nothing to hold the bundle to
    with pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, archive, archive_sha256=hashlib.sha256(b"another archive").digest())
    assert exc.value.code == "DATA_LOSS"
    assert not (_job_dir(worker, job_id) / "bundle").exists()
    assert not (_job_dir(worker, job_id) / "bundle.unpacking").exists()
    assert not list((worker.data_dir / "uploads").glob(f"{job_id}-*"))
    with pytest.raises(ValueError, match="32 bytes"):
        client.upload_bundle(job_id, archive, archive_sha256=b"short")
    status = client.upload_bundle(job_id, archive, archive_sha256=hashlib.sha256(archive.read_bytes()).digest())
    assert status.complete and status.bundle_hash == bhash


def test_with_the_bundle_hash_in_the_lease__the_unpacked_bundle_proves_the_bytes_whatever_digest_was_given(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, client: WorkerClient
) -> None:
    """The bundle hash covers every byte kept, so the archive's sha256 is not read on success: a
    mistaken digest costs nothing when the bytes are the lease's bundle, and a damaged archive
    (other tests) is still DATA_LOSS."""
    archive, bhash = make_bundle("print(1)\n", files=_payload())
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    status = client.upload_bundle(job_id, archive, archive_sha256=hashlib.sha256(b"another archive").digest())
    assert status.complete and status.bundle_hash == bhash
    bundle = _job_dir(worker, job_id) / "bundle"
    assert (bundle / "main.py").read_text() == "print(1)\n"
    assert not list((worker.data_dir / "uploads").glob(f"{job_id}-*"))


def test_another_intact_bundle__is_refused_as_not_the_leases_not_as_damaged(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, client: WorkerClient
) -> None:
    from marketplace.errors import WorkerError

    archive, bhash = make_bundle("print(1)\n", files=_payload())
    other, _ = make_bundle("print(2)\n")
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    with pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, other)
    assert exc.value.code == "PERMISSION_DENIED" and "not the lease's" in str(exc.value)
    assert not (_job_dir(worker, job_id) / "bundle").exists()
    assert not list((worker.data_dir / "uploads").glob(f"{job_id}-*"))
    status = client.upload_bundle(job_id, archive)
    assert status.complete and status.bundle_hash == bhash
