"""Reservations: offers of future windows, purchases into escrow, resale, usage records, failure
reports and settlement, and the registry's authorization of contracts other than the market.

Money paths are tested side by side: a served window pays the provider the whole price (used and
unused time) less the fee; a failure a verifier attests refunds the holder and slashes the
provider; a report nobody rules on pays the provider, bond included.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import boa
import pytest
from eth_account import Account

from tests.contracts.contract_helpers import (
    BASE_SLASH,
    CONTRACTS,
    DEVICE_CPU,
    DISPUTE_BOND,
    E18,
    FEE_BPS,
    FUNDS,
    MAX_UINT,
    MIN_PROVIDER_STAKE,
    SLASH_REQUESTER_BPS,
    UNBONDING_PERIOD,
    deploy_with_false_token,
    fund,
    load,
    make_offer,
    now,
    one_event,
    owner_change,
    sign_permit,
    travel_to,
)

CHALLENGE = 3_600
DAY = 86_400
PRICE = 4 * E18  # per GPU-hour
GPUS = 2
DURATION = 4 * 3_600
ESCROW = GPUS * DURATION * PRICE // 3_600  # 32 tokens
ROOT_A, ROOT_B = b"\xaa" * 32, b"\xbb" * 32

# Status flag values.
OFFERED, CANCELLED, RESERVED, DISPUTED, SERVED, FAILED, PAID, SLASHED, REFUNDED = (1 << i for i in range(9))


def deploy_reservations(
    token: Any, registry: Any, owner: str, treasury: str, court: str | None = None, **overrides: Any
) -> Any:
    """Deploys Reservations with the suite's parameters as ``owner`` and authorizes it in ``registry``;
    ``court`` (an account standing in for ``VerifierCourt``) is the one whose rulings it takes."""
    args = {
        "challenge_period": CHALLENGE,
        "treasury": treasury,
        "fee_bps": FEE_BPS,
        "dispute_bond": DISPUTE_BOND,
        "base_slash": BASE_SLASH,
        "slash_holder_bps": SLASH_REQUESTER_BPS,
    }
    args.update(overrides)
    with boa.env.prank(owner):
        res = load("Reservations", token.address, registry.address, *args.values())
        if court is not None:
            res.set_court(court)
    owner_change(registry, owner, "set_authorized", res.address, True)
    return res


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def buyer2() -> str:
    return boa.env.generate_address("buyer2")


@pytest.fixture(scope="module")
def res(deployment, providers, owner, treasury, requester, provider, provider2, verifier, stranger, buyer2) -> Any:
    """Reservations over the suite's deployment; every actor has approved it."""
    fund(deployment, buyer2)
    r = deploy_reservations(deployment.token, deployment.registry, owner, treasury, court=verifier)
    for account in (requester, provider, provider2, verifier, stranger, buyer2):
        with boa.env.prank(account):
            deployment.token.approve(r.address, MAX_UINT)
    return r


def offer(res: Any, provider: str, start: int | None = None, **kw: Any) -> int:
    args = {"duration": DURATION, "gpus": GPUS, "price": PRICE}
    args.update(kw)
    with boa.env.prank(provider):
        return res.offer(start if start is not None else now() + DAY, args["duration"], args["gpus"], args["price"])


def bought(res: Any, provider: str, buyer: str, **kw: Any) -> int:
    rid = offer(res, provider, **kw)
    with boa.env.prank(buyer):
        res.buy(rid)
    return rid


def window(res: Any, rid: int) -> tuple[int, int]:
    r = res.reservations(rid)
    return r.start, r.start + r.duration


def assert_solvent(res: Any, token: Any) -> None:
    """The contract holds exactly every reservation's escrow plus every credit."""
    held = sum(res.escrow_of(i) for i in range(1, res.offer_count() + 1))
    assert token.balanceOf(res.address) == held + res.total_credits()


def _gas(contract: Any) -> int:
    return int(contract._computation.get_gas_used())


# ---------------------------------------------------------------- registry authorization


def test_set_authorized__by_the_owner__lets_the_account_lock_and_logs(registry, owner, token, provider, providers):
    # Only a contract may be authorized; any contract address serves to lock here.
    holder = token.address
    owner_change(registry, owner, "set_authorized", holder, True)
    e = one_event(registry, "AuthorizationChanged")
    assert (e.account, e.authorized) == (holder, True)
    assert registry.authorized(holder)
    with boa.env.prank(holder):
        registry.lock(provider, 1)
    assert registry.stakes(provider).active_jobs == 1
    with boa.env.prank(owner):
        registry.set_authorized(holder, False)
    with boa.env.prank(holder), boa.reverts("registry: caller may not lock or slash"):
        registry.release(provider, 1, True)


