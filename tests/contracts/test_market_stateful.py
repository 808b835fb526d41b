"""Stateful property test of the market and the registry: random sequences of every action by
random actors, with the money invariants checked after every step.

Each rule predicts from the lifecycle's rules whether the call must succeed or must revert and
asserts it; a revert must leave the balances and the job untouched. After every step:

- the market holds exactly the escrow of every job plus every credit (``total_credits``, and
  the credits of every known account add up to it);
- the registry holds exactly the active plus unbonding stake of every account;
- no slot settles twice, and a settled slot's pay plus refund is exactly its escrow;
- per job, escrow posted plus bonds, less everything credited out of it, is what it still holds;
  a job in a terminal state holds nothing;
- every job can still end: in a throw-away ``boa.env.anchor()``, time runs past every deadline
  and finalize/settle are called for what is left; every job reaches a terminal state and the
  market still balances.

``settings``: the loaded Hypothesis profile (tests/conftest.py): CI runs 200 examples of 30
steps, a local run a few short ones; ``HYPOTHESIS_PROFILE=ci`` runs CI's locally.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import boa
import pytest
from eth_utils import keccak
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from tests.contracts.contract_helpers import (
    AUCTION_INSTANT,
    AUCTION_SEALED,
    CHANGE_DELAY,
    DISPUTE_BOND,
    E18,
    JOB_CANCELLED,
    JOB_CLOSED,
    JOB_EXPIRED,
    JOB_LEASED,
    JOB_OPEN,
    MIN_PROVIDER_STAKE,
    MIN_VERIFIER_STAKE,
    NO_SHOW_ROOT,
    OUTCOME_ACCEPT,
    POLICY_REDUNDANT,
    SLOT_ACCEPTED,
    SLOT_ASSIGNED,
    SLOT_COMMITTED,
    SLOT_DISPUTED,
    SLOT_NO_SHOW,
    SLOT_PAID,
    SLOT_REFUNDED,
    SLOT_REJECTED,
    SLOT_SLASHED,
    SLOT_VOIDED,
    Deployment,
    Spec,
    fund,
    make_offer,
    now,
    value,
)

TERMINAL = (JOB_CLOSED, JOB_EXPIRED, JOB_CANCELLED)
FINAL_SLOT = (SLOT_PAID, SLOT_SLASHED, SLOT_REFUNDED)
NO_SHOW_FEE_BPS = 1_000
FAR_FUTURE = 10**6  # seconds: past every deadline the machine posts

# Price floors of the three providers, per GPU-hour: one of them is above most max prices.
FLOORS = (2 * E18, 5 * E18, 12 * E18)


_ZERO = "0x" + "00" * 20
# How often each outcome happened over the whole run: printed with `pytest -s`, so that a change
# that stops the machine from reaching a path shows.
STATS: Counter[str] = Counter()


def _note(what: str) -> None:
    STATS[what] += 1
    event(what)


def _name(fn: Any) -> str:
    return str((getattr(fn, "func_t", None) and fn.func_t.name) or fn)


def travel_past(timestamp: int) -> None:
    """Moves the clock to ``timestamp`` if it is not there yet."""
    if now() < timestamp:
        boa.env.time_travel(seconds=timestamp - now())


class MarketMachine(RuleBasedStateMachine):
    """Random actors run the whole lifecycle against one deployment."""

    def __init__(self, d: Deployment, actors: dict[str, Any]) -> None:
        super().__init__()
        self.d = d
        self.token, self.registry, self.market = d.token, d.registry, d.market
        self.requesters: list[str] = actors["requesters"]
        self.providers: list[str] = actors["providers"]
        self.verifier: str = actors["verifier"]
        self.stranger: str = actors["stranger"]
        self.accounts = [*self.requesters, *self.providers, self.verifier, self.stranger, d.treasury]
        self.stakers = [*self.providers, self.verifier]
        # The model: specs of posted jobs, sealed bids, settled slots, money in and out per job.
        self.specs: dict[int, Spec] = {}
        self.bids: dict[tuple[int, str], tuple[int, bytes]] = {}
        self.settled: set[tuple[int, int]] = set()
        self.job_in: dict[int, int] = {}
        self.job_out: dict[int, int] = {}
        self.salt_counter = 0
        self.forced: int | None = None  # the job `progress` drives the rules at
        self.bound_changes = 0

    # ------------------------------------------------------------ helpers

    def _job(self, ix: int, fits: Any = None) -> tuple[int, Spec]:
        """A job by index among those that ``fits(job_id, spec, job)`` (all jobs if none fits or
        ``fits`` is None): rules aim mostly at jobs where the action can succeed, and sometimes
        (``sloppy``) at any job, to check the reverts."""
        if self.forced is not None:
            return self.forced, self.specs[self.forced]
        ids = sorted(self.specs)
        if fits is not None:
            fitting = [j for j in ids if fits(j, self.specs[j], self.market.jobs(j))]
            ids = fitting or ids
        job_id = ids[ix % len(ids)]
        return job_id, self.specs[job_id]

    def _slot(self, job_id: int, ix: int, statuses: tuple[int, ...] | None) -> int:
        """A slot index of ``job_id`` whose status is in ``statuses`` if there is one."""
        if statuses is not None:
            fitting = [
                i for i in range(self.specs[job_id].redundancy) if self.market.slots(job_id, i).status in statuses
            ]
            if fitting:
                return fitting[ix % len(fitting)]
        return ix % 4

    def _has_slot(self, statuses: tuple[int, ...]) -> Any:
        def fits(j: int, spec: Spec, job: Any) -> bool:
            return job.status == JOB_LEASED and any(
                self.market.slots(j, i).status in statuses for i in range(spec.redundancy)
            )

        return fits

    def _snapshot(self, job_id: int | None) -> tuple[Any, ...]:
        m, t = self.market, self.token
        snap: tuple[Any, ...] = (
            t.balanceOf(m.address),
            t.balanceOf(self.registry.address),
            m.total_credits(),
        )
        if job_id is not None:
            job = m.jobs(job_id)
            snap += (job.status, job.escrow, job.count, *(tuple(m.slots(job_id, i)) for i in range(5)))
        return snap

    def _call(self, expect_ok: bool | None, sender: str, fn: Any, *args: Any, job_id: int | None = None) -> bool:
        """Calls ``fn`` as ``sender``. ``expect_ok`` True/False asserts the outcome; None allows
        either. A revert must leave the money and the job as they were. On success the job's
        money in and out of escrow is booked from the change in credits."""
        before = self._snapshot(job_id)
        credits_before = self.market.total_credits()
        try:
            with boa.env.prank(sender):
                fn(*args)
        except boa.BoaError as exc:
            assert expect_ok is not True, f"{fn} by {sender} reverted: {exc}"
            assert self._snapshot(job_id) == before
            _note(f"{_name(fn)}: reverted")
            return False
        _note(f"{_name(fn)}: ok")
        assert expect_ok is not False, f"{fn}{args} by {sender} should have reverted"
        # Only a market call has fresh market logs (get_logs keeps the last call's otherwise).
        logs = self.market.get_logs() if getattr(fn, "contract", None) is self.market else []
        slashed = 0
        for log in logs:
            name = type(log).__name__
            if name == "SlotSettled":
                key = (log.job_id, log.slot)
                assert key not in self.settled, f"slot {key} settled twice"
                self.settled.add(key)
                slot = self.market.slots(log.job_id, log.slot)
                slot_value = value(slot.price, self.specs[log.job_id].max_gpu_seconds)
                assert log.paid + log.refunded == slot_value
                assert log.fee <= log.paid
                if log.status == SLOT_PAID:
                    assert log.paid == min(value(slot.price, log.gpu_seconds), slot_value)
                elif slot.result_root == NO_SHOW_ROOT:
                    assert log.status == SLOT_REFUNDED and log.slashed == 0
                    assert log.paid == slot_value * NO_SHOW_FEE_BPS // 10_000
                    _note("slot settled: a no-show")
                else:
                    assert log.paid == 0
                slashed += log.slashed
                _note(f"slot settled: status {log.status}, disputed {slot.disputer != _ZERO}")
        if job_id is not None:
            delta = self.market.total_credits() - credits_before
            self.job_out[job_id] += delta - slashed
        return True

    # ------------------------------------------------------------ rules: post and bid

    @rule(
        who=st.integers(0, 1),
        auction=st.sampled_from([AUCTION_SEALED, AUCTION_INSTANT]),
        k=st.integers(1, 3),
        policy=st.integers(0, 4),
        max_price=st.sampled_from([3 * E18, 6 * E18, 10 * E18, 20 * E18, 7]),
        max_gpu_seconds=st.sampled_from([600, 1_800, 3_600, 7_777]),
        bid_in=st.integers(60, 3_000),
        reveal_in=st.integers(60, 3_000),
        run=st.integers(60, 5_000),
        window=st.integers(60, 3_000),
    )
    def post(self, who, auction, k, policy, max_price, max_gpu_seconds, bid_in, reveal_in, run, window):
        if policy == POLICY_REDUNDANT and k < 2:
            policy = 0
        requester = self.requesters[who]
        t = now()
        spec = Spec(
            requester=requester,
            bundle_hash=bytes([len(self.specs)]) * 32,
            device_kind=1,
            gpus=1 + (k == 3),
            min_memory_mb=16_000,
            policy=policy,
            auction=auction,
            redundancy=k,
            max_price=max_price,
            max_gpu_seconds=max_gpu_seconds,
            bid_deadline=t + bid_in,
            reveal_deadline=t + bid_in + reveal_in,
            run_duration=run,
            challenge_window=window,
        )
        escrow = k * value(max_price, max_gpu_seconds)
        before = self.token.balanceOf(self.market.address)
        max_bid, max_run, max_window = self.market.window_bounds()
        within = (
            bid_in <= max_bid
            and (auction == AUCTION_INSTANT or reveal_in <= max_bid)
            and run <= max_run
            and window <= max_window
        )
        with boa.env.prank(requester):
            if not within:
                with boa.reverts():
                    self.market.post_job(spec)
                _note("post_job: reverted outside the window bounds")
                return
            if escrow == 0:
                with boa.reverts("market: escrow rounds to zero"):
                    self.market.post_job(spec)
                return
            job_id = self.market.post_job(spec)
        assert self.token.balanceOf(self.market.address) == before + escrow
        self.specs[job_id] = spec
        self.job_in[job_id] = escrow
        self.job_out[job_id] = 0

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), p=st.integers(0, 2), price_bps=st.integers(1, 13_000), sloppy=st.booleans())
    def commit_bid(self, ix, p, price_bps, sloppy):
        job_id, spec = self._job(
            ix,
            None
            if sloppy
            else lambda j, s, job: s.auction == AUCTION_SEALED and job.status == JOB_OPEN and now() < s.bid_deadline,
        )
        provider = self.providers[p]
        price = max(1, spec.max_price * price_bps // 10_000)
        self.salt_counter += 1
        salt = self.salt_counter.to_bytes(32, "big")
        ok = (
            spec.auction == AUCTION_SEALED
            and self.market.jobs(job_id).status == JOB_OPEN
            and now() < spec.bid_deadline
            and (job_id, provider) not in self.bids
            and self.registry.is_eligible(
                provider,
                spec.device_kind,
                spec.gpus,
                spec.min_memory_mb,
                # The lease at the max price, its base slash and the reveal bond.
                value(spec.max_price, spec.max_gpu_seconds) + 2 * self.market.base_slash(),
            )
        )
        commitment = self.market.bid_commitment(job_id, provider, price, salt)
        if self._call(ok, provider, self.market.commit_bid, job_id, spec, commitment, job_id=job_id):
            self.bids[(job_id, provider)] = (price, salt)

    @precondition(lambda self: self.bids)
    @rule(ix=st.integers(0, 50), wrong_salt=st.booleans(), sloppy=st.booleans())
    def reveal_bid(self, ix, wrong_salt, sloppy):
        keys = sorted(self.bids)
        if self.forced is not None:
            keys = [
                (j, p) for j, p in keys if j == self.forced and self.market.commitments(j, p) != b"\x00" * 32
            ] or keys
        if not sloppy:
            t = now()
            keys = [
                (j, p)
                for j, p in keys
                if self.specs[j].bid_deadline <= t < self.specs[j].reveal_deadline
                and self.market.commitments(j, p) != b"\x00" * 32
            ] or keys
        job_id, provider = keys[ix % len(keys)]
        self._reveal(job_id, provider, wrong_salt)

    def _reveal(self, job_id: int, provider: str, wrong_salt: bool) -> None:
        spec = self.specs[job_id]
        price, salt = self.bids[(job_id, provider)]
        if wrong_salt:
            salt = b"\xee" * 32
        t = now()
        ok = (
            self.market.jobs(job_id).status == JOB_OPEN
            and spec.bid_deadline <= t < spec.reveal_deadline
            and self.market.commitments(job_id, provider) != b"\x00" * 32
            and not wrong_salt
            and 0 < price <= spec.max_price
            # Registered with the minimum stake: the collateral is locked when the auction ends.
            and self.registry.is_eligible(provider, spec.device_kind, spec.gpus, spec.min_memory_mb, 0)
        )
        self._call(ok, provider, self.market.reveal_bid, job_id, spec, price, salt, job_id=job_id)

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), caller=st.integers(0, 6), sloppy=st.booleans())
    def finalize(self, ix, caller, sloppy):
        job_id, spec = self._job(ix, None if sloppy else lambda j, s, job: job.status == JOB_OPEN)
        deadline = spec.reveal_deadline if spec.auction == AUCTION_SEALED else spec.bid_deadline
        ok = self.market.jobs(job_id).status == JOB_OPEN and now() >= deadline
        self._call(ok, self.accounts[caller], self.market.finalize_auction, job_id, spec, job_id=job_id)

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), p=st.integers(0, 3), sloppy=st.booleans())
    def take(self, ix, p, sloppy):
        job_id, spec = self._job(
            ix,
            None
            if sloppy
            else lambda j, s, job: s.auction == AUCTION_INSTANT and job.status == JOB_OPEN and now() < s.bid_deadline,
        )
        taker = ([*self.providers, spec.requester])[p]
        count = self.market.jobs(job_id).count
        holders = {self.market.slots(job_id, i).provider for i in range(count)}
        ok = (
            spec.auction == AUCTION_INSTANT
            and self.market.jobs(job_id).status == JOB_OPEN
            and now() < spec.bid_deadline
            and taker != spec.requester
            and self.registry.price_floor(taker) <= spec.max_price
            and self.registry.is_eligible(
                taker,
                spec.device_kind,
                spec.gpus,
                spec.min_memory_mb,
                value(self.registry.price_floor(taker), spec.max_gpu_seconds) + self.market.base_slash(),
            )
            and taker not in holders
        )
        self._call(ok, taker, self.market.take_job, job_id, spec, job_id=job_id)

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), sloppy=st.booleans())
    def cancel(self, ix, sloppy):
        job_id, spec = self._job(ix, None if sloppy else lambda j, s, job: job.status == JOB_OPEN)
        ok = self.market.jobs(job_id).status == JOB_OPEN and now() < spec.bid_deadline
        self._call(ok, spec.requester, self.market.cancel_job, job_id, spec, job_id=job_id)

    # ------------------------------------------------------------ rules: results

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), slot=st.integers(0, 3), share=st.integers(0, 11_000), sloppy=st.booleans())
    def commit_result(self, ix, slot, share, sloppy):
        self._commit_result(ix, slot, share, sloppy, no_show=False)

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), slot=st.integers(0, 3), claims=st.booleans(), sloppy=st.booleans())
    def report_no_show(self, ix, slot, claims, sloppy):
        self._commit_result(ix, slot, 10_000 if claims else 0, sloppy, no_show=True)

    def _commit_result(self, ix: int, slot: int, share: int, sloppy: bool, no_show: bool) -> None:
        job_id, spec = self._job(ix, None if sloppy else self._has_slot((SLOT_ASSIGNED,)))
        slot = self._slot(job_id, slot, None if sloppy else (SLOT_ASSIGNED,))
        job = self.market.jobs(job_id)
        s = self.market.slots(job_id, slot)
        held = (now() - job.lease_start) * spec.gpus if job.status == JOB_LEASED else 0
        gpu_seconds = min(spec.max_gpu_seconds, held) * share // 10_000
        if s.provider == "0x" + "00" * 20:
            return  # nobody to send it as
        ok = (
            job.status == JOB_LEASED
            and s.status == SLOT_ASSIGNED
            and now() <= job.lease_start + spec.run_duration
            and gpu_seconds <= spec.max_gpu_seconds
            and gpu_seconds <= held
        )
        root = bytes([slot + 1]) * 32
        if no_show:
            root = NO_SHOW_ROOT
            ok = ok and gpu_seconds == 0 and now() - job.lease_start >= spec.run_duration // 4
        self._call(ok, s.provider, self.market.commit_result, job_id, spec, slot, root, gpu_seconds, job_id=job_id)

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), slot=st.integers(0, 3), by_requester=st.booleans(), sloppy=st.booleans())
    def accept(self, ix, slot, by_requester, sloppy):
        job_id, spec = self._job(ix, None if sloppy else self._has_slot((SLOT_COMMITTED,)))
        slot = self._slot(job_id, slot, None if sloppy else (SLOT_COMMITTED,))
        caller = spec.requester if by_requester else self.stranger
        ok = by_requester and self.market.slots(job_id, slot).status == SLOT_COMMITTED
        self._call(ok, caller, self.market.accept_result, job_id, spec, slot, job_id=job_id)

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), slot=st.integers(0, 3), who=st.integers(0, 2), sloppy=st.booleans())
    def dispute(self, ix, slot, who, sloppy):
        job_id, spec = self._job(ix, None if sloppy else self._has_slot((SLOT_COMMITTED,)))
        slot = self._slot(job_id, slot, None if sloppy else (SLOT_COMMITTED,))
        caller = (spec.requester, self.verifier, self.stranger)[who]
        s = self.market.slots(job_id, slot)
        allowed = caller == spec.requester or self.registry.is_active_verifier(caller)
        ok = (
            s.status == SLOT_COMMITTED
            and now() < s.committed_at + spec.challenge_window
            and allowed
            and caller != s.provider
        )
        if self._call(ok, caller, self.market.dispute_result, job_id, spec, slot, job_id=job_id):
            self.job_in[job_id] += DISPUTE_BOND

    @precondition(lambda self: self.specs)
    @rule(
        ix=st.integers(0, 50),
        slot=st.integers(0, 3),
        outcome=st.integers(0, 3),
        share=st.integers(0, 12_000),
        by_verifier=st.booleans(),
        sloppy=st.booleans(),
    )
    def attest(self, ix, slot, outcome, share, by_verifier, sloppy):
        ruled = (SLOT_COMMITTED, SLOT_DISPUTED)
        job_id, spec = self._job(ix, None if sloppy else self._has_slot(ruled))
        slot = self._slot(job_id, slot, None if sloppy else ruled)
        caller = self.verifier if by_verifier else spec.requester
        s = self.market.slots(job_id, slot)
        end = s.committed_at + spec.challenge_window
        if s.status == SLOT_DISPUTED:
            end += spec.challenge_window
        # The deployment's court is the verifier's account (the court's own machine draws panels).
        ok = caller == self.verifier and outcome <= 2 and s.status in (SLOT_COMMITTED, SLOT_DISPUTED) and now() < end
        verified = s.gpu_seconds * share // 10_000
        if self._call(ok, caller, self.market.attest, job_id, spec, slot, outcome, verified, job_id=job_id):
            if outcome == OUTCOME_ACCEPT:
                assert self.market.slots(job_id, slot).gpu_seconds == min(verified, s.gpu_seconds)

    @precondition(lambda self: self.specs)
    @rule(ix=st.integers(0, 50), slot=st.integers(0, 3), caller=st.integers(0, 6), sloppy=st.booleans())
    def settle(self, ix, slot, caller, sloppy):
        open_slots = (
            SLOT_ASSIGNED,
            SLOT_COMMITTED,
            SLOT_DISPUTED,
            SLOT_ACCEPTED,
            SLOT_REJECTED,
            SLOT_VOIDED,
            SLOT_NO_SHOW,
        )
        job_id, spec = self._job(ix, None if sloppy else self._has_slot(open_slots))
        slot = self._slot(job_id, slot, None if sloppy else open_slots)
        ok = self._can_settle(job_id, spec, slot)
        self._call(ok, self.accounts[caller], self.market.settle, job_id, spec, slot, job_id=job_id)

    def _can_settle(self, job_id: int, spec: Spec, slot: int) -> bool:
        job = self.market.jobs(job_id)
        if job.status != JOB_LEASED or slot >= spec.redundancy:
            return False
        s = self.market.slots(job_id, slot)
        t = now()
        end = s.committed_at + spec.challenge_window
        return (
            s.status in (SLOT_ACCEPTED, SLOT_REJECTED, SLOT_VOIDED, SLOT_NO_SHOW)
            or (s.status == SLOT_COMMITTED and t >= end)
            or (s.status == SLOT_ASSIGNED and t > job.lease_start + spec.run_duration)
            or (s.status == SLOT_DISPUTED and t >= end + spec.challenge_window)
        )

    # ------------------------------------------------------------ rules: drive a job forward

    def _progress(self, ix: int, branches: list[int], a: int, share: int) -> None:
        """Takes the natural next steps of a live job (one per entry of ``branches``, which
        chooses where the lifecycle forks), travelling in time when a step needs it: random
        single actions alone rarely carry a job through its whole life in 30 steps."""
        live = [j for j in sorted(self.specs) if self.market.jobs(j).status not in TERMINAL]
        if not live:
            return
        job_id = live[-1 - ix % len(live)]  # the newest jobs first
        for n, branch in enumerate(branches):
            if self.market.jobs(job_id).status in TERMINAL:
                break
            self._step(job_id, branch, (a + n) % 3, (share * (n + 7)) % 10_001)

    def _step(self, job_id: int, branch: int, a: int, share: int) -> None:
        spec, job, t = self.specs[job_id], self.market.jobs(job_id), now()
        self.forced = job_id
        try:
            if job.status == JOB_OPEN and spec.auction == AUCTION_SEALED:
                # The whole auction: every provider bids (branch 3: only some), all reveal, finalize.
                if t < spec.bid_deadline:
                    for p in range(3):
                        if branch < 3 or p != a:
                            self.commit_bid(0, p, 1 + (share * (p + 3)) % 11_000, False)
                    travel_past(spec.bid_deadline)
                for p in range(3):
                    if now() < spec.reveal_deadline and (job_id, self.providers[p]) in self.bids:
                        # Bidder `a` sometimes never reveals: a wrong salt (branch 0) or no reveal at all
                        # (one time in five); its bond is forfeit below.
                        if p == a and branch != 0 and share % 5 == 0:
                            continue
                        self._reveal(job_id, self.providers[p], branch == 0 and p == a)
                travel_past(spec.reveal_deadline)
                self.finalize(0, a, False)
                # A bid left unrevealed (branch 0's wrong salt, branch 3's missing reveal) forfeits its bond.
                for p in self.providers:
                    if (job_id, p) in self.bids and self.market.commitments(job_id, p) != b"\x00" * 32:
                        self._forfeit(job_id, p, self.accounts[a])
            elif job.status == JOB_OPEN:
                # Every provider tries to take a slot (branch 3: only one), then the deadline.
                for p in range(3) if branch < 3 else [a]:
                    if now() < spec.bid_deadline and self.market.jobs(job_id).status == JOB_OPEN:
                        self.take(0, p, False)
                if self.market.jobs(job_id).status == JOB_OPEN:
                    travel_past(spec.bid_deadline)
                    self.finalize(0, a, False)
            else:
                slots = [self.market.slots(job_id, i) for i in range(spec.redundancy)]
                live_slots = [i for i, s in enumerate(slots) if s.status not in FINAL_SLOT]
                i = live_slots[a % len(live_slots)]
                s = slots[i]
                run_deadline = job.lease_start + spec.run_duration
                if s.status == SLOT_ASSIGNED:
                    if branch == 2 and share % 4 == 0 and t <= run_deadline:
                        # The requester never delivered: the provider reports a no-show.
                        travel_past(job.lease_start + spec.run_duration // 4)
                        self.report_no_show(0, i, False, False)
                    elif branch == 3 and t <= run_deadline:
                        boa.env.time_travel(seconds=1 + share % 3_000)
                    elif t <= run_deadline:
                        if t == job.lease_start:
                            boa.env.time_travel(seconds=min(run_deadline - t, 1 + share % spec.max_gpu_seconds))
                        self.commit_result(0, i, share, False)
                    else:
                        self.settle(0, i, a, False)
                elif s.status == SLOT_COMMITTED:
                    if branch == 0:
                        self.accept(0, i, True, False)
                    elif branch == 1:
                        self.dispute(0, i, a % 2, False)
                    elif branch == 2:
                        self.attest(0, i, a, share, True, False)
                    else:
                        travel_past(s.committed_at + spec.challenge_window)
                        self.settle(0, i, a, False)
                elif s.status == SLOT_DISPUTED:
                    if branch < 2:
                        self.attest(0, i, a, share, True, False)
                    else:
                        travel_past(s.committed_at + 2 * spec.challenge_window)
                        self.settle(0, i, a, False)
                else:
                    self.settle(0, i, a, False)
                if branch == 1 and self.market.credits(spec.requester) > 0:
                    self.withdraw(self.accounts.index(spec.requester))
        finally:
            self.forced = None

    @precondition(lambda self: self.specs)
    @rule(
        ix=st.integers(0, 50),
        branches=st.lists(st.integers(0, 3), min_size=1, max_size=8),
        a=st.integers(0, 2),
        share=st.integers(0, 10_000),
    )
    def progress(self, ix, branches, a, share):
        self._progress(ix, branches, a, share)

    @precondition(lambda self: self.specs)
    @rule(
        ix=st.integers(0, 50),
        branches=st.lists(st.integers(0, 3), min_size=1, max_size=8),
        a=st.integers(0, 2),
        share=st.integers(0, 10_000),
    )
    def progress_more(self, ix, branches, a, share):
        # A second copy: rules are drawn uniformly, and this one should be drawn often.
        self._progress(ix, branches, a, share)

    # ------------------------------------------------------------ rules: money and stake

    @precondition(lambda self: self.bids)
    @rule(ix=st.integers(0, 50), caller=st.integers(0, 6), sloppy=st.booleans())
    def forfeit_unrevealed(self, ix, caller, sloppy):
        keys = sorted(self.bids)
        if not sloppy:
            keys = [
                (j, p)
                for j, p in keys
                if now() >= self.specs[j].reveal_deadline and self.market.commitments(j, p) != b"\x00" * 32
            ] or keys
        job_id, provider = keys[ix % len(keys)]
        self._forfeit(job_id, provider, self.accounts[caller])

    def _forfeit(self, job_id: int, provider: str, caller: str) -> None:
        spec = self.specs[job_id]
        ok = (
            self.market.jobs(job_id).status != JOB_CANCELLED
            and now() >= spec.reveal_deadline
            and self.market.commitments(job_id, provider) != b"\x00" * 32
        )
        stake = self.registry.total_stake(provider)
        treasury = self.market.credits(self.d.treasury)
        if self._call(ok, caller, self.market.forfeit_unrevealed, job_id, spec, provider):
            taken = min(self.market.base_slash(), stake)
            assert self.registry.total_stake(provider) == stake - taken
            assert self.market.credits(self.d.treasury) == treasury + taken

    @precondition(lambda self: self.bound_changes == 0)
    @rule(
        bid=st.sampled_from([1_500, 6_000]),
        run=st.sampled_from([3_000, 8_000]),
        window=st.sampled_from([1_500, 6_000]),
    )
    def change_window_bounds(self, bid, run, window):
        # The owner's change waits out its delay: queued, two days pass, then made. Once a run: the
        # two days end every job under way, and the machine is there to carry jobs through.
        self.bound_changes += 1
        with boa.env.prank(self.d.owner):
            self.market.queue_change(keccak(self.market.set_window_bounds.prepare_calldata(bid, run, window)))
        boa.env.time_travel(seconds=CHANGE_DELAY)
        with boa.env.prank(self.d.owner):
            self.market.set_window_bounds(bid, run, window)
        assert self.market.window_bounds() == (bid, run, window)
        _note("window bounds changed")

    @rule(who=st.integers(0, 6))
    def withdraw(self, who):
        account = self.accounts[who]
        credit = self.market.credits(account)
        before = self.token.balanceOf(account)
        if self._call(credit > 0, account, self.market.withdraw):
            assert self.token.balanceOf(account) == before + credit
            assert self.market.credits(account) == 0

    @rule(who=st.integers(0, 3), amount=st.integers(1, MIN_PROVIDER_STAKE))
    def stake(self, who, amount):
        self._call(True, self.stakers[who], self.registry.stake, amount)

    @rule(who=st.integers(0, 3), amount=st.integers(0, MIN_PROVIDER_STAKE // 4))
    def request_unbond(self, who, amount):
        account = self.stakers[who]
        if account == self.verifier:
            # The verifier stays on duty: unbonding it below its minimum would leave every later
            # attestation reverting, and the machine would never rule on a result.
            amount = min(amount, max(0, self.registry.stakes(account).active - MIN_VERIFIER_STAKE))
        # Stake locked as the collateral of running leases cannot unbond.
        ok = 0 < amount <= self.registry.free_stake(account)
        self._call(ok, account, self.registry.request_unbond, amount)

    @rule(who=st.integers(0, 3))
    def withdraw_unbonded(self, who):
        account = self.stakers[who]
        s = self.registry.stakes(account)
        ok = s.unbonding > 0 and now() >= s.unbond_at and s.active_jobs == 0
        self._call(ok, account, self.registry.withdraw_unbonded)

    @rule(seconds=st.sampled_from([1, 60, 300, 600, 900, 1_800, 2_700, 3_600, 6_000, 8 * 86_400]))
    def time_travel(self, seconds):
        boa.env.time_travel(seconds=seconds)

    # ------------------------------------------------------------ invariants

    def _assert_balanced(self) -> None:
        m, t = self.market, self.token
        escrows = {j: m.jobs(j).escrow for j in self.specs}
        assert t.balanceOf(m.address) == sum(escrows.values()) + m.total_credits()
        assert m.total_credits() == sum(m.credits(a) for a in self.accounts)
        for j, escrow in escrows.items():
            if m.jobs(j).status in TERMINAL:
                assert escrow == 0, f"job {j} ended with {escrow} in escrow"

    @invariant()
    def market_holds_exactly_what_it_owes(self):
        self._assert_balanced()

    @invariant()
    def registry_holds_exactly_the_stakes(self):
        r = self.registry
        assert self.token.balanceOf(r.address) == sum(r.total_stake(a) for a in self.stakers)

    @invariant()
    def no_job_pays_out_more_than_it_took_in(self):
        for j in self.specs:
            assert self.job_in[j] - self.job_out[j] == self.market.jobs(j).escrow

    @invariant()
    def active_jobs_count_the_unsettled_slots(self):
        held = dict.fromkeys(self.providers, 0)
        for j, spec in self.specs.items():
            job = self.market.jobs(j)
            n = spec.redundancy if job.status == JOB_LEASED else (job.count if job.status == JOB_OPEN else 0)
            if spec.auction == AUCTION_SEALED and job.status == JOB_OPEN:
                n = 0  # sealed asks hold no lease
            for i in range(n):
                s = self.market.slots(j, i)
                if s.status not in FINAL_SLOT:
                    held[s.provider] += 1
        for p in self.providers:
            assert self.registry.stakes(p).active_jobs == held[p]

    @invariant()
    def every_job_can_still_end(self):
        live = [j for j in self.specs if self.market.jobs(j).status not in TERMINAL]
        if not live:
            return
        with boa.env.anchor():
            boa.env.time_travel(seconds=FAR_FUTURE)
            for j in live:
                spec = self.specs[j]
                if self.market.jobs(j).status == JOB_OPEN:
                    self.market.finalize_auction(j, spec)
                if self.market.jobs(j).status == JOB_LEASED:
                    for i in range(spec.redundancy):
                        if self.market.slots(j, i).status not in FINAL_SLOT:
                            self.market.settle(j, spec, i)
                assert self.market.jobs(j).status in TERMINAL
            self._assert_balanced()
            for p in self.providers:
                assert self.registry.stakes(p).active_jobs == 0


@pytest.mark.slow
@pytest.mark.timeout(1_800)  # 200 examples of 30 steps: about 7 minutes on a quiet 2-core host, 12 on a busy one
def test_market__random_lifecycles__keep_every_invariant(
    deployment, requester, provider, provider2, provider3, verifier, stranger
):
    d = deployment
    requester2 = boa.env.generate_address("requester2")
    fund(d, requester2)
    for p, floor in zip((provider, provider2, provider3), FLOORS, strict=True):
        with boa.env.prank(p):
            d.registry.stake(2 * MIN_PROVIDER_STAKE)
            d.registry.register_provider(make_offer(p, price_floor=floor))
    with boa.env.prank(verifier):
        d.registry.stake(MIN_VERIFIER_STAKE)
        d.registry.register_verifier()
    actors = {
        "requesters": [requester, requester2],
        "providers": [provider, provider2, provider3],
        "verifier": verifier,
        "stranger": stranger,
    }
    STATS.clear()
    run_state_machine_as_test(
        lambda: MarketMachine(d, actors),
        settings=settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
    print("\nstateful outcomes:", dict(sorted(STATS.items())))
    # The machine must reach the paths it is there to check (the quick local profile may not).
    if settings.get_current_profile_name() != "ci":
        return
    for path in (
        "take_job: ok",
        "reveal_bid: ok",
        "finalize_auction: ok",
        "commit_result: ok",
        "accept_result: ok",
        "dispute_result: ok",
        "attest: ok",
        "settle: ok",
        "withdraw: ok",
        "slot settled: a no-show",
        "window bounds changed",
    ):
        assert STATS[path] > 0, f"the machine never reached {path}"
