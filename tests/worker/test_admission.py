"""Nobody freezes a worker: caps on concurrent calls, upload deadlines, challenge rates, signature first.

Every test runs an in-process worker on loopback and bounded floods of raw gRPC calls.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from grpc_health.v1 import health_pb2, health_pb2_grpc

from marketplace.protocol.auth import payload_digest, sign_request
from marketplace.requester.client import WorkerClient
from marketplace.rpc import worker_pb2 as pb
from marketplace.rpc import worker_pb2_grpc as pb_grpc
from tests.worker.workerkit import DOMAIN, MARKET, BundleFactory, lease_for, next_job_id
from worker.node.admission import AdmissionLimits, TokenBucket, peer_host
from worker.node.config import WorkerConfig
from worker.node.leases import Lease, StaticLeases
from worker.node.service import WorkerServer, create_server


class CountingLeases(StaticLeases):
    """Static leases that count look-ups, standing in for the chain."""

    def __init__(self) -> None:
        super().__init__()
        self.lookups = 0

    def lease(self, job_id: int) -> Lease | None:
        """Count, then look up."""
        self.lookups += 1
        return super().lease(job_id)


@pytest.fixture
def leases() -> CountingLeases:
    return CountingLeases()


@pytest.fixture
def served(tmp_path: Path, leases: CountingLeases) -> Iterator[tuple[WorkerServer, str]]:
    config = WorkerConfig(
        data_dir=tmp_path / "data",
        leases=leases,
        market_address=MARKET,
        key_file=tmp_path / "receipt.key",
        upload_first_message_s=1.5,
        upload_silence_s=1.5,
    )
    server, port = create_server(config, "127.0.0.1:0")
    server.start()
    yield server, f"127.0.0.1:{port}"
    server.stop(grace=0)


def _auth(key: bytes, job_id: int, method: str, digest: bytes, **kw: int) -> pb.RequestAuth:
    signed = sign_request(key, DOMAIN, job_id, method, digest, **kw)
    return pb.RequestAuth(nonce=signed.nonce.to_bytes(32, "big"), expiry=signed.expiry, signature=signed.signature)


def _healthy(target: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _silent(release: threading.Event) -> Iterator[pb.UploadChunk]:
    release.wait(30)
    return
    yield  # a generator that sends nothing until released


def test_silent_uploads__are_capped_and_cancelled_while_calls_and_health_go_on(
    served: tuple[WorkerServer, str], requester: LocalAccount, make_bundle: BundleFactory, leases: CountingLeases
) -> None:
    server, target = served
    release = threading.Event()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        calls = [stub.UploadBundle.future(_silent(release), timeout=30) for _ in range(40)]  # type: ignore[attr-defined]
        try:
            time.sleep(0.5)
            refused = [c for c in calls if c.done() and c.code() == grpc.StatusCode.RESOURCE_EXHAUSTED]
            assert len(refused) == 40 - AdmissionLimits().uploads_per_peer  # the rest refused at once
            assert _healthy(target)
            archive, bhash = make_bundle("print(1)\n")
            job_id = next_job_id()
            leases.add(lease_for(job_id, requester.address, server.provider_address, bhash))
            with WorkerClient(target, requester_key=requester.key, domain=DOMAIN, timeout_s=10, retries=1) as c:
                assert c.info().provider_address == server.provider_address
                sha = hashlib.sha256(archive.read_bytes()).digest()
                assert c.query_upload(job_id, sha).received_bytes == 0
                # The admitted silent streams are cancelled after the first-message deadline.
                deadline = time.monotonic() + 10
                while not all(f.done() for f in calls) and time.monotonic() < deadline:
                    time.sleep(0.1)
                assert all(f.done() for f in calls)
                assert {f.code() for f in calls} == {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.CANCELLED}
                assert c.upload_bundle(job_id, archive).complete
        finally:
            release.set()
            for f in calls:
                f.cancel()


def test_two_hundred_watchers__excess_refused_health_answers(
    served: tuple[WorkerServer, str], requester: LocalAccount, make_bundle: BundleFactory, leases: CountingLeases
) -> None:
    server, target = served
    archive, bhash = make_bundle("print(1)\n")
    job_id = next_job_id()
    leases.add(lease_for(job_id, requester.address, server.provider_address, bhash))
    with WorkerClient(target, requester_key=requester.key, domain=DOMAIN, timeout_s=10) as c:
        c.upload_bundle(job_id, archive)  # uploaded, never started: a watch of it lasts
    digest = payload_digest("WatchJob")
    requests = [
        pb.WatchJobRequest(job_id=job_id, auth=_auth(requester.key, job_id, "WatchJob", digest)) for _ in range(200)
    ]
    # Four connections of 50 streams each (under the per-connection cap, which would queue them).
    channels = [grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(4)]
    codes: list[grpc.StatusCode] = []

    def drain(stream: Iterator[pb.JobEvent]) -> None:
        try:
            for _ in stream:
                pass
        except grpc.RpcError as exc:
            codes.append(exc.code())

    streams = [pb_grpc.WorkerServiceStub(channels[i % 4]).WatchJob(r, timeout=60) for i, r in enumerate(requests)]
    readers = [threading.Thread(target=drain, args=(s,), daemon=True) for s in streams]
    for t in readers:
        t.start()
    try:
        excess = 200 - AdmissionLimits().streams_per_peer
        deadline = time.monotonic() + 20
        while codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) < excess and time.monotonic() < deadline:
            time.sleep(0.1)
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == excess
        assert _healthy(target)
        with WorkerClient(target, timeout_s=5, retries=1) as plain:
            assert plain.info().provider_address == server.provider_address
    finally:
        for s in streams:
            s.cancel()
        for t in readers:
            t.join(5)
        for channel in channels:
            channel.close()


def test_fifty_concurrent_challenges__are_rate_limited(served: tuple[WorkerServer, str]) -> None:
    _, target = served
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        challenge: Any = stub.CapacityChallenge
        calls = [challenge.future(pb.CapacityChallengeRequest(seed=i, n=64), timeout=60) for i in range(50)]
        codes = [c.code() if c.exception() is not None else grpc.StatusCode.OK for c in calls]
        ran = codes.count(grpc.StatusCode.OK)
        assert 1 <= ran <= AdmissionLimits().challenge_burst_per_peer
        assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 50 - ran
        with pytest.raises(grpc.RpcError) as exc:
            stub.CapacityChallenge(pb.CapacityChallengeRequest(seed=1, n=64), timeout=10)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "rate limited" in (exc.value.details() or "")


def test_the_token_bucket__holds_each_peer_and_all_together() -> None:
    bucket = TokenBucket(rate=0.0, burst=2, global_rate=0.0, global_burst=3)
    assert [bucket.take("a") for _ in range(3)] == [True, True, False]
    assert bucket.take("b") and not bucket.take("c")  # the global bucket is empty
    assert peer_host("ipv4:10.0.0.2:5555") == "10.0.0.2" and peer_host("ipv6:[::1]:80") == "::1"


def test_bad_signatures__never_reach_the_lease_lookup_and_leased_jobs_look_unleased(
    served: tuple[WorkerServer, str], requester: LocalAccount, leases: CountingLeases
) -> None:
    server, target = served
    leased, unleased = next_job_id(), next_job_id()
    leases.add(lease_for(leased, requester.address, server.provider_address, b"\x00" * 32))
    digest = payload_digest("GetJob")
    now = int(time.time())

    def garbage(job_id: int) -> list[pb.RequestAuth]:
        nonce = os.urandom(32)
        return [
            pb.RequestAuth(nonce=nonce, expiry=now + 60, signature=b"\xff" * 64 + b"\x1b"),  # r, s past the order
            pb.RequestAuth(nonce=nonce, expiry=now + 60, signature=b"\x00" * 65),
            pb.RequestAuth(nonce=nonce, expiry=now + 60, signature=b"\x01" * 64 + b"\x05"),  # v out of range
            _auth(requester.key, job_id, "GetJob", digest, expiry=now - 5),
            _auth(requester.key, job_id, "GetJob", digest, expiry=now + 10 * 86400),
        ]

    def answer(stub: pb_grpc.WorkerServiceStub, job_id: int, auth: pb.RequestAuth) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as exc:
            stub.GetJob(pb.GetJobRequest(job_id=job_id, auth=auth), timeout=10)
        return exc.value.code(), (exc.value.details() or "").replace(str(job_id), "JOB")

    stranger = Account.create()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        for a, b in zip(garbage(leased), garbage(unleased), strict=True):
            first, second = answer(stub, leased, a), answer(stub, unleased, b)
            assert first[0] in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
            assert first[0] == second[0], (first, second)
            assert leases.lookups == 0, first
        assert leases.lookups == 0
        # A well-formed signature by a stranger: one look-up, and the same answer leased or not.
        s1 = answer(stub, leased, _auth(stranger.key, leased, "GetJob", digest))
        s2 = answer(stub, unleased, _auth(stranger.key, unleased, "GetJob", digest))
        assert s1 == s2 and s1[0] == grpc.StatusCode.PERMISSION_DENIED


def test_a_client_abort_inside_an_upload__is_one_log_line(
    served: tuple[WorkerServer, str],
    requester: LocalAccount,
    make_bundle: BundleFactory,
    leases: CountingLeases,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server, target = served
    archive, bhash = make_bundle("print(1)\n", files={"pad.bin": os.urandom(1 << 20)})
    data = archive.read_bytes()
    sha = hashlib.sha256(data).digest()
    job_id = next_job_id()
    leases.add(lease_for(job_id, requester.address, server.provider_address, bhash))
    release = threading.Event()

    def messages() -> Iterator[pb.UploadChunk]:
        header = pb.UploadHeader(
            job_id=job_id,
            archive_size=len(data),
            archive_sha256=sha,
            auth=_auth(requester.key, job_id, "UploadBundle", payload_digest("UploadBundle", archive_sha256=sha)),
        )
        part = data[: 1 << 16]
        yield pb.UploadChunk(header=header, data=part, sha256=hashlib.sha256(part).digest())
        release.wait(10)

    caplog.set_level(logging.INFO, logger="worker.node.service")
    with grpc.insecure_channel(target) as channel:
        call = pb_grpc.WorkerServiceStub(channel).UploadBundle.future(messages(), timeout=30)  # type: ignore[attr-defined]
        deadline = time.monotonic() + 15
        while server.manager.upload_offset(job_id, sha)[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the worker holds the first chunk: the abort is inside the upload
        call.cancel()
        release.set()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not any(
        r.message.startswith("UploadBundle") and "ended by the client" in r.message for r in caplog.records
    ):
        time.sleep(0.05)
    lines = [r for r in caplog.records if r.name == "worker.node.service"]
    assert any("UploadBundle" in r.message and "ended by the client" in r.message for r in lines), [
        (r.levelname, r.message) for r in caplog.records
    ]
    assert not any(r.exc_info or r.levelno >= logging.ERROR for r in lines)
