"""ProviderPool: members join with stake and devices, the pool stakes and registers as one
provider, bids through its operator, assigns each slot it wins to one member, books the pay
(less the operator's fee) or the slash to that member, and lets everyone pull what it is owed.

Members are ``provider`` (8 GPUs), ``provider2`` (4 GPUs) and ``provider3`` (1 GPU); the pool's
helpers here are shared with ``test_pool_stateful.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boa
import pytest

from tests.contracts.contract_helpers import (
    AUCTION_INSTANT,
    BASE_SLASH,
    CONTRACTS,
    DEFAULT_PRICE_FLOOR,
    DISPUTE_BOND,
    E18,
    FEE_BPS,
    MIN_PROVIDER_STAKE,
    NO_SHOW_ROOT,
    OUTCOME_ACCEPT,
    OUTCOME_REJECT,
    OUTCOME_VOID,
    ROOT_HASH,
    SLASH_REQUESTER_BPS,
    SLOT_PAID,
    SLOT_REFUNDED,
    SLOT_RELEASED,
    SLOT_SLASHED,
    UNBONDING_PERIOD,
    Deployment,
    Flow,
    Spec,
    deploy,
    fund,
    load,
    make_offer,
    make_spec,
    now,
    owner_change_queued_earlier,
    travel_to,
    value,
)

MIN_MEMBER_STAKE = 100 * E18
POOL_FEE_BPS = 1_000
MEMBER_UNBONDING = 3 * 86_400
MAX_MEMBERS = 64
ENDPOINT = "10.0.0.7:50051"


# ---------------------------------------------------------------- helpers (shared with the stateful test)


def deploy_pool(
    d: Deployment,
    operator: str,
    fee_bps: int = POOL_FEE_BPS,
    min_member_stake: int = MIN_MEMBER_STAKE,
    unbonding_period: int = MEMBER_UNBONDING,
) -> Any:
    """Deploys a pool over ``d``'s token, registry and market."""
    pool = load(
        "ProviderPool",
        d.token.address,
        d.registry.address,
        d.market.address,
        operator,
        fee_bps,
        min_member_stake,
        unbonding_period,
    )
    assert len(boa.env.get_code(pool.address)) > 0
    return pool


def pool_events(pool: Any, name: str) -> list[Any]:
    """The events called ``name`` the pool itself emitted in its last call (not the market's
    or the registry's, some of which share names)."""
    return [e for e in pool.get_logs(include_child_logs=False) if type(e).__name__ == name]


def pool_event(pool: Any, name: str) -> Any:
    found = pool_events(pool, name)
    assert len(found) == 1, f"expected one {name}, got {pool.get_logs(include_child_logs=False)}"
    return found[0]


def join(pool: Any, token: Any, member: str, stake: int, gpus: int = 8, memory_mb: int = 141_000) -> None:
    """Approves the pool for ``stake`` and joins as ``member`` signing its own receipts."""
    with boa.env.prank(member):
        token.approve(pool.address, stake)
        pool.join(stake, gpus, memory_mb, member, ENDPOINT)


def pool_offer(pool: Any, operator: str, **overrides: Any) -> Any:
    """An offer for the pool: 8 devices of 80 GB, receipts signed by the operator."""
    fields: dict[str, Any] = {"gpu_count": 8, "memory_mb": 80_000, "endpoint": "pool.example:50051"}
    fields.update(overrides)
    return make_offer(operator, **fields)


def pool_takes(flow: Flow, pool: Any, operator: str, spec: Spec) -> int:
    """Posts the instant job ``spec`` and has the pool take its first slot."""
    job_id = flow.post(spec)
    with boa.env.prank(operator):
        assert pool.take_job(job_id, spec) == 0
    return job_id


def assign(pool: Any, operator: str, job_id: int, spec: Spec, member: str, slot: int = 0) -> None:
    with boa.env.prank(operator):
        pool.assign(job_id, spec, slot, member)


def commit(pool: Any, caller: str, job_id: int, spec: Spec, gpu_seconds: int, slot: int = 0) -> None:
    with boa.env.prank(caller):
        pool.commit_result(job_id, spec, slot, ROOT_HASH, gpu_seconds)


def pool_assets(pool: Any, d: Deployment) -> int:
    """What the pool holds: tokens, its registry stake and its market credit."""
    return d.token.balanceOf(pool.address) + d.registry.total_stake(pool.address) + d.market.credits(pool.address)


def pool_owes(pool: Any) -> int:
    """What the pool owes: members' stake and everyone's credit."""
    return pool.total_stake() + pool.total_unbonding() + pool.total_credits()


def assert_pool_solvent(pool: Any, d: Deployment) -> None:
    """The ledger: assets == debts + unattributed income - unattributed loss, and the totals
    are the sums of the members' records."""
    income, loss = pool.unattributed()
    assert pool_assets(pool, d) == pool_owes(pool) + income - loss
    members = [pool.member_list(i) for i in range(pool.member_count())]
    assert sum(pool.members(m).stake for m in members) == pool.total_stake()
    assert sum(pool.members(m).unbonding for m in members) == pool.total_unbonding()
    assert pool.booked_registry_stake() + pool.released() == pool.total_stake() + pool.total_unbonding()


def split(income: int, fee_bps: int = POOL_FEE_BPS) -> tuple[int, int]:
    """(member pay, operator fee) of ``income``."""
    fee = income * fee_bps // 10_000
    return income - fee, fee


def market_net(price: int, gpu_seconds: int, max_gpu_seconds: int = 3_600) -> int:
    """What the market credits a provider for a paid slot: pay less the market fee."""
    paid = min(value(price, gpu_seconds), value(price, max_gpu_seconds))
    return paid - paid * FEE_BPS // 10_000


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def operator() -> str:
    return boa.env.generate_address("operator")


@pytest.fixture(scope="module")
def pool(deployment: Deployment, operator: str) -> Any:
    return deploy_pool(deployment, operator)


@pytest.fixture(scope="module")
def stakes(provider: str, provider2: str, provider3: str) -> dict[str, int]:
    return {provider: 500 * E18, provider2: 300 * E18, provider3: 200 * E18}


@pytest.fixture
def members(pool: Any, token: Any, stakes: dict[str, int], provider: str, provider2: str, provider3: str) -> Any:
    """``provider`` (8 GPUs), ``provider2`` (4) and ``provider3`` (1 GPU of 24 GB) joined."""
    join(pool, token, provider, stakes[provider], gpus=8)
    join(pool, token, provider2, stakes[provider2], gpus=4)
    join(pool, token, provider3, stakes[provider3], gpus=1, memory_mb=24_000)
    return pool


