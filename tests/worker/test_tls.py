"""TLS pinned without a certificate authority: the endpoint names the key, clients connect to it only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from marketplace.errors import ConfigError, WorkerError
from marketplace.protocol.tls import Endpoint, ensure_certificate, parse_endpoint, spki_sha256, worker_channel
from marketplace.requester.client import WorkerClient
from tests.worker.workerkit import MARKET
from worker.node.config import WorkerConfig
from worker.node.leases import StaticLeases
from worker.node.service import WorkerServer, create_server


@pytest.fixture
def tls_worker(tmp_path: Path) -> Iterator[WorkerServer]:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    ensure_certificate(cert, key)
    config = WorkerConfig(
        data_dir=tmp_path / "data",
        leases=StaticLeases(),
        market_address=MARKET,
        key_file=tmp_path / "receipt.key",
        tls_cert=cert,
        tls_key=key,
    )
    server, _ = create_server(config, "127.0.0.1:0")
    server.start()
    yield server
    server.stop(grace=0)


def test_endpoints__parse_and_print_their_pin() -> None:
    pin = bytes(range(32))
    text = f"10.0.0.2:7000#tls-spki={pin.hex()}"
    assert parse_endpoint(text) == Endpoint("10.0.0.2", 7000, pin) and str(parse_endpoint(text)) == text
    assert parse_endpoint("[::1]:5").target == "[::1]:5" and parse_endpoint("h:1").spki_sha256 is None
    for bad in ("h", "h:0", "h:1#tls-spki=abcd", "h:1#sha=00", f"h:x#tls-spki={pin.hex()}"):
        with pytest.raises(ConfigError):
            parse_endpoint(bad)


def test_a_certificate__is_made_once_with_a_private_key(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    pin = ensure_certificate(cert, key)
    assert key.stat().st_mode & 0o777 == 0o600
    assert ensure_certificate(cert, key) == pin == spki_sha256(cert.read_bytes())


def test_a_client__connects_to_the_pinned_key_only(tls_worker: WorkerServer) -> None:
    assert tls_worker.tls_pin is not None
    endpoint = tls_worker.endpoint("127.0.0.1")
    assert "#tls-spki=" in endpoint
    with WorkerClient(endpoint, timeout_s=10) as client:
        assert client.info().provider_address == tls_worker.provider_address
    wrong = str(Endpoint("127.0.0.1", tls_worker.port, bytes(32)))
    with WorkerClient(wrong, timeout_s=10, retries=1) as client:
        with pytest.raises(WorkerError) as exc:
            client.info()
    assert exc.value.code == "PERMISSION_DENIED" and "not the pinned" in exc.value.message
    plain = f"127.0.0.1:{tls_worker.port}"  # plaintext to a TLS worker gets nowhere
    with WorkerClient(plain, timeout_s=3, retries=1) as client:
        with pytest.raises(WorkerError) as exc:
            client.info()
    assert exc.value.code == "UNAVAILABLE"


def test_plaintext_off_loopback__is_refused_unless_asked() -> None:
    with pytest.raises(WorkerError, match="no TLS pin"):
        worker_channel("10.1.2.3:5000")
    worker_channel("10.1.2.3:5000", allow_plaintext=True).close()


def test_the_provider__serves_tls_off_loopback_and_plaintext_only_on_it(tmp_path: Path) -> None:
    from worker.provider.daemon import chain_worker

    with pytest.raises(ConfigError, match="loopback only"):
        chain_worker(None, tmp_path, host="0.0.0.0", tls=False)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--advertise"):
        chain_worker(None, tmp_path, host="0.0.0.0")  # type: ignore[arg-type]


def test_an_unregistered_worker__advertises_prices_of_the_kinds_it_has_only(tls_worker: WorkerServer) -> None:
    with WorkerClient(tls_worker.endpoint("127.0.0.1"), timeout_s=10) as client:
        info = client.info()
        assert {p.device_kind for p in info.prices} <= {d.kind for d in info.devices}
        assert info.provider_address == info.receipt_signer == tls_worker.provider_address
        tls_worker.advertise("0x" + "ab" * 20, {"cpu": 7})
        info = client.info()
    assert info.provider_address == "0x" + "ab" * 20 and [(p.device_kind, p.price_per_hour) for p in info.prices] == [
        ("cpu", "7")
    ]