def test_set_authorized__by_a_stranger__reverts(registry, stranger):
    with boa.env.prank(stranger), boa.reverts("ownable: caller is not the owner"):
        registry.set_authorized(stranger, True)


def test_set_authorized__of_the_zero_address__reverts(registry, owner):
    with boa.env.prank(owner), boa.reverts("registry: account is the zero address"):
        registry.set_authorized("0x" + "00" * 20, True)


def test_slash__by_an_authorized_contract__sends_the_stake_to_it(res, registry, token, provider):
    before = token.balanceOf(res.address)
    with boa.env.prank(res.address):
        assert registry.slash(provider, 10 * E18) == 10 * E18
    assert token.balanceOf(res.address) == before + 10 * E18


def test_buy__when_the_registry_has_not_authorized_the_contract__reverts(
    deployment, providers, owner, treasury, provider, requester
):
    lone = deploy_reservations(deployment.token, deployment.registry, owner, treasury)
    with boa.env.prank(owner):
        deployment.registry.set_authorized(lone.address, False)
    with boa.env.prank(requester):
        deployment.token.approve(lone.address, MAX_UINT)
    rid = offer(lone, provider)
    with boa.env.prank(requester), boa.reverts("registry: caller may not lock or slash"):
        lone.buy(rid)


# ---------------------------------------------------------------- deployment and parameters


def test_constructor__without_a_challenge_period__reverts(token, registry, owner, treasury):
    for bad in (0, 365 * DAY + 1):
        with boa.reverts("reservations: bad challenge period"):
            deploy_reservations(token, registry, owner, treasury, challenge_period=bad)


def test_set_parameters__by_the_owner__changes_them_and_logs(res, owner, stranger):
    with boa.env.prank(owner):
        res.set_parameters(stranger, 200, 1, 2, 3)
    e = one_event(res, "ParametersChanged")
    assert (e.treasury, e.fee_bps, e.dispute_bond, e.base_slash, e.slash_holder_bps) == (stranger, 200, 1, 2, 3)
    assert (res.treasury(), res.fee_bps(), res.dispute_bond(), res.base_slash(), res.slash_holder_bps()) == (
        stranger,
        200,
        1,
        2,
        3,
    )


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("0x" + "00" * 20, 100, 0, 0, 0), "reservations: treasury is the zero address"),
        ((None, 1_001, 0, 0, 0), "reservations: fee above 10%"),
        ((None, 100, 0, 0, 10_001), "reservations: share above 100%"),
    ],
)
def test_set_parameters__out_of_bounds__reverts(res, owner, treasury, args, reason):
    args = (args[0] or treasury, *args[1:])
    with boa.env.prank(owner), boa.reverts(reason):
        res.set_parameters(*args)


def test_set_parameters__by_a_stranger__reverts(res, stranger):
    with boa.env.prank(stranger), boa.reverts("ownable: caller is not the owner"):
        res.set_parameters(stranger, 0, 0, 0, 0)


# ---------------------------------------------------------------- offer


def test_offer__by_an_eligible_provider__stores_the_packed_terms_and_logs(res, provider):
    start = now() + DAY
    rid = offer(res, provider, start)
    e = one_event(res, "OfferPosted")
    assert rid == 1 and res.offer_count() == 1
    assert (e.reservation_id, e.provider, e.start, e.duration, e.gpus, e.price, e.escrow) == (
        1,
        provider,
        start,
        DURATION,
        GPUS,
        PRICE,
        ESCROW,
    )
    r = res.reservations(rid)
    assert (r.provider, r.status, r.start, r.gpus, r.price, r.duration) == (
        provider,
        OFFERED,
        start,
        GPUS,
        PRICE,
        DURATION,
    )
    assert (r.used_gpu_seconds, r.usage_records, r.resale_price, r.escrow) == (0, 0, 0, 0)
    assert r.holder == "0x" + "00" * 20
    assert res.price_of(GPUS, DURATION, PRICE) == ESCROW
    assert res.escrow_of(rid) == 0
    assert offer(res, provider) == 2


