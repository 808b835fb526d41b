"""Reserved capacity through the Python bindings on the embedded chain (eth-tester): a provider
offers a window, a requester buys it, resells it, the new holder's jobs are served and recorded,
and the settlement pays the provider the whole price; every balance is checked on the way."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.court import Court, deploy_court
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.contracts.reservations import (
    ReservationParameters,
    Reservations,
    ReservationStatus,
    deploy_reservations,
    load_reservations,
    reservation_price,
)
from marketplace.errors import ConfigError, ContractRevert
from marketplace.types import ONE_TOKEN, DeviceKind, Offer, Outcome

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

DEPLOYER, TREASURY, PROVIDER, BUYER, RESALE_BUYER, VERIFIER = range(6)
PARAMS = ReservationParameters(challenge_period=600, fee_bps=100)


@dataclass
class World:
    contracts: Contracts
    reservations: Reservations
    court: Court


@pytest.fixture
def world() -> Iterator[World]:
    contracts = setup_dev_market(Chain.embedded(), accounts=6)
    provider = dev_account(PROVIDER)
    contracts.token.approve(provider, contracts.registry.address, 200 * ONE_TOKEN)
    contracts.registry.stake(provider, 200 * ONE_TOKEN)
    contracts.registry.register_provider(
        provider,
        Offer("NVIDIA H200", DeviceKind.CUDA, 8, 141_000, 60_000, 3 * ONE_TOKEN, "127.0.0.1:7000", provider.address),
    )
    deployer = dev_account(DEPLOYER)
    reservations = deploy_reservations(
        contracts.chain,
        deployer,
        contracts.token,
        contracts.registry,
        treasury=contracts.deployment.treasury,
        parameters=PARAMS,
    )
    # A court of its own: the deployment's court rules for the deployment's reservations contract.
    court = deploy_court(
        contracts.chain,
        deployer,
        token=contracts.token.address,
        registry=contracts.registry,
        market=contracts.market.address,
        reservations=reservations.address,
        treasury=contracts.deployment.treasury,
    )
    reservations.set_court(deployer, court.address)
    yield World(contracts, reservations, court)


def test_offer_buy_resell_serve_and_settle__pays_everyone_their_due(world: World) -> None:
    c, res = world.contracts, world.reservations
    provider, buyer, resale_buyer = dev_account(PROVIDER), dev_account(BUYER), dev_account(RESALE_BUYER)
    treasury = c.deployment.treasury
    balances = {a: c.token.balance_of(a) for a in (provider.address, buyer.address, resale_buyer.address, treasury)}
    assert c.registry.is_authorized(res.address)

    # The provider offers 2 GPUs for an hour starting in ten minutes at 5 tokens per GPU-hour.
    start = c.chain.now() + 600
    rid = res.offer(provider, start, 3_600, 2, 5 * ONE_TOKEN)
    value = reservation_price(2, 3_600, 5 * ONE_TOKEN)
    assert value == 10 * ONE_TOKEN
    assert res.reservation(rid).status == ReservationStatus.OFFERED

    # A requester buys it into escrow; the provider's stake is locked.
    c.token.approve(buyer, res.address, value)
    res.buy(buyer, rid)
    state = res.reservation(rid)
    assert (state.status, state.holder, state.escrow) == (ReservationStatus.RESERVED, buyer.address, value)
    assert c.registry.stakes(provider.address).active_jobs == 1
    assert c.token.balance_of(res.address) == value

    # It resells it for 12 tokens before the window starts.
    res.list_for_resale(buyer, rid, 12 * ONE_TOKEN)
    c.token.approve(resale_buyer, res.address, 12 * ONE_TOKEN)
    receipt = res.buy_resale(resale_buyer, rid)
    resold = [e for e in res.events_of(receipt) if e.name == "ReservationResold"]
    assert resold[0].args["seller"] == buyer.address and resold[0].args["buyer"] == resale_buyer.address
    assert res.reservation(rid).holder == resale_buyer.address
    assert res.credits(buyer.address) == 12 * ONE_TOKEN

    # The window opens: the new holder's jobs run and the provider records what it served.
    c.chain.time_travel(start - c.chain.now() + 900)
    res.record_usage(provider, rid, 1_200, b"\x01" * 32)
    res.record_usage(provider, rid, 300, b"\x02" * 32)
    state = res.reservation(rid)
    assert (state.used_gpu_seconds, state.usage_records) == (1_500, 2)
    with pytest.raises(ContractRevert, match="reservations: cannot settle yet"):
        res.settle(resale_buyer, rid)

    # After the window and the challenge period anyone settles: the whole price, less the fee.
    c.chain.time_travel(state.end + PARAMS.challenge_period - c.chain.now())
    receipt = res.settle(dev_account(DEPLOYER), rid)
    settled = next(e for e in res.events_of(receipt) if e.name == "ReservationSettled")
    fee = value * PARAMS.fee_bps // 10_000
    assert (settled.args["status"], settled.args["paid"], settled.args["fee"]) == (ReservationStatus.PAID, value, fee)
    assert res.reservation(rid).status.terminal
    assert c.registry.stakes(provider.address).active_jobs == 0

    assert res.withdraw(provider) == value - fee
    assert res.withdraw(buyer) == 12 * ONE_TOKEN
    c.chain.mine()
    assert c.token.balance_of(provider.address) == balances[provider.address] + value - fee
    assert c.token.balance_of(buyer.address) == balances[buyer.address] - value + 12 * ONE_TOKEN
    assert c.token.balance_of(resale_buyer.address) == balances[resale_buyer.address] - 12 * ONE_TOKEN
    assert res.credits(treasury) == fee
    assert c.token.balance_of(res.address) == res.total_credits() == fee
    assert [e.args["reservation_id"] for e in res.history("ReservationSettled")] == [rid]


def test_gas_of_each_step__on_eth_tester(world: World) -> None:
    """Gas of each step as a node charges it (21,000 intrinsic and calldata included)."""
    c, res = world.contracts, world.reservations
    provider, buyer, resale_buyer = dev_account(PROVIDER), dev_account(BUYER), dev_account(RESALE_BUYER)
    start = c.chain.now() + 600
    gas: dict[str, int] = {}
    receipt = c.chain.transact(provider, res.contract.functions.offer(start, 3_600, 2, 5 * ONE_TOKEN))
    gas["offer"] = receipt["gasUsed"]
    c.token.approve(buyer, res.address, 10**30)
    c.token.approve(resale_buyer, res.address, 10**30)
    gas["buy"] = res.buy(buyer, 1)["gasUsed"]
    gas["list_for_resale"] = res.list_for_resale(buyer, 1, 12 * ONE_TOKEN)["gasUsed"]
    gas["buy_resale"] = res.buy_resale(resale_buyer, 1)["gasUsed"]
    c.chain.time_travel(start - c.chain.now() + 900)
    gas["record_usage_first"] = res.record_usage(provider, 1, 600, b"\x01" * 32)["gasUsed"]
    gas["record_usage"] = res.record_usage(provider, 1, 600, b"\x02" * 32)["gasUsed"]
    c.chain.time_travel(start + 3_600 + PARAMS.challenge_period - c.chain.now())
    gas["settle_paid"] = res.settle(buyer, 1)["gasUsed"]
    receipt = c.chain.transact(buyer, res.contract.functions.withdraw())
    gas["withdraw"] = receipt["gasUsed"]
    # The failure path: the holder reports, the court draws a verifier that rules it failed, the
    # ruling reaches the reservation after the appeal window, the provider is slashed.
    verifier = dev_account(VERIFIER)
    c.token.approve(verifier, c.registry.address, 100 * ONE_TOKEN)
    c.registry.stake(verifier, 100 * ONE_TOKEN)
    c.registry.register_verifier(verifier)
    court = world.court
    court.join(verifier)
    start = c.chain.now() + 600
    rid = res.offer(provider, start, 3_600, 2, 5 * ONE_TOKEN)
    res.buy(buyer, rid)
    c.chain.time_travel(start - c.chain.now())
    gas["report_not_served"] = res.report_not_served(buyer, rid)["gasUsed"]
    court.open_reservation_case(verifier, rid)
    case_id = court.reservation_case(rid)
    court.draw(verifier, case_id)
    court.rule(verifier, case_id, Outcome.REJECT)
    c.chain.time_travel(court.parameters().appeal_period)
    gas["court_finalize_attest_failure"] = court.finalize(verifier, case_id)["gasUsed"]
    gas["settle_slashed"] = res.settle(buyer, rid)["gasUsed"]
    assert res.reservation(rid).status == ReservationStatus.SLASHED
    print({"reservations_gas_eth_tester": gas})
    assert all(g < 200_000 for step, g in gas.items() if not step.startswith("court"))


def test_reverts__come_back_with_their_reason_and_a_stranger_cannot_deploy(world: World) -> None:
    c, res = world.contracts, world.reservations
    with pytest.raises(ContractRevert, match="reservations: start not in the future"):
        res.offer(dev_account(PROVIDER), c.chain.now() - 1, 3_600, 2, ONE_TOKEN)
    with pytest.raises(ContractRevert, match="reservations: provider not eligible"):
        res.offer(dev_account(BUYER), c.chain.now() + 600, 3_600, 2, ONE_TOKEN)
    with pytest.raises(ConfigError, match="registry's owner"):
        deploy_reservations(c.chain, dev_account(BUYER), c.token, c.registry, treasury=c.deployment.treasury)
    assert load_reservations(c.chain, res.address).offer_count() == 0
    with pytest.raises(ConfigError, match="no reservations contract"):
        load_reservations(c.chain, dev_account(BUYER).address)
