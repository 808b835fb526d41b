"""Bundle upload and result download throughput against a bare gRPC stream of the same bytes.

``python -m benchmarks.transfer [--mib 256] [--rounds 5] [--busy]`` starts a worker process and a
bare gRPC server process on loopback, packs a MIB-sized bundle (timed: ``pack_seconds``), then runs
``rounds`` interleaved pairs, alternating which of the pair goes first:

- ``upload``: :meth:`WorkerClient.upload_bundle` of the bundle archive to a fresh job, from the call
  to the worker's answer that the bundle is unpacked and its hash is the lease's (the client's
  archive sha256, the signed header, the stream, the worker's archive sha256, unpacking while it
  arrives and the BLAKE3 bundle hash computed while the files are written), paired with
- ``bare_upload``: the same number of bytes in the same chunk size through a gRPC stream with no
  hashing, no disk and no protobuf (identity serializers);
- ``download``: :meth:`WorkerClient.download_results` of a job's MIB-sized output (written to disk,
  each file's sha256 and the Merkle root over BLAKE3 chunk digests recomputed, receipt signature
  checked), paired with ``bare_download``.

Each ratio (bare seconds / flopex seconds) is reported as the median of its pairs with their
spread. Where the time goes is measured in the same run: the worker's CPU seconds per upload and
the bare server's (``/proc``), the client's CPU seconds per download, the ceilings these put on the
ratios (``upload_ceiling_vs_bare``: bare seconds over the worker's CPU seconds), and each pass the
worker makes over an upload's bytes timed alone (``upload_passes_ms``). ``meets_goals`` says
whether both medians reach :data:`GOAL_RATIO`. ``--busy`` runs one busy-looping process per core
for the whole measurement, as on a provider's loaded machine. It prints one JSON document, with
the environment.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import IO, cast

import blake3
import grpc

_CHUNK = 1 << 20
_METHOD_UP = "/bench.Bare/Up"
_METHOD_DOWN = "/bench.Bare/Down"


def _ident(x: bytes) -> bytes:
    return x


def serve_bare() -> None:
    """Run the bare stream server (child process mode): prints its port, serves until stdin closes."""

    def up(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = 0
        for chunk in requests:
            total += len(chunk)
        return str(total).encode()

    def down(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        size = int(request)
        block = os.urandom(_CHUNK)
        for pos in range(0, size, _CHUNK):
            yield block[: min(_CHUNK, size - pos)]

    handler = grpc.method_handlers_generic_handler(
        "bench.Bare",
        {
            "Up": grpc.stream_unary_rpc_method_handler(up, _ident, _ident),
            "Down": grpc.unary_stream_rpc_method_handler(down, _ident, _ident),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 8 << 20)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)


GOAL_RATIO = 0.70
"""Goal for upload and download: at least this fraction of the bare stream's throughput."""


def _busy_loop() -> None:
    while True:
        pass


def _spin(n: int) -> list[multiprocessing.Process]:
    procs = [multiprocessing.Process(target=_busy_loop, daemon=True) for _ in range(n)]
    for p in procs:
        p.start()
    return procs


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _summary(values: list[float]) -> dict[str, object]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 3),
        "min": round(ordered[0], 3),
        "max": round(ordered[-1], 3),
        "pairs": [round(v, 3) for v in values],
    }