def test_offer__by_a_cpu_provider__is_accepted(res, flow, stranger):
    flow.register_provider(stranger, device_kind=DEVICE_CPU, gpu_count=4)
    assert offer(res, stranger, gpus=4) == 1


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"start": 0}, "reservations: start not in the future"),
        ({"duration": 0}, "reservations: bad duration"),
        ({"duration": 365 * DAY + 1}, "reservations: bad duration"),
        ({"gpus": 0}, "reservations: no devices"),
        ({"gpus": 9}, "reservations: provider not eligible"),
        ({"price": 0}, "reservations: bad price"),
        ({"price": 2**96}, "reservations: bad price"),
        ({"gpus": 1, "duration": 1, "price": 1}, "reservations: escrow rounds to zero"),
    ],
)
def test_offer__with_bad_terms__reverts(res, provider, change, reason):
    start = now() if change.pop("start", None) == 0 else None
    with boa.reverts(reason):
        offer(res, provider, start, **change)


def test_offer__by_a_stranger_or_a_deregistered_provider__reverts(res, registry, provider, stranger):
    with boa.reverts("reservations: provider not eligible"):
        offer(res, stranger)
    with boa.env.prank(provider):
        registry.deregister_provider()
    with boa.reverts("reservations: provider not eligible"):
        offer(res, provider)


def test_reservations__of_an_unknown_id__reverts(res):
    with boa.reverts("reservations: unknown reservation"):
        res.reservations(7)


# ---------------------------------------------------------------- cancel_offer


def test_cancel_offer__by_the_provider__closes_it(res, provider):
    rid = offer(res, provider)
    with boa.env.prank(provider):
        res.cancel_offer(rid)
    e = one_event(res, "OfferCancelled")
    assert (e.reservation_id, e.provider) == (rid, provider)
    assert res.reservations(rid).status == CANCELLED


def test_cancel_offer__by_a_stranger__only_after_the_start(res, provider, stranger):
    rid = offer(res, provider)
    with boa.env.prank(stranger), boa.reverts("reservations: caller is not the provider"):
        res.cancel_offer(rid)
    travel_to(res.reservations(rid).start)
    with boa.env.prank(stranger):
        res.cancel_offer(rid)
    assert res.reservations(rid).status == CANCELLED


def test_cancel_offer__once_bought_or_cancelled__reverts(res, provider, requester):
    rid = bought(res, provider, requester)
    with boa.env.prank(provider), boa.reverts("reservations: not offered"):
        res.cancel_offer(rid)
    with boa.env.prank(provider), boa.reverts("reservations: unknown reservation"):
        res.cancel_offer(99)


# ---------------------------------------------------------------- buy


def test_buy__before_the_start__escrows_the_price_and_locks_the_stake(res, token, registry, provider, requester):
    rid = offer(res, provider)
    before = token.balanceOf(requester)
    with boa.env.prank(requester):
        res.buy(rid)
    e = one_event(res, "ReservationBought")
    assert (e.reservation_id, e.buyer, e.provider, e.escrow) == (rid, requester, provider, ESCROW)
    assert token.balanceOf(requester) == before - ESCROW
    assert token.balanceOf(res.address) == ESCROW == res.escrow_of(rid)
    r = res.reservations(rid)
    assert (r.status, r.holder, r.escrow) == (RESERVED, requester, ESCROW)
    assert registry.stakes(provider).active_jobs == 1
    assert_solvent(res, token)


def test_buy__locks_the_stake__so_the_provider_cannot_unbond_away(res, registry, provider, requester):
    rid = bought(res, provider, requester)
    # The price and the base slash stay locked; the rest may unbond but not leave before the lease ends.
    with boa.env.prank(provider), boa.reverts("registry: amount exceeds free stake"):
        registry.request_unbond(MIN_PROVIDER_STAKE)
    with boa.env.prank(provider):
        registry.request_unbond(MIN_PROVIDER_STAKE - ESCROW - BASE_SLASH)
    travel_to(now() + UNBONDING_PERIOD)
    with boa.env.prank(provider), boa.reverts("registry: provider holds leases"):
        registry.withdraw_unbonded()
    travel_to(max(now(), window(res, rid)[1] + CHALLENGE))
    res.settle(rid)
    with boa.env.prank(provider):
        registry.withdraw_unbonded()


def test_buy__with_a_permit__needs_no_approval(deployment, res, token, provider):
    account = Account.create()
    with boa.env.prank(deployment.owner):
        token.mint(account.address, ESCROW)
    rid = offer(res, provider)
    deadline = now() + 3_600
    v, r, s = sign_permit(token, account.key, res.address, ESCROW, deadline)
    with boa.env.prank(account.address):
        res.buy_with_permit(rid, deadline, v, r, s)
    assert res.reservations(rid).holder == account.address
    assert token.balanceOf(account.address) == 0


