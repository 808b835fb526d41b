"""Durability across restarts, TLS, the sandbox requirement, and the generated code."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from marketplace.errors import ConfigError, WorkerError
from marketplace.requester.client import WorkerClient
from marketplace.rpc import worker_pb2 as pb
from tests.worker.workerkit import (
    DOMAIN,
    MARKET,
    REPO,
    WORKER_FLAGS,
    BundleFactory,
    lease_for,
    next_job_id,
    processes_with,
    start_worker,
    submit,
)
from worker.node.config import WorkerConfig
from worker.node.leases import StaticLeases
from worker.node.service import create_server


@pytest.mark.slow  # two worker processes, one killed mid-job
def test_a_restarted_worker__serves_old_results_and_fails_interrupted_jobs(
    tmp_path: Path, provider_key: Path, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    first = start_worker(tmp_path / "data", provider_key, tmp_path / "leases.json", WORKER_FLAGS)
    marker = f"interrupted{next_job_id()}"
    try:
        with WorkerClient(first.target, requester_key=requester.key, domain=DOMAIN) as c:
            archive, bhash = make_bundle("print('kept result')\n")
            done = submit(first, c, requester.address, archive, bhash)
            assert c.wait(done, timeout_s=60).HasField("finished")
            archive, bhash = make_bundle(
                f"import time\nprint('{marker}', flush=True)\ntime.sleep(300)\n",
                extra_toml=f'args = ["{marker}"]',
                timeout_s=600,
            )
            running = submit(first, c, requester.address, archive, bhash)
            for event in c.watch(running, timeout_s=60):
                if event.HasField("log"):
                    break
    finally:
        first.stop(signal.SIGKILL)  # no chance to clean up: the job must die with it anyway
    deadline = time.monotonic() + 10
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_with(marker) == [], "a job must not outlive its worker"

    second = start_worker(tmp_path / "data", provider_key, tmp_path / "leases.json", WORKER_FLAGS)
    try:
        with WorkerClient(second.target, requester_key=requester.key, domain=DOMAIN) as c:
            results = c.download_results(done, tmp_path / "kept", provider=second.provider)
            assert (results.directory / "logs" / "stdout.log").read_text() == "kept result\n"
            status = c.get_job(running)
            assert status.state == pb.JOB_STATE_FAILED
            assert status.reason == "worker restarted while the job was running"
            assert c.wait(running).failed.reason == status.reason
    finally:
        second.stop()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "1",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            capture_output=True,
            check=False,
        )
        if openssl.returncode != 0:
            pytest.skip("neither the cryptography package nor openssl can make a test certificate here")
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


@pytest.fixture
def in_process_config(tmp_path: Path) -> WorkerConfig:
    return WorkerConfig(
        data_dir=tmp_path / "data", leases=StaticLeases(), market_address=MARKET, key_file=tmp_path / "receipt.key"
    )


def test_tls__serves_a_client_that_trusts_the_certificate(tmp_path: Path, in_process_config: WorkerConfig) -> None:
    import dataclasses

    cert, key = _self_signed(tmp_path)
    config = dataclasses.replace(in_process_config, tls_cert=cert, tls_key=key)
    server, port = create_server(config, "127.0.0.1:0")
    server.start()
    try:
        with WorkerClient(f"localhost:{port}", root_certificates=cert.read_bytes(), timeout_s=10) as secure:
            assert secure.info().provider_address == server.provider_address
        with WorkerClient(f"localhost:{port}", timeout_s=2, retries=1) as plain:
            with pytest.raises(WorkerError) as exc:
                plain.info()
            assert exc.value.code == "UNAVAILABLE"
    finally:
        server.stop()


def test_a_public_address_without_tls__is_refused(in_process_config: WorkerConfig) -> None:
    with pytest.raises(ConfigError, match="without TLS"):
        create_server(in_process_config, "0.0.0.0:0")


def test_without_bubblewrap__untrusted_jobs_are_refused_as_failed_precondition(
    tmp_path: Path, in_process_config: WorkerConfig, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    import dataclasses

    leases = StaticLeases()
    config = dataclasses.replace(in_process_config, leases=leases, bwrap=str(tmp_path / "no-bwrap-here"))
    server, port = create_server(config)
    server.start()
    try:
        archive, bhash = make_bundle("print(1)\n")
        job_id = next_job_id()
        leases.add(lease_for(job_id, requester.address, server.provider_address, bhash))
        with WorkerClient(f"127.0.0.1:{port}", requester_key=requester.key, domain=DOMAIN) as c:
            assert not c.info().sandboxed
            c.upload_bundle(job_id, archive)
            with pytest.raises(WorkerError) as exc:
                c.start_job(job_id)
            assert exc.value.code == "FAILED_PRECONDITION" and "--unsafe-no-sandbox" in exc.value.message
    finally:
        server.stop()


def test_with_the_unsafe_flag__jobs_run_without_bubblewrap(
    tmp_path: Path, in_process_config: WorkerConfig, requester: LocalAccount, make_bundle: BundleFactory
) -> None:
    import dataclasses

    leases = StaticLeases()
    config = dataclasses.replace(
        in_process_config, leases=leases, bwrap=str(tmp_path / "no-bwrap-here"), allow_unsandboxed=True
    )
    server, port = create_server(config)
    server.start()
    try:
        archive, bhash = make_bundle("import os\nprint(os.environ['FLOPEX_SEED'])\n")
        job_id = next_job_id()
        leases.add(lease_for(job_id, requester.address, server.provider_address, bhash))
        with WorkerClient(f"127.0.0.1:{port}", requester_key=requester.key, domain=DOMAIN) as c:
            c.upload_bundle(job_id, archive)
            c.start_job(job_id, seed=99)
            final = c.wait(job_id, timeout_s=60)
            assert final.HasField("finished")
            results = c.download_results(job_id, tmp_path / "r", provider=server.provider_address)
            assert (results.directory / "logs" / "stdout.log").read_text() == "99\n"
    finally:
        server.stop()


def test_a_data_dir_inside_the_python_installation__is_refused(in_process_config: WorkerConfig) -> None:
    import dataclasses

    from marketplace.errors import SandboxError

    config = dataclasses.replace(in_process_config, data_dir=Path(sys.prefix) / "flopex-data-test")
    try:
        with pytest.raises(SandboxError, match="visible to jobs"):
            create_server(config)
    finally:
        import shutil

        shutil.rmtree(config.data_dir, ignore_errors=True)


def test_regenerating_the_grpc_code__yields_the_committed_files(tmp_path: Path) -> None:
    from marketplace.rpc.generate import GENERATED, GRPC_STUB, generate

    fresh = {p.name: p.read_bytes() for p in generate(tmp_path)}
    assert set(fresh) == {*GENERATED, GRPC_STUB}
    for name, data in fresh.items():
        assert data == (REPO / "marketplace" / "rpc" / name).read_bytes(), f"{name} is stale"
    header = fresh["worker_pb2.py"].decode().splitlines()[0]
    assert "grpcio-tools" in header and "proto/flopex/v1/worker.proto" in header


def test_receipt_keys__are_created_private_when_missing(tmp_path: Path) -> None:
    from worker.node.config import load_or_create_key

    path = tmp_path / "sub" / "receipt.key"
    account = load_or_create_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_key(path).address == account.address
    assert Account.from_key(path.read_text().strip()).address == account.address