def _bundle_dir(root: Path, mib: int) -> None:
    root.mkdir()
    (root / "job.toml").write_text(
        '[job]\nentrypoint = "main.py"\ninputs = ["blob.bin"]\n[resources]\ndevice = "cpu"\n'
        'timeout_s = 600\n[market]\nmax_price = "1"\n'
    )
    (root / "main.py").write_text(
        "import os\nout = os.path.join(os.environ['FLOPEX_OUTPUT_DIR'], 'result.bin')\n"
        f"with open(out, 'wb') as fh:\n    for _ in range({mib}):\n"
        "        fh.write(os.urandom(1 << 20))\n"
    )
    with open(root / "blob.bin", "wb") as fh:
        for _ in range(mib):
            fh.write(os.urandom(1 << 20))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer")
    parser.add_argument("--mib", type=int, default=256, help="bundle and output size in MiB")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved pairs of each kind")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="upload chunk size (both streams)")
    parser.add_argument("--busy", action="store_true", help="one busy-looping process per core while measuring")
    parser.add_argument("--out", help="also write the JSON to this file")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global _CHUNK
    _CHUNK = args.chunk_kib << 10
    if args.bare_server:
        serve_bare()
        return 0
    if args.rounds < 1 or args.mib < 1:
        parser.error("--rounds and --mib must be at least 1")

    from eth_account import Account

    from benchmarks._env import emit, environment, start_worker_process
    from marketplace.protocol.auth import Domain
    from marketplace.protocol.bundle import load_bundle, pack_bundle
    from marketplace.requester.client import WorkerClient
    from worker.node.leases import DeviceRequirements, Lease, LeaseFile

    repo = Path(__file__).resolve().parent.parent
    market = "0x" + "5a" * 20
    domain = Domain(31337, market)
    requester = Account.create()
    busy = _spin(os.cpu_count() or 1) if args.busy else []
    ups: list[tuple[float, float]] = []
    downs: list[tuple[float, float]] = []
    cpu: dict[str, list[float]] = {"worker_upload": [], "bare_server_upload": [], "client_download": []}
    try:
        with tempfile.TemporaryDirectory(prefix="flopex-bench-") as tmp_name:
            tmp = Path(tmp_name)
            key = tmp / "provider.key"
            key.write_text(Account.create().key.hex())
            leases = tmp / "leases.json"
            LeaseFile.write(leases, [])
            bare = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.transfer", "--bare-server"],
                cwd=repo,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert bare.stdout is not None and bare.stdin is not None
            bare_port = int(bare.stdout.readline())
            mb = str(args.mib * 2 + 64)
            data_dir = tmp / "data"
            worker, hello = start_worker_process(
                data_dir,
                leases,
                key,
                market,
                *("--max-bundle-mb", mb, "--max-file-mb", mb, "--max-disk-mb", mb, "--memory-limit-mb", "2048"),
            )
            try:
                bundle = tmp / "bundle"
                _bundle_dir(bundle, args.mib)
                archive = tmp / "bundle.tar.gz"
                t0 = time.perf_counter()
                packed = pack_bundle(bundle, archive)
                pack_s = time.perf_counter() - t0
                archive_size = archive.stat().st_size
                single_s = _pack_single_stream(bundle, tmp / "single.tar.gz")
                bhash = load_bundle(bundle).hash
                job_ids = list(range(1, args.rounds + 2))
                LeaseFile.write(
                    leases,
                    [
                        Lease(
                            j,
                            requester.address,
                            (hello["provider"],),
                            bhash,
                            int(time.time()) + 3600,
                            DeviceRequirements("cpu", 1),
                        )
                        for j in job_ids
                    ],
                )
                target = f"127.0.0.1:{hello['port']}"
                with (
                    WorkerClient(target, requester_key=requester.key, domain=domain, timeout_s=60) as client,
                    grpc.insecure_channel(
                        f"127.0.0.1:{bare_port}", options=[("grpc.max_receive_message_length", 8 << 20)]
                    ) as channel,
                ):
                    bare_ch = _BareChannel(channel)

                    def flopex_up(job_id: int) -> float:
                        c0 = _cpu_s(worker.pid)
                        t0 = time.perf_counter()
                        status = client.upload_bundle(job_id, archive, chunk_size=_CHUNK, archive_sha256=packed.sha256)
                        elapsed = time.perf_counter() - t0
                        cpu["worker_upload"].append(_cpu_s(worker.pid) - c0)
                        assert status.complete and status.bundle_hash == bhash
                        return elapsed

                    def bare_up() -> float:
                        c0 = _cpu_s(bare.pid)
                        elapsed = bare_ch.up(archive_size)
                        cpu["bare_server_upload"].append(_cpu_s(bare.pid) - c0)
                        return elapsed

                    # the job whose results are downloaded, uploaded once untimed (it also warms both paths)
                    flopex_up(job_ids[0])
                    bare_ch.up(archive_size)
                    client.start_job(job_ids[0], 0)
                    final = client.wait(job_ids[0], timeout_s=600)
                    assert final.HasField("finished"), final
                    for i, job_id in enumerate(job_ids[1:]):
                        if i % 2:
                            up_s = flopex_up(job_id)
                            bare_s = bare_up()
                        else:
                            bare_s = bare_up()
                            up_s = flopex_up(job_id)
                        ups.append((bare_s, up_s))
                        shutil.rmtree(data_dir / "jobs" / str(job_id), ignore_errors=True)  # disk only
                    downloaded = 0
                    for i in range(args.rounds):
                        dest = tmp / f"results{i}"

                        def flopex_down(dest: Path = dest) -> float:
                            c0 = time.process_time()
                            t0 = time.perf_counter()
                            results = client.download_results(job_ids[0], dest, provider=hello["provider"])
                            elapsed = time.perf_counter() - t0
                            cpu["client_download"].append(time.process_time() - c0)
                            nonlocal downloaded
                            downloaded = results.manifest.total_bytes
                            return elapsed

                        if i % 2:
                            down_s = flopex_down()
                            bare_s = bare_ch.down(downloaded)
                        else:
                            if not downloaded:
                                flopex_down(tmp / "warm")  # learn the size (and warm the path) first
                                shutil.rmtree(tmp / "warm")
                                cpu["client_download"].pop()
                            bare_s = bare_ch.down(downloaded)
                            down_s = flopex_down()
                        downs.append((bare_s, down_s))
                        shutil.rmtree(dest)
            finally:
                worker.terminate()
                worker.wait(30)
                bare.stdin.close()
                bare.wait(30)
                for pipe in (worker.stdout, bare.stdout):
                    if pipe is not None:
                        pipe.close()
    finally:
        for p in busy:
            p.terminate()
            p.join()

    def mibs(n: int, s: float) -> float:
        return round(n / (1 << 20) / s, 1)

    passes = _upload_passes(args.mib)
    worker_cpu = statistics.median(cpu["worker_upload"])
    bare_cpu = statistics.median(cpu["bare_server_upload"])
    client_cpu = statistics.median(cpu["client_download"])
    bare_up_s = statistics.median(b for b, _ in ups)
    up_ratio = _summary([b / f for b, f in ups])
    down_ratio = _summary([b / f for b, f in downs])
    report = {
        "benchmark": "transfer",
        "load": f"busy: one busy-looping process per core ({len(busy)})" if busy else "quiet",
        "rounds": args.rounds,
        "bundle_mib": args.mib,
        "bundle_archive_mib": round(archive_size / (1 << 20), 1),
        "pack_seconds": round(pack_s, 2),
        "pack_single_gzip6_seconds": round(single_s, 2),
        "pack_single_gzip6_is": "the same tree as one gzip stream at level 6 (the earlier archive format), same run",
        "upload_mib_s": mibs(archive_size, statistics.median(f for _, f in ups)),
        "bare_upload_mib_s": mibs(archive_size, statistics.median(b for b, _ in ups)),
        "upload_vs_bare": up_ratio["median"],
        "upload_vs_bare_pairs": up_ratio,
        "upload_includes": "the archive's sha256 hashed while packing (not timed here), signed header, stream, "
        "worker archive sha256, unpacked while "
        "arriving with the BLAKE3 bundle hash computed as files are written, hash vs lease",
        "download_mib": round(downloaded / (1 << 20), 1),
        "download_mib_s": mibs(downloaded, statistics.median(f for _, f in downs)),
        "bare_download_mib_s": mibs(downloaded, statistics.median(b for b, _ in downs)),
        "download_vs_bare": down_ratio["median"],
        "download_vs_bare_pairs": down_ratio,
        "download_includes": "written to disk, per-file sha256, Merkle root over BLAKE3 chunk digests, "
        "receipt signature",
        "worker_cpu_s_per_upload": round(worker_cpu, 3),
        "bare_server_cpu_s_per_upload": round(bare_cpu, 3),
        "upload_ceiling_vs_bare": round(bare_up_s / worker_cpu, 3) if worker_cpu else None,
        "upload_ceiling_is": "the bare stream's median seconds over the worker's median CPU seconds per upload: the "
        "ratio the upload would reach if the worker's own CPU time were the only cost (it runs on one core: the "
        "unpacking waits for each message, and the client's process holds the other core)",
        "client_cpu_s_per_download": round(client_cpu, 3),
        "download_ceiling_vs_bare": round(statistics.median(b for b, _ in downs) / client_cpu, 3)
        if client_cpu
        else None,
        "upload_passes_ms": passes,
        "upload_passes_are": "each pass the worker makes over an upload's bytes, timed alone in this process on the "
        "same bundle (best of 3): what one upload costs the worker's core before any transport; archive_sha256 is "
        "made only when the lease names no bundle hash or the bundle is refused, and the whole path leaves it out",
        "upload_chunk_bytes": _CHUNK,
        "download_chunk_bytes": 1 << 20,
        "goals": {"upload_vs_bare": f">= {GOAL_RATIO}", "download_vs_bare": f">= {GOAL_RATIO}"},
        "meets_goals": up_ratio["median"] >= GOAL_RATIO and down_ratio["median"] >= GOAL_RATIO,  # type: ignore[operator]
        "disk_write_mib_s": _write_speed(),
        "disk_write_note": "the worker writes every upload byte twice (the partial archive that makes uploads "
        "resumable, then the bundle's files) and every download byte once; the bare stream touches no disk",
        "sha256_mib_s": _hash_speed("sha256"),
        "blake3_mib_s": _hash_speed("blake3"),
        "request_signature_ms": _signature_ms(),
        "request_signature_note": "each upload signs and the worker checks two requests (QueryUpload, "
        "UploadBundle), each download one: a fixed cost per transfer, paid in Python by eth-keys' backend",
        "environment": environment(),
    }
    emit(report, args.out)
    return 0