@pytest.mark.parametrize("case", ["bought", "cancelled", "started", "own", "ineligible"])
def test_buy__when_it_cannot_be_bought__reverts(res, registry, provider, requester, buyer2, case):
    rid = offer(res, provider)
    buyer, reason = requester, ""
    if case == "bought":
        with boa.env.prank(buyer2):
            res.buy(rid)
        reason = "reservations: not offered"
    elif case == "cancelled":
        with boa.env.prank(provider):
            res.cancel_offer(rid)
        reason = "reservations: not offered"
    elif case == "started":
        travel_to(res.reservations(rid).start)
        reason = "reservations: window already started"
    elif case == "own":
        buyer, reason = provider, "reservations: provider cannot buy its own offer"
    else:
        with boa.env.prank(provider):
            registry.request_unbond(1)
        reason = "reservations: provider not eligible"
    with boa.env.prank(buyer), boa.reverts(reason):
        res.buy(rid)


# ---------------------------------------------------------------- resale


def test_resale__listed_and_bought__moves_the_holder_and_credits_the_seller(res, token, provider, requester, buyer2):
    rid = bought(res, provider, requester)
    with boa.env.prank(requester):
        res.list_for_resale(rid, 40 * E18)
    e = one_event(res, "ResaleListed")
    assert (e.reservation_id, e.holder, e.price) == (rid, requester, 40 * E18)
    assert res.reservations(rid).resale_price == 40 * E18
    before = token.balanceOf(buyer2)
    with boa.env.prank(buyer2):
        res.buy_resale(rid, 40 * E18)
    e = one_event(res, "ReservationResold")
    assert (e.reservation_id, e.seller, e.buyer, e.price) == (rid, requester, buyer2, 40 * E18)
    r = res.reservations(rid)
    assert (r.holder, r.resale_price, r.status, r.escrow) == (buyer2, 0, RESERVED, ESCROW)
    assert token.balanceOf(buyer2) == before - 40 * E18
    assert res.credits(requester) == 40 * E18
    assert_solvent(res, token)
    with boa.env.prank(requester):
        assert res.withdraw() == 40 * E18
    assert one_event(res, "Withdrawn").amount == 40 * E18
    # The new holder may resell it in turn; the old one can no longer.
    with boa.env.prank(requester), boa.reverts("reservations: caller is not the holder"):
        res.list_for_resale(rid, 1)
    with boa.env.prank(buyer2):
        res.list_for_resale(rid, 50 * E18)
    with boa.env.prank(requester):
        res.buy_resale(rid, MAX_UINT)
    assert res.reservations(rid).holder == requester
    assert res.credits(buyer2) == 50 * E18


def test_cancel_resale__by_the_holder__unlists_it(res, provider, requester, buyer2):
    rid = bought(res, provider, requester)
    with boa.env.prank(requester):
        res.list_for_resale(rid, 40 * E18)
    with boa.env.prank(buyer2), boa.reverts("reservations: caller is not the holder"):
        res.cancel_resale(rid)
    with boa.env.prank(requester):
        res.cancel_resale(rid)
    e = one_event(res, "ResaleCancelled")
    assert (e.reservation_id, e.holder) == (rid, requester)
    with boa.env.prank(requester), boa.reverts("reservations: not listed"):
        res.cancel_resale(rid)
    with boa.env.prank(buyer2), boa.reverts("reservations: not listed"):
        res.buy_resale(rid, MAX_UINT)


def test_list_for_resale__with_a_bad_price_or_not_bought__reverts(res, provider, requester):
    rid = bought(res, provider, requester)
    for bad in (0, 2**96):
        with boa.env.prank(requester), boa.reverts("reservations: bad price"):
            res.list_for_resale(rid, bad)
    unsold = offer(res, provider)
    with boa.env.prank(requester), boa.reverts("reservations: not reserved"):
        res.list_for_resale(unsold, 1)


def test_resale__once_the_window_started__reverts(res, provider, requester, buyer2):
    rid = bought(res, provider, requester)
    with boa.env.prank(requester):
        res.list_for_resale(rid, 40 * E18)
    travel_to(res.reservations(rid).start)
    with boa.env.prank(requester), boa.reverts("reservations: window already started"):
        res.list_for_resale(rid, 41 * E18)
    with boa.env.prank(buyer2), boa.reverts("reservations: window already started"):
        res.buy_resale(rid, MAX_UINT)


