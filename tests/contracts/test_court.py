"""VerifierCourt: panels drawn by stake-weighted lot, rulings passed to the market and the reservations
contract, appeals to larger panels, verifiers slashed for rulings the final round overturned, no-shows
fined and replaced; and the attacks of a second verifier account that it stops."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import boa
import pytest
from eth_utils import keccak

from tests.contracts.contract_helpers import (
    AUCTION_INSTANT,
    BASE_SLASH,
    DEFAULT_PRICE_FLOOR,
    DISPUTE_BOND,
    E18,
    FEE_BPS,
    FUNDS,
    MAX_UINT,
    MIN_VERIFIER_STAKE,
    OUTCOME_ACCEPT,
    OUTCOME_REJECT,
    OUTCOME_VOID,
    POLICY_NONE,
    POLICY_REDUNDANT,
    POLICY_REPLAY,
    SLASH_REQUESTER_BPS,
    SLOT_ACCEPTED,
    SLOT_COMMITTED,
    SLOT_PAID,
    SLOT_REJECTED,
    SLOT_SLASHED,
    Flow,
    Spec,
    deploy,
    deploy_with_false_token,
    fund,
    load,
    make_spec,
    now,
    one_event,
    owner_change,
    queue_owner_change,
    travel_to,
    value,
)

CHALLENGE = 86_400
RES_CHALLENGE = 86_400
RULING = 3_600
APPEAL = 3_600
APPEAL_BOND = 20 * E18
VOTE_STAKE = 100 * E18
NO_SHOW_FINE = 10 * E18
VERIFIER_STAKE = 2_000 * E18
CLAIM = 1_800
NO_RULING = 3
STATE_DRAWING, STATE_VOTING, STATE_APPEALABLE, STATE_CLOSED = 1, 2, 3, 4
RES_RESERVED, RES_DISPUTED, RES_SERVED, RES_FAILED = 4, 8, 16, 32
RES_PAID, RES_SLASHED = 64, 128


@dataclass
class World:
    d: Any
    flow: Flow
    court: Any
    res: Any
    owner: str
    treasury: str
    verifiers: list[str]


def _approve_all(w_token: Any, account: str, *spenders: str) -> None:
    with boa.env.prank(account):
        for spender in spenders:
            w_token.approve(spender, MAX_UINT)


def _deploy_court(d: Any, res: Any, owner: str, treasury: str, **overrides: Any) -> Any:
    args = {
        "draw_delay": 1,
        "ruling_period": RULING,
        "appeal_period": APPEAL,
        "appeal_bond": APPEAL_BOND,
        "vote_stake": VOTE_STAKE,
        "no_show_fine": NO_SHOW_FINE,
    }
    args.update(overrides)
    # Deployed from an account of its own: boa keys contracts by address, and a court at an address
    # another module deploys something else to would be shown with the wrong layout on a revert.
    deployer = boa.env.generate_address("court-deployer")
    with boa.env.prank(deployer):
        court = load(
            "VerifierCourt",
            d.token.address,
            d.registry.address,
            d.market.address,
            res.address,
            treasury,
            *args.values(),
        )
        court.transfer_ownership(owner)
    return court


@pytest.fixture(scope="module")
def w(owner, treasury, requester, provider, provider2, provider3, stranger) -> World:
    d = deploy(owner, treasury)
    with boa.env.prank(owner):
        res = load(
            "Reservations",
            d.token.address,
            d.registry.address,
            RES_CHALLENGE,
            treasury,
            FEE_BPS,
            DISPUTE_BOND,
            BASE_SLASH,
            SLASH_REQUESTER_BPS,
        )
    court = _deploy_court(d, res, owner, treasury)
    with boa.env.prank(owner):
        d.market.set_court(court.address)
        res.set_court(court.address)
    # The registry's market is set: every authorization waits out the owner's change delay.
    owner_change(d.registry, owner, "set_authorized", res.address, True)
    owner_change(d.registry, owner, "set_authorized", court.address, True)
    flow = Flow(d)
    for account in (requester, provider, provider2, provider3, stranger):
        fund(d, account)
        _approve_all(d.token, account, court.address, res.address)
    for p in (provider, provider2, provider3):
        flow.register_provider(p)
    verifiers = [boa.env.generate_address(f"court-verifier{i}") for i in range(12)]
    for v in verifiers:
        fund(d, v)
        _approve_all(d.token, v, court.address, res.address)
        flow.register_verifier(v, stake=VERIFIER_STAKE)
        with boa.env.prank(v):
            court.join()
    return World(d, flow, court, res, owner, treasury, verifiers)


# ---------------------------------------------------------------- helpers


def _alt(w: World, name: str, stake: int = MIN_VERIFIER_STAKE) -> str:
    """A second account of some party, registered as a verifier and joined to the court."""
    alt = boa.env.generate_address(name)
    fund(w.d, alt)
    _approve_all(w.d.token, alt, w.court.address, w.res.address)
    w.flow.register_verifier(alt, stake=stake)
    with boa.env.prank(alt):
        w.court.join()
    return alt


def _job(w: World, requester: str, provider: str, policy: int = POLICY_REPLAY, **kw: Any) -> tuple[int, Spec]:
    kw.setdefault("challenge_window", CHALLENGE)
    spec = make_spec(requester, auction=AUCTION_INSTANT, policy=policy, **kw)
    job_id = w.flow.committed_job(spec, provider, CLAIM)
    return job_id, spec


def _open(w: World, job_id: int, spec: Spec, slot: int = 0, caller: str | None = None) -> int:
    with boa.env.prank(caller or w.verifiers[0]):
        return w.court.open_slot_case(job_id, spec, slot)


def _draw(w: World, case_id: int) -> list[str]:
    boa.env.time_travel(blocks=1)
    w.court.draw(case_id)
    c = w.court.cases(case_id)
    return [a for a in w.court.panel(case_id, c.round) if a != "0x" + "00" * 20]


def _rule(w: World, case_id: int, votes: dict[str, tuple[int, int]]) -> None:
    for v, (outcome, gs) in votes.items():
        with boa.env.prank(v):
            w.court.rule(case_id, outcome, gs)


def _finalize(w: World, case_id: int) -> list[Any]:
    """Closes a ruled case once its appeal window passed; returns the court's events of the closing."""
    c = w.court.cases(case_id)
    logs: list[Any] = []
    if c.state == STATE_APPEALABLE:
        travel_to(c.appeal_deadline)
        w.court.finalize(case_id)
        logs = w.court.get_logs()
    assert w.court.cases(case_id).state == STATE_CLOSED
    return logs


