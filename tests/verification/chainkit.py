"""Test kit: a market on the embedded chain with in-process workers, provider daemons (honest or cheating),
verifier daemons and a requester: the verification policies end to end through the contracts."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketplace.chain.client import dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.errors import ContractRevert
from marketplace.market.pricing import strategy_from_spec
from marketplace.requester.requester import JobOptions, JobOutcome, Requester
from marketplace.types import ONE_TOKEN, DeviceKind, parse_tokens
from worker.node.chain_leases import ChainLeases
from worker.node.config import WorkerConfig
from worker.node.environments import EnvironmentSettings
from worker.node.service import WorkerServer, create_server
from worker.provider.daemon import ProviderDaemon, ProviderSettings
from worker.testing.cheats import Cheat, CheatingProvider
from worker.verifier.daemon import VerifierDaemon, VerifierSettings

ROOT = Path(__file__).resolve().parents[2]
REQUESTER = 2
PROVIDERS = (3, 4, 5)
VERIFIERS = (6, 7)


class _Requester(Requester):
    """The requester, tolerant of a provider daemon settling a slot between its read and its settle."""

    def settle(
        self, job_id: int, *, timeout_s: float = 3600.0, runs: dict[int, dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        for _attempt in range(5):
            try:
                return super().settle(job_id, timeout_s=timeout_s, runs=runs)
            except ContractRevert as exc:
                if exc.reason not in ("market: slot already settled", "market: job is not leased"):
                    raise
        return super().settle(job_id, timeout_s=timeout_s, runs=runs)


@dataclass
class Market:
    """Everything a verification test touches."""

    contracts: Contracts
    home: Path
    servers: list[WorkerServer] = field(default_factory=list)
    providers: list[ProviderDaemon] = field(default_factory=list)
    verifiers: list[VerifierDaemon] = field(default_factory=list)

    def add_provider(
        self,
        dev: int,
        cheat: Cheat | None = None,
        *,
        claimed_gflops: int = 0,
        price: str = "0.2",
        cpu_slots: int = 1,
        environments: EnvironmentSettings | None = None,
    ) -> ProviderDaemon:
        contracts = self.contracts
        data = self.home / f"provider-{dev}"
        config = WorkerConfig(
            data_dir=data,
            leases=ChainLeases(contracts),
            chain_id=contracts.chain.chain_id,
            market_address=contracts.market.address,
            cpu_slots=cpu_slots,
            environments=environments,
        )
        server, port = create_server(config, "127.0.0.1:0")
        devices = server.manager.devices
        settings = ProviderSettings(
            endpoint=f"127.0.0.1:{port}",
            price_floor=parse_tokens(price),
            strategy=strategy_from_spec("fixed"),
            stake=200 * ONE_TOKEN,
            device_model=devices[0].model[:64],
            device_kind=DeviceKind.CPU,
            gpu_count=len(devices),
            memory_mb=min(d.memory_bytes for d in devices) >> 20,
            claimed_gflops=claimed_gflops,
            poll_interval_s=0.2,
        )
        account = dev_account(dev)
        if cheat is None:
            daemon = ProviderDaemon(contracts, account, server, settings, data / "provider-state.json")
        else:
            daemon = CheatingProvider(
                contracts, account, server, settings, data / "provider-state.json", cheat=cheat, seed=dev
            )
        daemon.ensure_registered()
        server.start()
        daemon.start()
        self.servers.append(server)
        self.providers.append(daemon)
        return daemon

    def add_verifier(self, dev: int, **changes: Any) -> VerifierDaemon:
        options = {"poll_interval_s": 0.2, "replay_min_samples": 2, "capacity_n": 512, **changes}
        settings = VerifierSettings(data_dir=self.home / f"verifier-{dev}", **options)
        daemon = VerifierDaemon(self.contracts, dev_account(dev), settings)
        daemon.ensure_registered()
        daemon.start()
        self.verifiers.append(daemon)
        return daemon

    def run_job(self, bundle: Path, *, follow_timeout_s: float = 240, **options: Any) -> JobOutcome:
        requester = _Requester(self.contracts, dev_account(REQUESTER))
        opts = JobOptions(**{"bid_window_s": 30, "challenge_window_s": 600, "run_slack_s": 60, **options})
        job_id = requester.submit(bundle, opts)
        return requester.follow(job_id, self.home / f"out-{job_id}", timeout_s=follow_timeout_s)

    def stop(self) -> None:
        for daemon in [*self.verifiers, *self.providers]:
            daemon._stop.set()
        for daemon in [*self.verifiers, *self.providers]:
            daemon.stop()
        for server in self.servers:
            server.stop(0)


def bundle_copy(tmp_path: Path, name: str, replace: dict[str, str] | None = None) -> Path:
    """A copy of ``examples/<name>`` with text replaced in its job.toml."""
    target = tmp_path / f"bundle-{name}-{threading.get_ident()}"
    shutil.copytree(ROOT / "examples" / name, target)
    toml = target / "job.toml"
    text = toml.read_text()
    for old, new in (replace or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    toml.write_text(text)
    return target
