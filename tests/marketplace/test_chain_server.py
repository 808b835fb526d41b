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


def test_transaction_lookups__come_from_the_index_and_match_eth_testers_walk(served: Any) -> None:
    _, server, _ = served
    backend = server.tester.backend
    walk_receipt = type(backend).get_transaction_receipt
    walk_transaction = type(backend).get_transaction_by_hash
    first = _rpc(server, "eth_getBlockByNumber", "0x1", False)["transactions"][0]
    latest = _rpc(server, "eth_getBlockByNumber", "latest", False)["transactions"][0]
    for tx in (first, latest):
        raw = bytes.fromhex(tx[2:])
        assert backend.get_transaction_receipt(raw) == walk_receipt(backend, raw)
        assert backend.get_transaction_by_hash(raw) == walk_transaction(backend, raw)
        receipt = _rpc(server, "eth_getTransactionReceipt", tx)
        assert receipt["transactionHash"] == tx and _int(receipt["status"]) == 1
    assert _rpc(server, "eth_getTransactionReceipt", "0x" + "11" * 32) is None
    assert _rpc(server, "eth_getTransactionByHash", "0x" + "11" * 32) is None


@pytest.mark.slow
def test_after_5000_blocks__a_receipt_and_an_unknown_hash_answer_at_once(served: Any) -> None:
    _, server, _ = served
    first = _rpc(server, "eth_getBlockByNumber", "0x1", False)["transactions"][0]
    server.tester.mine_blocks(5_000)
    server.logs.update()
    for tx in (first, "0x" + "22" * 32):
        started = time.perf_counter()
        _rpc(server, "eth_getTransactionReceipt", tx)
        assert time.perf_counter() - started < 0.05, tx  # eth-tester's walk: about 0.4 s here


def test_a_polled_idle_chain__mines_nothing_and_contract_code_still_sees_the_wall_clock() -> None:
    tester = EthereumTester(PyEVMBackend())
    server = JsonRpcChainServer(EthereumTesterProvider(tester), tester, port=0)
    sender, receiver = tester.get_accounts()[:2]
    try:
        time.sleep(max(0.0, tester.get_block_by_number("pending")["timestamp"] - time.time()) + 1.1)
        head = server.logs.head()
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:  # what a daemon's poll asks
            _rpc(server, "eth_blockNumber")
            _rpc(server, "eth_getBlockByNumber", "latest", False)
            _rpc(server, "eth_call", {"to": receiver, "data": "0x"}, "latest")
            time.sleep(0.1)
        assert server.logs.head() == head
        assert _int(_rpc(server, "eth_getBlockByNumber", "pending", False)["timestamp"]) >= int(time.time()) - 1

        # A gas estimate runs on the pending block, at the wall clock: nothing is mined for it ...
        estimate = _rpc(server, "eth_estimateGas", {"from": sender, "to": receiver, "value": "0x1"})
        assert _int(estimate) == 21000 and server.logs.head() == head
        # ... and a transaction is mined at the wall clock, in one block.
        time.sleep(1.1)
        head, before = server.logs.head(), int(time.time())
        tx = _rpc(server, "eth_sendTransaction", {"from": sender, "to": receiver, "value": "0x1", "gas": "0x5208"})
        receipt = _rpc(server, "eth_getTransactionReceipt", tx)
        assert _int(receipt["blockNumber"]) == head + 1 == server.logs.head()
        block = _rpc(server, "eth_getBlockByNumber", receipt["blockNumber"], False)
        assert before <= _int(block["timestamp"]) <= int(time.time()) + 1
    finally:
        server.httpd.server_close()


def test_a_reverting_gas_estimate__answers_the_revert_reason_as_eth_testers_own_estimate(served: Any) -> None:
    contracts, server, _ = served
    market = contracts.market
    stranger = dev_account(3).address
    data = market.contract.encode_abi("cancel_job", [1, market.spec(1).as_tuple()])
    call = {"from": stranger, "to": market.address, "data": data}
    ours = server.handle({"jsonrpc": "2.0", "id": 1, "method": "eth_estimateGas", "params": [call]})
    backend = server.tester.backend
    pending_estimate = backend.estimate_gas
    try:
        del backend.estimate_gas  # eth-tester's own, on the latest block
        theirs = server.handle({"jsonrpc": "2.0", "id": 1, "method": "eth_estimateGas", "params": [call]})
    finally:
        backend.estimate_gas = pending_estimate
    assert ours["error"] == theirs["error"]
    assert ours["error"]["code"] == 3 and ours["error"]["message"].startswith("execution reverted: market: ")
    fine = {"from": dev_account(2).address, "to": market.address, "data": data}
    assert _int(_rpc(server, "eth_estimateGas", fine)) > 21000


def _int(value: Any) -> int:
    return int(value, 16) if isinstance(value, str) else int(value)


def _rpc(server: JsonRpcChainServer, method: str, *params: Any) -> Any:
    answer = server.handle({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
    assert "error" not in answer, answer
    return answer["result"]