def _stake(w: World, account: str) -> int:
    return w.d.registry.total_stake(account)


def assert_court_solvent(w: World) -> None:
    """The court holds exactly what it owes: credits plus what open cases hold."""
    assert w.d.token.balanceOf(w.court.address) == w.court.total_credits() + w.court.total_held()


def _run_honestly(
    w: World, case_id: int, truth: tuple[int, int], liars: dict[str, tuple[int, int]], appellant: str
) -> list[str]:
    """Every round: drawn liars vote their lie, drawn honest verifiers the truth; while the round's ruling
    is wrong, ``appellant`` appeals. Returns every verifier drawn."""
    drawn: list[str] = []
    while True:
        c = w.court.cases(case_id)
        if c.state == STATE_DRAWING:
            panel = _draw(w, case_id)
        else:
            panel = [a for a in w.court.panel(case_id, c.round) if a != "0x" + "00" * 20]
        drawn += panel
        _rule(w, case_id, {v: liars.get(v, truth) for v in panel})
        c = w.court.cases(case_id)
        if c.state == STATE_APPEALABLE and c.ruling != truth[0]:
            with boa.env.prank(appellant):
                w.court.appeal(case_id)
            continue
        _finalize(w, case_id)
        return drawn


# ---------------------------------------------------------------- the attacks of issue 12


def test_attack__requesters_second_account__cannot_reject_an_honest_result(w, requester, provider):
    alt = _alt(w, "requester-alt")
    job_id, spec = _job(w, requester, provider)
    # It can no longer rule directly at the market, at once or ever.
    with boa.env.prank(alt), boa.reverts("market: caller is not the court"):
        w.d.market.attest(job_id, spec, 0, OUTCOME_REJECT, 0)
    case_id = _open(w, job_id, spec, caller=requester)
    panel = _draw(w, case_id)
    if alt not in panel:
        with boa.env.prank(alt), boa.reverts("court: caller is not on the panel"):
            w.court.rule(case_id, OUTCOME_REJECT, 0)
    # Drawn or not, its lie does not stand: the provider appeals a wrong ruling.
    drawn = _run_honestly(w, case_id, (OUTCOME_ACCEPT, CLAIM), {alt: (OUTCOME_REJECT, 0)}, provider)
    assert w.d.market.slots(job_id, 0).status == SLOT_ACCEPTED
    w.flow.settle(job_id, spec, 0)
    assert w.d.market.slots(job_id, 0).status == SLOT_PAID
    if alt in drawn:
        assert _stake(w, alt) == MIN_VERIFIER_STAKE - VOTE_STAKE
    assert_court_solvent(w)


