"""Latency of `flopex market` and `flopex job status` against a `flopex chain up` chain thousands of blocks long.

`flopex chain up` answers ``eth_getLogs`` from an index of its logs kept block by block, and looks
transactions up (``eth_getTransactionReceipt``, ``eth_getTransactionByHash``) in an index of their
hashes (:class:`marketplace.chain.jsonrpc_server.LogIndex`); eth-tester's own answers walk the
chain block by block (its ``eth_getLogs`` took 3.6 s at 1,065 blocks and 12.4 s at ~1,870; a
receipt lookup costs a block read per block back from the head, every block for an unknown hash).
This benchmark deploys the dev market, posts a job, serves the chain over JSON-RPC as `chain up`
does, mines empty blocks up to each of ``--blocks`` (a block a second while clients poll), and at
each count times, in this process (the command's own work, over HTTP, imports excluded) and as a
process (what a user waits for, Python's start included): ``flopex market --json --no-probe`` and
``flopex job status 1 --json``; one ``eth_getLogs`` over the whole chain; a receipt of the chain's
first transaction and of an unknown hash. ``--compare`` also times eth-tester's own ``eth_getLogs``
and receipt walk. ``--idle S`` first serves a fresh chain for S seconds with no client, then S
seconds with a client asking for the block number every 0.2 s, and counts the blocks mined.

    python -m benchmarks.chain_latency [--blocks 5000 10000] [--repeat 5] [--compare] [--idle 20] [--out FILE]
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


def _rpc(server: Any, method: str, *params: Any) -> Any:
    return server.handle({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})


def idle_blocks(seconds: float) -> dict[str, Any]:
    """Blocks a freshly served chain mines in ``seconds`` with no client, then with a client polling."""
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    from marketplace.chain.client import Chain
    from marketplace.chain.jsonrpc_server import JsonRpcChainServer
    from marketplace.contracts.devmarket import setup_dev_market

    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    setup_dev_market(Chain(Web3(provider), embedded_tester=tester), accounts=2)
    server = JsonRpcChainServer(provider, tester, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    client = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{server.port}"))
    try:
        # Deploying ran the chain's clock ahead of the wall clock (a block per transaction, a second
        # apart): wait until the wall clock has caught up, as it has on a chain up for a while.
        ahead = int(tester.get_block_by_number("pending")["timestamp"]) - time.time()
        time.sleep(max(0.0, ahead) + 1)
        first = server.logs.head()
        time.sleep(seconds)
        quiet = server.logs.head() - first
        first = server.logs.head()
        deadline = time.monotonic() + seconds
        polls = 0
        while time.monotonic() < deadline:
            _ = client.eth.block_number
            polls += 1
            time.sleep(0.2)
        polled = server.logs.head() - first
    finally:
        server.shutdown()
    return {
        "seconds": seconds,
        "blocks_without_clients": quiet,
        "blocks_while_polled": polled,
        "polls": polls,
        "waited_for_the_clock_s": round(max(0.0, ahead) + 1, 1),
        "blocks_per_minute_while_polled": round(polled * 60 / seconds, 1),
    }


def run(block_counts: list[int], repeat: int, compare: bool, idle_s: float = 0.0) -> dict[str, Any]:
    """Build the chain, serve it and time the commands at each block count; returns the JSON document."""
    from click.testing import CliRunner
    from eth_tester import EthereumTester, PyEVMBackend
    from web3 import EthereumTesterProvider, Web3

    from flopex.cli.main import cli
    from marketplace.chain.client import Chain, dev_account
    from marketplace.chain.jsonrpc_server import JsonRpcChainServer
    from marketplace.contracts.devmarket import setup_dev_market
    from marketplace.requester.requester import JobOptions, Requester

    document: dict[str, Any] = {"benchmark": "chain_latency"}
    if idle_s > 0:
        document["idle"] = idle_blocks(idle_s)
    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    contracts = setup_dev_market(Chain(Web3(provider), embedded_tester=tester), accounts=4)
    Requester(contracts, dev_account(2)).submit(ROOT / "examples" / "plain_torch", JobOptions(bid_window_s=3600))
    server = JsonRpcChainServer(provider, tester, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.port}"
    first_tx = _rpc(server, "eth_getBlockByNumber", "0x1", False)["result"]["transactions"][0]
    unknown = "0x" + "11" * 32
    walk = type(tester.backend).get_transaction_receipt  # eth-tester's own lookup, for --compare
    points = []
    with tempfile.TemporaryDirectory() as home:
        deployment = Path(home) / "deployment.json"
        replace(contracts.deployment, rpc_url=url).save(deployment)
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

        in_process("market", "--no-probe")  # imports, once
        for target in sorted(block_counts):
            started = time.perf_counter()
            tester.mine_blocks(max(0, target - contracts.chain.block_number()))
            mined_s = time.perf_counter() - started
            started = time.perf_counter()
            server.logs.update()
            index_s = time.perf_counter() - started
            point: dict[str, Any] = {
                "blocks": contracts.chain.block_number(),
                "mine_s": round(mined_s, 2),
                "index_new_blocks_s": round(index_s, 3),
                "logs_indexed": len(server.logs.logs),
                "transactions_indexed": len(server.logs.transactions),
                "in_process": {
                    "market": _timed(lambda: in_process("market", "--no-probe"), repeat),
                    "job_status": _timed(lambda: in_process("job", "status", "1"), repeat),
                },
                "as_process": {
                    "market": _timed(lambda: as_process("market", "--no-probe"), max(1, repeat // 2)),
                    "job_status": _timed(lambda: as_process("job", "status", "1"), max(1, repeat // 2)),
                },
                "get_logs_whole_chain": _timed(lambda: _rpc(server, "eth_getLogs", {"fromBlock": "0x0"}), repeat),
                "receipt_first_transaction": _timed(
                    lambda: _rpc(server, "eth_getTransactionReceipt", first_tx), repeat
                ),
                "receipt_unknown_hash": _timed(lambda: _rpc(server, "eth_getTransactionReceipt", unknown), repeat),
            }
            if compare:
                point["eth_tester_get_logs_whole_chain"] = _timed(
                    lambda: server._request("eth_getLogs", [{"fromBlock": "0x0", "toBlock": "latest"}]), 1
                )
                point["eth_tester_receipt_first_transaction"] = _timed(
                    lambda: walk(tester.backend, bytes.fromhex(first_tx[2:])), 1
                )
            points.append(point)
    server.shutdown()
    document["points"] = points
    document["environment"] = environment()
    return document


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse arguments, run, print JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chain_latency", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--blocks", type=int, nargs="+", default=[5_000, 10_000], help="Chain lengths to time at (blocks)."
    )
    parser.add_argument("--repeat", type=int, default=5, help="Runs of each in-process measurement.")
    parser.add_argument("--compare", action="store_true", help="Also time eth-tester's own eth_getLogs.")
    parser.add_argument("--idle", type=float, default=0.0, help="Seconds to count idle blocks for (0: skip).")
    parser.add_argument("--out", default=None, help="Also write the JSON here.")
    args = parser.parse_args(argv)
    emit(run(args.blocks, args.repeat, args.compare, args.idle), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