def test_buy_resale__above_max_by_the_holder_or_by_the_provider__reverts(res, provider, requester, buyer2):
    rid = bought(res, provider, requester)
    with boa.env.prank(requester):
        res.list_for_resale(rid, 40 * E18)
    with boa.env.prank(buyer2), boa.reverts("reservations: resale price above max"):
        res.buy_resale(rid, 40 * E18 - 1)
    with boa.env.prank(requester), boa.reverts("reservations: holder cannot buy its own listing"):
        res.buy_resale(rid, MAX_UINT)
    with boa.env.prank(provider), boa.reverts("reservations: provider cannot buy its own offer"):
        res.buy_resale(rid, MAX_UINT)


# ---------------------------------------------------------------- usage


def test_record_usage__in_the_window__accumulates_and_chains_the_roots(res, provider, requester):
    rid = bought(res, provider, requester)
    start, end = window(res, rid)
    travel_to(start + 1_000)
    with boa.env.prank(provider):
        res.record_usage(rid, 1_500, ROOT_A)
    e = one_event(res, "UsageRecorded")
    assert (e.reservation_id, e.provider, e.gpu_seconds, e.used_gpu_seconds, e.result_root) == (
        rid,
        provider,
        1_500,
        1_500,
        ROOT_A,
    )
    first = boa.eval(f"keccak256(abi_encode(empty(bytes32), 0x{ROOT_A.hex()}, convert(1500, uint64)))")
    assert e.usage_digest == first
    # Devices held so far: 2 GPUs x 1000 s. More would be a claim beyond the window's time.
    with boa.env.prank(provider), boa.reverts("reservations: usage above device time held"):
        res.record_usage(rid, 501, ROOT_B)
    travel_to(end + CHALLENGE - 1)  # after the window: capped by the whole window
    with boa.env.prank(provider):
        res.record_usage(rid, GPUS * DURATION - 1_500, ROOT_B)
    r = res.reservations(rid)
    assert (r.used_gpu_seconds, r.usage_records) == (GPUS * DURATION, 2)
    assert r.usage_digest == boa.eval(
        f"keccak256(abi_encode(0x{first.hex()}, 0x{ROOT_B.hex()}, convert({GPUS * DURATION - 1_500}, uint64)))"
    )
    with boa.env.prank(provider), boa.reverts("reservations: usage above device time held"):
        res.record_usage(rid, 1, ROOT_B)


def test_record_usage__outside_the_window_or_not_by_the_provider__reverts(res, provider, requester):
    rid = bought(res, provider, requester)
    start, end = window(res, rid)
    with boa.env.prank(provider), boa.reverts("reservations: window not started"):
        res.record_usage(rid, 1, ROOT_A)
    travel_to(start + 10)
    with boa.env.prank(requester), boa.reverts("reservations: caller is not the provider"):
        res.record_usage(rid, 1, ROOT_A)
    with boa.env.prank(provider), boa.reverts("reservations: no GPU-seconds"):
        res.record_usage(rid, 0, ROOT_A)
    travel_to(end + CHALLENGE)
    with boa.env.prank(provider), boa.reverts("reservations: usage window closed"):
        res.record_usage(rid, 1, ROOT_A)
    unsold = offer(res, provider, now() + 10)
    travel_to(now() + 20)
    with boa.env.prank(provider), boa.reverts("reservations: not reserved"):
        res.record_usage(unsold, 1, ROOT_A)


# ---------------------------------------------------------------- settlement: served vs failed, side by side


def test_settle__served__pays_the_provider_the_whole_price_used_and_unused(
    res, token, registry, provider, requester, treasury, stranger
):
    rid = bought(res, provider, requester)
    start, end = window(res, rid)
    travel_to(start + 600)
    with boa.env.prank(provider):
        res.record_usage(rid, 600, ROOT_A)  # a quarter of the device time held so far; most of it unused
    travel_to(end + CHALLENGE - 1)
    with boa.reverts("reservations: cannot settle yet"):
        res.settle(rid)
    travel_to(end + CHALLENGE)
    with boa.env.prank(stranger):
        res.settle(rid)
    e = one_event(res, "ReservationSettled")
    fee = ESCROW * FEE_BPS // 10_000
    assert (e.reservation_id, e.provider, e.holder, e.status) == (rid, provider, requester, PAID)
    assert (e.used_gpu_seconds, e.paid, e.fee, e.refunded, e.slashed) == (600, ESCROW, fee, 0, 0)
    assert res.credits(provider) == ESCROW - fee and res.credits(treasury) == fee
    assert res.credits(requester) == 0
    assert res.escrow_of(rid) == 0 and res.reservations(rid).status == PAID
    assert registry.stakes(provider).active_jobs == 0
    assert registry.reputation(provider).completed == 1
    assert_solvent(res, token)
    with boa.reverts("reservations: already settled"):
        res.settle(rid)
    provider_before = token.balanceOf(provider)
    with boa.env.prank(provider):
        res.withdraw()
    assert token.balanceOf(provider) == provider_before + ESCROW - fee
    with boa.env.prank(provider), boa.reverts("reservations: nothing to withdraw"):
        res.withdraw()


