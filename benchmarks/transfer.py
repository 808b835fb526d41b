"""Bundle upload and result download throughput against a bare gRPC stream of the same bytes.

``python -m benchmarks.transfer [--mib 256]`` starts a worker process and a bare gRPC server
process on loopback, then measures, in the same run:

- ``upload``: :meth:`WorkerClient.upload_bundle` of a MIB-sized bundle archive (per-chunk sha256
  on both sides, whole-archive sha256, written to disk) — the timing ends when the worker has the
  archive, verified; ``upload_with_unpack`` also covers unpacking and re-hashing the bundle;
- ``download``: :meth:`WorkerClient.download_results` of a job's MIB-sized output (per-file
  sha256, Merkle root recomputed, receipt signature checked);
- ``bare_upload`` / ``bare_download``: the same number of bytes in the same chunk size through a
  gRPC stream with no hashing, no disk and no protobuf (identity serializers).

It prints one JSON document with MiB/s figures, the ratios to the bare stream, and the environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

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


def _bare(port: int, size: int) -> tuple[float, float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 8 << 20)]) as ch:
        up = ch.stream_unary(_METHOD_UP, request_serializer=_ident, response_deserializer=_ident)
        down = ch.unary_stream(_METHOD_DOWN, request_serializer=_ident, response_deserializer=_ident)
        block = os.urandom(_CHUNK)

        def chunks() -> Iterator[bytes]:
            for pos in range(0, size, _CHUNK):
                yield block[: min(_CHUNK, size - pos)]

        t0 = time.perf_counter()
        assert int(up(chunks(), timeout=600)) == size
        t_up = time.perf_counter() - t0
        t0 = time.perf_counter()
        got = sum(len(c) for c in down(str(size).encode(), timeout=600))
        t_down = time.perf_counter() - t0
        assert got == size
    return t_up, t_down


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.transfer")
    parser.add_argument("--mib", type=int, default=256, help="bundle and output size in MiB")
    parser.add_argument("--chunk-kib", type=int, default=1024, help="upload chunk size (both streams)")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global _CHUNK
    _CHUNK = args.chunk_kib << 10
    if args.bare_server:
        serve_bare()
        return 0

    from eth_account import Account

    from benchmarks._env import environment
    from marketplace.protocol.auth import Domain
    from marketplace.protocol.bundle import load_bundle, pack_bundle
    from marketplace.requester.client import WorkerClient
    from worker.node.leases import DeviceRequirements, Lease, LeaseFile

    repo = Path(__file__).resolve().parent.parent
    market = "0x" + "5a" * 20
    domain = Domain(31337, market)
    requester = Account.create()
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
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "worker.serve",
                "--data-dir",
                str(tmp / "data"),
                "--leases",
                str(leases),
                "--key-file",
                str(key),
                "--market",
                market,
                "--print-port",
                "--log-level",
                "WARNING",
                "--max-bundle-mb",
                mb,
                "--max-file-mb",
                mb,
                "--max-disk-mb",
                mb,
                "--memory-limit-mb",
                "2048",
            ],
            cwd=repo,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert worker.stdout is not None
        hello = json.loads(worker.stdout.readline())
        try:
            bundle = tmp / "bundle"
            bundle.mkdir()
            (bundle / "job.toml").write_text(
                '[job]\nentrypoint = "main.py"\ninputs = ["blob.bin"]\n[resources]\ndevice = "cpu"\n'
                'timeout_s = 600\n[market]\nmax_price = "1"\n'
            )
            (bundle / "main.py").write_text(
                "import os\nout = os.path.join(os.environ['FLOPEX_OUTPUT_DIR'], 'result.bin')\n"
                f"with open(out, 'wb') as fh:\n    for _ in range({args.mib}):\n"
                "        fh.write(os.urandom(1 << 20))\n"
            )
            with open(bundle / "blob.bin", "wb") as fh:
                for _ in range(args.mib):
                    fh.write(os.urandom(1 << 20))
            t0 = time.perf_counter()
            archive = tmp / "bundle.tar.gz"
            pack_bundle(bundle, archive)
            pack_s = time.perf_counter() - t0
            archive_size = archive.stat().st_size
            bhash = load_bundle(bundle).hash
            LeaseFile.write(
                leases,
                [
                    Lease(
                        1,
                        requester.address,
                        (hello["provider"],),
                        bhash,
                        int(time.time()) + 3600,
                        DeviceRequirements("cpu", 1),
                    )
                ],
            )
            bare_up, _ = _bare(bare_port, archive_size)
            with WorkerClient(
                f"127.0.0.1:{hello['port']}", requester_key=requester.key, domain=domain, timeout_s=60
            ) as client:
                stream_s = _upload_all_but_last_byte(client, f"127.0.0.1:{hello['port']}", archive)
                t0 = time.perf_counter()
                status = client.upload_bundle(1, archive, chunk_size=_CHUNK)
                finish_s = time.perf_counter() - t0
                assert status.complete and status.bundle_hash == bhash
                upload_s = stream_s + finish_s
                client.start_job(1, 0)
                final = client.wait(1, timeout_s=600)
                assert final.HasField("finished"), final
                t0 = time.perf_counter()
                results = client.download_results(1, tmp / "results", provider=hello["provider"])
                download_s = time.perf_counter() - t0
                downloaded = results.manifest.total_bytes
            bare_down_result = _bare(bare_port, downloaded)[1]
        finally:
            worker.terminate()
            worker.wait(30)
            bare.stdin.close()
            bare.wait(30)
            for pipe in (worker.stdout, bare.stdout):
                pipe.close()

    def mibs(n: int, s: float) -> float:
        return round(n / (1 << 20) / s, 1)

    report = {
        "benchmark": "transfer",
        "bundle_archive_mib": round(archive_size / (1 << 20), 1),
        "pack_seconds": round(pack_s, 2),
        "upload_stream_mib_s": mibs(archive_size, stream_s),
        "upload_stream_includes": "signed header, per-chunk sha256 on both sides, written to the worker's disk",
        "upload_mib_s": mibs(archive_size, upload_s),
        "upload_includes": "the stream, then whole-archive sha256, unpack with limits, bundle hash vs lease",
        "bare_upload_mib_s": mibs(archive_size, bare_up),
        "upload_stream_vs_bare": round(bare_up / stream_s, 3),
        "upload_vs_bare": round(bare_up / upload_s, 3),
        "download_mib": round(downloaded / (1 << 20), 1),
        "download_mib_s": mibs(downloaded, download_s),
        "download_includes": "per-file sha256, Merkle root recomputed from the files, receipt signature",
        "bare_download_mib_s": mibs(downloaded, bare_down_result),
        "download_vs_bare": round(bare_down_result / download_s, 3),
        "upload_chunk_bytes": _CHUNK,
        "download_chunk_bytes": 1 << 20,
        "goal": "each ratio >= 0.70",
        "sha256_mib_s": _sha_speed(),
        "environment": environment(),
    }
    print(json.dumps(report, indent=2))
    return 0


def _upload_all_but_last_byte(client: object, target: str, archive: Path) -> float:
    """Stream all but the archive's last byte as UploadBundle does; return the seconds it took."""
    from marketplace.protocol.auth import payload_digest
    from marketplace.requester.client import WorkerClient
    from marketplace.rpc import worker_pb2 as pb
    from marketplace.rpc import worker_pb2_grpc as pb_grpc

    assert isinstance(client, WorkerClient)
    size = archive.stat().st_size
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        stub = pb_grpc.WorkerServiceStub(channel)
        t0 = time.perf_counter()
        sha = hashlib.sha256(archive.read_bytes()).digest()
        auth = client.auth(1, "UploadBundle", payload_digest("UploadBundle", archive_sha256=sha))

        def messages() -> Iterator[pb.UploadChunk]:
            yield pb.UploadChunk(
                header=pb.UploadHeader(job_id=1, archive_size=size, archive_sha256=sha, offset=0, auth=auth)
            )
            with open(archive, "rb") as fh:
                left = size - 1
                while left > 0:
                    data = fh.read(min(_CHUNK, left))
                    left -= len(data)
                    yield pb.UploadChunk(data=data, sha256=hashlib.sha256(data).digest())

        status = stub.UploadBundle(messages(), timeout=600)
        assert status.received_bytes == size - 1 and not status.complete
        return time.perf_counter() - t0


def _sha_speed() -> float:
    block = os.urandom(64 << 20)
    t0 = time.perf_counter()
    hashlib.sha256(block).digest()
    return round(64 / (time.perf_counter() - t0), 1)


if __name__ == "__main__":
    raise SystemExit(main())
