"""Routing a pool's slot to the member its operator assigned: leases, the requester's worker lookup,
verifiers' reads, the operator's choice of member, and the operator daemon's sealed bidding and
booking. On the embedded chain, in process."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from eth_account import Account

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.contracts.pool import Pool, PoolMember, deploy_pool, load_pool, pool_at
from marketplace.errors import ChainError, ConfigError
from marketplace.market.pricing import FixedFloor
from marketplace.market.routing import slot_worker
from marketplace.requester.requester import Requester
from marketplace.types import ONE_TOKEN, Auction, DeviceKind, JobSpec, Offer, Policy, slot_value
from worker.node.chain_leases import ChainLeases, lease_from_chain
from worker.pool.operator import OperatorSettings, PoolOperatorDaemon, pick_member, register_pool

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

REQUESTER, OPERATOR, BIG, SMALL, PLAIN, VERIFIER = 2, 3, 4, 5, 6, 7
SIGNERS = {BIG: Account.create().address, SMALL: Account.create().address}
ENDPOINTS = {BIG: "127.0.0.1:7001", SMALL: "127.0.0.1:7002"}


@pytest.fixture(scope="module")
def world() -> tuple[Contracts, Pool]:
    contracts = setup_dev_market(Chain.embedded(), accounts=8)
    pool = deploy_pool(contracts.chain, dev_account(OPERATOR), contracts, 1_000, 100 * ONE_TOKEN, 3_600)
    for index, gpus in ((BIG, 4), (SMALL, 1)):
        member = dev_account(index)
        contracts.token.approve(member, pool.address, 150 * ONE_TOKEN)
        pool.join(member, 150 * ONE_TOKEN, gpus, 8192, SIGNERS[index], ENDPOINTS[index])
    settings = OperatorSettings(
        price_floor=ONE_TOKEN // 5, strategy=FixedFloor(), device_model="test cpu", device_kind=DeviceKind.CPU
    )
    covering = register_pool(contracts, pool, dev_account(OPERATOR), settings)
    assert covering is not None and covering.address == dev_account(BIG).address
    plain = dev_account(PLAIN)
    contracts.token.approve(plain, contracts.registry.address, 200 * ONE_TOKEN)
    contracts.registry.stake(plain, 200 * ONE_TOKEN)
    contracts.registry.register_provider(
        plain, Offer("plain cpu", DeviceKind.CPU, 1, 8192, 0, ONE_TOKEN // 2, "127.0.0.1:7003", plain.address)
    )
    verifier = dev_account(VERIFIER)
    contracts.token.approve(verifier, contracts.registry.address, 100 * ONE_TOKEN)
    contracts.registry.stake(verifier, 100 * ONE_TOKEN)
    contracts.registry.register_verifier(verifier)
    return contracts, pool


def _post(contracts: Contracts, redundancy: int = 1) -> int:
    now = contracts.chain.now()
    spec = JobSpec(
        requester=dev_account(REQUESTER).address,
        bundle_hash=b"\x42" * 32,
        device_kind=DeviceKind.CPU,
        gpus=1,
        min_memory_mb=1024,
        policy=Policy.NONE,
        auction=Auction.INSTANT,
        redundancy=redundancy,
        max_price=ONE_TOKEN,
        max_gpu_seconds=360,
        bid_deadline=now + 600,
        reveal_deadline=now + 600,
        run_duration=1_800,
        challenge_window=60,
    )
    contracts.token.approve(dev_account(REQUESTER), contracts.market.address, spec.escrow)
    return contracts.market.post_job(dev_account(REQUESTER), spec)


def test_pool_at__tells_pools_from_accounts_and_other_contracts(world: tuple[Contracts, Pool]) -> None:
    contracts, pool = world
    assert pool_at(contracts, pool.address) is not None
    assert pool_at(contracts, dev_account(PLAIN).address) is None
    assert pool_at(contracts, contracts.token.address) is None
    with pytest.raises(ConfigError, match="no pool of this market at"):
        load_pool(contracts, contracts.registry.address)


def test_pool_slot__leased_to_the_assigned_member_only__and_the_requester_finds_its_worker(
    world: tuple[Contracts, Pool],
) -> None:
    contracts, pool = world
    operator = dev_account(OPERATOR)
    job_id = _post(contracts)
    pool.take_job(operator, job_id)
    requester = Requester(contracts, dev_account(REQUESTER))
    leases = ChainLeases(contracts, refresh_s=0.0)

    # Won but not assigned: no worker may serve it, and the requester waits.
    assert lease_from_chain(contracts, job_id) is None
    assert leases.lease(job_id) is None
    with pytest.raises(ChainError, match="assigned it to no member"):
        requester.worker_of(job_id, 0, pool.address, timeout_s=0.3)

    # Assigned to the small member: its signer only, not the covering member's the offer names.
    pool.assign(operator, job_id, 0, dev_account(SMALL).address)
    assert contracts.registry.offer(pool.address).signer == SIGNERS[BIG]
    lease = leases.lease(job_id)
    assert lease is not None and lease.providers == (SIGNERS[SMALL],)
    worker = requester.worker_of(job_id, 0, pool.address, timeout_s=1)
    assert (worker.endpoint, worker.signer, worker.member) == (
        ENDPOINTS[SMALL],
        SIGNERS[SMALL],
        dev_account(SMALL).address,
    )

    # Moved before a result: the lease follows the move.
    pool.assign(operator, job_id, 0, dev_account(BIG).address)
    lease = leases.lease(job_id)
    assert lease is not None and lease.names(SIGNERS[BIG]) and not lease.names(SIGNERS[SMALL])

    # Committed by the member: the verifier may read from that member's worker only.
    contracts.chain.time_travel(30)
    pool.commit_result(dev_account(BIG), job_id, 0, b"\x01" * 32, 10)
    verifier = dev_account(VERIFIER).address
    assert leases.verifier_may_read(job_id, verifier, SIGNERS[BIG])
    assert not leases.verifier_may_read(job_id, verifier, SIGNERS[SMALL])
    assert leases.lease(job_id) == lease_from_chain(contracts, job_id)


def test_mixed_job__a_plain_slot_and_a_pool_slot__each_routed_to_its_own_worker(
    world: tuple[Contracts, Pool],
) -> None:
    contracts, pool = world
    operator = dev_account(OPERATOR)
    job_id = _post(contracts, redundancy=2)
    contracts.market.take_job(dev_account(PLAIN), job_id)
    pool.take_job(operator, job_id)
    leases = ChainLeases(contracts, refresh_s=60.0)
    before = leases.lease(job_id)
    assert before is not None and before.providers == (dev_account(PLAIN).address,)  # the pool slot: nobody yet

    pool.assign(operator, job_id, 1, dev_account(SMALL).address)
    assert leases.lease(job_id) == before  # provisional for refresh_s ...
    leases.refresh_s = 0.0
    after = leases.lease(job_id)
    assert after is not None and set(after.providers) == {dev_account(PLAIN).address, SIGNERS[SMALL]}

    plain = slot_worker(contracts, job_id, 0, dev_account(PLAIN).address)
    assert plain is not None and (plain.endpoint, plain.member) == ("127.0.0.1:7003", None)
    member = slot_worker(contracts, job_id, 1, pool.address)
    assert member is not None and member.endpoint == ENDPOINTS[SMALL]


def _member(name: str, assignments: int = 0, gpus: int = 1, stake: int = 100, memory_mb: int = 8192) -> PoolMember:
    return PoolMember(name, stake, 0, 0, assignments, 0, gpus, memory_mb, name, "h:1", True)


def test_pick_member__fitting_then_least_loaded_then_taking_turns() -> None:
    spec = JobSpec(
        "0x" + "00" * 20, b"\x00" * 32, DeviceKind.CPU, 2, 4096, Policy.NONE, Auction.INSTANT, 1, 1, 1, 0, 0, 1, 1
    )
    a, b, c = _member("a", gpus=2), _member("b", gpus=2), _member("c", gpus=1)
    assert pick_member([a, b, c], spec, 100, {}) == a
    assert pick_member([a, b, c], spec, 100, {"a": 1}) == b  # taking turns
    assert pick_member([replace(a, assignments=1), b], spec, 100, {"b": 5}) == b  # the least loaded first
    assert pick_member([c], spec, 100, {}) is None  # too few devices
    assert pick_member([replace(a, stake=99)], spec, 100, {}) is None  # below the minimum stake
    assert pick_member([replace(a, memory_mb=1024)], spec, 100, {}) is None


@pytest.mark.slow
def test_operator_daemon__sealed_bid_through_the_pool__assigns__books_the_pay__collects(
    world: tuple[Contracts, Pool],
    tmp_path: Path,
) -> None:
    contracts, pool = world
    market, chain = contracts.market, contracts.chain
    settings = OperatorSettings(
        price_floor=ONE_TOKEN // 5,
        strategy=FixedFloor(),
        device_model="test cpu",
        device_kind=DeviceKind.CPU,
        withdraw=False,
    )
    daemon = PoolOperatorDaemon(contracts, dev_account(OPERATOR), pool, settings, tmp_path / "operator.json")
    daemon.memory.last_block = chain.block_number()  # only jobs from now on
    now = chain.now()
    spec = JobSpec(
        requester=dev_account(REQUESTER).address,
        bundle_hash=b"\x43" * 32,
        device_kind=DeviceKind.CPU,
        gpus=1,
        min_memory_mb=1024,
        policy=Policy.NONE,
        auction=Auction.SEALED,
        redundancy=1,
        max_price=ONE_TOKEN,
        max_gpu_seconds=360,
        bid_deadline=now + 100,
        reveal_deadline=now + 200,
        run_duration=1_800,
        challenge_window=60,
    )
    contracts.token.approve(dev_account(REQUESTER), market.address, spec.escrow)
    job_id = market.post_job(dev_account(REQUESTER), spec)
    daemon.step()
    assert [e.provider for e in market.get_events("BidCommitted", 0, job_id=job_id)] == [pool.address]
    chain.time_travel(100)
    daemon.step()
    assert [(e.provider, e.price) for e in market.get_events("BidRevealed", 0, job_id=job_id)] == [
        (pool.address, ONE_TOKEN // 5)
    ]
    chain.time_travel(100)
    daemon.step()  # finalizes, then assigns the won slot
    member = pool.assignment(job_id, 0)
    assert market.slot(job_id, 0).provider == pool.address and member is not None
    before = {m.address: pool.credits(m.address) for m in pool.members()}
    operator_before = pool.credits(dev_account(OPERATOR).address)

    chain.time_travel(60)
    pool.commit_result(dev_account(BIG if member == dev_account(BIG).address else SMALL), job_id, 0, b"\x02" * 32, 36)
    market.accept_result(dev_account(REQUESTER), job_id, 0)
    daemon.step()  # books the slot at the pool (settling it at the market) and collects
    assert pool.booked(job_id, 0) and market.credits(pool.address) == 0
    paid = slot_value(ONE_TOKEN, 36)  # the only ask: leased at the requester's max
    income = paid - paid * market.fee_bps() // 10_000
    fee = income * 1_000 // 10_000
    assert pool.credits(member) - before[member] == income - fee
    assert pool.credits(dev_account(OPERATOR).address) - operator_before == fee
    assert all(pool.credits(a) == c for a, c in before.items() if a != member)
    assert job_id in daemon.memory.done
