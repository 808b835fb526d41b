"""Reservations under random sequences of offers, cancellations, purchases, resale listings and
purchases, usage records, failure reports, attestations, settlements, withdrawals and the passing
of time, checked against a model that predicts, for every call, whether it succeeds and what it
credits to whom.

Invariants after every step:
- solvency: the contract's token balance == the escrow of every reservation + every credit;
- every reservation's status and escrow, and every account's credit, are what the model says;
- the registry counts one lock per bought, unsettled reservation of each provider;
- no reservation pays twice (a second settle always reverts; the model counts settlements).
At the end of every run time passes beyond every window, every reservation reaches a terminal
state (settled or cancelled), every credit is withdrawn and the contract holds nothing.
"""

from __future__ import annotations

from typing import Any

import boa
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.contracts.contract_helpers import (
    BASE_SLASH,
    DISPUTE_BOND,
    E18,
    FEE_BPS,
    MIN_PROVIDER_STAKE,
    MIN_VERIFIER_STAKE,
    SLASH_REQUESTER_BPS,
    UNBONDING_PERIOD,
    fund,
    load,
    make_offer,
    now,
)

CHALLENGE = 3_600
OFFERED, CANCELLED, RESERVED, DISPUTED, SERVED, FAILED, PAID, SLASHED, REFUNDED = (1 << i for i in range(9))
HELD = (RESERVED, DISPUTED, SERVED, FAILED)
TERMINAL = (CANCELLED, PAID, SLASHED, REFUNDED)
PROVIDER_GPUS = (8, 4)
MAX_RESERVATIONS = 6

_world: dict[str, Any] = {}

pytestmark = pytest.mark.slow  # minutes under the ci Hypothesis profile


def _setup_world() -> None:
    """Token, registry and reservations with two staked providers, two buyers and a verifier."""
    _world.clear()
    owner = boa.env.generate_address("res-sm-owner")
    treasury = boa.env.generate_address("res-sm-treasury")
    with boa.env.prank(owner):
        token = load("ComputeToken", "Compute", "FLOP", "flopex", "1")
        registry = load("ProviderRegistry", token.address, MIN_PROVIDER_STAKE, MIN_VERIFIER_STAKE, UNBONDING_PERIOD)
        res = load(
            "Reservations",
            token.address,
            registry.address,
            CHALLENGE,
            treasury,
            FEE_BPS,
            DISPUTE_BOND,
            BASE_SLASH,
            SLASH_REQUESTER_BPS,
        )
        registry.set_authorized(res.address, True)
    # The verifier's account stands in for the court (tests/contracts/test_court.py draws real panels).
    verifier = boa.env.generate_address("res-sm-verifier")
    with boa.env.prank(owner):
        res.set_court(verifier)

    class _D:  # what `fund` needs
        pass

    d = _D()
    d.token, d.registry, d.market, d.owner = token, registry, res, owner  # type: ignore[attr-defined]
    providers = [boa.env.generate_address(f"res-sm-provider{i}") for i in range(2)]
    buyers = [boa.env.generate_address(f"res-sm-buyer{i}") for i in range(2)]
    for a in (*providers, *buyers, verifier):
        fund(d, a)  # approves `d.market`, here the reservations contract, and the registry
    for p, gpus in zip(providers, PROVIDER_GPUS, strict=True):
        with boa.env.prank(p):
            registry.stake(MIN_PROVIDER_STAKE + 1_000 * E18)
            registry.register_provider(make_offer(p, gpu_count=gpus))
    with boa.env.prank(verifier):
        registry.stake(MIN_VERIFIER_STAKE)
        registry.register_verifier()
    _world.update(
        token=token,
        registry=registry,
        res=res,
        treasury=treasury,
        providers=providers,
        buyers=buyers,
        verifier=verifier,
    )


class ReservationsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        w = _world
        # Every example starts from the deployment and is rolled back at its end.
        self._anchor = boa.env.anchor()
        self._anchor.__enter__()
        self.token, self.registry, self.res = w["token"], w["registry"], w["res"]
        self.providers: list[str] = w["providers"]
        self.buyers: list[str] = w["buyers"]
        self.verifier: str = w["verifier"]
        self.treasury: str = w["treasury"]
        self.accounts = [*self.providers, *self.buyers, self.treasury]
        # The model.
        self.r: dict[int, dict[str, Any]] = {}
        self.credits = {a: 0 for a in self.accounts}
        self.settlements = {}  # reservation id -> times it paid out

    def teardown(self) -> None:
        try:
            self._finish_everything()
        finally:
            self._anchor.__exit__(None, None, None)

    # ------------------------------------------------------------ helpers

    def _pick(self, data: st.DataObject, statuses: tuple[int, ...] | None = None) -> int | None:
        # Mostly a reservation the rule applies to; now and then any, to check the reverts.
        stray = statuses is None or data.draw(st.integers(0, 9)) == 0
        ids = [i for i, m in self.r.items() if stray or m["status"] in statuses]
        return data.draw(st.sampled_from(ids)) if ids else None

    def _call(self, ok: bool, sender: str, fn: Any, *args: Any) -> Any:
        with boa.env.prank(sender):
            if ok:
                return fn(*args)
            with boa.reverts():
                fn(*args)
        return None

    def _eligible(self, provider: str, gpus: int, collateral: int = 0) -> bool:
        return bool(self.registry.is_eligible(provider, 1, gpus, 0, collateral))

    def _credit(self, account: str, amount: int) -> None:
        self.credits[account] += amount

    # ------------------------------------------------------------ rules

    @initialize(b=st.integers(0, 1), p=st.integers(0, 1), lead=st.sampled_from((60, 600)))
    def a_bought_reservation(self, b: int, p: int, lead: int) -> None:
        """Every run starts with one reservation bought, so that its window matters."""
        self.offer(p, lead, 1_800, 1, 4)
        rid = max(self.r)
        self._call(True, self.buyers[b], self.res.buy, rid)
        self.r[rid].update(status=RESERVED, holder=self.buyers[b])

    @precondition(lambda self: len(self.r) < MAX_RESERVATIONS)
    @rule(
        p=st.integers(0, 1),
        lead=st.sampled_from((0, 60, 600, 3_600)),
        duration=st.sampled_from((600, 1_800, 3_600)),
        gpus=st.sampled_from((1, 2, 4, 8)),
        price=st.integers(1, 10),
    )
    def offer(self, p: int, lead: int, duration: int, gpus: int, price: int) -> None:
        provider = self.providers[p]
        start = now() + lead
        ok = lead > 0 and self._eligible(provider, gpus)
        rid = self._call(ok, provider, self.res.offer, start, duration, gpus, price * E18)
        if ok:
            self.r[rid] = {
                "provider": provider,
                "start": start,
                "end": start + duration,
                "gpus": gpus,
                "value": gpus * duration * price * E18 // 3_600,
                "status": OFFERED,
                "holder": None,
                "listed": 0,
                "used": 0,
                "bond": 0,
            }

    @rule(data=st.data(), by_provider=st.booleans())
    def cancel_offer(self, data: st.DataObject, by_provider: bool) -> None:
        rid = self._pick(data, (OFFERED,))
        if rid is None:
            return
        m = self.r[rid]
        sender = m["provider"] if by_provider else self.buyers[0]
        ok = m["status"] == OFFERED and (by_provider or now() >= m["start"])
        self._call(ok, sender, self.res.cancel_offer, rid)
        if ok:
            m["status"] = CANCELLED

    @rule(data=st.data(), b=st.integers(0, 1))
    def buy(self, data: st.DataObject, b: int) -> None:
        rid = self._pick(data, (OFFERED,))
        if rid is None:
            return
        m, buyer = self.r[rid], self.buyers[b]
        # The purchase locks the price and the base slash of the provider's free stake.
        collateral = m["value"] + BASE_SLASH
        ok = m["status"] == OFFERED and now() < m["start"] and self._eligible(m["provider"], m["gpus"], collateral)
        self._call(ok, buyer, self.res.buy, rid)
        if ok:
            m.update(status=RESERVED, holder=buyer)

    @rule(data=st.data(), b=st.integers(0, 1), price=st.integers(1, 50))
    def list_for_resale(self, data: st.DataObject, b: int, price: int) -> None:
        rid = self._pick(data, HELD)
        if rid is None:
            return
        m, sender = self.r[rid], self.buyers[b]
        ok = m["status"] == RESERVED and now() < m["start"] and sender == m["holder"]
        self._call(ok, sender, self.res.list_for_resale, rid, price * E18)
        if ok:
            m["listed"] = price * E18

    @rule(data=st.data(), b=st.integers(0, 1), enough=st.booleans())
    def buy_resale(self, data: st.DataObject, b: int, enough: bool) -> None:
        rid = self._pick(data, HELD)
        if rid is None:
            return
        m, buyer = self.r[rid], self.buyers[b]
        max_price = m["listed"] if enough else max(m["listed"] - 1, 0)
        ok = m["status"] == RESERVED and now() < m["start"] and m["listed"] > 0 and enough and buyer != m["holder"]
        self._call(ok, buyer, self.res.buy_resale, rid, max_price)
        if ok:
            self._credit(m["holder"], m["listed"])
            m.update(holder=buyer, listed=0)

    @rule(data=st.data(), share=st.integers(0, 110))
    def record_usage(self, data: st.DataObject, share: int) -> None:
        rid = self._pick(data, HELD)
        if rid is None:
            return
        m, t = self.r[rid], now()
        held = max(0, min(t, m["end"]) - m["start"]) * m["gpus"]
        seconds = max(0, held - m["used"]) * share // 100
        ok = (
            m["status"] in (RESERVED, DISPUTED, SERVED)
            and m["start"] <= t < m["end"] + CHALLENGE
            and 0 < seconds
            and m["used"] + seconds <= held
        )
        self._call(ok, m["provider"], self.res.record_usage, rid, seconds, b"\x01" * 32)
        if ok:
            m["used"] += seconds

    @rule(data=st.data())
    def report_not_served(self, data: st.DataObject) -> None:
        rid = self._pick(data, HELD)
        if rid is None:
            return
        m, t = self.r[rid], now()
        ok = m["status"] == RESERVED and m["start"] <= t < m["end"]
        self._call(ok, m["holder"] or self.buyers[0], self.res.report_not_served, rid)
        if ok:
            m.update(status=DISPUTED, bond=DISPUTE_BOND)

    @rule(data=st.data())
    def attest_failure(self, data: st.DataObject) -> None:
        rid = self._pick(data, (RESERVED, DISPUTED, SERVED))
        if rid is None:
            return
        m, t = self.r[rid], now()
        until = m["end"] + CHALLENGE * (2 if m["status"] == DISPUTED else 1)
        ok = m["status"] in (RESERVED, DISPUTED, SERVED) and m["start"] <= t < until
        self._call(ok, self.verifier, self.res.attest_failure, rid)
        if ok:
            m["status"] = FAILED

    @rule(data=st.data())
    def attest_served(self, data: st.DataObject) -> None:
        rid = self._pick(data, (DISPUTED,))
        if rid is None:
            return
        m, t = self.r[rid], now()
        ok = m["status"] == DISPUTED and m["start"] <= t < m["end"] + 2 * CHALLENGE
        self._call(ok, self.verifier, self.res.attest_served, rid)
        if ok:
            m["status"] = SERVED

    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        rid = self._pick(data, HELD)
        if rid is not None:
            self._settle(rid)

    def _settle(self, rid: int) -> None:
        m, t = self.r[rid], now()
        s = m["status"]
        ok = (
            s == FAILED
            or (s in (RESERVED, SERVED) and t >= m["end"] + CHALLENGE)
            or (s == DISPUTED and t >= m["end"] + 2 * CHALLENGE)
        )
        stake = self.registry.total_stake(m["provider"])
        self._call(ok, self.buyers[1], self.res.settle, rid)
        if not ok:
            return
        self.settlements[rid] = self.settlements.get(rid, 0) + 1
        value, bond = m["value"], m["bond"]
        if s == FAILED:
            slashed = min(value + BASE_SLASH, stake)
            assert self.registry.total_stake(m["provider"]) == stake - slashed
            self._credit(m["holder"], value)
            if bond:
                self._credit(m["holder"], slashed + bond)
            else:
                share = slashed * SLASH_REQUESTER_BPS // 10_000
                self._credit(m["holder"], share)
                self._credit(self.treasury, slashed - share)
            m["status"] = SLASHED
        else:  # served, unchallenged, or a report nobody ruled on: paid, the bond to the provider
            fee = value * FEE_BPS // 10_000
            self._credit(m["provider"], value - fee + bond)
            self._credit(self.treasury, fee)
            m["status"] = PAID

    @rule(who=st.integers(0, 4))
    def withdraw(self, who: int) -> None:
        account = self.accounts[who]
        owed = self.credits[account]
        with boa.env.prank(account):
            if owed == 0:
                with boa.reverts("reservations: nothing to withdraw"):
                    self.res.withdraw()
                return
            before = self.token.balanceOf(account)
            assert self.res.withdraw() == owed
        assert self.token.balanceOf(account) == before + owed
        self.credits[account] = 0

    @rule(seconds=st.sampled_from((60, 600, 1_800, 3_600, 7_200)))
    def advance_time(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    @rule(data=st.data(), milestone=st.sampled_from(("start", "end", "challenge", "ruling")), early=st.booleans())
    def advance_to(self, data: st.DataObject, milestone: str, early: bool) -> None:
        """Travels to (or a second before) a reservation's start, end, end of challenge or of ruling."""
        rid = self._pick(data, HELD)
        if rid is None:
            return
        m = self.r[rid]
        at = {"start": m["start"], "end": m["end"], "challenge": m["end"] + CHALLENGE}.get(
            milestone, m["end"] + 2 * CHALLENGE
        ) - (1 if early else 0)
        if at > now():
            boa.env.time_travel(seconds=at - now())

    # ------------------------------------------------------------ invariants

    @invariant()
    def the_contract_holds_exactly_what_it_owes(self) -> None:
        escrows = {rid: self.res.escrow_of(rid) for rid in self.r}
        assert self.token.balanceOf(self.res.address) == sum(escrows.values()) + self.res.total_credits()
        for rid, m in self.r.items():
            expected = m["value"] + m["bond"] if m["status"] in HELD else 0
            assert escrows[rid] == expected, (rid, m)
        for account, owed in self.credits.items():
            assert self.res.credits(account) == owed, account
        assert self.res.total_credits() == sum(self.credits.values())

    @invariant()
    def every_reservation_is_where_the_model_says(self) -> None:
        for rid, m in self.r.items():
            r = self.res.reservations(rid)
            assert r.status == m["status"], (rid, r, m)
            assert r.used_gpu_seconds == m["used"]
            assert r.resale_price == m["listed"]
        for p in self.providers:
            locked = sum(1 for m in self.r.values() if m["provider"] == p and m["status"] in HELD)
            assert self.registry.stakes(p).active_jobs == locked
        assert all(n == 1 for n in self.settlements.values())

    # ------------------------------------------------------------ the end: nothing stuck

    def _finish_everything(self) -> None:
        if self.r:
            last = max(m["end"] for m in self.r.values()) + 2 * CHALLENGE
            if last > now():
                boa.env.time_travel(seconds=last - now())
        for rid, m in self.r.items():
            if m["status"] == OFFERED:
                self._call(True, self.buyers[0], self.res.cancel_offer, rid)  # anyone, after the start
                m["status"] = CANCELLED
            elif m["status"] in HELD:
                self._settle(rid)
            assert m["status"] in TERMINAL
            # A terminal reservation never pays again.
            with boa.reverts():
                self.res.settle(rid)
        for account in self.accounts:
            if self.credits[account]:
                with boa.env.prank(account):
                    assert self.res.withdraw() == self.credits[account]
                self.credits[account] = 0
        assert self.token.balanceOf(self.res.address) == 0
        assert self.res.total_credits() == 0
        for p in self.providers:
            assert self.registry.stakes(p).active_jobs == 0


def test_reservations__under_random_operations__stay_solvent_and_pay_each_reservation_once() -> None:
    _setup_world()
    run_state_machine_as_test(
        ReservationsMachine,
        # The loaded Hypothesis profile (tests/conftest.py) with half again its runs, as this
        # machine has always had: 300 runs of 30 steps in CI.
        settings=settings(
            max_examples=settings.default.max_examples * 3 // 2,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