@pytest.fixture
def registered(members: Any, operator: str, provider: str, providers: Flow) -> Any:
    """The pool registered with an 8-GPU offer that ``provider`` covers; the verifier too."""
    with boa.env.prank(operator):
        members.register(pool_offer(members, operator), provider)
    return members


@pytest.fixture
def instant(requester: str) -> Spec:
    """An instant one-GPU job of an hour at most, at up to 10 tokens per GPU-hour."""
    return make_spec(requester, auction=AUCTION_INSTANT)


# ---------------------------------------------------------------- deploy


def test_pool__deploys_with_its_parameters(pool, token, registry, market, operator):
    assert pool.token() == token.address
    assert pool.registry() == registry.address
    assert pool.market() == market.address
    assert pool.operator() == operator
    assert pool.fee_bps() == POOL_FEE_BPS
    assert pool.min_member_stake() == MIN_MEMBER_STAKE
    assert pool.unbonding_period() == MEMBER_UNBONDING
    assert pool.MAX_FEE_BPS() == 2_000
    assert pool.MAX_MEMBERS() == MAX_MEMBERS
    assert pool.member_count() == 0
    assert pool.unattributed() == (0, 0)
    assert not pool.draining()


def test_deploy__with_the_fee_cap__works__and_above_it__reverts(deployment, operator):
    assert deploy_pool(deployment, operator, fee_bps=2_000).fee_bps() == 2_000
    with boa.reverts("pool: fee above 20%"):
        deploy_pool(deployment, operator, fee_bps=2_001)


def test_deploy__with_no_operator__reverts(deployment):
    with boa.reverts("pool: operator is the zero address"):
        deploy_pool(deployment, "0x" + "00" * 20)


def test_deploy__with_a_zero_minimum_stake__reverts(deployment, operator):
    with boa.reverts("pool: zero minimum stake"):
        deploy_pool(deployment, operator, min_member_stake=0)


def test_deploy__over_contracts_that_do_not_belong_together__reverts(deployment, operator, owner, treasury):
    other = deploy(owner, treasury)
    mixes = [
        ((other.token, deployment.registry, deployment.market), "pool: registry token mismatch"),
        ((deployment.token, deployment.registry, other.market), "pool: market does not use the registry"),
    ]
    for (token, registry, market), reason in mixes:
        with boa.reverts(reason):
            load(
                "ProviderPool",
                token.address,
                registry.address,
                market.address,
                operator,
                0,
                1,
                0,
            )
    # A registry whose market was never set does not serve this market.
    with boa.env.prank(owner):
        lone = load("ProviderRegistry", deployment.token.address, 1, 1, 1)
        market = load("JobMarket", deployment.token.address, lone.address, treasury, 0, 0, 0, 0)
    with boa.reverts("pool: registry does not serve the market"):
        load(
            "ProviderPool",
            deployment.token.address,
            lone.address,
            market.address,
            operator,
            0,
            1,
            0,
        )


# ---------------------------------------------------------------- join, stake, devices


def test_join__bonds_the_stake_in_the_registry_as_the_pool_s__and_logs(pool, token, registry, provider):
    before = token.balanceOf(provider)
    join(pool, token, provider, 250 * E18, gpus=2, memory_mb=24_000)
    log = pool_event(pool, "MemberJoined")
    assert (log.member, log.stake, log.gpus, log.memory_mb, log.signer, log.endpoint) == (
        provider,
        250 * E18,
        2,
        24_000,
        provider,
        ENDPOINT,
    )
    m = pool.members(provider)
    assert (m.stake, m.unbonding, m.gpus, m.memory_mb, m.signer, m.endpoint, m.joined) == (
        250 * E18,
        0,
        2,
        24_000,
        provider,
        ENDPOINT,
        True,
    )
    assert token.balanceOf(provider) == before - 250 * E18
    assert registry.stakes(pool.address).active == 250 * E18
    assert token.balanceOf(pool.address) == 0
    assert token.allowance(pool.address, registry.address) == 0
    assert pool.total_stake() == 250 * E18 and pool.total_gpus() == 2
    assert pool.member_count() == 1 and pool.member_list(0) == provider


def test_join__below_the_minimum_stake__reverts(pool, token, provider):
    with boa.env.prank(provider), boa.reverts("pool: stake below minimum"):
        pool.join(MIN_MEMBER_STAKE - 1, 1, 1, provider, ENDPOINT)


def test_join__a_second_time__reverts(members, provider):
    with boa.env.prank(provider), boa.reverts("pool: already a member"):
        members.join(MIN_MEMBER_STAKE, 1, 1, provider, ENDPOINT)


@pytest.mark.parametrize(
    ("gpus", "memory_mb", "no_signer", "endpoint", "reason"),
    [
        (0, 1, False, ENDPOINT, "pool: no devices"),
        (1, 0, False, ENDPOINT, "pool: no device memory"),
        (1, 1, True, ENDPOINT, "pool: no signer"),
        (1, 1, False, "", "pool: no endpoint"),
    ],
)
def test_join__with_an_incomplete_worker_description__reverts(
    pool, provider, gpus, memory_mb, no_signer, endpoint, reason
):
    signer = "0x" + "00" * 20 if no_signer else provider
    with boa.env.prank(provider), boa.reverts(reason):
        pool.join(MIN_MEMBER_STAKE, gpus, memory_mb, signer, endpoint)


def test_join__without_an_allowance__reverts_at_the_token(pool, provider):
    with boa.env.prank(provider), boa.reverts():
        pool.join(MIN_MEMBER_STAKE, 1, 1, provider, ENDPOINT)
    assert not pool.members(provider).joined


def test_join__when_the_pool_is_full__reverts(pool, deployment, token, stranger):
    for i in range(MAX_MEMBERS):
        member = boa.env.generate_address(f"member{i}")
        fund(deployment, member, MIN_MEMBER_STAKE)
        join(pool, token, member, MIN_MEMBER_STAKE)
    assert pool.member_count() == MAX_MEMBERS
    with boa.env.prank(stranger):
        token.approve(pool.address, MIN_MEMBER_STAKE)
        with boa.reverts("pool: pool is full"):
            pool.join(MIN_MEMBER_STAKE, 1, 1, stranger, ENDPOINT)


def test_add_stake__bonds_more__and_logs(members, token, registry, provider, stakes):
    with boa.env.prank(provider):
        token.approve(members.address, 10 * E18)
        members.add_stake(10 * E18)
    log = pool_event(members, "MemberStaked")
    assert (log.member, log.amount, log.stake) == (provider, 10 * E18, stakes[provider] + 10 * E18)
    assert registry.stakes(members.address).active == sum(stakes.values()) + 10 * E18


