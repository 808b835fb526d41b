"""Leases: who may run which job, as the market decided.

The worker asks a :class:`LeaseLookup` for the lease of every job a request names, and serves
the request only when the lease exists, names this worker's provider address among its
providers, and the request is signed by the lease's requester. The chain-backed lookup lives
in ``marketplace``; :class:`StaticLeases` (in memory) and :class:`LeaseFile` (a JSON file,
re-read when it changes) serve tests and local runs.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from eth_utils.address import is_address, to_checksum_address

from marketplace.errors import ConfigError

__all__ = ["DeviceRequirements", "Lease", "LeaseFile", "LeaseLookup", "StaticLeases"]


@dataclass(frozen=True, slots=True)
class DeviceRequirements:
    """What devices a lease pays for: their kind, how many and the memory each must have."""

    kind: str = "cuda"
    count: int = 1
    min_memory_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Lease:
    """An on-chain lease of a job to one or more providers.

    ``requester`` signs the job's requests; ``providers`` are the addresses allowed to run it;
    ``bundle_hash`` is the 32-byte bundle hash the requester posted, or None when the requester
    may run any bundle it signs (a job in a reservation it holds, see
    :mod:`marketplace.contracts.reservations`); ``deadline`` is the unix time (seconds) by which results are
    due. Jobs whose leases share a ``device_group`` run on at most ``devices.count`` devices
    together (the reserved devices of one reservation); None puts a job in no group.
    """

    job_id: int
    requester: str
    providers: tuple[str, ...]
    bundle_hash: bytes | None
    deadline: int
    devices: DeviceRequirements = field(default_factory=DeviceRequirements)
    device_group: str | None = None

    def __post_init__(self) -> None:
        for address in (self.requester, *self.providers):
            if not is_address(address):
                raise ConfigError(f"lease {self.job_id}: not an address: {address!r}")
        if self.bundle_hash is not None and len(self.bundle_hash) != 32:
            raise ConfigError(f"lease {self.job_id}: the bundle hash must be 32 bytes")
        object.__setattr__(self, "requester", to_checksum_address(self.requester))
        object.__setattr__(self, "providers", tuple(to_checksum_address(p) for p in self.providers))

    def names(self, provider: str) -> bool:
        """Whether ``provider`` is one of the lease's providers."""
        return provider.lower() in (p.lower() for p in self.providers)

    def to_json(self) -> dict[str, Any]:
        """Return the lease as JSON data (the format :class:`LeaseFile` reads)."""
        return {
            "job_id": self.job_id,
            "requester": self.requester,
            "providers": list(self.providers),
            "bundle_hash": None if self.bundle_hash is None else "0x" + self.bundle_hash.hex(),
            "deadline": self.deadline,
            "devices": {
                "kind": self.devices.kind,
                "count": self.devices.count,
                "min_memory_bytes": self.devices.min_memory_bytes,
            },
            "device_group": self.device_group,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lease:
        """Build a lease from :meth:`to_json` data."""
        try:
            dev = data.get("devices", {})
            bundle_hash = data["bundle_hash"]
            group = data.get("device_group")
            return cls(
                job_id=int(data["job_id"]),
                requester=str(data["requester"]),
                providers=tuple(str(p) for p in data["providers"]),
                bundle_hash=None if bundle_hash is None else bytes.fromhex(str(bundle_hash).removeprefix("0x")),
                deadline=int(data["deadline"]),
                devices=DeviceRequirements(
                    str(dev.get("kind", "cuda")), int(dev.get("count", 1)), int(dev.get("min_memory_bytes", 0))
                ),
                device_group=None if group is None else str(group),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"lease: malformed lease data: {exc}") from None


@runtime_checkable
class LeaseLookup(Protocol):
    """Finds the lease of a job. Implementations must be safe to call from several threads."""

    def lease(self, job_id: int) -> Lease | None:
        """Return the lease of ``job_id``, or None when there is none."""
        ...


class StaticLeases:
    """Leases held in memory; add more at any time."""

    def __init__(self, leases: Iterable[Lease] = ()) -> None:
        self._lock = threading.Lock()
        self._leases = {lease.job_id: lease for lease in leases}

    def add(self, lease: Lease) -> None:
        """Add or replace a lease."""
        with self._lock:
            self._leases[lease.job_id] = lease

    def lease(self, job_id: int) -> Lease | None:
        """Return the lease of ``job_id``, or None."""
        with self._lock:
            return self._leases.get(job_id)


class LeaseFile:
    """Leases read from a JSON file (a list of :meth:`Lease.to_json` objects), re-read when it changes."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._leases: dict[int, Lease] = {}

    @staticmethod
    def write(path: str | os.PathLike[str], leases: Iterable[Lease]) -> None:
        """Write ``leases`` to ``path`` atomically."""
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_text(json.dumps([lease.to_json() for lease in leases], indent=1))
        os.replace(tmp, target)

    def lease(self, job_id: int) -> Lease | None:
        """Return the lease of ``job_id``, or None."""
        with self._lock:
            try:
                st = self._path.stat()
            except FileNotFoundError:
                return None
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                data = json.loads(self._path.read_text())
                self._leases = {lease.job_id: lease for lease in map(Lease.from_json, data)}
                self._stamp = stamp
            return self._leases.get(job_id)
