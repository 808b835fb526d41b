"""The worker's settings and its receipt-signing key."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from marketplace.errors import ConfigError
from worker.node.admission import AdmissionLimits
from worker.node.datasets import DatasetLimits
from worker.node.environments import EnvironmentSettings
from worker.node.leases import LeaseLookup
from worker.sandbox.runner import Limits

__all__ = ["WorkerConfig", "load_or_create_key"]


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything a worker needs to serve; tests build one directly, ``python -m worker.serve`` from flags.

    ``data_dir`` holds the SQLite state, uploads, job directories and (by default) the receipt key;
    none of it is visible to jobs. ``leases`` decides who may run what. ``chain_id`` and
    ``market_address`` form the EIP-712 domain of request signatures and receipts.
    """

    data_dir: Path
    leases: LeaseLookup
    chain_id: int = 31337
    market_address: str = "0x" + "00" * 20
    key_file: Path | None = None
    allow_unsandboxed: bool = False
    bwrap: str | None = None
    use_cgroups: bool = True
    cpu_slots: int = 1
    use_gpus: bool = True
    max_bundle_bytes: int = 1 << 30
    max_unpacked_bytes: int = 4 << 30
    max_queued: int = 64
    max_timeout_s: float = 24 * 3600.0
    limits: Limits = field(default_factory=Limits)
    prices: dict[str, int] = field(default_factory=lambda: {"cuda": 2 * 10**18, "cpu": 10**17})
    tls_cert: Path | None = None
    tls_key: Path | None = None
    allow_insecure_public: bool = False
    max_challenge_n: int = 4096
    max_request_ttl_s: int = 3600
    max_log_bytes: int = 64 << 20
    """Bytes of each of a job's stdout and stderr kept in its log file; beyond, a truncation line."""
    max_result_entries: int = 100_000
    """Files and directories a job's results may hold; beyond, only its logs are kept and it fails."""
    max_result_bytes: int | None = None
    """Apparent bytes of a job's results (sparse files count whole); None: the disk limit plus the logs."""
    min_collect_s: float = 60.0
    """Time listing and hashing a job's results always get, even past its timeout (billed as run time)."""
    upload_idle_s: float = 3600.0
    """An unfinished upload untouched this long is deleted (and at start-up)."""
    admission: AdmissionLimits = field(default_factory=AdmissionLimits)
    """Caps on concurrent calls (globally and per peer) and the capacity-challenge rate."""
    upload_first_message_s: float = 10.0
    """An upload stream whose header does not arrive this soon is cancelled."""
    upload_silence_s: float = 60.0
    """An upload stream silent this long between two chunks is cancelled."""
    keepalive_s: float = 60.0
    """The worker pings an idle connection this often and drops it when no answer comes in 20 s."""
    min_client_ping_s: float = 10.0
    """Clients pinging more often than this (twice) are disconnected."""
    max_connection_idle_s: float = 900.0
    """A connection with no call for this long is closed."""
    max_streams_per_connection: int = 64
    """HTTP/2 streams one connection may have open at once."""
    datasets: DatasetLimits = field(default_factory=DatasetLimits)
    """What datasets put on this worker may take: per dataset, per account, in all (see docs/datasets.md)."""
    environments: EnvironmentSettings | None = None
    """Where declared environments are built and cached, and where their packages come from;
    None: ``data_dir/environments`` with PyPI as the package index and the default limits."""

    def key_path(self) -> Path:
        """Where the receipt key lives."""
        return self.key_file if self.key_file is not None else self.data_dir / "receipt.key"


def load_or_create_key(path: Path) -> LocalAccount:
    """Load the hex private key at ``path``, creating one (mode 0600) when the file does not exist."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("0x" + secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    try:
        account: LocalAccount = Account.from_key(text)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"worker: {path} does not hold a hex private key: {exc}") from None
    return account