def test_add_stake__by_a_stranger__or_of_nothing__reverts(members, stranger, provider):
    with boa.env.prank(stranger), boa.reverts("pool: not a member"):
        members.add_stake(E18)
    with boa.env.prank(provider), boa.reverts("pool: zero amount"):
        members.add_stake(0)


def test_update_devices__replaces_the_worker_description__and_logs(members, provider, stranger):
    with boa.env.prank(provider):
        members.update_devices(2, 40_000, stranger, "10.9.9.9:1")
    log = pool_event(members, "MemberDevicesUpdated")
    assert (log.member, log.gpus, log.memory_mb, log.signer, log.endpoint) == (
        provider,
        2,
        40_000,
        stranger,
        "10.9.9.9:1",
    )
    m = members.members(provider)
    assert (m.gpus, m.memory_mb, m.signer, m.endpoint) == (2, 40_000, stranger, "10.9.9.9:1")
    assert members.total_gpus() == 2 + 4 + 1


def test_update_devices__by_a_stranger__or_incomplete__reverts(members, provider, stranger):
    with boa.env.prank(stranger), boa.reverts("pool: not a member"):
        members.update_devices(1, 1, stranger, ENDPOINT)
    with boa.env.prank(provider), boa.reverts("pool: no devices"):
        members.update_devices(0, 1, provider, ENDPOINT)


# ---------------------------------------------------------------- register


def test_register__publishes_one_offer_covered_by_a_member__and_logs(members, registry, operator, provider):
    offer = pool_offer(members, operator)
    with boa.env.prank(operator):
        members.register(offer, provider)
    log = pool_event(members, "PoolRegistered")
    assert (log.covering_member, log.gpu_count, log.memory_mb, log.price_floor, log.total_gpus) == (
        provider,
        8,
        80_000,
        DEFAULT_PRICE_FLOOR,
        13,
    )
    assert registry.is_provider(members.address)
    assert registry.offers(members.address).gpu_count == 8
    assert registry.is_eligible(members.address, 1, 8, 80_000, 0)
    assert not registry.is_eligible(members.address, 1, 9, 80_000, 0)


def test_register__by_a_stranger__reverts(members, stranger, provider):
    with boa.env.prank(stranger), boa.reverts("pool: caller is not the operator"):
        members.register(pool_offer(members, stranger), provider)


def test_register__with_more_than_the_covering_member_has__reverts(members, operator, provider2, stranger):
    with boa.env.prank(operator):
        with boa.reverts("pool: offer has more devices than the member"):
            members.register(pool_offer(members, operator), provider2)
        with boa.reverts("pool: offer has more memory than the member"):
            members.register(pool_offer(members, operator, gpu_count=4, memory_mb=200_000), provider2)
        with boa.reverts("pool: covering member is not a bonded member"):
            members.register(pool_offer(members, operator, gpu_count=1), stranger)


def test_register__with_less_pooled_stake_than_the_registry_minimum__reverts(pool, token, operator, provider):
    join(pool, token, provider, MIN_PROVIDER_STAKE - 1)
    with boa.env.prank(operator), boa.reverts("registry: stake below minimum"):
        pool.register(pool_offer(pool, operator), provider)


def test_deregister__withdraws_the_offer__only_for_the_operator(registered, registry, operator, stranger):
    with boa.env.prank(stranger), boa.reverts("pool: caller is not the operator"):
        registered.deregister()
    with boa.env.prank(operator):
        registered.deregister()
    assert pool_event(registered, "PoolDeregistered").operator == operator
    assert not registry.is_provider(registered.address)


# ---------------------------------------------------------------- bidding


def test_sealed_auction__the_operator_bids_for_the_pool__and_wins(registered, market, flow, operator, spec):
    job_id = flow.post(spec)
    salt = b"\x42" * 32
    commitment = market.bid_commitment(job_id, registered.address, 7 * E18, salt)
    with boa.env.prank(operator):
        registered.commit_bid(job_id, spec, commitment)
    assert market.commitments(job_id, registered.address) == commitment
    travel_to(spec.bid_deadline)
    with boa.env.prank(operator):
        registered.reveal_bid(job_id, spec, 7 * E18, salt)
    travel_to(spec.reveal_deadline)
    flow.finalize(job_id, spec)
    assert market.slots(job_id, 0).provider == registered.address


def test_bidding__by_a_stranger_or_a_member__reverts(registered, flow, stranger, provider, spec, instant):
    job_id = flow.post(spec)
    instant_id = flow.post(instant)
    for caller in (stranger, provider):
        with boa.env.prank(caller):
            with boa.reverts("pool: caller is not the operator"):
                registered.commit_bid(job_id, spec, b"\x01" * 32)
            with boa.reverts("pool: caller is not the operator"):
                registered.reveal_bid(job_id, spec, E18, b"\x01" * 32)
            with boa.reverts("pool: caller is not the operator"):
                registered.take_job(instant_id, instant)


def test_take_job__leases_an_instant_slot_to_the_pool(registered, market, registry, flow, operator, instant):
    job_id = pool_takes(flow, registered, operator, instant)
    s = market.slots(job_id, 0)
    assert (s.provider, s.price) == (registered.address, DEFAULT_PRICE_FLOOR)
    assert registry.stakes(registered.address).active_jobs == 1


def test_take_job__a_second_slot_of_the_same_job__reverts_at_the_market(registered, flow, operator, requester):
    spec = make_spec(requester, auction=AUCTION_INSTANT, redundancy=2)
    job_id = flow.post(spec)
    with boa.env.prank(operator):
        registered.take_job(job_id, spec)
        with boa.reverts("market: provider already holds a slot"):
            registered.take_job(job_id, spec)


# ---------------------------------------------------------------- assign and commit


def test_assign__records_the_member_on_chain__and_logs(registered, flow, operator, provider3, instant):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider3)
    log = pool_event(registered, "SlotAssigned")
    assert (log.job_id, log.slot, log.member, log.previous) == (job_id, 0, provider3, "0x" + "00" * 20)
    assert registered.assignments(job_id, 0) == provider3
    assert registered.members(provider3).assignments == 1
    assert registered.open_assignments() == 1


def test_assign__again_before_a_result__moves_the_slot_to_another_member(
    registered, flow, operator, provider, provider3, instant
):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider3)
    assign(registered, operator, job_id, instant, provider)
    assert pool_event(registered, "SlotAssigned").previous == provider3
    assert registered.members(provider3).assignments == 0
    assert registered.members(provider).assignments == 1
    assert registered.open_assignments() == 1
    with boa.env.prank(operator), boa.reverts("pool: slot already assigned to the member"):
        registered.assign(job_id, instant, 0, provider)