def test_attack__providers_own_verifier__cannot_accept_its_garbage(w, requester, provider):
    alt = _alt(w, "provider-alt")
    job_id, spec = _job(w, requester, provider)
    with boa.env.prank(alt), boa.reverts("market: caller is not the court"):
        w.d.market.attest(job_id, spec, 0, OUTCOME_ACCEPT, CLAIM)
    case_id = _open(w, job_id, spec, caller=alt)
    before = _stake(w, provider)
    _run_honestly(w, case_id, (OUTCOME_REJECT, 0), {alt: (OUTCOME_ACCEPT, CLAIM)}, requester)
    assert w.d.market.slots(job_id, 0).status == SLOT_REJECTED
    w.flow.settle(job_id, spec, 0)
    assert w.d.market.slots(job_id, 0).status == SLOT_SLASHED
    assert _stake(w, provider) < before
    assert_court_solvent(w)


def test_attack__competitor_in_a_redundant_job__is_never_drawn_for_the_other_slot(w, requester, provider, provider2):
    # provider2 runs slot 1 and is a verifier too: a party to slot 0's case, never drawn for it.
    w.flow.stake(provider2, VERIFIER_STAKE)
    with boa.env.prank(provider2):
        w.d.registry.register_verifier()
        w.court.join()
    spec = make_spec(
        requester, auction=AUCTION_INSTANT, policy=POLICY_REDUNDANT, redundancy=2, challenge_window=CHALLENGE
    )
    job_id = w.flow.post(spec)
    w.flow.take(job_id, spec, provider)
    w.flow.take(job_id, spec, provider2)
    boa.env.time_travel(seconds=CLAIM)
    w.flow.commit_result(job_id, spec, 0, CLAIM)
    w.flow.commit_result(job_id, spec, 1, CLAIM)
    with boa.env.prank(provider2), boa.reverts("market: caller is not the court"):
        w.d.market.attest(job_id, spec, 0, OUTCOME_REJECT, 0)
    case_id = _open(w, job_id, spec, 0)
    drawn = _run_honestly(w, case_id, (OUTCOME_ACCEPT, CLAIM), {}, provider)
    assert provider2 not in drawn
    with boa.env.prank(provider2), boa.reverts("court: nothing to draw"):
        w.court.draw(case_id)
    assert w.d.market.slots(job_id, 0).status == SLOT_ACCEPTED


def test_attack__buyers_second_account__cannot_flip_a_served_window(w, requester, provider):
    alt = _alt(w, "buyer-alt")
    with boa.env.prank(provider):
        rid = w.res.offer(now() + 86_400, 4 * 3_600, 2, DEFAULT_PRICE_FLOOR)
    with boa.env.prank(requester):
        w.res.buy(rid)
    travel_to(w.res.reservations(rid).start + 60)
    with boa.env.prank(requester):
        w.res.report_not_served(rid)
    case_id = w.court.open_reservation_case(rid)
    _run_honestly(w, case_id, (OUTCOME_ACCEPT, 0), {alt: (OUTCOME_REJECT, 0)}, provider)
    assert w.res.reservations(rid).status == RES_SERVED
    # The served ruling is final: no second case, and no account but the court may flip it.
    with boa.reverts("court: case already open"):
        w.court.open_reservation_case(rid)
    with boa.env.prank(alt), boa.reverts("reservations: caller is not the court"):
        w.res.attest_failure(rid)
    r = w.res.reservations(rid)
    travel_to(r.start + r.duration + 2 * RES_CHALLENGE)
    w.res.settle(rid)
    assert w.res.reservations(rid).status == RES_PAID
    assert_court_solvent(w)


