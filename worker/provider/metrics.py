"""Prometheus metrics of a provider daemon and its worker, served over HTTP on loopback.

``flopex provider start --metrics-port N`` serves ``GET /metrics`` on ``127.0.0.1:N`` (0: any
free port) in the Prometheus text exposition format (version 0.0.4), written here without a client
library. What it exposes (money in token units, 10⁻¹⁸ token, as exact integers):

==========================================  =======  =================================================
metric                                      type     what
==========================================  =======  =================================================
``flopex_provider_devices``                 gauge    devices the worker offers
``flopex_provider_devices_busy``            gauge    devices held by running jobs
``flopex_provider_utilization``             gauge    busy / total, in [0, 1]
``flopex_provider_device_busy_seconds_total``  counter  device-seconds spent running jobs (sampled)
``flopex_provider_device_idle_seconds_total``  counter  device-seconds idle (sampled)
``flopex_provider_idle_seconds``            gauge    seconds since a device was last busy (what
                                                     the pricing strategy sees)
``flopex_worker_jobs{state}``               gauge    the worker's jobs by state (its SQLite store)
``flopex_provider_bids_total{auction,outcome}``  counter  bids since start: committed, won, lost
``flopex_provider_price_floor_units``       gauge    the registered price floor per GPU-hour
``flopex_provider_ask_units``               gauge    what the strategy asks now for a 1-GPU job with
                                                     no price cap
``flopex_provider_last_bid_units``          gauge    the last price bid or taken at
``flopex_provider_settled_slots_total{status}``  counter  the provider's slots settled on chain
``flopex_provider_earned_units_total``      counter  credited by settled slots (pay less the fee),
                                                     from ``SlotSettled`` events
``flopex_provider_settled_gpu_seconds_total``  counter  GPU-seconds paid for
``flopex_provider_withdrawn_units_total``   counter  withdrawn, from ``Withdrawn`` events
``flopex_provider_credit_units``            gauge    credit waiting at the market
``flopex_provider_reserved_devices``        gauge    devices held now by bought reservations whose
                                                     window is open
``flopex_provider_reservations{status}``    gauge    the provider's unsettled reservations by status
``flopex_provider_reservations_settled_total{status}``  counter  its reservations settled on chain
``flopex_provider_reservation_earned_units_total``  counter  credited by settled reservations (price
                                                     less the fee), from ``ReservationSettled``
``flopex_provider_reserved_gpu_seconds_total``  counter  GPU-seconds its settled reservations'
                                                     holders used (the rest of the window was idle)
``flopex_metrics_chain_errors_total``       counter  scrapes whose chain reads failed (the last
                                                     chain figures are kept)
==========================================  =======  =================================================

Earnings and withdrawals count from the market's deployment block, so they are the same after a
restart; bid counters and device-seconds count from the daemon's start.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from marketplace.errors import FlopexError
from marketplace.types import Auction, JobSpec, Policy

if TYPE_CHECKING:
    from worker.provider.daemon import ProviderDaemon

__all__ = ["CONTENT_TYPE", "MetricsServer", "ProviderMetrics", "parse_metrics", "serve_metrics"]

log = logging.getLogger("flopex.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_STATES = ("uploading", "ready", "queued", "running", "succeeded", "failed", "cancelled")
_NO_CAP = 2**200  # a reference job's max price: high enough that no strategy is capped by it


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: int | float) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


@dataclass
class _Family:
    name: str
    kind: str
    help: str
    samples: list[tuple[dict[str, str], int | float]]

    def lines(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in self.samples:
            text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            yield f"{self.name}{{{text}}} {_number(value)}" if text else f"{self.name} {_number(value)}"


class ProviderMetrics:
    """Collects a :class:`~worker.provider.daemon.ProviderDaemon`'s figures and renders them as text.

    Device-seconds are integrated by :meth:`sample` (busy devices × time since the last sample),
    which a background thread calls every ``sample_interval_s`` and every scrape calls too.
    """

    def __init__(
        self, daemon: ProviderDaemon, *, clock: Callable[[], float] = time.monotonic, sample_interval_s: float = 0.25
    ) -> None:
        self.daemon = daemon
        self.clock = clock
        self.sample_interval_s = sample_interval_s
        self.busy_seconds = 0.0
        self.idle_seconds = 0.0
        self._last_sample = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # chain figures, read incrementally
        self._next_block = daemon.contracts.market.start_block
        self.earned = 0
        self.withdrawn = 0
        self.settled_gpu_seconds = 0
        self.settled_slots: dict[str, int] = {}
        self.credit = 0
        self.chain_errors = 0
        self.reservations_settled: dict[str, int] = {}
        self.reservation_earned = 0
        self.reserved_gpu_seconds = 0

    # ------------------------------------------------------------------ devices

    def _devices(self) -> tuple[int, int]:
        worker = self.daemon.worker
        return len(worker.manager.devices), len(worker.manager.busy_devices())

    def sample(self) -> None:
        """Add the device-seconds since the last sample to the busy and idle counters."""
        total, busy = self._devices()
        with self._lock:
            now = self.clock()
            elapsed = max(0.0, now - self._last_sample)
            self._last_sample = now
            self.busy_seconds += busy * elapsed
            self.idle_seconds += (total - busy) * elapsed

    def start(self) -> None:
        """Sample in a background thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="metrics-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.sample_interval_s):
            try:
                self.sample()
            except Exception as exc:  # a closed store at shutdown: keep the last figures
                log.debug("metrics sample failed: %s", exc)

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ------------------------------------------------------------------ chain

    def refresh_chain(self) -> None:
        """Read settlements and withdrawals since the last read, and the current credit."""
        contracts = self.daemon.contracts
        market = contracts.market
        latest = contracts.chain.block_number()
        start = self._next_block
        if start <= latest:
            settled = [
                e
                for e in market.get_events("SlotSettled", start, provider=self.daemon.holder)
                if e.block_number <= latest
            ]
            withdrawn = [
                e
                for e in market.get_events("Withdrawn", start, account=self.daemon.address)
                if e.block_number <= latest
            ]
            for e in settled:
                status = e.status.name.lower()
                self.settled_slots[status] = self.settled_slots.get(status, 0) + 1
                self.earned += e.paid - e.fee
                self.settled_gpu_seconds += e.gpu_seconds
            self.withdrawn += sum(e.amount for e in withdrawn)
            if self.daemon.reserved is not None:
                self._read_reservations(start, latest)
            self._next_block = latest + 1
        self.credit = market.credits(self.daemon.address)

    def _read_reservations(self, start: int, latest: int) -> None:
        from marketplace.contracts.reservations import ReservationStatus

        reservations = self.daemon.reserved.reservations  # type: ignore[union-attr]
        for e in reservations.history("ReservationSettled", start, provider=self.daemon.address):
            if e.block_number > latest:
                continue
            status = ReservationStatus(int(e.args["status"])).name.lower()
            self.reservations_settled[status] = self.reservations_settled.get(status, 0) + 1
            self.reservation_earned += int(e.args["paid"]) - int(e.args["fee"])
            self.reserved_gpu_seconds += int(e.args["used_gpu_seconds"])

    def _reservation_families(self) -> list[_Family]:
        reserved = self.daemon.reserved
        if reserved is None:
            return []
        states = list(reserved.states.values())
        now = self.daemon.contracts.chain.next_timestamp()
        by_status: dict[str, int] = {}
        for r in states:
            by_status[r.status.name.lower()] = by_status.get(r.status.name.lower(), 0) + 1
        return [
            _Family(
                "flopex_provider_reserved_devices",
                "gauge",
                "Devices held now by bought reservations whose window is open.",
                [({}, reserved.held_now(now))],
            ),
            _Family(
                "flopex_provider_reservations",
                "gauge",
                "Unsettled reservations of the provider by status.",
                [({"status": k}, n) for k, n in sorted(by_status.items())],
            ),
            _Family(
                "flopex_provider_reservations_settled_total",
                "counter",
                "Reservations of the provider settled on chain.",
                [({"status": k}, n) for k, n in sorted(self.reservations_settled.items())],
            ),
            _Family(
                "flopex_provider_reservation_earned_units_total",
                "counter",
                "Token units credited to the provider by settled reservations (price less the fee).",
                [({}, self.reservation_earned)],
            ),
            _Family(
                "flopex_provider_reserved_gpu_seconds_total",
                "counter",
                "GPU-seconds the holders of its settled reservations used.",
                [({}, self.reserved_gpu_seconds)],
            ),
        ]

    # ------------------------------------------------------------------ pricing

    def _ask_now(self) -> int | None:
        d = self.daemon
        reference = JobSpec(
            requester="0x" + "00" * 20,
            bundle_hash=b"\x00" * 32,
            device_kind=d.settings.device_kind,
            gpus=1,
            min_memory_mb=0,
            policy=Policy.NONE,
            auction=Auction.SEALED,
            redundancy=1,
            max_price=_NO_CAP,
            max_gpu_seconds=3_600,
            bid_deadline=0,
            reveal_deadline=0,
            run_duration=0,
            challenge_window=0,
        )
        try:
            return d.bidder.ask(reference)
        except Exception:  # a closed store: no ask to show
            return None

    # ------------------------------------------------------------------ rendering

    def families(self) -> list[_Family]:
        """Every metric family, sampled now."""
        d = self.daemon
        try:
            self.sample()
        except Exception as exc:
            log.debug("metrics sample failed: %s", exc)
        try:
            self.refresh_chain()
        except FlopexError as exc:
            self.chain_errors += 1
            log.warning("metrics: chain read failed: %s", exc)
        total, busy = self._devices()
        states = dict.fromkeys(JOB_STATES, 0)
        try:
            for job in d.worker.manager.store.jobs_in(*JOB_STATES):
                states[job.state] = states.get(job.state, 0) + 1
        except Exception as exc:  # the store closes when the worker stops
            log.debug("metrics: job store unreadable: %s", exc)
        ask = self._ask_now()
        families = [
            _Family("flopex_provider_devices", "gauge", "Devices the worker offers.", [({}, total)]),
            _Family("flopex_provider_devices_busy", "gauge", "Devices held by running jobs.", [({}, busy)]),
            _Family(
                "flopex_provider_utilization",
                "gauge",
                "Busy devices over all devices.",
                [({}, busy / total if total else 0.0)],
            ),
            _Family(
                "flopex_provider_device_busy_seconds_total",
                "counter",
                "Device-seconds spent running jobs (sampled).",
                [({}, round(self.busy_seconds, 3))],
            ),
            _Family(
                "flopex_provider_device_idle_seconds_total",
                "counter",
                "Device-seconds with no job (sampled).",
                [({}, round(self.idle_seconds, 3))],
            ),
            _Family(
                "flopex_provider_idle_seconds",
                "gauge",
                "Seconds since a device was last busy.",
                [({}, 0 if busy else max(0, int(time.time() - d.bidder.last_busy)))],
            ),
            _Family(
                "flopex_worker_jobs",
                "gauge",
                "The worker's jobs by state.",
                [({"state": s}, n) for s, n in states.items()],
            ),
            _Family(
                "flopex_provider_bids_total",
                "counter",
                "Bids since start by auction and outcome (committed, won, lost).",
                [
                    ({"auction": a, "outcome": o}, d.bidder.bid_counts.get((a, o), 0))
                    for a in ("sealed", "instant")
                    for o in ("committed", "won", "lost")
                    if (a, o) != ("instant", "committed")
                ],
            ),
            _Family(
                "flopex_provider_price_floor_units",
                "gauge",
                "Registered price floor, token units per GPU-hour.",
                [({}, d.settings.price_floor)],
            ),
            _Family(
                "flopex_provider_ask_units",
                "gauge",
                "What the pricing strategy asks now for a 1-GPU job with no price cap, token units per GPU-hour.",
                [({"strategy": d.settings.strategy.spec}, ask)] if ask is not None else [],
            ),
            _Family(
                "flopex_provider_last_bid_units",
                "gauge",
                "The last price bid or taken at, token units per GPU-hour.",
                [({}, d.bidder.last_bid_price)] if d.bidder.last_bid_price is not None else [],
            ),
            _Family(
                "flopex_provider_settled_slots_total",
                "counter",
                "Slots of the provider settled on chain.",
                [({"status": s}, n) for s, n in sorted(self.settled_slots.items())],
            ),
            _Family(
                "flopex_provider_earned_units_total",
                "counter",
                "Token units credited to the provider by settled slots (pay less the fee).",
                [({}, self.earned)],
            ),
            _Family(
                "flopex_provider_settled_gpu_seconds_total",
                "counter",
                "GPU-seconds paid for.",
                [({}, self.settled_gpu_seconds)],
            ),
            _Family(
                "flopex_provider_withdrawn_units_total",
                "counter",
                "Token units withdrawn from the market.",
                [({}, self.withdrawn)],
            ),
            _Family("flopex_provider_credit_units", "gauge", "Token units waiting at the market.", [({}, self.credit)]),
            *self._reservation_families(),
            _Family(
                "flopex_metrics_chain_errors_total",
                "counter",
                "Scrapes whose chain reads failed.",
                [({}, self.chain_errors)],
            ),
        ]
        return families

    def render(self) -> str:
        """The exposition text."""
        return "\n".join(line for family in self.families() for line in family.lines()) + "\n"


class MetricsServer:
    """``GET /metrics`` over HTTP; run with :meth:`start`, end with :meth:`stop`."""

    def __init__(self, metrics: ProviderMetrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.metrics = metrics
        render_lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                log.debug(format, *args)

            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics here")
                    return
                try:
                    with render_lock:
                        body = metrics.render().encode()
                except Exception as exc:
                    log.exception("metrics: render failed")
                    self.send_error(500, f"{type(exc).__name__}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        """Where to scrape."""
        host = self.httpd.server_address[0]
        return f"http://{host.decode() if isinstance(host, bytes) else host}:{self.port}/metrics"

    def start(self) -> MetricsServer:
        """Sample and serve in background threads."""
        self.metrics.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and sampling."""
        self.httpd.shutdown()
        self.httpd.server_close()
        self.metrics.stop()


def serve_metrics(daemon: ProviderDaemon, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``daemon``'s metrics on ``host:port`` (0: any free port); returns the started server."""
    return MetricsServer(ProviderMetrics(daemon), host, port).start()


def parse_metrics(text: str) -> dict[str, float]:
    """Parse exposition text into ``{'name{labels}': value}`` (labels as written); for tests and tools."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        values[key] = int(value) if value.lstrip("-").isdigit() else float(value)
    return values
