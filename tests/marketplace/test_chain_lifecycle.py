"""The whole job lifecycle through the Python chain client, on eth-tester and on anvil."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts, Deployment, load_contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.contracts.events import JobLeased, SlotLeased, SlotSettled
from marketplace.errors import ChainError, ConfigError, ContractRevert
from marketplace.types import (
    ONE_TOKEN,
    Auction,
    DeviceKind,
    JobSpec,
    JobStatus,
    Offer,
    Outcome,
    Policy,
    SlotStatus,
    slot_value,
)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

DEPLOYER, TREASURY, REQUESTER, CHEAP, DEAR, VERIFIER, STRANGER = range(7)


@pytest.fixture(params=["embedded", pytest.param("anvil", marks=[pytest.mark.anvil, pytest.mark.slow])])
def world(request: pytest.FixtureRequest) -> Iterator[Contracts]:
    """A fresh market on the embedded chain, or on the session's anvil node."""
    if request.param == "embedded":
        chain = Chain.embedded()
    else:
        chain = Chain.connect(request.getfixturevalue("anvil_url"))
    contracts = setup_dev_market(chain, accounts=7)
    for index, price in ((CHEAP, 2), (DEAR, 3)):
        provider = dev_account(index)
        contracts.token.approve(provider, contracts.registry.address, 200 * ONE_TOKEN)
        contracts.registry.stake(provider, 200 * ONE_TOKEN)
        contracts.registry.register_provider(
            provider,
            Offer("test cpu", DeviceKind.CPU, 2, 4096, 50, price * ONE_TOKEN, "127.0.0.1:7000", provider.address),
        )
    verifier = dev_account(VERIFIER)
    contracts.token.approve(verifier, contracts.registry.address, 100 * ONE_TOKEN)
    contracts.registry.stake(verifier, 100 * ONE_TOKEN)
    contracts.registry.register_verifier(verifier)
    contracts.require_court().join(verifier)
    yield contracts


def make_spec(world: Contracts, **changes: object) -> JobSpec:
    now = world.chain.now()
    spec = JobSpec(
        requester=dev_account(REQUESTER).address,
        bundle_hash=b"\x42" * 32,
        device_kind=DeviceKind.CPU,
        gpus=1,
        min_memory_mb=1024,
        policy=Policy.REPLAY,
        auction=Auction.SEALED,
        redundancy=1,
        max_price=5 * ONE_TOKEN,
        max_gpu_seconds=3_600,
        bid_deadline=now + 100,
        reveal_deadline=now + 200,
        run_duration=1_800,
        challenge_window=600,
    )
    return replace(spec, **changes)  # type: ignore[arg-type]


def post(world: Contracts, spec: JobSpec) -> int:
    requester = dev_account(REQUESTER)
    world.token.approve(requester, world.market.address, spec.escrow)
    return world.market.post_job(requester, spec)


def test_sealed_job__two_bidders__lowest_wins_at_second_price_and_is_paid_for_verified_seconds(
    world: Contracts,
) -> None:
    market, token = world.market, world.token
    requester, cheap, dear, verifier = (dev_account(i) for i in (REQUESTER, CHEAP, DEAR, VERIFIER))
    spec = make_spec(world)
    before = token.balance_of(requester.address)
    job_id = post(world, spec)
    assert token.balance_of(requester.address) == before - spec.escrow
    assert market.job(job_id).status == JobStatus.OPEN

    salt_cheap = market.commit_bid(cheap, job_id, 2 * ONE_TOKEN)
    salt_dear = market.commit_bid(dear, job_id, 3 * ONE_TOKEN)
    world.chain.time_travel(100)
    market.reveal_bid(cheap, job_id, 2 * ONE_TOKEN, salt_cheap)
    market.reveal_bid(dear, job_id, 3 * ONE_TOKEN, salt_dear)
    world.chain.time_travel(100)
    leased = market.events_in(market.finalize_auction(requester, job_id))

    assert SlotLeased(job_id=job_id, slot=0, provider=cheap.address, price=3 * ONE_TOKEN) in leased
    refund = spec.escrow - slot_value(3 * ONE_TOKEN, spec.max_gpu_seconds)
    assert JobLeased(job_id=job_id, clearing_price=3 * ONE_TOKEN, refunded=refund) in leased
    assert market.credits(requester.address) == refund

    world.chain.time_travel(120)
    # The verifier accepts the whole claim (a cut claim would slash the provider, docs/economics.md item 3).
    market.commit_result(cheap, job_id, 0, b"\x01" * 32, 90)
    world.require_court().decide_slot_alone(verifier, job_id, spec, 0, Outcome.ACCEPT, 90)
    settled = [e for e in market.events_in(market.settle(requester, job_id, 0)) if isinstance(e, SlotSettled)]

    paid = slot_value(3 * ONE_TOKEN, 90)
    fee = paid * 100 // 10_000
    assert settled == [
        SlotSettled(
            job_id=job_id,
            slot=0,
            provider=cheap.address,
            status=SlotStatus.PAID,
            gpu_seconds=90,
            paid=paid,
            fee=fee,
            refunded=slot_value(3 * ONE_TOKEN, 3_600) - paid,
            slashed=0,
        )
    ]
    assert market.job(job_id).status == JobStatus.CLOSED
    assert market.withdraw(cheap) == paid - fee
    assert market.credits(cheap.address) == 0
    assert token.balance_of(requester.address) + market.withdraw(requester) == before - paid
    assert token.balance_of(market.address) == market.total_credits() == fee