def test_settle__failure_attested__refunds_the_holder_and_slashes_the_provider(
    res, token, registry, provider, requester, verifier, treasury
):
    rid = bought(res, provider, requester)
    start, _ = window(res, rid)
    stake_before = registry.total_stake(provider)
    travel_to(start + 600)
    with boa.env.prank(verifier):
        res.attest_failure(rid)
    e = one_event(res, "FailureAttested")
    assert (e.reservation_id, e.verifier) == (rid, verifier)
    assert res.reservations(rid).status == FAILED
    # No need to wait for the window's end: the holder is refunded at once.
    res.settle(rid)
    e = one_event(res, "ReservationSettled")
    slashed = ESCROW + BASE_SLASH
    assert (e.status, e.paid, e.fee, e.refunded, e.slashed) == (SLASHED, 0, 0, ESCROW, slashed)
    to_holder = slashed * SLASH_REQUESTER_BPS // 10_000
    assert res.credits(requester) == ESCROW + to_holder
    assert res.credits(treasury) == slashed - to_holder
    assert res.credits(provider) == 0
    assert registry.total_stake(provider) == stake_before - slashed
    assert registry.stakes(provider).active_jobs == 0
    rep = registry.reputation(provider)
    assert (rep.completed, rep.failed, rep.slashed) == (0, 1, 1)
    assert_solvent(res, token)


def test_settle__of_an_offer_nobody_bought__reverts(res, provider):
    rid = offer(res, provider)
    with boa.reverts("reservations: not reserved"):
        res.settle(rid)


# ---------------------------------------------------------------- failure reports by the holder


def test_report_not_served__ruled_a_failure__gives_the_holder_everything(
    res, token, registry, provider, requester, verifier, treasury
):
    rid = bought(res, provider, requester)
    _, end = window(res, rid)
    travel_to(end - 10)  # reported while the window is open
    before = token.balanceOf(requester)
    with boa.env.prank(requester):
        res.report_not_served(rid)
    e = one_event(res, "NotServedReported")
    assert (e.reservation_id, e.holder, e.bond) == (rid, requester, DISPUTE_BOND)
    assert token.balanceOf(requester) == before - DISPUTE_BOND
    assert res.escrow_of(rid) == ESCROW + DISPUTE_BOND
    assert_solvent(res, token)
    # The ruling may come in the second period.
    travel_to(end + CHALLENGE + 10)
    with boa.env.prank(verifier):
        res.attest_failure(rid)
    res.settle(rid)
    slashed = ESCROW + BASE_SLASH
    assert one_event(res, "ReservationSettled").slashed == slashed
    assert res.credits(requester) == ESCROW + DISPUTE_BOND + slashed
    assert res.credits(treasury) == 0
    assert_solvent(res, token)


def test_report_not_served__ruled_served__pays_the_bond_to_the_provider(
    res, token, provider, requester, verifier, treasury
):
    rid = bought(res, provider, requester)
    start, end = window(res, rid)
    travel_to(start + 60)
    with boa.env.prank(requester):
        res.report_not_served(rid)
    with boa.env.prank(verifier):
        res.attest_served(rid)
    e = one_event(res, "ServiceAttested")
    assert (e.reservation_id, e.verifier) == (rid, verifier)
    assert res.reservations(rid).status == SERVED
    with boa.env.prank(requester), boa.reverts("reservations: already disputed"):
        res.report_not_served(rid)
    travel_to(end + CHALLENGE - 1)
    with boa.reverts("reservations: cannot settle yet"):
        res.settle(rid)
    travel_to(end + CHALLENGE)
    res.settle(rid)
    fee = ESCROW * FEE_BPS // 10_000
    assert one_event(res, "ReservationSettled").status == PAID
    assert res.credits(provider) == ESCROW - fee + DISPUTE_BOND
    assert res.credits(treasury) == fee and res.credits(requester) == 0
    assert_solvent(res, token)