def test_attack__a_verifier_overturned_on_appeal__is_slashed_and_the_honest_side_paid(w, requester, provider):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    (liar,) = _draw(w, case_id)
    _rule(w, case_id, {liar: (OUTCOME_REJECT, 0)})
    assert w.court.cases(case_id).state == STATE_APPEALABLE
    provider_before = w.d.token.balanceOf(provider)
    with boa.env.prank(provider):
        w.court.appeal(case_id)
    bond = 3 * APPEAL_BOND
    assert w.d.token.balanceOf(provider) == provider_before - bond
    panel = _draw(w, case_id)
    assert len(panel) == 3 and liar not in panel
    _rule(w, case_id, {v: (OUTCOME_ACCEPT, CLAIM) for v in panel})
    _finalize(w, case_id)
    # The liar pays VOTE_STAKE: half to the right appellant, half shared by the three who ruled right.
    assert _stake(w, liar) == VERIFIER_STAKE - VOTE_STAKE
    assert w.court.credits(provider) == bond + VOTE_STAKE // 2
    for v in panel:
        assert w.court.credits(v) == VOTE_STAKE // 2 // 3
    assert w.court.credits(w.treasury) == VOTE_STAKE // 2 - 3 * (VOTE_STAKE // 2 // 3)
    assert w.d.market.slots(job_id, 0).status == SLOT_ACCEPTED
    assert_court_solvent(w)
    with boa.env.prank(provider):
        assert w.court.withdraw() == bond + VOTE_STAKE // 2
    assert_court_solvent(w)


# ---------------------------------------------------------------- draws and rulings


def test_happy_path__one_drawn_verifier_rules_and_the_market_takes_it_after_the_appeal_window(w, requester, provider):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    assert one_event(w.court, "CaseOpened").draw_block == boa.env.evm.patch.block_number + 1
    with boa.reverts("court: too early to draw"):
        w.court.draw(case_id)
    panel = _draw(w, case_id)
    assert len(panel) == 1 and panel[0] in w.verifiers
    # Only the drawn verifier rules.
    other = next(v for v in w.verifiers if v not in panel)
    with boa.env.prank(other), boa.reverts("court: caller is not on the panel"):
        w.court.rule(case_id, OUTCOME_ACCEPT, CLAIM)
    with boa.env.prank(panel[0]), boa.reverts("court: unknown outcome"):
        w.court.rule(case_id, 3, 0)
    _rule(w, case_id, {panel[0]: (OUTCOME_ACCEPT, CLAIM - 100)})
    with boa.env.prank(panel[0]), boa.reverts("court: no ruling under way"):
        w.court.rule(case_id, OUTCOME_ACCEPT, CLAIM)
    # Nothing reaches the market before the appeal window closes.
    assert w.d.market.slots(job_id, 0).status == SLOT_COMMITTED
    with boa.reverts("court: appeal window still open"):
        w.court.finalize(case_id)
    (closed,) = [e for e in _finalize(w, case_id) if type(e).__name__ == "CaseClosed"]
    assert closed.passed_on and closed.ruling == OUTCOME_ACCEPT
    slot = w.d.market.slots(job_id, 0)
    assert slot.status == SLOT_ACCEPTED and slot.gpu_seconds == CLAIM - 100
    with boa.reverts("court: case is not ruled"):
        w.court.finalize(case_id)
    with boa.reverts("court: nothing to appeal"):
        w.court.appeal(case_id)
    # Nobody is slashed on an unappealed ruling, nobody is paid either.
    assert _stake(w, panel[0]) == VERIFIER_STAKE
    assert w.court.total_credits() == 0
    assert_court_solvent(w)


def test_parties__are_never_drawn_even_when_they_hold_most_of_the_stake(w, requester, provider, stranger):
    big = 100 * VERIFIER_STAKE
    for party in (requester, provider):
        w.flow.stake(party, big)
        with boa.env.prank(party):
            w.d.registry.register_verifier()
            w.court.join()
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    for _ in range(3):
        panel = _draw(w, case_id)
        assert requester not in panel and provider not in panel
        _rule(w, case_id, {v: (OUTCOME_VOID, 0) for v in panel})
        if w.court.cases(case_id).state != STATE_APPEALABLE:
            break
        with boa.env.prank(stranger):
            w.court.appeal(case_id)


def test_draw__is_stake_weighted__a_verifier_below_the_minimum_is_never_drawn(w, requester, provider):
    # All but one verifier fall below the minimum: the one left is drawn every time.
    for v in w.verifiers[1:]:
        with boa.env.prank(v):
            w.d.registry.request_unbond(VERIFIER_STAKE)
    for _ in range(3):
        job_id, spec = _job(w, requester, provider)
        assert _draw(w, _open(w, job_id, spec)) == [w.verifiers[0]]
    # Anyone may take them out of the draws now; an active one only leaves by itself.
    w.court.leave(w.verifiers[1])
    with boa.reverts("court: verifier is still active"):
        w.court.leave(w.verifiers[0])
    with boa.reverts("court: not joined"):
        w.court.leave(w.verifiers[1])


