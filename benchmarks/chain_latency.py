"""Latency of `flopex market` and `flopex job status` against a `flopex chain up` chain thousands of blocks long.

`flopex chain up` answers ``eth_getLogs`` from an index of its logs kept block by block
(:class:`marketplace.chain.jsonrpc_server.LogIndex`); eth-tester's own answer walks every block of
the range and used to take 3.6 s at 1,065 blocks and 12.4 s at ~1,870. This benchmark deploys the
dev market, posts a job, serves the chain over JSON-RPC as `chain up` does, mines ``--blocks``
empty blocks (a block a second for hours), then times, in this process (the command's own work,
over HTTP, imports excluded) and as a process (what a user waits for, Python's start included):
``flopex market --json`` and ``flopex job status 1 --json``; and one ``eth_getLogs`` over the whole
chain from the index. ``--compare`` also times eth-tester's own ``eth_getLogs`` (tens of seconds).

    python -m benchmarks.chain_latency [--blocks 10000] [--repeat 5] [--compare] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks._env import emit, environment

ROOT = Path(__file__).resolve().parent.parent


def _timed(fn: Any, repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(times), 4), "max_s": round(max(times), 4)}


def run(blocks: int, repeat: int, compare: bool) -> dict[str, Any]:
    """Build the chain, serve it and time the commands; returns the JSON document."""
    from click.testing import CliRunner
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    from flopex.cli.main import cli
    from marketplace.chain.client import Chain, dev_account
    from marketplace.chain.jsonrpc_server import JsonRpcChainServer
    from marketplace.contracts.devmarket import setup_dev_market
    from marketplace.requester.requester import JobOptions, Requester

    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    contracts = setup_dev_market(Chain(Web3(provider), embedded_tester=tester), accounts=4)
    Requester(contracts, dev_account(2)).submit(ROOT / "examples" / "plain_torch", JobOptions(bid_window_s=3600))
    started = time.perf_counter()
    tester.mine_blocks(blocks)
    mined_s = time.perf_counter() - started
    server = JsonRpcChainServer(provider, tester, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}"
    with tempfile.TemporaryDirectory() as home:
        deployment = Path(home) / "deployment.json"
        replace(contracts.deployment, rpc_url=url).save(deployment)
        started = time.perf_counter()
        server.logs.update()
        index_s = time.perf_counter() - started
        runner = CliRunner()

        def in_process(*args: str) -> None:
            result = runner.invoke(cli, [*args, "--deployment", str(deployment), "--json"], obj={})
            assert result.exit_code == 0, result.output

        def as_process(*args: str) -> None:
            env = {**os.environ, "FLOPEX_HOME": home}
            out = subprocess.run(
                [sys.executable, "-m", "flopex", *args, "--deployment", str(deployment), "--json"],
                capture_output=True,
                env=env,
                timeout=120,
            )
            assert out.returncode == 0, out.stderr

        in_process("market")  # imports, once
        document: dict[str, Any] = {
            "benchmark": "chain_latency",
            "blocks": contracts.chain.block_number(),
            "mine_s": round(mined_s, 2),
            "index_first_s": round(index_s, 3),
            "logs_indexed": len(server.logs.logs),
            "in_process": {
                "market": _timed(lambda: in_process("market"), repeat),
                "job_status": _timed(lambda: in_process("job", "status", "1"), repeat),
            },
            "as_process": {
                "market": _timed(lambda: as_process("market"), max(1, repeat // 2)),
                "job_status": _timed(lambda: as_process("job", "status", "1"), max(1, repeat // 2)),
            },
            "get_logs_whole_chain": _timed(
                lambda: server.handle({"id": 1, "method": "eth_getLogs", "params": [{"fromBlock": "0x0"}]}), repeat
            ),
        }
        if compare:
            document["eth_tester_get_logs_whole_chain"] = _timed(
                lambda: server._request("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest"}]), 1
            )
    server.shutdown()
    document["environment"] = environment()
    return document


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, run, print JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chain_latency", description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=10_000, help="Empty blocks mined before timing.")
    parser.add_argument("--repeat", type=int, default=5, help="Runs of each in-process measurement.")
    parser.add_argument("--compare", action="store_true", help="Also time eth-tester's own eth_getLogs.")
    parser.add_argument("--out", default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    emit(run(args.blocks, args.repeat, args.compare), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
