"""The worker's own bounds: job output, hostile uploads, results it lists and hashes, idle uploads.

Each bomb runs against a worker process of its own, whose peak resident memory (``VmHWM`` in
``/proc/PID/status``) is read before and after: the figures the docs state are checked here.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from eth_account.signers.local import LocalAccount

from marketplace.errors import WorkerError
from marketplace.protocol.auth import payload_digest
from marketplace.protocol.merkle import FileEntry, ResultManifest
from marketplace.requester.client import WorkerClient
from marketplace.rpc import worker_pb2 as pb
from marketplace.rpc import worker_pb2_grpc as pb_grpc
from tests.worker.workerkit import (
    DOMAIN,
    WORKER_FLAGS,
    BundleFactory,
    WorkerProcess,
    lease_for,
    next_job_id,
    start_worker,
    submit,
)
from worker.node.service import MANIFEST_PAGE_BYTES, MAX_MESSAGE_BYTES, _manifest_messages
from worker.testing.bombs import directories_bomb, long_name_bomb, output_bomb_code, pax_bomb

MIB = 1 << 20
MEMORY_BOUND = 64 * MIB
"""How much a bomb may raise the worker's peak resident memory (docs/security.md states it)."""


def peak_rss(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture
def fresh_worker(tmp_path: Path, provider_key: Path) -> Iterator[WorkerProcess]:
    """A worker of this test alone, so its peak memory is this test's; logs capped at 16 MiB."""
    proc = start_worker(
        tmp_path / "data", provider_key, tmp_path / "leases.json", [*WORKER_FLAGS, "--max-log-mb", "16"]
    )
    yield proc
    proc.stop()


def _client(worker: WorkerProcess, requester: LocalAccount) -> WorkerClient:
    return WorkerClient(worker.target, requester_key=requester.key, domain=DOMAIN, timeout_s=60)


# -- 1. output ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.bwrap
def test_a_job_printing_300_mib_without_a_newline__keeps_the_worker_small_and_its_log_truncated(
    fresh_worker: WorkerProcess, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    archive, bhash = make_bundle(output_bomb_code(300 * MIB), timeout_s=120)
    before = peak_rss(fresh_worker.proc.pid)
    with _client(fresh_worker, requester) as client:
        job_id = submit(fresh_worker, client, requester.address, archive, bhash)
        events = list(client.watch(job_id, timeout_s=120))
        growth = peak_rss(fresh_worker.proc.pid) - before
        final = events[-1]
        assert final.WhichOneof("kind") == "finished", final  # truncated, not killed
        logs = [e.log.text for e in events if e.WhichOneof("kind") == "log"]
        assert logs and all(len(text.encode()) <= 4096 for text in logs)
        results = client.download_results(job_id, tmp_path / "r", provider=fresh_worker.provider)
    stdout = (results.directory / "logs" / "stdout.log").read_bytes()
    assert 16 * MIB <= len(stdout) < 16 * MIB + 200
    assert stdout.endswith(b"the rest was dropped\n") and b"log truncated" in stdout[-200:]
    assert growth < MEMORY_BOUND, f"the worker's peak memory grew by {growth / MIB:.0f} MiB"


# -- 2. uploads -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bomb", [long_name_bomb, pax_bomb], ids=["gnu-long-name", "pax"])
def test_an_upload_with_a_header_of_a_gib__is_invalid_argument_and_the_worker_stays_small(
    fresh_worker: WorkerProcess, requester: LocalAccount, bomb: object
) -> None:
    data = bomb(1 << 30)  # type: ignore[operator]
    assert len(data) < 2 * MIB
    job_id = next_job_id()
    fresh_worker.add_lease(lease_for(job_id, requester.address, fresh_worker.provider, b"\0" * 32))
    before = peak_rss(fresh_worker.proc.pid)
    with _client(fresh_worker, requester) as client, pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, data)
    growth = peak_rss(fresh_worker.proc.pid) - before
    assert exc.value.code == "INVALID_ARGUMENT"
    assert f"header of {1 << 30} bytes exceeds the limit" in exc.value.message
    assert growth < MEMORY_BOUND, f"the worker's peak memory grew by {growth / MIB:.0f} MiB"


def test_an_upload_of_100k_directories__is_refused_by_the_entry_limit(
    worker: WorkerProcess, requester: LocalAccount
) -> None:
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, b"\0" * 32))
    with _client(worker, requester) as client, pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, directories_bomb(100_000))
    assert exc.value.code == "INVALID_ARGUMENT" and "more than 10000 entries" in exc.value.message
    assert not (worker.data_dir / "jobs" / str(job_id)).exists()