def test_instant_job__posted_with_permit__taken_at_the_providers_floor(world: Contracts) -> None:
    market, token = world.market, world.token
    requester, dear = dev_account(REQUESTER), dev_account(DEAR)
    spec = make_spec(world, auction=Auction.INSTANT, policy=Policy.NONE)
    assert token.allowance(requester.address, market.address) == 0
    job_id = market.post_job_with_permit(requester, spec, token, deadline=world.chain.now() + 600)
    assert token.nonces(requester.address) == 1

    market.take_job(dear, job_id)
    slot = market.slot(job_id, 0)
    assert (slot.provider, slot.price, slot.status) == (dear.address, 3 * ONE_TOKEN, SlotStatus.ASSIGNED)
    assert market.job(job_id).status == JobStatus.LEASED
    assert market.credits(requester.address) == slot_value(2 * ONE_TOKEN, spec.max_gpu_seconds)


def test_missed_run_deadline__refunds_the_requester_and_slashes_the_provider(world: Contracts) -> None:
    market, registry = world.market, world.registry
    requester, cheap = dev_account(REQUESTER), dev_account(CHEAP)
    spec = make_spec(world, auction=Auction.INSTANT)
    job_id = post(world, spec)
    market.take_job(cheap, job_id)
    stake_before = registry.total_stake(cheap.address)

    with pytest.raises(ContractRevert, match="market: slot cannot settle yet"):
        market.settle(requester, job_id, 0)
    world.chain.time_travel(spec.run_duration + 1)
    events = market.events_in(market.settle(requester, job_id, 0))

    settled = next(e for e in events if isinstance(e, SlotSettled))
    assert settled.status == SlotStatus.SLASHED
    value = slot_value(2 * ONE_TOKEN, spec.max_gpu_seconds)
    assert settled.slashed == value + world.deployment.parameters.base_slash
    assert registry.total_stake(cheap.address) == stake_before - settled.slashed
    assert market.credits(requester.address) == spec.escrow + settled.slashed // 2
    assert registry.reputation(cheap.address) == (0, 1, 1)


def test_revert__carries_the_contracts_reason_on_every_chain(world: Contracts) -> None:
    stranger = dev_account(STRANGER)
    spec = make_spec(world)
    job_id = post(world, spec)
    with pytest.raises(ContractRevert) as caught:
        world.market.commit_bid(stranger, job_id, ONE_TOKEN)
    assert caught.value.reason == "market: provider not eligible"
    assert caught.value.function == "commit_bid"
    with pytest.raises(ContractRevert, match="market: nothing to withdraw"):
        world.market.withdraw(stranger)
    # The same error type is catchable as the chain family and the stdlib RuntimeError.
    assert isinstance(caught.value, ChainError) and isinstance(caught.value, RuntimeError)


def test_deployment_file__round_trips_and_binds_to_the_same_contracts(world: Contracts, tmp_path) -> None:
    path = world.deployment.save(tmp_path / "deployment.json")
    loaded = Deployment.load(path)
    assert loaded == world.deployment
    again = load_contracts(world.chain, loaded)
    assert again.token.total_supply() == world.token.total_supply()


def test_deployment_file__for_another_chain__is_refused(world: Contracts) -> None:
    other = replace(world.deployment, chain_id=world.deployment.chain_id + 1)
    with pytest.raises(ConfigError, match="deployment is for chain"):
        load_contracts(world.chain, other)


def test_deployment_file__missing_or_garbled__gives_a_clear_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="no deployment file"):
        Deployment.load(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="is not JSON"):
        Deployment.load(bad)


def test_connect__with_nothing_listening__raises_chain_error() -> None:
    from marketplace.chain.anvil import free_port

    with pytest.raises(ChainError, match="no chain answers"):
        Chain.connect(f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(ConfigError, match="not an RPC URL"):
        Chain.connect("localhost:8545")


@pytest.mark.slow  # compiles every contract
def test_artifacts__match_the_contract_sources() -> None:
    from marketplace.contracts import build

    assert build.check() == []