def test_assign__by_a_stranger_or_a_member__reverts(registered, flow, operator, stranger, provider, instant):
    job_id = pool_takes(flow, registered, operator, instant)
    for caller in (stranger, provider):
        with boa.env.prank(caller), boa.reverts("pool: caller is not the operator"):
            registered.assign(job_id, instant, 0, provider)


def test_assign__to_a_member_without_the_devices_the_job_needs__reverts(
    registered, flow, operator, requester, provider2, provider3
):
    eight = make_spec(requester, auction=AUCTION_INSTANT, gpus=8)
    job_id = pool_takes(flow, registered, operator, eight)
    with boa.env.prank(operator), boa.reverts("pool: member has too few devices"):
        registered.assign(job_id, eight, 0, provider2)
    big = make_spec(requester, auction=AUCTION_INSTANT, min_memory_mb=40_000)
    job_id = pool_takes(flow, registered, operator, big)
    with boa.env.prank(operator), boa.reverts("pool: member has too little memory"):
        registered.assign(job_id, big, 0, provider3)


def test_assign__to_a_stranger_or_a_member_leaving_with_all_its_stake__reverts(
    registered, flow, operator, stranger, provider3, instant
):
    job_id = pool_takes(flow, registered, operator, instant)
    with boa.env.prank(operator), boa.reverts("pool: member stake below minimum"):
        registered.assign(job_id, instant, 0, stranger)
    with boa.env.prank(provider3):
        registered.request_leave(registered.members(provider3).stake)
    with boa.env.prank(operator), boa.reverts("pool: member stake below minimum"):
        registered.assign(job_id, instant, 0, provider3)


def test_assign__a_slot_that_is_not_the_pool_s_or_a_wrong_spec__reverts(
    registered, flow, operator, provider, provider2, requester, instant
):
    job_id = flow.post(instant)
    flow.take(job_id, instant, provider)  # provider is also registered directly (conftest)
    with boa.env.prank(operator):
        with boa.reverts("pool: slot is not the pool's"):
            registered.assign(job_id, instant, 0, provider)
        with boa.reverts("pool: spec does not match job"):
            registered.assign(job_id, instant._replace(gpus=2), 0, provider)
        with boa.reverts("pool: unknown job"):
            registered.assign(job_id + 1, instant, 0, provider)
        with boa.reverts("pool: no such slot"):
            registered.assign(job_id, instant, 1, provider)


def test_assign__after_the_result_is_committed__reverts(registered, flow, operator, provider, instant):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider)
    boa.env.time_travel(seconds=600)
    commit(registered, operator, job_id, instant, 600)
    with boa.env.prank(operator), boa.reverts("pool: slot is not awaiting work"):
        registered.assign(job_id, instant, 0, provider)


def test_commit_result__by_the_assigned_member_or_the_operator__reaches_the_market(
    registered, market, flow, operator, provider, provider2, instant
):
    for caller in (provider, operator):
        job_id = pool_takes(flow, registered, operator, instant)
        assign(registered, operator, job_id, instant, provider)
        boa.env.time_travel(seconds=900)
        commit(registered, caller, job_id, instant, 900)
        s = market.slots(job_id, 0)
        assert (s.result_root, s.gpu_seconds) == (ROOT_HASH, 900)


def test_commit_result__unassigned__or_by_another_member_or_a_stranger__reverts(
    registered, flow, operator, provider, provider2, stranger, instant
):
    job_id = pool_takes(flow, registered, operator, instant)
    boa.env.time_travel(seconds=900)
    with boa.env.prank(operator), boa.reverts("pool: slot not assigned"):
        registered.commit_result(job_id, instant, 0, ROOT_HASH, 900)
    assign(registered, operator, job_id, instant, provider)
    for caller in (provider2, stranger):
        with boa.env.prank(caller), boa.reverts("pool: caller is not the operator or the member"):
            registered.commit_result(job_id, instant, 0, ROOT_HASH, 900)


# ---------------------------------------------------------------- settlement: money paths


def _paid_slot(registered, flow, operator, member, spec, gpu_seconds, accept=True):
    job_id = pool_takes(flow, registered, operator, spec)
    assign(registered, operator, job_id, spec, member)
    boa.env.time_travel(seconds=gpu_seconds)
    commit(registered, member, job_id, spec, gpu_seconds)
    if accept:
        with boa.env.prank(spec.requester):
            flow.market.accept_result(job_id, spec, 0)
    return job_id


def test_settle__a_paid_slot__credits_its_member_the_pay_less_the_operator_fee__and_logs(
    registered, deployment, market, flow, operator, provider2, stranger, instant
):
    job_id = _paid_slot(registered, flow, operator, provider2, instant, 1_800)
    with boa.env.prank(stranger):
        registered.settle(job_id, instant, 0)
    income = market_net(DEFAULT_PRICE_FLOOR, 1_800)
    pay, fee = split(income)
    log = pool_event(registered, "SlotBooked")
    assert (log.job_id, log.slot, log.member, log.status, log.gpu_seconds) == (job_id, 0, provider2, SLOT_PAID, 1_800)
    assert (log.income, log.member_pay, log.operator_fee, log.loss) == (income, pay, fee, 0)
    assert market.slots(job_id, 0).status == SLOT_PAID
    assert registered.credits(provider2) == pay and registered.credits(operator) == fee
    assert registered.members(provider2).gpu_seconds == 1_800
    assert registered.members(provider2).assignments == 0 and registered.open_assignments() == 0
    assert market.credits(registered.address) == income
    assert_pool_solvent(registered, deployment)


def test_settle__a_slot_someone_else_settled__books_the_same_pay(
    registered, deployment, flow, market, operator, provider2, instant
):
    job_id = _paid_slot(registered, flow, operator, provider2, instant, 1_800)
    flow.settle(job_id, instant, 0)  # the requester settles at the market directly
    income = market_net(DEFAULT_PRICE_FLOOR, 1_800)
    assert registered.unattributed() == (income, 0)
    registered.settle(job_id, instant, 0)
    assert pool_event(registered, "SlotBooked").income == income
    assert registered.credits(provider2) == split(income)[0]
    assert registered.unattributed() == (0, 0)
    assert_pool_solvent(registered, deployment)


