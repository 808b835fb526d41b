"""Start a worker from the command line: ``python -m worker.serve --data-dir DIR [options]``.

With ``--print-port`` it prints one JSON line ``{"port": N, "provider": "0x..."}`` once it
serves, so a parent process can start it on port 0. SIGTERM and SIGINT stop it cleanly: running
jobs are killed and marked failed, the database is closed.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from marketplace.errors import FlopexError
from marketplace.protocol.bundle import parse_price
from worker.node.config import WorkerConfig
from worker.node.datasets import DatasetLimits
from worker.node.environments import EnvironmentSettings
from worker.node.leases import LeaseFile
from worker.node.service import create_server
from worker.sandbox.runner import Limits

__all__ = ["main", "parse_args"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(prog="python -m worker.serve", description="Run a flopex provider worker.")
    p.add_argument("--data-dir", type=Path, required=True, help="state, uploads, job directories (kept private)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port to bind (0 = any free port)")
    p.add_argument("--print-port", action="store_true", help='print {"port", "provider"} as JSON once serving')
    p.add_argument("--leases", type=Path, required=True, help="JSON file of leases (re-read when it changes)")
    p.add_argument("--key-file", type=Path, help="hex private key that signs receipts (default DATA_DIR/receipt.key)")
    p.add_argument("--chain-id", type=int, default=31337)
    p.add_argument("--market", default="0x" + "00" * 20, help="market contract address (EIP-712 domain)")
    p.add_argument("--cpu-slots", type=int, default=1, help="CPU devices to offer when there is no GPU")
    p.add_argument("--no-gpus", action="store_true", help="offer CPU devices even when GPUs are present")
    p.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run jobs WITHOUT bubblewrap when it is missing (only for code you trust)",
    )
    p.add_argument("--no-cgroups", action="store_true", help="use rlimits only, even where cgroups work")
    p.add_argument("--memory-limit-mb", type=int, default=4096, help="memory limit of each job")
    p.add_argument("--max-processes", type=int, default=256, help="process limit of each job")
    p.add_argument("--max-file-mb", type=int, default=1024, help="largest file a job may write")
    p.add_argument("--max-disk-mb", type=int, default=4096, help="disk a job may fill")
    p.add_argument("--max-bundle-mb", type=int, default=1024, help="largest bundle archive accepted")
    p.add_argument("--max-log-mb", type=int, default=64, help="bytes of each job output stream kept (then truncated)")
    p.add_argument("--max-result-files", type=int, default=100_000, help="files and directories of a job's results")
    p.add_argument("--upload-idle-s", type=float, default=3600.0, help="delete an unfinished upload idle this long")
    p.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="KIND=TOKENS",
        help="price per device-hour, e.g. cpu=0.1 (repeatable)",
    )
    p.add_argument("--dataset-max-mb", type=int, default=8192, help="largest dataset accepted (unpacked)")
    p.add_argument(
        "--dataset-quota-mb", type=int, default=32768, help="datasets one account that ran a job here may hold"
    )
    p.add_argument(
        "--dataset-stranger-quota-mb", type=int, default=1024, help="datasets an account with no job here may hold"
    )
    p.add_argument("--dataset-budget-mb", type=int, default=131072, help="disk all datasets may take (LRU eviction)")
    p.add_argument(
        "--dataset-stranger-budget-mb",
        type=int,
        default=8192,
        help="disk datasets of accounts with no job here may take",
    )
    p.add_argument(
        "--dataset-keep-after-job-h",
        type=float,
        default=24.0,
        help="keep a job's datasets pinned this long after it ended (cover your longest challenge window)",
    )
    p.add_argument(
        "--package-index",
        default="https://pypi.org/simple",
        help="package index that declared environments are built from ('none': no network)",
    )
    p.add_argument("--find-links", type=Path, action="append", default=[], help="a local folder of wheels (repeatable)")
    p.add_argument("--env-cache-gb", type=float, default=20.0, help="disk kept for built environments (LRU)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain (TLS)")
    p.add_argument("--tls-key", type=Path, help="PEM private key (TLS)")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> WorkerConfig:
    """Build the worker's config from parsed flags."""
    prices = {"cuda": 2 * 10**18, "cpu": 10**17}
    for item in args.price:
        kind, _, value = item.partition("=")
        prices[kind] = parse_price(value)
    return WorkerConfig(
        data_dir=args.data_dir,
        leases=LeaseFile(args.leases),
        chain_id=args.chain_id,
        market_address=args.market,
        key_file=args.key_file,
        allow_unsandboxed=args.unsafe_no_sandbox,
        use_cgroups=not args.no_cgroups,
        cpu_slots=args.cpu_slots,
        use_gpus=not args.no_gpus,
        max_bundle_bytes=args.max_bundle_mb << 20,
        max_log_bytes=args.max_log_mb << 20,
        max_result_entries=args.max_result_files,
        upload_idle_s=args.upload_idle_s,
        limits=Limits(
            memory_bytes=args.memory_limit_mb << 20,
            max_processes=args.max_processes,
            max_file_bytes=args.max_file_mb << 20,
            max_disk_bytes=args.max_disk_mb << 20,
        ),
        prices=prices,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        datasets=DatasetLimits(
            max_dataset_bytes=args.dataset_max_mb << 20,
            account_quota_bytes=args.dataset_quota_mb << 20,
            stranger_quota_bytes=args.dataset_stranger_quota_mb << 20,
            disk_budget_bytes=args.dataset_budget_mb << 20,
            stranger_budget_bytes=args.dataset_stranger_budget_mb << 20,
            keep_after_job_s=args.dataset_keep_after_job_h * 3600,
        ),
        environments=EnvironmentSettings(
            args.data_dir / "environments",
            package_index=None if args.package_index.lower() in ("", "none") else args.package_index,
            find_links=tuple(p.resolve() for p in args.find_links),
            max_cache_bytes=int(args.env_cache_gb * (1 << 30)),
        ),
    )


def main(argv: list[str] | None = None) -> int:
    """Run the worker until SIGTERM/SIGINT."""
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        server, port = create_server(config_from_args(args), f"{args.host}:{args.port}")
    except FlopexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    logging.getLogger("worker").info(
        "serving on %s:%d as provider %s (sandboxed: %s)",
        args.host,
        port,
        server.provider_address,
        server.manager.sandbox.sandboxed,
    )
    if args.print_port:
        print(json.dumps({"port": port, "provider": server.provider_address}), flush=True)
    while not stop.wait(0.5):  # timed: a signal handed to another thread runs its handler when this one wakes
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
