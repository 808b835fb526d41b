"""Waking on new blocks instead of polling: the chain client's listeners, its watcher on a JSON-RPC
node, the daemons' loop, and the embedded chain's one-run gas estimate."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from eth.estimators.gas import binary_gas_search_exact
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, Web3

from marketplace.chain.client import Chain, dev_account, one_pass_gas_estimate
from marketplace.chain.jsonrpc_server import JsonRpcChainServer
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.errors import ContractRevert
from worker.daemon import StepLoop


def test_embedded__a_transaction_from_another_thread_wakes_a_waiter_and_its_listeners() -> None:
    chain = Chain.embedded()
    heard: list[int] = []
    chain.add_block_listener(lambda: heard.append(1))
    seen = chain.blocks_seen
    threading.Timer(0.2, chain.mine).start()
    after = chain.wait_for_block(seen, 60.0)
    assert after > seen
    assert heard  # told on the thread that mined


def test_embedded__a_wait_with_no_block_returns_unchanged_after_its_timeout_and_a_removed_listener_is_quiet() -> None:
    chain = Chain.embedded()
    heard: list[int] = []

    def listener() -> None:
        heard.append(1)

    chain.add_block_listener(listener)
    chain.remove_block_listener(listener)
    chain.remove_block_listener(listener)  # twice: ignored
    seen = chain.blocks_seen
    assert chain.wait_for_block(seen, 0.1) == seen
    chain.mine()
    assert chain.blocks_seen == seen + 1
    assert heard == []


@pytest.fixture
def served() -> Iterator[tuple[Chain, Chain]]:
    """A dev chain served over JSON-RPC on loopback: the server's own client and a connected one."""
    tester = EthereumTester(PyEVMBackend())
    provider = EthereumTesterProvider(tester)
    local = Chain(Web3(provider), embedded_tester=tester)
    server = JsonRpcChainServer(provider, tester, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield local, Chain.connect(f"http://127.0.0.1:{server.port}")
    finally:
        server.shutdown()


def test_json_rpc__the_watcher_tells_of_a_block_another_client_made_and_stops_with_its_last_listener(
    served: tuple[Chain, Chain],
) -> None:
    local, remote = served
    seen = remote.blocks_seen
    threading.Timer(0.3, local.mine).start()  # a block this client did not make
    assert remote.wait_for_block(seen, 60.0) > seen
    deadline = time.monotonic() + 10
    while remote._watcher is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert remote._watcher is None  # nobody listens: nothing asks the node any more


class _Counting(StepLoop):
    def __init__(self, chain: Chain, poll_interval_s: float) -> None:
        contracts: Any = type("C", (), {"chain": chain})()
        super().__init__(contracts, dev_account(1), poll_interval_s=poll_interval_s, role="counter", log=_log())
        self.steps = 0
        self.stepped = threading.Event()

    def step(self) -> None:
        self.steps += 1
        self.stepped.set()


def _log() -> Any:
    import logging

    return logging.getLogger("tests.chain_blocks")


def test_step_loop__steps_on_a_new_block_and_on_wake_though_its_timer_is_an_hour() -> None:
    chain = Chain.embedded()
    loop = _Counting(chain, poll_interval_s=3600)
    loop.start()
    try:
        assert loop.stepped.wait(60)  # the first step, at once
        loop.stepped.clear()
        chain.mine()
        assert loop.stepped.wait(60), "a new block did not wake the loop"
        loop.stepped.clear()
        loop.wake()
        assert loop.stepped.wait(60), "wake() did not wake the loop"
        steps = loop.steps
    finally:
        started = time.monotonic()
        loop.stop()
    assert time.monotonic() - started < 30  # stop wakes it too: no hour-long wait
    assert loop.stopped and loop.steps >= steps == 3
    assert chain._listeners == []  # the loop's listener went with it


def test_one_run_estimate__covers_the_exact_search_for_the_markets_transactions() -> None:
    chain = Chain.embedded()
    backend = chain._tester.backend.chain  # type: ignore[union-attr]
    pairs: list[tuple[int, int]] = []

    def both(state: Any, transaction: Any) -> int:
        ours = one_pass_gas_estimate(state, transaction)
        pairs.append((ours, binary_gas_search_exact(state, transaction)))
        return ours

    backend.gas_estimator = both
    contracts = setup_dev_market(chain, accounts=4)  # deploys, stakes, approvals, registrations
    token = contracts.token
    token.approve(dev_account(2), contracts.market.address, 10**18)
    assert len(pairs) >= 10
    for ours, exact in pairs:
        assert ours >= exact, (ours, exact)


def test_one_run_estimate__a_failing_transaction_is_refused_with_its_reason_and_never_sent() -> None:
    chain = Chain.embedded()
    contracts = setup_dev_market(chain, accounts=3)
    before = chain.block_number()
    with pytest.raises(ContractRevert):
        contracts.token.transfer(dev_account(1), dev_account(2).address, 10**40)  # more than it holds
    assert chain.block_number() == before