def _no_show_slot(registered: Any, flow: Flow, operator: str, member: str, spec: Spec) -> tuple[int, int]:
    """The pool's slot of ``spec``, assigned to ``member``, reported as a no-show; returns it and the fee."""
    job_id = pool_takes(flow, registered, operator, spec)
    assign(registered, operator, job_id, spec, member)
    travel_to(flow.market.jobs(job_id).lease_start + spec.run_duration // 4)
    with boa.env.prank(member):
        registered.commit_result(job_id, spec, 0, NO_SHOW_ROOT, 0)
    fee = value(DEFAULT_PRICE_FLOOR, spec.max_gpu_seconds) * 1_000 // 10_000
    return job_id, fee - fee * FEE_BPS // 10_000


@pytest.mark.parametrize("settled_by_the_market_first", [False, True])
def test_settle__a_no_show_its_member_reported__books_the_no_show_fee_as_pay(
    registered, deployment, flow, market, operator, provider2, stranger, instant, settled_by_the_market_first
):
    job_id, income = _no_show_slot(registered, flow, operator, provider2, instant)
    if settled_by_the_market_first:
        flow.settle(job_id, instant, 0)
    with boa.env.prank(stranger):
        registered.settle(job_id, instant, 0)
    log = pool_event(registered, "SlotBooked")
    assert (log.status, log.income, log.loss) == (SLOT_REFUNDED, income, 0)
    assert registered.credits(provider2) == split(income)[0]
    assert registered.unattributed() == (0, 0)
    assert_pool_solvent(registered, deployment)


def test_settle__an_unchallenged_result_past_its_window__pays_on_the_claim(
    registered, deployment, flow, operator, provider, instant
):
    job_id = _paid_slot(registered, flow, operator, provider, instant, 2_000, accept=False)
    with boa.reverts("market: slot cannot settle yet"):
        registered.settle(job_id, instant, 0)
    boa.env.time_travel(seconds=instant.challenge_window)
    registered.settle(job_id, instant, 0)
    assert registered.credits(provider) == split(market_net(DEFAULT_PRICE_FLOOR, 2_000))[0]
    assert_pool_solvent(registered, deployment)


def test_settle__two_members_two_jobs__each_is_paid_for_its_own_work_only(
    registered, deployment, flow, operator, provider, provider2, instant, requester
):
    other = make_spec(requester, auction=AUCTION_INSTANT, bundle_hash=b"\xcd" * 32)
    a = _paid_slot(registered, flow, operator, provider, instant, 3_000)
    b = _paid_slot(registered, flow, operator, provider2, other, 600)
    registered.settle(b, other, 0)
    registered.settle(a, instant, 0)
    assert registered.credits(provider) == split(market_net(DEFAULT_PRICE_FLOOR, 3_000))[0]
    assert registered.credits(provider2) == split(market_net(DEFAULT_PRICE_FLOOR, 600))[0]
    assert registered.members(provider).gpu_seconds == 3_000
    assert registered.members(provider2).gpu_seconds == 600
    assert_pool_solvent(registered, deployment)


def test_settle__a_rejected_result__slashes_its_member_only__when_its_stake_covers_it(
    registered, deployment, registry, flow, operator, provider, provider2, provider3, verifier, instant, stakes
):
    job_id = _paid_slot(registered, flow, operator, provider3, instant, 1_800, accept=False)
    with boa.env.prank(verifier):
        flow.market.attest(job_id, instant, 0, OUTCOME_REJECT, 0)
    registered.settle(job_id, instant, 0)
    loss = value(DEFAULT_PRICE_FLOOR, 3_600) + BASE_SLASH
    log = pool_event(registered, "SlotBooked")
    assert (log.member, log.status, log.income, log.loss, log.gpu_seconds) == (provider3, SLOT_SLASHED, 0, loss, 0)
    slashed = pool_event(registered, "MemberSlashed")
    assert (slashed.member, slashed.job_id, slashed.amount, slashed.culprit) == (provider3, job_id, loss, True)
    assert registered.members(provider3).stake == stakes[provider3] - loss
    assert registered.members(provider).stake == stakes[provider]
    assert registered.members(provider2).stake == stakes[provider2]
    assert registry.total_stake(registered.address) == sum(stakes.values()) - loss
    assert_pool_solvent(registered, deployment)


def test_settle__a_slash_beyond_the_culprit_s_stake__takes_the_rest_from_the_others_pro_rata(
    registered, deployment, flow, owner, treasury, operator, provider, provider2, provider3, instant, stakes
):
    owner_change_queued_earlier(
        flow.market, owner, "set_parameters", treasury, FEE_BPS, DISPUTE_BOND, 300 * E18, SLASH_REQUESTER_BPS
    )
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider3)
    travel_to(now() + instant.run_duration + 1)  # no result by the run deadline
    registered.settle(job_id, instant, 0)
    loss = value(DEFAULT_PRICE_FLOOR, 3_600) + 300 * E18  # 304 tokens
    rest = loss - stakes[provider3]  # 104 beyond the culprit's 200
    cuts = {e.member: (e.amount, e.culprit) for e in pool_events(registered, "MemberSlashed")}
    assert cuts == {
        provider3: (stakes[provider3], True),
        provider: (rest * 500 // 800, False),
        provider2: (rest * 300 // 800, False),
    }
    assert registered.members(provider).stake == stakes[provider] - rest * 500 // 800
    # The culprit, slashed to nothing with no work left, is out of the pool.
    assert not registered.members(provider3).joined
    assert registered.member_count() == 2
    assert_pool_solvent(registered, deployment)


def test_settle__a_slash_someone_else_settled__books_it_to_the_culprit(
    registered, deployment, flow, operator, provider3, stranger, instant, stakes
):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider3)
    travel_to(now() + instant.run_duration + 1)
    flow.settle(job_id, instant, 0, caller=stranger)
    loss = value(DEFAULT_PRICE_FLOOR, 3_600) + BASE_SLASH
    assert registered.unattributed() == (0, loss)
    registered.settle(job_id, instant, 0)
    assert registered.members(provider3).stake == stakes[provider3] - loss
    assert registered.unattributed() == (0, 0)
    assert_pool_solvent(registered, deployment)


def test_settle__a_voided_result__moves_no_money__and_closes_the_assignment(
    registered, deployment, flow, operator, provider, verifier, instant, stakes
):
    job_id = _paid_slot(registered, flow, operator, provider, instant, 1_800, accept=False)
    with boa.env.prank(verifier):
        flow.market.attest(job_id, instant, 0, OUTCOME_VOID, 0)
    registered.settle(job_id, instant, 0)
    log = pool_event(registered, "SlotBooked")
    assert (log.status, log.income, log.loss) == (SLOT_REFUNDED, 0, 0)
    assert registered.members(provider).assignments == 0
    assert registered.members(provider).stake == stakes[provider]
    assert registered.credits(provider) == 0
    assert_pool_solvent(registered, deployment)


def test_settle__a_slot_of_a_cancelled_job__is_booked_as_released(registered, flow, operator, provider, requester):
    spec = make_spec(requester, auction=AUCTION_INSTANT, redundancy=2)
    job_id = pool_takes(flow, registered, operator, spec)
    assign(registered, operator, job_id, spec, provider)
    with boa.env.prank(requester):
        flow.market.cancel_job(job_id, spec)
    registered.settle(job_id, spec, 0)
    assert pool_event(registered, "SlotBooked").status == SLOT_RELEASED
    assert registered.open_assignments() == 0


def test_settle__a_disputed_result_that_stands__pays_the_member_the_bond_too(
    registered, deployment, flow, operator, provider, requester, verifier, instant
):
    job_id = _paid_slot(registered, flow, operator, provider, instant, 1_800, accept=False)
    with boa.env.prank(requester):
        flow.market.dispute_result(job_id, instant, 0)
    with boa.env.prank(verifier):
        flow.market.attest(job_id, instant, 0, OUTCOME_ACCEPT, 1_800)  # the whole claim stands
    flow.settle(job_id, instant, 0)  # settled at the market first: the pool computes the bond in
    registered.settle(job_id, instant, 0)
    income = market_net(DEFAULT_PRICE_FLOOR, 1_800) + DISPUTE_BOND
    assert pool_event(registered, "SlotBooked").income == income
    assert registered.credits(provider) == split(income)[0]
    assert registered.unattributed() == (0, 0)
    assert_pool_solvent(registered, deployment)


def test_settle__a_claim_the_verifier_cut_settled_by_another__books_the_cut_penalty_to_its_member_without_the_bond(
    registered, deployment, flow, operator, provider, requester, verifier, instant
):
    job_id = _paid_slot(registered, flow, operator, provider, instant, 1_800, accept=False)
    with boa.env.prank(requester):
        flow.market.dispute_result(job_id, instant, 0)
    with boa.env.prank(verifier):
        flow.market.attest(job_id, instant, 0, OUTCOME_ACCEPT, 1_500)
    stake_before = registered.members(provider).stake
    flow.settle(job_id, instant, 0)  # settled at the market first: the pool computes the penalty
    registered.settle(job_id, instant, 0)
    penalty = (value(DEFAULT_PRICE_FLOOR, 3_600) + BASE_SLASH) * 300 // 1_800
    log = pool_event(registered, "SlotBooked")
    assert (log.income, log.loss) == (market_net(DEFAULT_PRICE_FLOOR, 1_500), penalty)
    assert registered.members(provider).stake == stake_before - penalty
    assert registered.unattributed() == (0, 0)
    assert_pool_solvent(registered, deployment)


def test_settle__twice__or_a_slot_that_cannot_settle__reverts(registered, flow, operator, provider, instant):
    job_id = _paid_slot(registered, flow, operator, provider, instant, 600)
    registered.settle(job_id, instant, 0)
    with boa.reverts("pool: slot already booked"):
        registered.settle(job_id, instant, 0)
    job_id = pool_takes(flow, registered, operator, instant)
    with boa.reverts("market: slot cannot settle yet"):
        registered.settle(job_id, instant, 0)


def test_settle__an_unassigned_slot_that_was_slashed__takes_the_loss_from_everyone_pro_rata(
    registered, deployment, flow, operator, provider, provider2, provider3, instant, stakes
):
    job_id = pool_takes(flow, registered, operator, instant)
    travel_to(now() + instant.run_duration + 1)  # the operator never assigned it
    registered.settle(job_id, instant, 0)
    loss = value(DEFAULT_PRICE_FLOOR, 3_600) + BASE_SLASH
    cuts = {e.member: e.amount for e in pool_events(registered, "MemberSlashed")}
    assert sum(cuts.values()) == loss
    for m in (provider, provider2, provider3):
        assert abs(cuts[m] - loss * stakes[m] // sum(stakes.values())) <= 2
    assert not any(e.culprit for e in pool_events(registered, "MemberSlashed"))
    assert_pool_solvent(registered, deployment)


# ---------------------------------------------------------------- collect, withdraw, reconcile


def test_withdraw__pays_the_member_and_the_operator__collecting_from_the_market(
    registered, deployment, token, market, flow, operator, provider2, instant
):
    job_id = _paid_slot(registered, flow, operator, provider2, instant, 1_800)
    registered.settle(job_id, instant, 0)
    pay, fee = split(market_net(DEFAULT_PRICE_FLOOR, 1_800))
    before = token.balanceOf(provider2)
    with boa.env.prank(provider2):
        assert registered.withdraw() == pay
    assert pool_event(registered, "Collected").amount == pay + fee
    log = pool_event(registered, "CreditWithdrawn")
    assert (log.account, log.amount) == (provider2, pay)
    assert token.balanceOf(provider2) == before + pay
    assert market.credits(registered.address) == 0
    with boa.env.prank(operator):
        assert registered.withdraw() == fee
    assert token.balanceOf(operator) == fee
    assert token.balanceOf(registered.address) == 0
    assert_pool_solvent(registered, deployment)


def test_withdraw__by_a_stranger__takes_nothing_of_a_member_s_credit(
    registered, flow, operator, provider2, stranger, instant
):
    job_id = _paid_slot(registered, flow, operator, provider2, instant, 1_800)
    registered.settle(job_id, instant, 0)
    with boa.env.prank(stranger), boa.reverts("pool: nothing to withdraw"):
        registered.withdraw()
    assert registered.credits(provider2) > 0


def test_collect__moves_the_market_credit_into_the_pool__anyone_may_call(
    registered, token, flow, operator, provider, stranger, instant
):
    with boa.reverts("pool: nothing to collect"):
        registered.collect()
    job_id = _paid_slot(registered, flow, operator, provider, instant, 1_800)
    registered.settle(job_id, instant, 0)
    with boa.env.prank(stranger):
        amount = registered.collect()
    assert amount == market_net(DEFAULT_PRICE_FLOOR, 1_800)
    assert pool_event(registered, "Collected").caller == stranger
    assert token.balanceOf(registered.address) == amount == registered.cash()


def test_reconcile__gives_tokens_sent_to_the_pool_to_the_operator(registered, deployment, token, operator, stranger):
    with boa.reverts("pool: nothing to reconcile"):
        registered.reconcile()
    with boa.env.prank(stranger):
        token.transfer(registered.address, 5 * E18)
    assert registered.unattributed() == (5 * E18, 0)
    registered.reconcile()
    log = pool_event(registered, "Reconciled")
    assert (log.income, log.loss) == (5 * E18, 0)
    assert registered.credits(operator) == 5 * E18
    assert_pool_solvent(registered, deployment)


def test_reconcile__while_an_assignment_is_open__reverts(registered, flow, operator, provider, instant):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider)
    with boa.reverts("pool: assignments still open"):
        registered.reconcile()


# ---------------------------------------------------------------- leaving


def test_request_leave__moves_stake_to_unbonding__and_starts_the_registry_unbonding(
    registered, registry, provider, stakes
):
    with boa.env.prank(provider):
        registered.request_leave(200 * E18)
    log = pool_event(registered, "LeaveRequested")
    assert (log.member, log.amount, log.unbond_at) == (provider, 200 * E18, now() + MEMBER_UNBONDING)
    assert pool_event(registered, "RegistryUnbondRequested").amount == 200 * E18
    m = registered.members(provider)
    assert (m.stake, m.unbonding) == (stakes[provider] - 200 * E18, 200 * E18)
    reg = registry.stakes(registered.address)
    assert (reg.active, reg.unbonding) == (sum(stakes.values()) - 200 * E18, 200 * E18)


@pytest.mark.parametrize(
    ("amount", "reason"),
    [
        (0, "pool: zero amount"),
        (501 * E18, "pool: amount exceeds stake"),
        (450 * E18, "pool: stake would fall below minimum"),
    ],
)
def test_request_leave__with_a_bad_amount__reverts(registered, provider, amount, reason):
    with boa.env.prank(provider), boa.reverts(reason):
        registered.request_leave(amount)


def test_request_leave__by_a_stranger__reverts(registered, stranger):
    with boa.env.prank(stranger), boa.reverts("pool: not a member"):
        registered.request_leave(E18)


def test_withdraw_stake__after_both_unbonding_periods__returns_the_stake__and_leaves(
    registered, deployment, token, provider3, stakes
):
    with boa.env.prank(provider3):
        registered.request_leave(stakes[provider3])
        with boa.reverts("pool: still unbonding"):
            registered.withdraw_stake()
        boa.env.time_travel(seconds=MEMBER_UNBONDING)
        # The member's period is over, the registry's (7 days) is not.
        with boa.reverts("pool: stake not yet released by the registry"):
            registered.withdraw_stake()
        boa.env.time_travel(seconds=UNBONDING_PERIOD - MEMBER_UNBONDING)
        before = token.balanceOf(provider3)
        assert registered.withdraw_stake() == stakes[provider3]
    log = pool_event(registered, "StakeWithdrawn")
    assert (log.member, log.amount, log.left) == (provider3, stakes[provider3], True)
    assert token.balanceOf(provider3) == before + stakes[provider3]
    assert not registered.members(provider3).joined and registered.member_count() == 2
    assert registered.total_gpus() == 12
    assert_pool_solvent(registered, deployment)


def test_withdraw_stake__with_nothing_unbonding__reverts(registered, provider, stranger):
    for caller in (provider, stranger):
        with boa.env.prank(caller), boa.reverts("pool: nothing unbonding"):
            registered.withdraw_stake()


def test_withdraw_stake__while_holding_an_assignment__reverts__and_the_slash_still_lands(
    registered, deployment, flow, operator, provider, instant, stakes
):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider)
    with boa.env.prank(provider):
        registered.request_leave(stakes[provider])
    travel_to(now() + instant.run_duration + 1)  # it walked away from the job
    travel_to(now() + UNBONDING_PERIOD)
    with boa.env.prank(provider), boa.reverts("pool: member holds assignments"):
        registered.withdraw_stake()
    flow.settle(job_id, instant, 0)  # the market slashes the pool; not yet booked
    with boa.env.prank(provider), boa.reverts("pool: member holds assignments"):
        registered.withdraw_stake()
    registered.settle(job_id, instant, 0)
    loss = value(DEFAULT_PRICE_FLOOR, 3_600) + BASE_SLASH
    assert registered.members(provider).unbonding == stakes[provider] - loss
    with boa.env.prank(provider):
        assert registered.withdraw_stake() == stakes[provider] - loss
    assert_pool_solvent(registered, deployment)


