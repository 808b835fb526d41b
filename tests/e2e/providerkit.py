"""An in-process provider for end-to-end tests on the embedded chain: a worker server and its daemon."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from marketplace.chain.client import dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.market.pricing import strategy_from_spec
from marketplace.types import ONE_TOKEN, DeviceKind, parse_tokens
from worker.node.service import WorkerServer
from worker.provider.daemon import ProviderDaemon, ProviderSettings, chain_worker

PROVIDER = 4
"""The dev account the provider runs as."""
PRICE = parse_tokens("0.2")
"""Its price floor per GPU-hour."""


@dataclass
class Provider:
    """A running worker and the daemon that drives it."""

    server: WorkerServer
    daemon: ProviderDaemon

    def stop(self) -> None:
        self.daemon.stop()
        self.server.stop()


def start_provider(
    contracts: Contracts,
    data_dir: Path,
    *,
    account: int = PROVIDER,
    run: bool = True,
    strategy: str = "fixed",
    tls: bool = False,
    host: str = "127.0.0.1",
    cpu_slots: int = 1,
) -> Provider:
    """Start a CPU worker (one device, or ``cpu_slots``) on loopback and its provider daemon, staked and registered.

    With ``run=False`` the daemon's loop is not started: the test calls ``daemon.step()`` itself.
    With ``tls`` the worker serves TLS with a self-signed certificate its offer's endpoint pins.
    """
    server, endpoint = chain_worker(contracts, data_dir, lease_refresh_s=0.1, tls=tls, host=host, cpu_slots=cpu_slots)
    server.start()
    settings = ProviderSettings(
        endpoint=endpoint,
        price_floor=PRICE,
        strategy=strategy_from_spec(strategy),
        stake=200 * ONE_TOKEN,
        device_model="cpu",
        device_kind=DeviceKind.CPU,
        gpu_count=cpu_slots,
        memory_mb=4096,
        poll_interval_s=0.1,
    )
    daemon = ProviderDaemon(contracts, dev_account(account), server, settings, data_dir / "provider.json")
    daemon.ensure_registered()
    if run:
        daemon.start()
    return Provider(server, daemon)