class _BareChannel:
    """The bare stream's two calls on one channel, each timed."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._up = channel.stream_unary(_METHOD_UP, request_serializer=_ident, response_deserializer=_ident)
        self._down = channel.unary_stream(_METHOD_DOWN, request_serializer=_ident, response_deserializer=_ident)
        self._block = os.urandom(_CHUNK)

    def up(self, size: int) -> float:
        block = self._block

        def chunks() -> Iterator[bytes]:
            for pos in range(0, size, _CHUNK):
                yield block[: min(_CHUNK, size - pos)]

        t0 = time.perf_counter()
        assert int(self._up(chunks(), timeout=600)) == size
        return time.perf_counter() - t0

    def down(self, size: int) -> float:
        t0 = time.perf_counter()
        got = sum(len(c) for c in self._down(str(size).encode(), timeout=600))
        elapsed = time.perf_counter() - t0
        assert got == size
        return elapsed


def _upload_passes(mib: int) -> dict[str, float]:
    """Milliseconds of each pass the worker makes over a ``mib`` MiB upload, timed alone (best of 3)."""
    import io

    from marketplace.protocol.bundle import pack_bundle, unpack_bundle
    from marketplace.rpc import worker_pb2 as pb
    from worker.node.receive import ArchiveReceiver

    def best(f: Callable[[], object]) -> float:
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
        return round(min(times) * 1000, 1)

    with tempfile.TemporaryDirectory(prefix="flopex-bench-") as tmp_name:
        tmp = Path(tmp_name)
        _bundle_dir(tmp / "b", mib)
        data = bytes(pack_bundle(tmp / "b"))
        wire = [pb.UploadChunk(data=data[i : i + _CHUNK]).SerializeToString() for i in range(0, len(data), _CHUNK)]
        runs = iter(range(1 << 20))

        def write_part() -> None:
            with open(tmp / "part", "wb") as fh:
                for i in range(0, len(data), _CHUNK):
                    fh.write(data[i : i + _CHUNK])

        def unpack() -> None:
            unpack_bundle(io.BytesIO(data), tmp / f"u{next(runs)}", max_bytes=1 << 40)

        def whole() -> None:
            chunks = ((m.data, m.sha256) for m in map(pb.UploadChunk.FromString, wire))
            with open(tmp / "part", "wb") as fh:
                receiver = ArchiveReceiver(chunks, fh, None, 0, len(data))  # a lease with the bundle hash
                unpack_bundle(cast(IO[bytes], receiver), tmp / f"u{next(runs)}", max_bytes=1 << 40)
                receiver.drain()

        passes = {
            "message_parse_and_data": best(lambda: [pb.UploadChunk.FromString(w).data for w in wire]),
            "archive_sha256": best(lambda: hashlib.sha256(data).digest()),
            "partial_archive_write": best(write_part),
            "inflate_untar_write_blake3": best(unpack),
            "blake3_alone": best(lambda: blake3.blake3(data).digest()),
            "whole_worker_path_no_grpc": best(whole),
        }
        return passes


def _pack_single_stream(root: Path, archive: Path) -> float:
    """Seconds to write ``root``'s files as one tar.gz stream at level 6, on one core; the archive is deleted."""
    import tarfile

    t0 = time.perf_counter()
    with tarfile.open(archive, "w:gz", compresslevel=6) as tar:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=path.relative_to(root).as_posix())
    elapsed = time.perf_counter() - t0
    archive.unlink()
    return elapsed