def test_bidding__while_an_exit_waits_on_the_pool_s_leases__is_paused_until_they_end(
    registered, flow, operator, provider, provider3, instant, requester, stakes
):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider)
    with boa.env.prank(provider3):
        registered.request_leave(stakes[provider3])
    travel_to(now() + UNBONDING_PERIOD)
    assert registered.draining()
    other = make_spec(requester, auction=AUCTION_INSTANT, bundle_hash=b"\x99" * 32)
    other_id = flow.post(other)
    with boa.env.prank(operator):
        with boa.reverts("pool: draining for member exits"):
            registered.take_job(other_id, other)
        with boa.reverts("pool: draining for member exits"):
            registered.commit_bid(other_id, other, b"\x01" * 32)
    with boa.env.prank(provider3), boa.reverts("pool: stake not yet released by the registry"):
        registered.withdraw_stake()
    registered.settle(job_id, instant, 0)  # the lease ends (slashed; provider's stake covers it)
    assert not registered.draining()
    with boa.env.prank(provider3):
        assert registered.withdraw_stake() == stakes[provider3]


def test_sync__releases_a_due_batch_and_starts_the_next__anyone_may_call(
    registered, registry, provider, provider2, stranger
):
    with boa.env.prank(provider):
        registered.request_leave(100 * E18)
    boa.env.time_travel(seconds=86_400)
    with boa.env.prank(provider2):
        registered.request_leave(100 * E18)  # a batch is in flight: this one waits
    assert registry.stakes(registered.address).unbonding == 100 * E18
    boa.env.time_travel(seconds=UNBONDING_PERIOD)
    with boa.env.prank(stranger):
        registered.sync()
    assert pool_event(registered, "RegistryStakeReleased").amount == 100 * E18
    assert pool_event(registered, "RegistryUnbondRequested").amount == 100 * E18
    assert registered.released() == 100 * E18
    with boa.env.prank(provider):
        assert registered.withdraw_stake() == 100 * E18


