"""A worker process on loopback runs real PyTorch jobs end to end."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from eth_account.signers.local import LocalAccount
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from safetensors.torch import load_file

from marketplace.protocol.bundle import load_bundle, pack_bundle
from marketplace.protocol.merkle import manifest_of
from marketplace.protocol.receipts import verify_receipt
from marketplace.requester.client import WorkerClient
from marketplace.rpc import SERVICE_NAME
from marketplace.rpc import worker_pb2 as pb
from tests.worker.workerkit import (
    DOMAIN,
    REPO,
    BundleFactory,
    WorkerProcess,
    lease_for,
    next_job_id,
    processes_with,
    submit,
)
from worker.node.leases import DeviceRequirements, Lease


def _kinds(events: list[pb.JobEvent]) -> list[str]:
    return [str(e.WhichOneof("kind")) for e in events]


def test_get_info__describes_devices_prices_and_the_receipt_key(client: WorkerClient, worker: WorkerProcess) -> None:
    info = client.info()
    assert info.provider_address == worker.provider
    assert [d.kind for d in info.devices] == ["cpu", "cpu"]
    assert all(d.memory_bytes > 0 and d.model for d in info.devices)
    assert {p.device_kind for p in info.prices} >= {"cpu"}
    assert info.protocol_version == "flopex.v1"
    assert info.chain_id == 31337
    assert info.max_bundle_bytes == 4 << 20


def test_health_and_reflection__are_served(worker: WorkerProcess) -> None:
    with grpc.insecure_channel(worker.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
        names = {s.name for a in answers for s in a.list_services_response.service}
        assert SERVICE_NAME in names and "grpc.health.v1.Health" in names


@pytest.mark.slow  # a real training run
def test_a_training_job__streams_its_events_and_returns_verified_results(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    archive = tmp_path / "train_mlp.tar.gz"
    pack_bundle(REPO / "examples" / "train_mlp", archive)
    job_id = submit(worker, client, requester.address, archive, load_bundle(REPO / "examples" / "train_mlp").hash)

    events = list(client.watch(job_id, timeout_s=120))
    kinds = _kinds(events)
    assert kinds[0] == "queued" and kinds[1] == "started" and kinds[-1] == "finished", kinds
    assert [e.seq for e in events] == list(range(len(events)))
    assert "progress" in kinds and "log" in kinds
    logs = [e.log.text for e in events if e.HasField("log")]
    assert any(line.startswith("epoch 3 loss") for line in logs)
    fractions = [e.progress.fraction for e in events if e.HasField("progress") and e.progress.HasField("fraction")]
    assert fractions[-1] == 1.0
    finished = events[-1].finished
    assert finished.metering.cpu_millis > 0 and finished.metering.peak_memory_bytes > 0
    assert finished.metering.device_millis == finished.metering.wall_millis * finished.metering.device_count

    results = client.download_results(job_id, tmp_path / "results", provider=worker.provider)
    names = {f.path for f in results.manifest.files}
    assert {
        "output/model.safetensors",
        "output/metrics.json",
        "checkpoints/checkpoints.jsonl",
        "logs/stdout.log",
        "logs/stderr.log",
    } <= names
    assert sum(n.startswith("checkpoints/ckpt-") for n in names) == 4
    assert results.manifest.root == finished.result_root == manifest_of(tmp_path / "results")[0].root
    receipt = verify_receipt(DOMAIN, results.receipt, worker.provider) if results.receipt else None
    assert receipt is not None and receipt.exit_code == 0 and receipt.result_root == results.manifest.root
    assert receipt.device_seconds * 1000 >= finished.metering.device_millis
    metrics = json.loads((tmp_path / "results" / "output" / "metrics.json").read_text())
    assert metrics["losses"][-1] < metrics["losses"][0]
    assert set(load_file(str(tmp_path / "results" / "output" / "model.safetensors"))) == {
        "0.weight",
        "0.bias",
        "2.weight",
        "2.bias",
    }
    log_lines = [json.loads(x) for x in (tmp_path / "results/checkpoints/checkpoints.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log_lines] == [0, 1, 2, 3]


@pytest.mark.slow
def test_a_plain_torch_script__runs_unchanged(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    folder = REPO / "examples" / "plain_torch"
    archive = tmp_path / "plain.tar.gz"
    pack_bundle(folder, archive)
    job_id = submit(worker, client, requester.address, archive, load_bundle(folder).hash)
    final = client.wait(job_id, timeout_s=120)
    assert final.HasField("finished")
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
    assert "weight 3.0" in (results.directory / "logs" / "stdout.log").read_text()


def test_a_failing_job__ends_failed_with_its_exit_code_and_a_receipt(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    archive, bhash = make_bundle("import sys\nprint('bad input', file=sys.stderr)\nsys.exit(3)\n")
    job_id = submit(worker, client, requester.address, archive, bhash)
    final = client.wait(job_id, timeout_s=60)
    assert final.HasField("failed")
    assert final.failed.exit_code == 3 and "status 3" in final.failed.reason
    assert final.failed.receipt.exit_code == 3
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
    assert (results.directory / "logs" / "stderr.log").read_text() == "bad input\n"
    assert client.get_job(job_id).state == pb.JOB_STATE_FAILED


@pytest.mark.slow
def test_jobs__run_at_once_on_distinct_devices_and_extra_ones_queue(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    code = "import os, time\nprint(os.environ['FLOPEX_DEVICE'])\ntime.sleep(3)\n"
    jobs = []
    for _ in range(3):
        archive, bhash = make_bundle(code)
        job_id = next_job_id()
        worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
        client.upload_bundle(job_id, archive)
        jobs.append(job_id)
    for job_id in jobs:  # started back to back, once all are uploaded
        client.start_job(job_id)
    finals = {j: list(client.watch(j, timeout_s=60)) for j in jobs}
    spans = []
    for j in jobs:
        events = finals[j]
        assert events[-1].HasField("finished")
        start = next(e for e in events if e.HasField("started"))
        spans.append((start.time_unix_ms, events[-1].time_unix_ms, start.started.devices[0].index))
    first, second, third = spans
    assert first[2] != second[2], "two jobs at once must hold distinct devices"
    assert first[0] < second[1] and second[0] < first[1], "the first two jobs overlap"
    assert third[0] >= min(first[1], second[1]) - 50, "the third job waited for a free device"


@pytest.mark.slow
def test_jobs_of_one_device_group__share_its_devices_while_others_run_beside_them(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    # Two jobs of a one-device reservation (any bundle its holder signs: no bundle hash in the lease)
    # and one market job, on a worker with two devices: the reservation's jobs take turns.
    code = "import time\ntime.sleep(2)\n"
    grouped, jobs = [], []
    for group in ("reservation:9", "reservation:9", None):
        archive, bhash = make_bundle(code)
        job_id = next_job_id()
        lease = lease_for(job_id, requester.address, worker.provider, bhash)
        if group is not None:
            lease = Lease(
                job_id,
                requester.address,
                (worker.provider,),
                None,
                lease.deadline,
                DeviceRequirements("cpu", 1),
                device_group=group,
            )
            grouped.append(job_id)
        worker.add_lease(lease)
        client.upload_bundle(job_id, archive)
        jobs.append(job_id)
    for job_id in jobs:
        client.start_job(job_id)
    spans = {}
    for job_id in jobs:
        events = list(client.watch(job_id, timeout_s=60))
        assert events[-1].HasField("finished"), events[-1]
        started = next(e for e in events if e.HasField("started"))
        spans[job_id] = (started.time_unix_ms, events[-1].time_unix_ms)
    (a_start, a_end), (b_start, _b_end) = sorted(spans[j] for j in grouped)
    assert b_start >= a_end - 50, "the second job of the group waited for the group's one device"
    market_start, market_end = spans[jobs[2]]
    assert market_start < a_end and a_start < market_end, "a job outside the group ran beside it"


def test_cancel_mid_run__kills_the_whole_process_tree(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    marker = f"flopexmarker{next_job_id()}"
    code = f"""
        import subprocess, sys, time
        children = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "{marker}"])
                    for _ in range(3)]
        print("children started", flush=True)
        time.sleep(600)
    """
    archive, bhash = make_bundle(code, extra_toml=f'args = ["{marker}"]', timeout_s=600)
    job_id = submit(worker, client, requester.address, archive, bhash)
    for event in client.watch(job_id, timeout_s=60):
        if event.HasField("log") and "children started" in event.log.text:
            break
    assert len(processes_with(marker)) >= 4
    status = client.cancel(job_id)
    assert status.state == pb.JOB_STATE_CANCELLED
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == []
    assert client.wait(job_id).failed.reason == "cancelled by the requester"


def test_a_queued_job__can_be_cancelled_before_it_runs(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    archive, bhash = make_bundle("print('never')\n")
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    client.upload_bundle(job_id, archive)
    status = client.cancel(job_id)
    assert status.state == pb.JOB_STATE_CANCELLED
    assert client.wait(job_id).failed.reason.startswith("cancelled by the requester")


class _BreakingProxy:
    """A TCP proxy to the worker that cuts the first connection after ``cut_after`` upstream bytes."""

    def __init__(self, target_port: int, cut_after: int) -> None:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen()
        self.port = self.server.getsockname()[1]
        self.target_port = target_port
        self.cut_after = cut_after
        self.connections = 0
        self.cuts = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            limit = self.cut_after if self.connections == 1 else None
            threading.Thread(target=self._pipe, args=(conn, upstream, limit), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, conn, None), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    self.cuts += 1
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.server.close()


def test_an_upload_broken_midway__resumes_from_the_offset_the_worker_kept(
    worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    payload = os.urandom(3 << 20)
    archive, bhash = make_bundle("import os\nprint(os.path.getsize('blob.bin'))\n", files={"blob.bin": payload})
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
    proxy = _BreakingProxy(worker.port, cut_after=1_600_000)
    try:
        with WorkerClient(
            f"127.0.0.1:{proxy.port}", requester_key=requester.key, domain=DOMAIN, timeout_s=20, backoff_s=0.05
        ) as via_proxy:
            status = via_proxy.upload_bundle(job_id, archive, chunk_size=256 << 10)
            assert status.complete and status.bundle_hash == bhash
            assert proxy.cuts >= 1 and proxy.connections >= 2
            via_proxy.start_job(job_id, 1)
            final = via_proxy.wait(job_id, timeout_s=60)
        assert final.HasField("finished")
    finally:
        proxy.close()
    with WorkerClient(worker.target, requester_key=requester.key, domain=DOMAIN) as direct:
        results = direct.download_results(job_id, tmp_path / "r", provider=worker.provider)
    assert (results.directory / "logs" / "stdout.log").read_text().strip() == str(len(payload))


def test_a_capacity_challenge__commits_rows_that_pass_freivalds(client: WorkerClient) -> None:
    from marketplace.errors import VerificationError
    from marketplace.protocol.capacity import verify_rows

    result = client.verify_capacity(seed=42, n=256, samples=6)
    assert result.flops == 2 * 256**3 and result.elapsed_seconds > 0
    reply = client.challenge_rows(result.challenge_id, [5])
    row = reply.rows[0]
    forged = bytearray(row.data)
    forged[0] ^= 0x40
    with pytest.raises(VerificationError):
        verify_rows(42, 256, result.rows_root, {5: (bytes(forged), list(row.proof))})