def _write_speed() -> float:
    """MiB/s of writing 64 MiB to a new file in the temporary folder, 1 MiB at a time (page cache, no fsync)."""
    block = os.urandom(1 << 20)
    with tempfile.TemporaryDirectory(prefix="flopex-bench-") as tmp:
        t0 = time.perf_counter()
        with open(Path(tmp) / "w.bin", "wb") as fh:
            for _ in range(64):
                fh.write(block)
        return round(64 / (time.perf_counter() - t0), 1)


def _hash_speed(name: str) -> float:
    """MiB/s of one hash over 64 MiB in memory, on one call."""
    block = os.urandom(64 << 20)
    t0 = time.perf_counter()
    if name == "blake3":
        blake3.blake3(block, max_threads=blake3.blake3.AUTO).digest()
    else:
        hashlib.sha256(block).digest()
    return round(64 / (time.perf_counter() - t0), 1)


def _signature_ms() -> dict[str, object]:
    """Milliseconds to sign one request and to recover its signer, median of 20, and eth-keys' backend."""
    from eth_account import Account
    from eth_keys.main import KeyAPI

    from marketplace.protocol.auth import Domain, payload_digest, recover_request_signer, sign_request

    account = Account.create()
    domain = Domain(31337, "0x" + "5a" * 20)
    digest = payload_digest("UploadBundle", archive_sha256=bytes(32))
    signs: list[float] = []
    recovers: list[float] = []
    for _ in range(20):
        t0 = time.perf_counter()
        signed = sign_request(account.key, domain, 1, "UploadBundle", digest)
        t1 = time.perf_counter()
        signer = recover_request_signer(domain, signed)
        recovers.append(time.perf_counter() - t1)
        signs.append(t1 - t0)
        assert signer == account.address
    return {
        "sign": round(statistics.median(signs) * 1000, 2),
        "recover": round(statistics.median(recovers) * 1000, 2),
        "backend": type(KeyAPI().backend).__name__,
    }


if __name__ == "__main__":
    raise SystemExit(main())
