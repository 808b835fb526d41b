"""`flopex chain up`'s JSON-RPC server: its log index answers as eth-tester does, and stays fast for hours."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from flopex.cli.main import cli
from marketplace.chain.client import Chain, dev_account
from marketplace.chain.jsonrpc_server import JsonRpcChainServer
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.requester.requester import JobOptions, Requester

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Contracts, JsonRpcChainServer, Path]]:
    """A dev market with one posted job, served over JSON-RPC; its deployment file names the server."""
    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    contracts = setup_dev_market(Chain(Web3(provider), embedded_tester=tester), accounts=4)
    Requester(contracts, dev_account(2)).submit(ROOT / "examples" / "plain_torch", JobOptions(bid_window_s=600))
    server = JsonRpcChainServer(provider, tester, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deployment = tmp_path / "deployment.json"
    replace(contracts.deployment, rpc_url=f"http://127.0.0.1:{server.port}").save(deployment)
    try:
        yield contracts, server, deployment
    finally:
        server.shutdown()


def _both(server: JsonRpcChainServer, criteria: dict[str, Any]) -> tuple[Any, Any]:
    ours = server.handle({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs", "params": [criteria]})["result"]
    theirs = server._request("eth_getLogs", [criteria])["result"]
    return ours, theirs


def test_log_index__answers_every_kind_of_filter_as_eth_tester_does(served: Any) -> None:
    contracts, server, _ = served
    market, token = contracts.deployment.market, contracts.deployment.token
    posted = contracts.market.contract.events.JobPosted.build_filter().topics[0]
    criteria = [
        {"fromBlock": "0x0", "toBlock": "latest"},
        {"fromBlock": "0x0", "address": market},
        {"fromBlock": "0x0", "address": [market.lower(), token]},
        {"fromBlock": "0x3", "toBlock": "0x9", "address": token},
        {"fromBlock": "0x0", "topics": [posted]},
        {"fromBlock": "0x0", "topics": [[posted, "0x" + "00" * 32], None]},
        {"fromBlock": "0x0", "address": market, "topics": [None, "0x" + "00" * 31 + "01"]},
        {"fromBlock": "latest"},
    ]
    for c in criteria:
        ours, theirs = _both(server, c)
        assert ours == theirs, c
    assert _both(server, criteria[1])[0]  # not vacuous


@pytest.mark.slow
def test_after_5000_blocks__job_status_answers_in_under_a_second(served: Any) -> None:
    contracts, server, deployment = served
    server.tester.mine_blocks(5_000)  # an hour and a half of a block a second
    assert contracts.chain.block_number() > 5_000
    runner = CliRunner()
    server.logs.update()  # a live server indexes blocks as they come, a second's worth at a time
    started = time.perf_counter()
    result = runner.invoke(cli, ["job", "status", "1", "--deployment", str(deployment), "--json"], obj={})
    took = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    assert '"status": "open"' in result.output
    assert took < 1.0, f"job status took {took:.2f} s at {contracts.chain.block_number()} blocks"
