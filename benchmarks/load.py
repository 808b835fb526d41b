"""A legitimate requester's service on an idle worker and under a flood, as interleaved pairs; TLS vs plaintext.

``python -m benchmarks.load [--rounds 5] [--calls 100] [--hostile 500] [--watchers 200] [--mib 32]
[--busy N] [--out FILE]`` runs in-process workers on loopback and prints one JSON document:

- ``pairs``: ``--rounds`` rounds, each an idle window and an attack window back to back (which comes
  first alternates from round to round). A window is a small job (upload, start, follow to its end)
  and then ``--calls`` signed ``GetJob`` calls of the requester; its p50/p99 latency is the window's.
  The per-round ratios attack/idle of p99, p50 and the job's wall time are reported as the median
  with quartiles, 10th/90th percentiles, min and max (``benchmarks._pairs``). Load from other work
  that drifts during the run moves both windows of a round together; the paired median stays put.
- The attack comes from another loopback peer (``::1``, the requester uses 127.0.0.1), in a process
  of its own started for each attack window: ``--hostile`` upload streams that never send a
  message and ``--watchers`` signed ``WatchJob`` streams on a job that never ends, each re-opened as
  soon as it ends. The window is measured only once the flood is steady: all its threads running,
  the attacker holding every upload and stream slot the worker grants one peer, and its rate of
  ended calls stable over two half-second samples (``settle_s`` and ``settled`` per round). Then
  the flood is stopped (its channels closed, its threads joined, its process ended) and the worker
  drains (no upload or stream admitted) before any idle window (``drain_s`` per round).
- ``idle`` and ``under_attack``: the pooled p50/p99 of all windows of that state, the median job
  wall time and the requester's calls refused (must stay 0);
- ``upload``: MiB/s of uploading a ``--mib`` bundle over pinned TLS and over plaintext, as
  ``--upload-rounds`` interleaved pairs.

A run is bounded in time: a window stops calling after ``--window-s``, the flood's settling and the
worker's draining each give up after a fixed time (and say so), and each call has a timeout.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import statistics
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from eth_account import Account

from marketplace.errors import WorkerError
from marketplace.protocol.auth import Domain, payload_digest, sign_request
from marketplace.protocol.bundle import load_bundle, pack_bundle
from marketplace.protocol.tls import ensure_certificate
from marketplace.requester.client import WorkerClient
from marketplace.rpc import worker_pb2 as pb
from marketplace.rpc import worker_pb2_grpc as pb_grpc
from worker.node.config import WorkerConfig
from worker.node.leases import DeviceRequirements, Lease, StaticLeases
from worker.node.service import WorkerServer, create_server

MARKET = "0x" + "5a" * 20
DOMAIN = Domain(31337, MARKET)
_ids = itertools.count(1)


def _bundle(root: Path, code: str, files: dict[str, bytes] | None = None) -> tuple[Path, bytes]:
    folder = root / f"b{next(_ids)}"
    folder.mkdir()
    (folder / "main.py").write_text(textwrap.dedent(code))
    (folder / "job.toml").write_text(
        '[job]\nentrypoint = "main.py"\n[resources]\ndevice = "cpu"\ngpus = 1\ntimeout_s = 600\n'
        '\n[market]\nmax_price = "1"\n'
    )
    for name, data in (files or {}).items():
        (folder / name).write_bytes(data)
    archive = folder.with_suffix(".tar.gz")
    pack_bundle(folder, archive)
    return archive, load_bundle(folder).hash


def _worker(root: Path, leases: StaticLeases, tls: bool) -> tuple[WorkerServer, str]:
    cert = key = None
    if tls:
        cert, key = root / "tls.crt", root / "tls.key"
        ensure_certificate(cert, key)
    config = WorkerConfig(
        data_dir=root / "data",
        leases=leases,
        market_address=MARKET,
        key_file=root / "receipt.key",
        allow_unsandboxed=True,
        tls_cert=cert,
        tls_key=key,
    )
    server, port = create_server(config, "127.0.0.1:0")
    if not tls:
        server.server.add_insecure_port(f"[::1]:{port}")  # the attackers' own loopback address
    server.start()
    return server, server.endpoint("127.0.0.1")


def _lease(job_id: int, requester: str, worker: str, bundle_hash: bytes) -> Lease:
    return Lease(job_id, requester, (worker,), bundle_hash, int(time.time()) + 3600, DeviceRequirements("cpu", 1))


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    if not ordered:
        return {}
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(_p99(ordered) * 1000, 2),
    }


def _p99(ordered: list[float]) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _window(
    root: Path,
    server: WorkerServer,
    endpoint: str,
    leases: StaticLeases,
    key: bytes,
    address: str,
    calls: int,
    window_s: float,
) -> dict[str, Any]:
    """One measurement window: a small job, then up to ``calls`` signed GetJob calls (at most ``window_s``)."""
    archive, bhash = _bundle(root, "print('hello')\n")
    job_id = next(_ids)
    leases.add(_lease(job_id, address, server.provider_address, bhash))
    refused = 0
    samples: list[float] = []
    loadavg = os.getloadavg()[0]
    cpu0, wall0 = os.times(), time.perf_counter()
    with WorkerClient(endpoint, requester_key=key, domain=DOMAIN, timeout_s=30, retries=1) as client:
        started = time.perf_counter()
        client.upload_bundle(job_id, archive)
        client.start_job(job_id)
        final = client.wait(job_id, timeout_s=120)
        wall = time.perf_counter() - started
        deadline = time.perf_counter() + window_s
        for _ in range(calls):
            if time.perf_counter() > deadline:
                break
            t0 = time.perf_counter()
            try:
                client.get_job(job_id)
            except WorkerError:
                refused += 1
                continue
            samples.append(time.perf_counter() - t0)
    cpu1, wall1 = os.times(), time.perf_counter()
    return {
        "job_wall_s": wall,
        "job_finished": final.HasField("finished"),
        "calls": len(samples) + refused,
        "refused": refused,
        "samples": samples,
        "loadavg_1min": loadavg,
        # CPU seconds per second of this process (the worker and the requester, its CPUs pinned)
        "process_cpu_per_s": (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (wall1 - wall0),
    }


class _Flood:
    """Silent upload streams and signed watchers from ``[::1]``, re-opened as soon as they end."""

    def __init__(self, port: int, hostile: int, watchers: int, watch: tuple[int, bytes], ended: Any) -> None:
        self.stop = threading.Event()
        self.opened = 0
        self.refused = 0
        self.ended = ended  # a shared counter of ended calls, for the parent to see the flood's rate
        self._lock = threading.Lock()
        self.channels = [
            grpc.insecure_channel(f"[::1]:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(16)
        ]
        self.threads = [threading.Thread(target=self._silent, args=(i,), daemon=True) for i in range(hostile)]
        self.threads += [threading.Thread(target=self._watch, args=(i, watch), daemon=True) for i in range(watchers)]

    def _count(self, exc: grpc.RpcError | None) -> None:
        with self._lock:
            self.opened += 1
            if exc is not None and exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                self.refused += 1
        with self.ended.get_lock():
            self.ended.value += 1

    def _nothing(self) -> Iterator[pb.UploadChunk]:
        self.stop.wait(60)
        return
        yield

    def _silent(self, i: int) -> None:
        stub = pb_grpc.WorkerServiceStub(self.channels[i % len(self.channels)])
        while not self.stop.is_set():
            try:
                stub.UploadBundle(self._nothing(), timeout=60)
                self._count(None)
            except grpc.RpcError as exc:
                self._count(exc)
            except ValueError:  # the channel closed: the flood is over
                return
            self.stop.wait(0.2)

    def _watch(self, i: int, watch: tuple[int, bytes]) -> None:
        stub = pb_grpc.WorkerServiceStub(self.channels[i % len(self.channels)])
        job_id, key = watch
        while not self.stop.is_set():
            signed = sign_request(key, DOMAIN, job_id, "WatchJob", payload_digest("WatchJob"))
            auth = pb.RequestAuth(
                nonce=signed.nonce.to_bytes(32, "big"), expiry=signed.expiry, signature=signed.signature
            )
            try:
                for _ in stub.WatchJob(pb.WatchJobRequest(job_id=job_id, auth=auth), timeout=60):
                    if self.stop.is_set():
                        break
                self._count(None)
            except grpc.RpcError as exc:
                self._count(exc)
            except ValueError:  # the channel closed: the flood is over
                return
            self.stop.wait(0.2)

    def run(self, until: Any, started: Any, report: Any) -> None:
        """Flood until ``until`` (a multiprocessing event) is set; put what happened on ``report``.

        ``started`` (an event) is set once every thread runs. The report is (calls ended, of them
        refused, threads still alive after the stop).
        """
        for t in self.threads:
            t.start()
        started.set()
        until.wait(600)
        self.stop.set()
        for channel in self.channels:
            channel.close()  # cancels every call still open: the worker sees its streams end
        for t in self.threads:
            t.join(5)
        report.put((self.opened, self.refused, sum(t.is_alive() for t in self.threads)))


def _flood(
    port: int,
    hostile: int,
    watchers: int,
    job_id: int,
    key: bytes,
    until: Any,
    started: Any,
    ended: Any,
    report: Any,
    cpus: set[int] | None,
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)  # the attacker's own CPU: it stands for another host
    _Flood(port, hostile, watchers, (job_id, key), ended).run(until, started, report)


def _slots(server: WorkerServer) -> tuple[int, int]:
    """(uploads, streams) the worker has admitted now."""
    assert server.admission is not None
    return server.admission.slots.in_use("upload"), server.admission.slots.in_use("stream")


class FloodProcess:
    """The flood in a process of its own (its threads do not share the worker's interpreter lock).

    Entering starts it and waits for its steady state (at most ``settle_max_s``); leaving stops it,
    ends its process and waits for the worker to drain (at most ``drain_max_s``).
    """

    def __init__(
        self,
        server: WorkerServer,
        hostile: int,
        watchers: int,
        job_id: int,
        key: bytes,
        cpus: set[int] | None = None,
        settle_max_s: float = 20.0,
        drain_max_s: float = 30.0,
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.server = server
        self.until = ctx.Event()
        self.started = ctx.Event()
        self.ended = ctx.Value("q", 0)
        self.report = ctx.Queue()
        self.process = ctx.Process(
            target=_flood,
            args=(server.port, hostile, watchers, job_id, key, self.until, self.started, self.ended, self.report, cpus),
            daemon=True,
        )
        limits = server.admission.limits if server.admission is not None else None
        self.held = (
            min(hostile, limits.uploads_per_peer) if limits else 0,
            min(watchers, limits.streams_per_peer) if limits else 0,
        )
        self.settle_max_s = settle_max_s
        self.drain_max_s = drain_max_s
        self.opened = self.refused = self.threads_left = 0
        self.exitcode: int | None = None
        self.settle_s = self.drain_s = self.stop_s = 0.0
        self.settled = self.drained = False
        self.rate_at_start = 0.0
        self._measuring: tuple[float, int] = (0.0, 0)
        self.rate_while_measured = 0.0

    def _ended(self) -> int:
        return int(self.ended.value)

    def __enter__(self) -> FloodProcess:
        t0 = time.perf_counter()
        self.process.start()
        deadline = t0 + self.settle_max_s
        self.started.wait(max(0.0, deadline - time.perf_counter()))
        # Steady: the attacker holds every slot the worker grants one peer, and its rate of ended
        # calls changed by less than a quarter between two half-second samples.
        rates: list[float] = []
        last = (time.perf_counter(), self._ended())
        while time.perf_counter() < deadline:
            time.sleep(0.5)
            now = (time.perf_counter(), self._ended())
            rates.append((now[1] - last[1]) / (now[0] - last[0]))
            last = now
            uploads, streams = _slots(self.server)
            holding = uploads >= self.held[0] and streams >= self.held[1]
            if holding and len(rates) >= 2 and abs(rates[-1] - rates[-2]) <= 0.25 * max(rates[-1], rates[-2], 1.0):
                self.settled = True
                break
        self.settle_s = time.perf_counter() - t0
        self.rate_at_start = rates[-1] if rates else 0.0
        self._measuring = (time.perf_counter(), self._ended())
        return self

    def __exit__(self, *exc: object) -> None:
        stopping = time.perf_counter()
        t0, n0 = self._measuring
        self.rate_while_measured = (self._ended() - n0) / max(time.perf_counter() - t0, 1e-9)
        self.until.set()
        try:
            self.opened, self.refused, self.threads_left = self.report.get(timeout=60)
        finally:
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(5)
            self.exitcode = self.process.exitcode
            self.report.close()
        t1 = time.perf_counter()
        self.stop_s = t1 - stopping
        while _slots(self.server) != (0, 0) and time.perf_counter() - t1 < self.drain_max_s:
            time.sleep(0.05)
        self.drained = _slots(self.server) == (0, 0)
        self.drain_s = time.perf_counter() - t1

    def as_json(self) -> dict[str, Any]:
        return {
            "settled": self.settled,
            "settle_s": round(self.settle_s, 2),
            "flood_ended_calls_per_s": round(self.rate_while_measured, 1),
            "flood_calls_ended": self.opened,
            "flood_calls_refused": self.refused,
            "flood_threads_left": self.threads_left,
            "flood_exitcode": self.exitcode,
            "stop_s": round(self.stop_s, 2),
            "drained": self.drained,
            "drain_s": round(self.drain_s, 2),
        }


def _pooled(windows: list[dict[str, Any]]) -> dict[str, Any]:
    """One state's windows together: pooled percentiles, median job wall time, calls and refusals."""
    samples = [s for w in windows for s in w["samples"]]
    return {
        "windows": len(windows),
        "job_wall_s": round(statistics.median(w["job_wall_s"] for w in windows), 3),
        "job_finished": all(w["job_finished"] for w in windows),
        "calls": sum(w["calls"] for w in windows),
        "refused": sum(w["refused"] for w in windows),
        "process_cpu_per_s": round(statistics.median(w["process_cpu_per_s"] for w in windows), 2),
        **_percentiles(samples),
    }


def _window_json(w: dict[str, Any]) -> dict[str, Any]:
    return {
        "job_wall_s": round(w["job_wall_s"], 3),
        "calls": w["calls"],
        "refused": w["refused"],
        "loadavg_1min": round(w["loadavg_1min"], 2),
        "process_cpu_per_s": round(w["process_cpu_per_s"], 2),
        **_percentiles(w["samples"]),
        "slowest_ms": [round(x * 1000, 1) for x in sorted(w["samples"])[-3:][::-1]],
    }


def _upload_rate(root: Path, tls: bool, mib: int, key: bytes, address: str) -> float:
    leases = StaticLeases()
    server, endpoint = _worker(root, leases, tls)
    try:
        archive, bhash = _bundle(root, "print(1)\n", {"data.bin": os.urandom(mib << 20)})
        job_id = next(_ids)
        leases.add(_lease(job_id, address, server.provider_address, bhash))
        size = archive.stat().st_size
        with WorkerClient(endpoint, requester_key=key, domain=DOMAIN, timeout_s=300) as client:
            t0 = time.perf_counter()
            client.upload_bundle(job_id, archive)
            return round(size / (1 << 20) / (time.perf_counter() - t0), 1)
    finally:
        server.stop(grace=0)


def _rounds(
    args: argparse.Namespace, root: Path, attacker_cpus: set[int] | None, requester: Any, attacker: Any
) -> list[dict[str, Any]]:
    """``args.rounds`` (idle, attack) pairs on one worker, the order alternating."""
    leases = StaticLeases()
    (root / "w").mkdir()
    server, endpoint = _worker(root / "w", leases, tls=False)
    rounds: list[dict[str, Any]] = []
    try:
        # The attacker's long job: uploaded, never started, so its watchers never end.
        archive, bhash = _bundle(root, "print(1)\n")
        long_job = next(_ids)
        leases.add(_lease(long_job, attacker.address, server.provider_address, bhash))
        with WorkerClient(endpoint, requester_key=attacker.key, domain=DOMAIN) as c:
            c.upload_bundle(long_job, archive)

        def window() -> dict[str, Any]:
            return _window(root, server, endpoint, leases, requester.key, requester.address, args.calls, args.window_s)

        for i in range(args.rounds):
            order = ("idle", "attack") if i % 2 == 0 else ("attack", "idle")
            this: dict[str, Any] = {"order": list(order)}
            for state in order:
                if state == "idle":
                    this["slots_at_idle_start"] = list(_slots(server))  # (uploads, streams): 0, 0
                    this["idle"] = window()
                    continue
                with FloodProcess(
                    server, args.hostile, args.watchers, long_job, bytes(attacker.key), attacker_cpus
                ) as flood:
                    this["attack"] = window()
                this["flood"] = flood.as_json()
            rounds.append(this)
    finally:
        server.stop(grace=0)
    return rounds


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print one JSON document."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    p.add_argument("--rounds", type=int, default=5, help="interleaved (idle, attack) pairs")
    p.add_argument(
        "--calls",
        type=int,
        default=100,
        help="signed GetJob calls per window (each is a lease look-up: past the worker's per-peer "
        "look-up bucket, 200 then 50/s, the worker refuses the requester, flood or not)",
    )
    p.add_argument("--window-s", type=float, default=60.0, help="a window stops calling after this long")
    p.add_argument("--hostile", type=int, default=500)
    p.add_argument("--watchers", type=int, default=200)
    p.add_argument("--mib", type=int, default=32)
    p.add_argument("--upload-rounds", type=int, default=3, help="interleaved (TLS, plaintext) upload pairs")
    p.add_argument("--busy", type=int, default=0, help="processes spinning on the CPU during the whole run")
    p.add_argument("--out", help="also write the JSON document to this file")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=len(os.sched_getaffinity(0)) >= 2,
        help="the attacker on a CPU of its own, the worker and requester on the others, idle and attacked "
        "alike (an attacker on another host does not take the worker's CPU) [default: on with 2+ CPUs]",
    )
    args = p.parse_args(argv)
    if args.rounds < 1 or args.calls < 1:
        p.error("--rounds and --calls must be at least 1")
    from benchmarks._env import emit, environment
    from benchmarks._pairs import busy_processes, pair_stats

    requester = Account.create()
    attacker = Account.create()
    started = time.perf_counter()
    loadavg_start = os.getloadavg()
    # The spinning processes start before the pinning below, so they spin on every CPU.
    with busy_processes(args.busy) as spinning, tempfile.TemporaryDirectory(prefix="flopex-load-") as tmp:
        attacker_cpus: set[int] | None = None
        cpus = sorted(os.sched_getaffinity(0))
        if args.pin:
            attacker_cpus = {cpus[-1]}
            os.sched_setaffinity(0, set(cpus[:-1]))
        root = Path(tmp)
        try:
            rounds = _rounds(args, root, attacker_cpus, requester, attacker)
        finally:
            os.sched_setaffinity(0, set(cpus))
        # TLS against plaintext as interleaved pairs (the order alternating), the ratio per pair.
        tls_rates: list[float] = []
        plain_rates: list[float] = []
        for i in range(args.upload_rounds):
            order = (True, False) if i % 2 == 0 else (False, True)
            for tls in order:
                where = root / f"{'tls' if tls else 'plain'}{i}"
                where.mkdir()
                rate = _upload_rate(where, tls, args.mib, requester.key, requester.address)
                (tls_rates if tls else plain_rates).append(rate)
        upload: dict[str, Any] = {"mib": args.mib, "rounds": args.upload_rounds}
        if tls_rates:
            # seconds per MiB, so that the pair's ratio is TLS time over plaintext time
            upload_pairs = pair_stats([1 / r for r in tls_rates], [1 / r for r in plain_rates])
            upload |= {
                "tls_mib_s": round(statistics.median(tls_rates), 1),
                "plaintext_mib_s": round(statistics.median(plain_rates), 1),
                "tls_time_over_plaintext": upload_pairs.as_json()["ratio"],
            }

    idle = _pooled([r["idle"] for r in rounds])
    attacked = _pooled([r["attack"] for r in rounds])
    floods = [r["flood"] for r in rounds]
    attacked |= {
        "flood_calls_ended": sum(f["flood_calls_ended"] for f in floods),
        "flood_calls_refused": sum(f["flood_calls_refused"] for f in floods),
    }
    # Per-round ratios, attack over idle, of rounds where both windows had answered calls.
    paired = [r for r in rounds if r["idle"]["samples"] and r["attack"]["samples"]]
    pairs: dict[str, Any] = {"rounds": args.rounds, "pairs": len(paired)}
    p99_ratio: float | None = None
    if paired:
        p99 = pair_stats(
            [_p99(sorted(r["attack"]["samples"])) for r in paired], [_p99(sorted(r["idle"]["samples"])) for r in paired]
        )
        p50 = pair_stats(
            [statistics.median(r["attack"]["samples"]) for r in paired],
            [statistics.median(r["idle"]["samples"]) for r in paired],
        )
        wall = pair_stats([r["attack"]["job_wall_s"] for r in paired], [r["idle"]["job_wall_s"] for r in paired])
        p99_ratio = p99.median_ratio
        pairs |= {
            "p99_attack_over_idle": p99.as_json(),
            "p50_attack_over_idle": p50.as_json(),
            "job_wall_attack_over_idle": wall.as_json(),
        }
    result = {
        "benchmark": "load",
        "load": f"busy: {spinning} spinning processes" if spinning else "quiet",
        "busy_processes": spinning,
        "rounds": args.rounds,
        "calls_per_window": args.calls,
        "hostile_streams": args.hostile,
        "watchers": args.watchers,
        "attacker_cpus": sorted(attacker_cpus) if attacker_cpus else "shared",
        "method": "interleaved (idle, attack) windows, order alternating; each attack window measured once "
        "the flood is steady (all its threads running, every upload and stream slot the worker grants "
        "one peer held, its rate of ended calls stable over two half-second samples); the flood is "
        "stopped and the worker drained (no upload or stream admitted) before any idle window",
        "p99_under_attack_over_idle": round(p99_ratio, 2) if p99_ratio is not None else None,
        "pairs": pairs,
        "goals": {"p99_under_attack_over_idle_max": 2.0, "legitimate_calls_refused": 0},
        "meets_goals": {
            "p99": p99_ratio is not None and p99_ratio <= 2.0,
            "nothing_refused": idle["refused"] == 0 and attacked["refused"] == 0,
        },
        "idle": idle,
        "under_attack": attacked,
        "per_round": [
            {
                "order": r["order"],
                "idle": _window_json(r["idle"]),
                "attack": _window_json(r["attack"]),
                "slots_at_idle_start": r["slots_at_idle_start"],
                **r["flood"],
            }
            for r in rounds
        ],
        "upload": upload,
        "seconds": round(time.perf_counter() - started, 1),
        # The flood's own threads count in the host's load average during attack windows.
        "loadavg_start": [round(x, 2) for x in loadavg_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "environment": environment(),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