def test_report_not_served__never_ruled__pays_the_provider_and_the_bond_and_slashes_nobody(
    res, token, registry, provider, requester, treasury
):
    rid = bought(res, provider, requester)
    start, end = window(res, rid)
    stake_before = registry.total_stake(provider)
    travel_to(start)
    with boa.env.prank(requester):
        res.report_not_served(rid)
    travel_to(end + 2 * CHALLENGE - 1)
    with boa.reverts("reservations: cannot settle yet"):
        res.settle(rid)
    travel_to(end + 2 * CHALLENGE)
    res.settle(rid)
    e = one_event(res, "ReservationSettled")
    fee = ESCROW * FEE_BPS // 10_000
    assert (e.status, e.paid, e.refunded, e.slashed) == (PAID, ESCROW, 0, 0)
    assert res.credits(requester) == 0
    assert res.credits(provider) == ESCROW - fee + DISPUTE_BOND
    assert registry.total_stake(provider) == stake_before
    assert registry.stakes(provider).active_jobs == 0
    assert registry.reputation(provider).completed == 1
    assert_solvent(res, token)


def test_report_not_served__outside_its_period_or_by_a_stranger__reverts(res, provider, requester, stranger, verifier):
    rid = bought(res, provider, requester)
    start, _ = window(res, rid)
    with boa.env.prank(requester), boa.reverts("reservations: window not started"):
        res.report_not_served(rid)
    travel_to(start)
    with boa.env.prank(stranger), boa.reverts("reservations: caller is not the holder"):
        res.report_not_served(rid)
    with boa.env.prank(requester):
        res.report_not_served(rid)
    with boa.env.prank(requester), boa.reverts("reservations: already disputed"):
        res.report_not_served(rid)
    late = bought(res, provider, requester, start=start + 10)
    travel_to(window(res, late)[1])
    with boa.env.prank(requester), boa.reverts("reservations: window over"):
        res.report_not_served(late)
    with boa.env.prank(verifier):
        res.attest_failure(rid)  # the dispute's second period is still running
    with boa.env.prank(requester), boa.reverts("reservations: not reserved"):
        res.report_not_served(rid)


# ---------------------------------------------------------------- attestations


def test_attest__by_anyone_but_the_court__reverts(res, flow, provider, requester, stranger):
    rid = bought(res, provider, requester)
    travel_to(res.reservations(rid).start)
    # Staked verifiers, the parties and strangers alike: only the court's final ruling counts.
    flow.register_verifier(provider, stake=0)
    flow.register_verifier(requester)
    for caller in (stranger, provider, requester):
        with boa.env.prank(caller), boa.reverts("reservations: caller is not the court"):
            res.attest_failure(rid)
        with boa.env.prank(caller), boa.reverts("reservations: caller is not the court"):
            res.attest_served(rid)


def test_set_court__a_second_time__reverts(res, owner, stranger):
    with boa.env.prank(owner), boa.reverts("reservations: court already set"):
        res.set_court(stranger)


def test_set_court__after_the_first_offer__reverts(deployment, providers, owner, treasury, provider, stranger):
    # Named before anything is sold: an owner cannot install a court of its own later.
    lone = deploy_reservations(deployment.token, deployment.registry, owner, treasury)
    offer(lone, provider)
    with boa.env.prank(owner), boa.reverts("reservations: offers already made"):
        lone.set_court(stranger)


def test_set_court__to_the_zero_address__reverts(deployment, owner, treasury):
    lone = deploy_reservations(deployment.token, deployment.registry, owner, treasury)
    with boa.env.prank(owner), boa.reverts("reservations: court is the zero address"):
        lone.set_court("0x" + "00" * 20)


def test_attest__outside_the_window__reverts(res, provider, requester, verifier):
    rid = bought(res, provider, requester)
    start, end = window(res, rid)
    with boa.env.prank(verifier), boa.reverts("reservations: window not started"):
        res.attest_failure(rid)
    travel_to(start)
    with boa.env.prank(verifier), boa.reverts("reservations: not disputed"):
        res.attest_served(rid)
    travel_to(end + CHALLENGE)
    with boa.env.prank(verifier), boa.reverts("reservations: attestation window closed"):
        res.attest_failure(rid)
    unsold = offer(res, provider, now() + 1)
    with boa.env.prank(verifier), boa.reverts("reservations: not reserved"):
        res.attest_failure(unsold)


def test_attest_served__after_the_second_period__reverts(res, provider, requester, verifier):
    rid = bought(res, provider, requester)
    start, end = window(res, rid)
    travel_to(start)
    with boa.env.prank(requester):
        res.report_not_served(rid)
    travel_to(end + 2 * CHALLENGE)
    with boa.env.prank(verifier), boa.reverts("reservations: attestation window closed"):
        res.attest_served(rid)