def test_draw__with_nobody_to_draw__closes_without_a_ruling(w, requester, provider):
    for v in w.verifiers:
        with boa.env.prank(v):
            w.d.registry.request_unbond(VERIFIER_STAKE)
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    assert _draw(w, case_id) == []
    c = w.court.cases(case_id)
    assert c.state == STATE_CLOSED and c.ruling == NO_RULING
    assert w.d.market.slots(job_id, 0).status == SLOT_COMMITTED
    with boa.reverts("court: nothing to draw"):
        w.court.draw(case_id)
    # The market's own timeout then pays the unchallenged claim.
    travel_to(w.d.market.slots(job_id, 0).committed_at + CHALLENGE)
    w.flow.settle(job_id, spec, 0)
    assert w.d.market.slots(job_id, 0).status == SLOT_PAID


def test_open__refuses_duplicates_wrong_specs_uncommitted_slots_and_unchecked_policies(w, requester, provider):
    job_id, spec = _job(w, requester, provider)
    _open(w, job_id, spec)
    with boa.reverts("court: case already open"):
        _open(w, job_id, spec)
    with boa.reverts("court: spec does not match job"):
        _open(w, job_id, spec._replace(max_price=spec.max_price + 1), 1)
    plain = make_spec(requester, auction=AUCTION_INSTANT, policy=POLICY_NONE, challenge_window=CHALLENGE)
    plain_id = w.flow.post(plain)
    w.flow.take(plain_id, plain, provider)
    with boa.reverts("court: slot is not committed"):
        _open(w, plain_id, plain)
    boa.env.time_travel(seconds=CLAIM)
    w.flow.commit_result(plain_id, plain, 0, CLAIM)
    with boa.reverts("court: slot needs no ruling"):
        _open(w, plain_id, plain)
    # A dispute brings even an unchecked job to court.
    with boa.env.prank(requester):
        w.d.market.dispute_result(plain_id, plain, 0)
    assert w.court.slot_case(plain_id, 0) == 0
    assert _open(w, plain_id, plain) == w.court.slot_case(plain_id, 0)


def test_open_reservation_case__before_the_window_or_after_its_attestation_window__reverts(w, requester, provider):
    with boa.env.prank(provider):
        rid = w.res.offer(now() + 86_400, 3_600, 1, DEFAULT_PRICE_FLOOR)
    with boa.reverts("court: reservation is not held"):
        w.court.open_reservation_case(rid)
    with boa.env.prank(requester):
        w.res.buy(rid)
    with boa.reverts("court: window not started"):
        w.court.open_reservation_case(rid)
    r = w.res.reservations(rid)
    travel_to(r.start + r.duration + RES_CHALLENGE)
    with boa.reverts("court: too late for a ruling"):
        w.court.open_reservation_case(rid)


def test_reservation__a_failure_the_court_rules__refunds_the_holder_and_slashes_the_provider(w, requester, provider):
    with boa.env.prank(provider):
        rid = w.res.offer(now() + 86_400, 3_600, 1, DEFAULT_PRICE_FLOOR)
    with boa.env.prank(requester):
        w.res.buy(rid)
    travel_to(w.res.reservations(rid).start)
    case_id = w.court.open_reservation_case(rid)
    assert w.court.reservation_case(rid) == case_id
    panel = _draw(w, case_id)
    _rule(w, case_id, {v: (OUTCOME_REJECT, 0) for v in panel})
    _finalize(w, case_id)
    assert w.res.reservations(rid).status == RES_FAILED


# ---------------------------------------------------------------- no-shows