def test_sync__bonds_back_released_stake_that_a_slash_took_from_its_owner(
    registered, deployment, registry, flow, operator, provider, provider3, instant, stakes
):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider3)
    with boa.env.prank(provider3):
        registered.request_leave(stakes[provider3])
    travel_to(now() + instant.run_duration + 1)
    flow.settle(job_id, instant, 0)
    travel_to(now() + UNBONDING_PERIOD)
    registered.sync()  # 200 released to the pool, but 104 of it is lost
    assert registered.released() == stakes[provider3]
    registered.settle(job_id, instant, 0)
    registered.sync()
    loss = value(DEFAULT_PRICE_FLOOR, 3_600) + BASE_SLASH
    assert pool_event(registered, "Restaked").amount == loss
    assert registered.released() == stakes[provider3] - loss
    assert_pool_solvent(registered, deployment)


# ---------------------------------------------------------------- gas


def _gas(contract: Any) -> int:
    return int(contract._computation.get_gas_used())


def test_gas__of_pool_operations__stays_within_budget(
    pool, deployment, token, flow, operator, provider, provider2, providers, instant
):
    gas: dict[str, int] = {}
    with boa.env.prank(provider):
        token.approve(pool.address, 600 * E18)
        pool.join(600 * E18, 8, 141_000, provider, ENDPOINT)
        gas["join"] = _gas(pool)
    with boa.env.prank(provider2):
        token.approve(pool.address, 600 * E18)
        pool.join(600 * E18, 8, 141_000, provider2, ENDPOINT)
    with boa.env.prank(operator):
        pool.register(pool_offer(pool, operator), provider)
        gas["register"] = _gas(pool)
    job_id = flow.post(instant)
    with boa.env.prank(operator):
        pool.take_job(job_id, instant)
        gas["take_job"] = _gas(pool)
        pool.assign(job_id, instant, 0, provider)
        gas["assign"] = _gas(pool)
    boa.env.time_travel(seconds=1_800)
    with boa.env.prank(provider):
        pool.commit_result(job_id, instant, 0, ROOT_HASH, 1_800)
        gas["commit_result"] = _gas(pool)
    with boa.env.prank(instant.requester):
        flow.market.accept_result(job_id, instant, 0)
    pool.settle(job_id, instant, 0)
    gas["settle_paid"] = _gas(pool)
    with boa.env.prank(provider):
        pool.withdraw()
        gas["withdraw_with_collect"] = _gas(pool)
    with boa.env.prank(operator):
        pool.withdraw()
        gas["withdraw"] = _gas(pool)
    with boa.env.prank(provider2):
        pool.request_leave(100 * E18)
        gas["request_leave"] = _gas(pool)
    boa.env.time_travel(seconds=UNBONDING_PERIOD)
    with boa.env.prank(provider2):
        pool.withdraw_stake()
        gas["withdraw_stake"] = _gas(pool)
    print({"pool_gas": gas})
    for step, used in gas.items():
        assert used < 400_000, (step, used)