def test_attest_failure__after_a_served_ruling__still_refunds_and_slashes(res, token, provider, requester, verifier):
    rid = bought(res, provider, requester)
    start, end = window(res, rid)
    travel_to(start)
    with boa.env.prank(requester):
        res.report_not_served(rid)
    with boa.env.prank(verifier):
        res.attest_served(rid)
    travel_to(end)
    with boa.env.prank(verifier):
        res.attest_failure(rid)
    res.settle(rid)
    assert one_event(res, "ReservationSettled").status == SLASHED
    assert res.credits(requester) == ESCROW + DISPUTE_BOND + ESCROW + BASE_SLASH
    assert_solvent(res, token)


# ---------------------------------------------------------------- a token whose transfers fail


def test_transfers__that_return_false__revert(owner, treasury, provider, requester):
    d = deploy_with_false_token(owner, treasury)
    res = deploy_reservations(d.token, d.registry, owner, treasury)
    for account in (provider, requester):
        d.token.mint(account, FUNDS)
    with boa.env.prank(provider):
        d.registry.stake(MIN_PROVIDER_STAKE)
        d.registry.register_provider(make_offer(provider))
    rid = offer(res, provider)
    d.token.set_failing(True)
    with boa.env.prank(requester), boa.reverts("reservations: transfer failed"):
        res.buy(rid)
    d.token.set_failing(False)
    with boa.env.prank(requester):
        res.buy(rid)
    with boa.env.prank(requester):
        res.list_for_resale(rid, E18)
    with boa.env.prank(provider2_address := boa.env.generate_address("resale-buyer")):
        d.token.mint(provider2_address, E18)
        res.buy_resale(rid, E18)
    d.token.set_failing(True)
    with boa.env.prank(requester), boa.reverts("reservations: transfer failed"):
        res.withdraw()


# ---------------------------------------------------------------- gas


def test_gas__of_each_step__stays_within_budget(res, token, provider, requester, buyer2, verifier):
    gas: dict[str, int] = {}
    with boa.env.prank(provider):
        rid = res.offer(now() + DAY, DURATION, GPUS, PRICE)
        gas["offer"] = _gas(res)
    with boa.env.prank(requester):
        res.buy(rid)
        gas["buy"] = _gas(res)
        res.list_for_resale(rid, 40 * E18)
        gas["list_for_resale"] = _gas(res)
    with boa.env.prank(buyer2):
        res.buy_resale(rid, 40 * E18)
        gas["buy_resale"] = _gas(res)
    start, end = window(res, rid)
    travel_to(start + 1_000)
    with boa.env.prank(provider):
        res.record_usage(rid, 1_000, ROOT_A)
        gas["record_usage_first"] = _gas(res)
        res.record_usage(rid, 1_000, ROOT_B)
        gas["record_usage"] = _gas(res)
    travel_to(end + CHALLENGE)
    res.settle(rid)
    gas["settle_paid"] = _gas(res)
    with boa.env.prank(provider):
        res.withdraw()
        gas["withdraw"] = _gas(res)
    other = bought(res, provider, requester)
    travel_to(res.reservations(other).start)
    with boa.env.prank(requester):
        res.report_not_served(other)
        gas["report_not_served"] = _gas(res)
    with boa.env.prank(verifier):
        res.attest_failure(other)
        gas["attest_failure"] = _gas(res)
    res.settle(other)
    gas["settle_slashed"] = _gas(res)
    print({"reservations_gas": gas})
    for step, used in gas.items():
        assert used < 200_000, (step, used)
    assert gas["offer"] < 80_000 and gas["buy"] < 110_000


# ---------------------------------------------------------------- revert coverage

# Every reason is asserted above; the grep below checks it and the list is empty on purpose.
UNREACHABLE_REASONS: set[str] = set()


def test_every_reservations_revert_reason_is_asserted_by_a_test():
    reasons = set(re.findall(r'"(reservations: [^"]+)"', (CONTRACTS / "Reservations.vy").read_text()))
    assert len(reasons) > 30  # the grep itself works
    tested = (
        Path(__file__)
        .read_text()
        .split("# ---------------------------------------------------------------- revert coverage")[0]
    )
    untested = sorted(r for r in reasons - UNREACHABLE_REASONS if f'"{r}"' not in tested)
    assert untested == [], f"reservations revert reasons no test asserts: {untested}"