def test_no_show__is_fined_and_replaced_by_a_fresh_draw(w, requester, provider):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    (sleeper,) = _draw(w, case_id)
    with boa.reverts("court: ruling window still open"):
        w.court.timeout(case_id)
    travel_to(w.court.cases(case_id).ruling_deadline)
    with boa.env.prank(sleeper), boa.reverts("court: ruling window closed"):
        w.court.rule(case_id, OUTCOME_ACCEPT, CLAIM)
    w.court.timeout(case_id)
    assert one_event(w.court, "NoShowFined").fined == NO_SHOW_FINE
    assert _stake(w, sleeper) == VERIFIER_STAKE - NO_SHOW_FINE
    (fresh,) = [a for a in w.court.panel(case_id, 0) if a != "0x" + "00" * 20]
    assert fresh != sleeper
    with boa.env.prank(sleeper), boa.reverts("court: caller is not on the panel"):
        w.court.rule(case_id, OUTCOME_ACCEPT, CLAIM)
    _rule(w, case_id, {fresh: (OUTCOME_ACCEPT, CLAIM)})
    assert_court_solvent(w)
    _finalize(w, case_id)
    # The fine goes to the verifier that ruled in its place.
    assert w.court.credits(fresh) == NO_SHOW_FINE
    assert_court_solvent(w)
    with boa.env.prank(fresh):
        w.court.withdraw()
    with boa.env.prank(fresh), boa.reverts("court: nothing to withdraw"):
        w.court.withdraw()
    assert_court_solvent(w)


def test_no_show__near_the_slots_deadline__the_round_is_decided_by_the_votes_cast(w, requester, provider):
    job_id, spec = _job(w, requester, provider, challenge_window=RULING + 600)
    case_id = _open(w, job_id, spec)
    _draw(w, case_id)
    travel_to(w.court.cases(case_id).ruling_deadline)
    w.court.timeout(case_id)
    # No time for a fresh panel: nobody ruled, nothing is passed on, the fine goes to the treasury.
    c = w.court.cases(case_id)
    assert c.state == STATE_CLOSED and c.ruling == NO_RULING
    assert w.court.credits(w.treasury) == NO_SHOW_FINE
    assert_court_solvent(w)


# ---------------------------------------------------------------- appeals


def test_appeal__that_fails__loses_its_bond_to_the_verifiers_who_ruled_right(w, requester, provider, stranger):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    (first,) = _draw(w, case_id)
    _rule(w, case_id, {first: (OUTCOME_ACCEPT, CLAIM)})
    with boa.env.prank(requester):
        w.court.appeal(case_id)
    with boa.env.prank(stranger), boa.reverts("court: nothing to appeal"):
        w.court.appeal(case_id)
    panel = _draw(w, case_id)
    _rule(w, case_id, {v: (OUTCOME_ACCEPT, CLAIM) for v in panel})
    _finalize(w, case_id)
    bond = 3 * APPEAL_BOND
    assert w.court.credits(requester) == 0
    share = bond // 4
    for v in [first, *panel]:
        assert w.court.credits(v) == share
        assert _stake(w, v) == VERIFIER_STAKE
    assert w.d.market.slots(job_id, 0).status == SLOT_ACCEPTED
    assert_court_solvent(w)


def test_appeal__after_its_window__reverts_and_the_last_round_is_final(w, requester, provider, stranger):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    for round_ in range(3):
        panel = _draw(w, case_id)
        assert len(panel) == (1, 3, 7)[round_]
        outcome = OUTCOME_REJECT if round_ < 2 else OUTCOME_ACCEPT
        _rule(w, case_id, {v: (outcome, CLAIM) for v in panel})
        if round_ < 2:
            travel_to(w.court.cases(case_id).appeal_deadline - 1)
            with boa.env.prank(stranger):
                w.court.appeal(case_id)
    # The third round's ruling is final at once: no appeal window is left.
    assert w.court.cases(case_id).state == STATE_CLOSED
    assert w.d.market.slots(job_id, 0).status == SLOT_ACCEPTED
    # Both rulings against the final one were slashed; both appeals were right.
    assert w.court.credits(stranger) == 3 * APPEAL_BOND + 7 * APPEAL_BOND + (4 * VOTE_STAKE) // 2 // 2 * 2
    assert_court_solvent(w)


def test_appeal__when_the_window_closed__reverts(w, requester, provider, stranger):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    (first,) = _draw(w, case_id)
    _rule(w, case_id, {first: (OUTCOME_VOID, 0)})
    travel_to(w.court.cases(case_id).appeal_deadline)
    with boa.env.prank(stranger), boa.reverts("court: appeal window closed"):
        w.court.appeal(case_id)