def test_an_upload_with_a_300_character_file_name__is_invalid_argument_naming_the_limit(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    import io
    import tarfile

    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, content in (
            ("job.toml", b'[job]\nentrypoint = "main.py"\n[market]\nmax_price = "1"\n'),
            ("main.py", b"print(1)\n"),
            ("n" * 300, b"x"),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, b"\0" * 32))
    with pytest.raises(WorkerError) as exc:
        client.upload_bundle(job_id, data.getvalue())
    assert exc.value.code == "INVALID_ARGUMENT"
    assert "is 300 bytes, longer than the limit of 255" in exc.value.message


# -- 3. results -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.bwrap
def test_an_output_file_named_in_invalid_utf8__fails_the_job_clearly_and_its_run_is_billed(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    code = """
    import os, time
    out = os.environ["FLOPEX_OUTPUT_DIR"].encode()
    open(os.path.join(out, b"bad-\\xff\\xfe.txt"), "wb").write(b"x")
    open(os.path.join(out, b"good.txt"), "wb").write(b"kept")
    time.sleep(0.3)
    """
    archive, bhash = make_bundle(code)
    job_id = submit(worker, client, requester.address, archive, bhash)
    final = client.wait(job_id, timeout_s=120)
    assert final.WhichOneof("kind") == "failed"
    assert "not valid UTF-8" in final.failed.reason and "bad-\\\\xff\\\\xfe.txt" in final.failed.reason
    assert final.failed.metering.wall_millis >= 300 and final.failed.receipt.device_seconds >= 1
    status = client.get_job(job_id)
    assert status.state == pb.JOB_STATE_FAILED and status.metering.wall_millis >= 300
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
    assert (results.directory / "output" / "good.txt").read_bytes() == b"kept"
    assert [f.path for f in results.manifest.files if f.path.startswith("output/")] == ["output/good.txt"]


@pytest.mark.slow
@pytest.mark.bwrap
def test_sparse_outputs_beyond_the_disk_bound__fail_the_job_billed_and_are_never_hashed_whole(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    # 40 sparse files of 7 MiB: no disk used, 280 MiB to hash; results count their apparent size.
    code = """
    import os
    out = os.environ["FLOPEX_OUTPUT_DIR"]
    for i in range(40):
        with open(os.path.join(out, f"hole{i}"), "wb") as fh:
            fh.truncate(7 << 20)
    print("made them")
    """
    archive, bhash = make_bundle(code)
    job_id = submit(worker, client, requester.address, archive, bhash)
    final = client.wait(job_id, timeout_s=120)
    assert final.WhichOneof("kind") == "failed", final
    assert final.failed.receipt.device_seconds >= 1 and final.failed.metering.wall_millis > 0
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
    assert results.manifest.total_bytes <= (48 + 2 * 64 + 1) * MIB


@pytest.mark.slow
@pytest.mark.bwrap
def test_results_of_more_entries_than_the_bound__fail_the_job_keeping_its_logs_and_billing_it(
    tmp_path: Path, provider_key: Path, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    flags = [*WORKER_FLAGS, "--max-result-files", "50"]
    worker = start_worker(tmp_path / "data", provider_key, tmp_path / "leases.json", flags)
    code = """
    import os
    out = os.environ["FLOPEX_OUTPUT_DIR"]
    for i in range(100):
        open(os.path.join(out, f"f{i}"), "wb").close()
    print("made them")
    """
    try:
        archive, bhash = make_bundle(code)
        with _client(worker, requester) as client:
            job_id = submit(worker, client, requester.address, archive, bhash)
            final = client.wait(job_id, timeout_s=120)
            assert final.WhichOneof("kind") == "failed", final
            assert final.failed.reason == "results: more than 50 files and directories; only the logs are kept"
            assert final.failed.receipt.device_seconds >= 1 and final.failed.metering.wall_millis > 0
            results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
        assert {f.path for f in results.manifest.files} == {"logs/stdout.log", "logs/stderr.log"}
        assert b"made them" in (results.directory / "logs" / "stdout.log").read_bytes()
    finally:
        worker.stop()


@pytest.mark.slow
@pytest.mark.bwrap
def test_a_result_list_over_the_message_limit__is_served_in_pages(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, make_bundle: BundleFactory, tmp_path: Path
) -> None:
    code = """
    import os
    out = os.path.join(os.environ["FLOPEX_OUTPUT_DIR"], "d" * 100)
    os.mkdir(out)
    for i in range(40000):
        open(os.path.join(out, f"{i:06d}" + "f" * 90), "wb").close()
    """
    archive, bhash = make_bundle(code, timeout_s=300)
    job_id = submit(worker, client, requester.address, archive, bhash)
    final = client.wait(job_id, timeout_s=300)
    assert final.WhichOneof("kind") == "finished", final
    results = client.download_results(job_id, tmp_path / "r", provider=worker.provider)
    listing = pb.ResultManifest(
        files=[
            pb.ResultFile(path=f.path, size=f.size, sha256=f.sha256, chunks=f.chunks) for f in results.manifest.files
        ]
    )
    assert listing.ByteSize() > MAX_MESSAGE_BYTES  # one message could not have carried it
    assert len(results.manifest.files) == 40000 + 2
    assert results.manifest.root == final.finished.result_root
    assert sum(1 for _ in (results.directory / "output" / ("d" * 100)).iterdir()) == 40000


def test_manifest_pages__keep_every_message_small_and_a_short_list_whole() -> None:
    entry = FileEntry("output/" + "x" * 200, 1, b"\1" * 32, 1)
    many = ResultManifest(tuple(FileEntry(f"{entry.path}{i}", 1, entry.sha256, 1) for i in range(50_000)), b"\2" * 32)
    messages = list(_manifest_messages(many, pb.JOB_STATE_SUCCEEDED, None))
    assert messages[0].manifest.total_files == 50_000 and len(messages) > 5
    assert all(m.ByteSize() < 2 * MANIFEST_PAGE_BYTES for m in messages)
    files = list(messages[0].manifest.files) + [f for m in messages[1:] for f in m.files.files]
    assert [f.path for f in files] == [f.path for f in many.files]
    few = ResultManifest(many.files[:3], b"\2" * 32)
    [only] = _manifest_messages(few, pb.JOB_STATE_SUCCEEDED, None)
    assert len(only.manifest.files) == 3 and only.manifest.total_files == 3


# -- 5. idle uploads ------------------------------------------------------------------------------


@pytest.mark.slow
def test_abandoned_uploads__are_deleted_after_the_idle_time_and_at_start_up(
    tmp_path: Path, provider_key: Path, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    data_dir = tmp_path / "data"
    stale = data_dir / "uploads" / f"{next_job_id()}-{'ab' * 32}.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a previous run")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    worker = start_worker(data_dir, provider_key, tmp_path / "leases.json", [*WORKER_FLAGS, "--upload-idle-s", "1"])
    try:
        assert not stale.exists()  # removed at start-up
        archive, bhash = make_bundle("print(1)\n", files={"pad.bin": os.urandom(300_000)})
        data = archive.read_bytes()
        sha = hashlib.sha256(data).digest()
        job_id = next_job_id()
        worker.add_lease(lease_for(job_id, requester.address, worker.provider, bhash))
        with _client(worker, requester) as client, grpc.insecure_channel(worker.target) as channel:
            stub = pb_grpc.WorkerServiceStub(channel)
            head = pb.UploadHeader(
                job_id=job_id,
                archive_size=len(data),
                archive_sha256=sha,
                offset=0,
                auth=client.auth(job_id, "UploadBundle", payload_digest("UploadBundle", archive_sha256=sha)),
            )
            part = data[:100_000]
            first = [pb.UploadChunk(header=head), pb.UploadChunk(data=part, sha256=hashlib.sha256(part).digest())]
            status = stub.UploadBundle(iter(first), timeout=30)
            assert status.received_bytes == 100_000 and not status.complete
            assert client.query_upload(job_id, sha).received_bytes == 100_000
            deadline = time.monotonic() + 15
            while client.query_upload(job_id, sha).received_bytes and time.monotonic() < deadline:
                time.sleep(0.25)
            assert client.query_upload(job_id, sha).received_bytes == 0
            assert not list((data_dir / "uploads").glob("*.part"))
            # The requester starts again from 0 and finishes.
            assert client.upload_bundle(job_id, archive).complete
    finally:
        worker.stop()
