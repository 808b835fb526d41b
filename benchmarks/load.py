"""A legitimate requester's service on an idle worker and under a flood, side by side; TLS vs plaintext.

``python -m benchmarks.load [--calls 200] [--hostile 500] [--watchers 200] [--mib 32]`` runs
in-process workers on loopback and prints one JSON document:

- ``idle`` and ``under_attack``: p50/p99 latency of the requester's signed ``GetJob`` calls, the
  wall time of a small job (upload, start, follow to its end) and how many of its calls were
  refused. The attack comes from another loopback peer (``::1``, the requester uses 127.0.0.1):
  ``--hostile`` upload streams that never send a message, re-opened as soon as they end, and
  ``--watchers`` signed ``WatchJob`` streams on a job that never ends;
- ``upload``: MiB/s of uploading a ``--mib`` bundle over pinned TLS and over plaintext.

Everything is bounded: the flood stops when the measurement ends.
"""

from __future__ import annotations

import argparse
import itertools
import json
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
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
    }


def _measure(
    root: Path, server: WorkerServer, endpoint: str, leases: StaticLeases, key: bytes, address: str, calls: int
) -> dict[str, Any]:
    archive, bhash = _bundle(root, "print('hello')\n")
    job_id = next(_ids)
    leases.add(_lease(job_id, address, server.provider_address, bhash))
    refused = 0
    with WorkerClient(endpoint, requester_key=key, domain=DOMAIN, timeout_s=30, retries=1) as client:
        started = time.perf_counter()
        client.upload_bundle(job_id, archive)
        client.start_job(job_id)
        final = client.wait(job_id, timeout_s=300)
        wall = time.perf_counter() - started
        samples = []
        for _ in range(calls):
            t0 = time.perf_counter()
            try:
                client.get_job(job_id)
            except WorkerError:
                refused += 1
                continue
            samples.append(time.perf_counter() - t0)
    return {
        "job_wall_s": round(wall, 3),
        "job_finished": final.HasField("finished"),
        "calls": calls,
        "refused": refused,
        **_percentiles(samples),
    }


class _Flood:
    """Silent upload streams and signed watchers from ``[::1]``, re-opened as soon as they end."""

    def __init__(self, port: int, hostile: int, watchers: int, watch: tuple[int, bytes]) -> None:
        self.stop = threading.Event()
        self.opened = 0
        self.refused = 0
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

    def run(self, until: Any, report: Any) -> None:
        """Flood until ``until`` (a multiprocessing event) is set; put (opened, refused) on ``report``."""
        for t in self.threads:
            t.start()
        until.wait(600)
        self.stop.set()
        for channel in self.channels:
            channel.close()
        for t in self.threads:
            t.join(5)
        report.put((self.opened, self.refused))


def _flood(
    port: int, hostile: int, watchers: int, job_id: int, key: bytes, until: Any, report: Any, cpus: set[int] | None
) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)  # the attacker's own CPU: it stands for another host
    _Flood(port, hostile, watchers, (job_id, key)).run(until, report)


class FloodProcess:
    """The flood in a process of its own (its threads do not share the worker's interpreter lock)."""

    def __init__(
        self, port: int, hostile: int, watchers: int, job_id: int, key: bytes, cpus: set[int] | None = None
    ) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.until = ctx.Event()
        self.report = ctx.Queue()
        self.process = ctx.Process(
            target=_flood, args=(port, hostile, watchers, job_id, key, self.until, self.report, cpus), daemon=True
        )
        self.opened = self.refused = 0

    def __enter__(self) -> FloodProcess:
        self.process.start()
        time.sleep(5.0)  # let the flood build up
        return self

    def __exit__(self, *exc: object) -> None:
        self.until.set()
        try:
            self.opened, self.refused = self.report.get(timeout=60)
        finally:
            self.process.join(30)
            if self.process.is_alive():
                self.process.kill()


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


def main(argv: list[str] | None = None) -> int:
    """Run the measurements and print one JSON document."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--hostile", type=int, default=500)
    p.add_argument("--watchers", type=int, default=200)
    p.add_argument("--mib", type=int, default=32)
    p.add_argument("--upload-rounds", type=int, default=3, help="interleaved (TLS, plaintext) upload pairs")
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=len(os.sched_getaffinity(0)) >= 2,
        help="the attacker on a CPU of its own, the worker and requester on the others, idle and attacked "
        "alike (an attacker on another host does not take the worker's CPU) [default: on with 2+ CPUs]",
    )
    args = p.parse_args(argv)
    from benchmarks._env import environment
    from benchmarks._pairs import pair_stats

    attacker_cpus: set[int] | None = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        attacker_cpus = {cpus[-1]}
        os.sched_setaffinity(0, set(cpus[:-1]))

    requester = Account.create()
    attacker = Account.create()
    with tempfile.TemporaryDirectory(prefix="flopex-load-") as tmp:
        root = Path(tmp)
        leases = StaticLeases()
        (root / "w").mkdir()
        server, endpoint = _worker(root / "w", leases, tls=False)
        try:
            idle = _measure(root, server, endpoint, leases, requester.key, requester.address, args.calls)
            # The attacker's long job: uploaded, never started, so its watchers never end.
            archive, bhash = _bundle(root, "print(1)\n")
            long_job = next(_ids)
            leases.add(_lease(long_job, attacker.address, server.provider_address, bhash))
            with WorkerClient(endpoint, requester_key=attacker.key, domain=DOMAIN) as c:
                c.upload_bundle(long_job, archive)
            with FloodProcess(
                server.port, args.hostile, args.watchers, long_job, bytes(attacker.key), attacker_cpus
            ) as flood:
                attacked = _measure(root, server, endpoint, leases, requester.key, requester.address, args.calls)
            attacked["flood_calls_ended"] = flood.opened
            attacked["flood_calls_refused"] = flood.refused
        finally:
            server.stop(grace=0)
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
        # seconds per MiB, so that the pair's ratio is TLS time over plaintext time
        pairs = pair_stats([1 / r for r in tls_rates], [1 / r for r in plain_rates])
        upload = {
            "mib": args.mib,
            "rounds": args.upload_rounds,
            "tls_mib_s": round(statistics.median(tls_rates), 1),
            "plaintext_mib_s": round(statistics.median(plain_rates), 1),
            "tls_time_over_plaintext": pairs.as_json()["ratio"],
        }
    p99_ratio = attacked["p99_ms"] / idle["p99_ms"] if idle.get("p99_ms") else None
    result = {
        "hostile_streams": args.hostile,
        "watchers": args.watchers,
        "attacker_cpus": sorted(attacker_cpus) if attacker_cpus else "shared",
        "p99_under_attack_over_idle": round(p99_ratio, 2) if p99_ratio else None,
        "goals": {"p99_under_attack_over_idle_max": 2.0, "legitimate_calls_refused": 0},
        "meets_goals": {
            "p99": p99_ratio is not None and p99_ratio <= 2.0,
            "nothing_refused": attacked.get("refused", 0) == 0,
        },
        "idle": idle,
        "under_attack": attacked,
        "upload": upload,
        "environment": environment(),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