def test_appeal__a_split_panel__voids(w, requester, provider, stranger):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    (first,) = _draw(w, case_id)
    _rule(w, case_id, {first: (OUTCOME_ACCEPT, CLAIM)})
    with boa.env.prank(stranger):
        w.court.appeal(case_id)
    a, b, c = _draw(w, case_id)
    _rule(w, case_id, {a: (OUTCOME_ACCEPT, CLAIM)})
    with boa.env.prank(a), boa.reverts("court: already ruled"):
        w.court.rule(case_id, OUTCOME_REJECT, 0)
    _rule(w, case_id, {b: (OUTCOME_REJECT, 0), c: (OUTCOME_VOID, 0)})
    assert w.court.cases(case_id).ruling == OUTCOME_VOID


def test_appeal__accepted_seconds_are_the_median_of_the_accepting_votes(w, requester, provider, stranger):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    (first,) = _draw(w, case_id)
    _rule(w, case_id, {first: (OUTCOME_ACCEPT, 10)})
    with boa.env.prank(stranger):
        w.court.appeal(case_id)
    a, b, c = _draw(w, case_id)
    _rule(w, case_id, {a: (OUTCOME_ACCEPT, 1_700), b: (OUTCOME_ACCEPT, 1_500), c: (OUTCOME_ACCEPT, 1_600)})
    assert w.court.cases(case_id).verified == 1_600


# ---------------------------------------------------------------- owner and set-up


def test_parameters__owner_only_and_in_range(w, stranger):
    with boa.env.prank(stranger), boa.reverts("ownable: caller is not the owner"):
        w.court.set_parameters(stranger, 1, RULING, APPEAL, 0, 0, 0)
    cases = [
        (("0x" + "00" * 20, 1, RULING, APPEAL), "court: treasury is the zero address"),
        ((w.treasury, 0, RULING, APPEAL), "court: draw delay out of range"),
        ((w.treasury, 1, 0, APPEAL), "court: ruling period out of range"),
        ((w.treasury, 1, RULING, 0), "court: appeal period out of range"),
    ]
    for args, reason in cases:
        queue_owner_change(w.court, w.owner, "set_parameters", *args, 0, 0, 0)
        with boa.env.prank(w.owner), boa.reverts(reason):
            w.court.set_parameters(*args, 0, 0, 0)
    owner_change(w.court, w.owner, "set_parameters", w.treasury, 2, RULING, APPEAL, 1, 2, 3)
    assert w.court.no_show_fine() == 3


def test_set_parameters__not_queued_or_before_the_delay__reverts(w):
    args = (w.treasury, 2, RULING, APPEAL, 1, 2, 3)
    with boa.env.prank(w.owner), boa.reverts("court: change not queued"):
        w.court.set_parameters(*args)
    with boa.env.prank(w.owner):
        w.court.queue_change(keccak(w.court.set_parameters.prepare_calldata(*args)))
    boa.env.time_travel(seconds=w.court.CHANGE_DELAY() - 1)
    with boa.env.prank(w.owner), boa.reverts("court: change still delayed"):
        w.court.set_parameters(*args)
    boa.env.time_travel(seconds=1)
    with boa.env.prank(w.owner):
        w.court.set_parameters(*args)
    with boa.env.prank(w.owner), boa.reverts("court: change not queued"):
        w.court.set_parameters(*args)


def test_join__twice_or_without_stake__reverts(w, stranger):
    with boa.env.prank(w.verifiers[0]), boa.reverts("court: already joined"):
        w.court.join()
    with boa.env.prank(stranger), boa.reverts("court: not an active verifier"):
        w.court.join()
    assert w.court.verifier_count() == len(w.verifiers)


def test_join__beyond_the_limit__reverts(w):
    for i in range(64 - len(w.verifiers)):
        _alt(w, f"court-filler{i}")
    late = boa.env.generate_address("court-late")
    fund(w.d, late)
    w.flow.register_verifier(late)
    with boa.env.prank(late), boa.reverts("court: too many verifiers"):
        w.court.join()


def test_a_deployment_without_reservations__refuses_reservation_cases(w):
    lone = _deploy_court(w.d, type("NoRes", (), {"address": "0x" + "00" * 20})(), w.owner, w.treasury)
    with boa.reverts("court: no reservations contract"):
        lone.open_reservation_case(1)


def test_ruling_by_a_drawn_verifier_that_became_a_party__reverts(w, requester, provider):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    (drawn,) = _draw(w, case_id)
    # It disputes the slot it sits on: a challenger may not judge its own challenge.
    with boa.env.prank(drawn):
        w.d.market.dispute_result(job_id, spec, 0)
        with boa.reverts("court: verifier is a party"):
            w.court.rule(case_id, OUTCOME_REJECT, 0)