def test_settle__slashed_slot_settled_by_another_after_the_base_slash_fell__books_the_slots_own_base_slash(
    registered, deployment, flow, operator, owner, treasury, provider, instant
):
    job_id = pool_takes(flow, registered, operator, instant)
    assign(registered, operator, job_id, instant, provider)
    # The parameter changes while the slot runs.
    owner_change_queued_earlier(
        flow.market, owner, "set_parameters", treasury, FEE_BPS, DISPUTE_BOND, 0, SLASH_REQUESTER_BPS
    )
    travel_to(now() + instant.run_duration + 1)  # no result by the run deadline
    flow.settle(job_id, instant, 0)  # settled at the market first: the pool computes the loss
    registered.settle(job_id, instant, 0)
    loss = value(DEFAULT_PRICE_FLOOR, 3_600) + BASE_SLASH
    assert pool_event(registered, "SlotBooked").loss == loss
    assert registered.unattributed() == (0, 0)
    assert_pool_solvent(registered, deployment)


def test_withdraw_stake__a_later_exit_due_too__cannot_take_the_released_pot_of_an_earlier_one(
    registered, provider, provider2
):
    with boa.env.prank(provider):
        registered.request_leave(100 * E18)
    boa.env.time_travel(seconds=86_400)
    with boa.env.prank(provider2):
        registered.request_leave(100 * E18)  # its batch waits for the first one
    boa.env.time_travel(seconds=UNBONDING_PERIOD)
    registered.sync()  # the first batch (provider's 100) is out; both exits are due
    assert registered.pots(provider) == 100 * E18 and registered.pots(provider2) == 0
    with boa.env.prank(provider2), boa.reverts("pool: stake not yet released by the registry"):
        registered.withdraw_stake()
    with boa.env.prank(provider):
        assert registered.withdraw_stake() == 100 * E18


def test_withdraw_stake__while_a_lease_it_backed_runs__reverts__and_the_leaver_pays_its_pro_rata_share(
    registered, deployment, token, flow, operator, provider, provider3, requester, stakes
):
    with boa.env.prank(provider):  # the pool stays above the registry's minimum stake after the exit
        token.approve(registered.address, stakes[provider3])
        registered.add_stake(stakes[provider3])
    with boa.env.prank(provider3):
        registered.request_leave(stakes[provider3])
    travel_to(now() + UNBONDING_PERIOD)
    registered.sync()  # its stake is out of the registry, waiting for it
    instant = make_spec(requester, auction=AUCTION_INSTANT)
    job_id = pool_takes(flow, registered, operator, instant)  # a lease nobody is assigned: it will fail
    with boa.env.prank(provider3), boa.reverts("pool: leases still run"):
        registered.withdraw_stake()
    travel_to(now() + instant.run_duration + 1)
    flow.settle(job_id, instant, 0)  # slashed at the market, not yet booked by the pool
    with boa.env.prank(provider3), boa.reverts("pool: a slash is not yet booked"):
        registered.withdraw_stake()
    registered.settle(job_id, instant, 0)
    share = {e.member: e.amount for e in pool_events(registered, "MemberSlashed")}[provider3]
    assert share > 0
    with boa.env.prank(provider3):
        assert registered.withdraw_stake() == stakes[provider3] - share
    assert_pool_solvent(registered, deployment)


# ---------------------------------------------------------------- revert coverage

# Reachable only with a token that returns False instead of reverting, or a market that pays
# other than its credit: guards, not paths of flopex's own token and market.
UNREACHABLE_REASONS = {"pool: approve failed", "pool: transfer failed", "pool: market paid a different amount"}


def test_every_pool_revert_reason_is_asserted_by_a_test():
    import re

    reasons = set(re.findall(r'"(pool: [^"]+)"', (CONTRACTS / "ProviderPool.vy").read_text()))
    assert len(reasons) > 30  # the grep itself works
    # Every test's text except this one's list of unreachable reasons.
    tested = (
        Path(__file__)
        .read_text()
        .split("# ---------------------------------------------------------------- revert coverage")[0]
    )
    untested = sorted(r for r in reasons - UNREACHABLE_REASONS if f'"{r}"' not in tested)
    assert untested == [], f"pool revert reasons no test asserts: {untested}"
