"""Whether providers' workers answer: one ``GetInfo`` per endpoint, all at once, each with a short deadline.

:func:`probe_endpoints` asks every endpoint concurrently over the channel its offer names (TLS
pinned to the key in ``#tls-spki=…``, or plaintext on loopback; :mod:`marketplace.protocol.tls`)
and gives a :class:`Probe` per endpoint: reachable or not, why not, how long the answer took.
:class:`AnswerBook` remembers, in a small JSON file, when each endpoint last answered, so a view
can say "last answered 2 h ago" for a worker that is down now.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from marketplace.errors import FlopexError, WorkerError

__all__ = ["DEFAULT_TIMEOUT_S", "AnswerBook", "Probe", "probe_endpoint", "probe_endpoints"]

DEFAULT_TIMEOUT_S = 2.0
"""How long one endpoint gets to answer ``GetInfo``, TLS handshake included."""
_MAX_THREADS = 32


@dataclass(frozen=True, slots=True)
class Probe:
    """One endpoint's answer: reachable or not, a one-line detail, when it was asked (Unix time), how long it took."""

    endpoint: str
    reachable: bool
    detail: str
    checked_at: float
    latency_ms: int | None = None


def probe_endpoint(endpoint: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Probe:
    """Ask the worker at ``endpoint`` for its ``GetInfo``, once, within ``timeout_s``."""
    from marketplace.requester.client import WorkerClient

    asked = time.time()
    began = time.monotonic()
    try:
        with WorkerClient(endpoint, timeout_s=timeout_s, retries=1) as client:
            info = client.info()
    except WorkerError as exc:
        return Probe(endpoint, False, f"no answer to GetInfo: {exc}", asked)
    except FlopexError as exc:  # a malformed endpoint, a plaintext one off loopback
        return Probe(endpoint, False, str(exc), asked)
    except Exception as exc:  # whatever a broken peer makes grpc or ssl raise
        return Probe(endpoint, False, f"{type(exc).__name__}: {exc}", asked)
    took = int((time.monotonic() - began) * 1000)
    return Probe(endpoint, True, f"worker {info.worker_version}, {len(info.devices)} device(s)", asked, took)


def probe_endpoints(endpoints: Iterable[str], timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Probe]:
    """Probe every distinct endpoint concurrently; the whole call takes about one ``timeout_s``."""
    unique = list(dict.fromkeys(e for e in endpoints if e))
    if not unique:
        return {}
    with ThreadPoolExecutor(max_workers=min(_MAX_THREADS, len(unique)), thread_name_prefix="probe") as pool:
        probes = list(pool.map(lambda e: probe_endpoint(e, timeout_s), unique))
    return {p.endpoint: p for p in probes}


class AnswerBook:
    """When each endpoint last answered a probe, kept in a JSON file (``{endpoint: unix_time}``).

    Reading a missing or damaged file gives an empty book; a file that cannot be written is left as
    it was (the book is a convenience, never a reason for a command to fail).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: dict[str, float] = {}
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                self._seen = {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}

    def last_answered(self, endpoint: str) -> float | None:
        """When ``endpoint`` last answered (Unix time), or None when never in this book."""
        return self._seen.get(endpoint)

    def record(self, probes: Iterable[Probe]) -> None:
        """Note the answers among ``probes`` and save the book."""
        changed = False
        for probe in probes:
            if probe.reachable:
                self._seen[probe.endpoint] = probe.checked_at
                changed = True
        if not changed:
            return
        with contextlib.suppress(OSError):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self._seen, sort_keys=True))
            os.replace(tmp, self.path)
