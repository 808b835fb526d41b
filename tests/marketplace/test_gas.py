"""Gas limits: the estimate with a margin, and a transaction that runs out of gas sent again with more."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from marketplace.chain import client as chain_client
from marketplace.chain.anvil import Anvil, find_anvil
from marketplace.chain.client import Chain, dev_account, gas_limit
from marketplace.contracts.deployment import Contracts, load_contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.types import ONE_TOKEN, Auction, DeviceKind, JobSpec, JobStatus, Offer, Policy, SlotStatus
from tests.conftest import require

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

REQUESTER, PROVIDERS = 2, (4, 5)


def test_gas_limit__is_the_estimate_with_a_margin_capped_at_the_block_limit() -> None:
    assert gas_limit(100_000) == 100_000 * 5 // 4 + 25_000
    assert gas_limit(136_163) > 136_163 * 6 // 5
    assert gas_limit(29_000_000, block_limit=30_000_000) == 30_000_000


@pytest.fixture
def slow_blocks() -> Iterator[Contracts]:
    """A market on an anvil node that mines a block every 2 s, two CPU providers registered."""
    require(find_anvil() is not None, "anvil (npm @foundry-rs/anvil-linux-amd64)")
    with Anvil(block_time=2) as node:
        contracts = setup_dev_market(Chain.connect(node.url), accounts=6)
        for index in PROVIDERS:
            provider = dev_account(index)
            contracts.token.approve(provider, contracts.registry.address, 200 * ONE_TOKEN)
            contracts.registry.stake(provider, 200 * ONE_TOKEN)
            contracts.registry.register_provider(
                provider,
                Offer("cpu", DeviceKind.CPU, 1, 4096, 50, ONE_TOKEN // 5, "127.0.0.1:7000", provider.address),
            )
        yield contracts


def _take_in_one_block(contracts: Contracts) -> tuple[int, list[Any]]:
    """Post a k=2 instant job and have both providers take it at once, each from its own client."""
    requester = dev_account(REQUESTER)
    now = contracts.chain.next_timestamp()
    spec = JobSpec(
        requester=requester.address,
        bundle_hash=b"\x42" * 32,
        device_kind=DeviceKind.CPU,
        gpus=1,
        min_memory_mb=1024,
        policy=Policy.REDUNDANT,
        auction=Auction.INSTANT,
        redundancy=2,
        max_price=ONE_TOKEN,
        max_gpu_seconds=600,
        bid_deadline=now + 300,
        reveal_deadline=now + 300,
        run_duration=600,
        challenge_window=60,
    )
    contracts.token.approve(requester, contracts.market.address, spec.escrow)
    job_id = contracts.market.post_job(requester, spec)
    assert contracts.chain.url is not None
    clients = [load_contracts(Chain.connect(contracts.chain.url), contracts.deployment) for _ in PROVIDERS]
    receipts: list[Any] = [None, None]
    errors: list[BaseException] = []
    go = threading.Barrier(len(PROVIDERS))

    def take(i: int) -> None:
        try:
            go.wait()
            receipts[i] = clients[i].market.take_job(dev_account(PROVIDERS[i]), job_id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(len(PROVIDERS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    return job_id, receipts


@pytest.mark.slow
@pytest.mark.anvil
def test_anvil__both_takes_of_a_k2_instant_job_in_one_block__both_land_and_the_job_is_leased(
    slow_blocks: Contracts,
) -> None:
    job_id, receipts = _take_in_one_block(slow_blocks)
    assert receipts[0]["blockNumber"] == receipts[1]["blockNumber"]  # the case that used to run out of gas
    assert slow_blocks.market.job(job_id).status == JobStatus.LEASED
    slots = slow_blocks.market.slots_of(job_id)
    assert {s.provider for s in slots} == {dev_account(i).address for i in PROVIDERS}
    assert all(s.status == SlotStatus.ASSIGNED for s in slots)


@pytest.mark.slow
@pytest.mark.anvil
def test_anvil__a_take_that_runs_out_of_gas__is_sent_again_with_twice_the_gas(
    slow_blocks: Contracts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A limit of 60% of the estimate: the takes run out of gas, and go through with twice that.
    monkeypatch.setattr(chain_client, "GAS_MARGIN", (3, 5))
    monkeypatch.setattr(chain_client, "GAS_EXTRA", 0)
    sent: list[tuple[int, int, int]] = []
    send = Chain._send

    def spy(self: Chain, account: Any, tx: dict[str, Any], name: str, *, check: bool = True) -> Any:
        receipt = send(self, account, tx, name, check=check)
        sent.append((int(tx["gas"]), int(receipt["gasUsed"]), int(receipt["status"])))
        return receipt

    monkeypatch.setattr(Chain, "_send", spy)
    job_id, _ = _take_in_one_block(slow_blocks)
    out_of_gas = [(limit, used) for limit, used, status in sent if status == 0]
    assert out_of_gas and all(used * 64 >= limit * 63 for limit, used in out_of_gas)  # all its gas, or 63/64
    assert slow_blocks.market.job(job_id).status == JobStatus.LEASED
    assert len({s.provider for s in slow_blocks.market.slots_of(job_id)}) == 2