def test_solvency__bonds_fines_and_credits_are_always_held(w, requester, provider, stranger):
    job_id, spec = _job(w, requester, provider)
    case_id = _open(w, job_id, spec)
    (first,) = _draw(w, case_id)
    _rule(w, case_id, {first: (OUTCOME_REJECT, 0)})
    with boa.env.prank(stranger):
        w.court.appeal(case_id)
    assert w.court.total_held() == 3 * APPEAL_BOND
    assert_court_solvent(w)
    panel = _draw(w, case_id)
    _rule(w, case_id, {panel[0]: (OUTCOME_ACCEPT, CLAIM)})
    travel_to(w.court.cases(case_id).ruling_deadline)
    w.court.timeout(case_id)
    assert_court_solvent(w)
    fresh = [a for a in w.court.panel(case_id, 1) if a not in panel]
    _rule(w, case_id, {v: (OUTCOME_ACCEPT, CLAIM) for v in fresh})
    _finalize(w, case_id)
    assert w.court.total_held() == 0
    assert_court_solvent(w)
    for account in {first, *panel, *fresh, stranger, w.treasury}:
        if w.court.credits(account):
            with boa.env.prank(account):
                w.court.withdraw()
    assert w.d.token.balanceOf(w.court.address) == 0
    assert w.court.total_credits() == 0
    w.flow.settle(job_id, spec, 0)
    market_owes = w.d.market.total_credits() + w.d.market.jobs(job_id).escrow
    assert w.d.token.balanceOf(w.d.market.address) == market_owes
    assert value(DEFAULT_PRICE_FLOOR, CLAIM) > 0


def test_appeal__when_the_token_returns_false__reverts(treasury, requester, provider, stranger):
    owner = boa.env.generate_address("court-false-token-owner")  # its own addresses (see above)
    d = deploy_with_false_token(owner, treasury)
    court = _deploy_court(d, type("NoRes", (), {"address": "0x" + "00" * 20})(), owner, treasury)
    with boa.env.prank(owner):
        d.market.set_court(court.address)
    owner_change(d.registry, owner, "set_authorized", court.address, True)
    flow = Flow(d)
    for account in (requester, provider, stranger):
        d.token.mint(account, FUNDS)
    flow.register_provider(provider)
    judge = boa.env.generate_address("false-token-verifier")
    d.token.mint(judge, FUNDS)
    flow.register_verifier(judge)
    with boa.env.prank(judge):
        court.join()
    spec = make_spec(requester, auction=AUCTION_INSTANT, challenge_window=CHALLENGE)
    job_id = flow.committed_job(spec, provider, CLAIM)
    with boa.env.prank(stranger):
        case_id = court.open_slot_case(job_id, spec, 0)
    boa.env.time_travel(blocks=1)
    court.draw(case_id)
    with boa.env.prank(judge):
        court.rule(case_id, OUTCOME_ACCEPT, CLAIM)
    d.token.set_failing(True)
    with boa.env.prank(stranger), boa.reverts("court: transfer failed"):
        court.appeal(case_id)


def test_set_court__after_the_first_job_or_offer__reverts(treasury, requester, provider):
    # The court is named before anything runs: an owner cannot install a court of its own later.
    # (An owner of its own: boa keys contracts by address, and the suite's owner deploys elsewhere.)
    owner = boa.env.generate_address("court-test-owner")
    d = deploy(owner, treasury)
    fund(d, requester)
    Flow(d).post(make_spec(requester))
    with boa.env.prank(owner), boa.reverts("market: jobs already posted"):
        d.market.set_court(owner)
    with boa.env.prank(owner):
        res = load(
            "Reservations",
            d.token.address,
            d.registry.address,
            RES_CHALLENGE,
            treasury,
            FEE_BPS,
            DISPUTE_BOND,
            BASE_SLASH,
            SLASH_REQUESTER_BPS,
        )
    owner_change(d.registry, owner, "set_authorized", res.address, True)
    fund(d, provider)
    Flow(d).register_provider(provider)
    with boa.env.prank(provider):
        res.offer(now() + 86_400, 3_600, 1, DEFAULT_PRICE_FLOOR)
    with boa.env.prank(owner), boa.reverts("reservations: offers already made"):
        res.set_court(owner)
