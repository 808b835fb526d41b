"""ProviderPool under random sequences of joins, stake changes, leaves, jobs won, assigned,
committed, verified, settled (through the pool or at the market by anyone), collections and
withdrawals, checked against a model of what each member is owed.

Invariants after every step:
- the ledger: tokens held + registry stake + market credit == members' stake + credits
  + unattributed income - unattributed loss, and nothing is unattributed once every settled
  slot is booked;
- every member's stake and credit are what the model says: it is paid for the verified
  GPU-seconds of its own slots only (less the operator's fee), and a slash lands on the
  culprit first, then on everyone pro rata;
- a member never withdraws its stake while it holds an assignment (no escaping a slash).
At the end of every run all work is settled and every member leaves: each gets back exactly
its stake less its slashes, plus its pay, and the pool is left with nothing.
"""

from __future__ import annotations

from typing import Any

import boa
import pytest
from boa.contracts.base_evm_contract import BoaError
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
    AUCTION_INSTANT,
    BASE_SLASH,
    E18,
    FEE_BPS,
    MAX_UINT,
    OUTCOME_ACCEPT,
    OUTCOME_REJECT,
    OUTCOME_VOID,
    ROOT_HASH,
    SLOT_ACCEPTED,
    SLOT_ASSIGNED,
    SLOT_COMMITTED,
    SLOT_PAID,
    SLOT_REJECTED,
    SLOT_SLASHED,
    SLOT_VOIDED,
    UNBONDING_PERIOD,
    deploy,
    fund,
    load,
    make_spec,
    now,
    value,
)
from tests.contracts.test_pool import MEMBER_UNBONDING, MIN_MEMBER_STAKE, POOL_FEE_BPS, pool_offer

FINAL = SLOT_PAID | SLOT_SLASHED | 256 | 512
GPUS = (8, 4, 1, 2)  # devices of member 0..3
MEMORY = (141_000, 80_000, 24_000, 48_000)
MAX_OPEN_JOBS = 4

# The deployment every example starts from; built by the test before the examples run.
_world: dict[str, Any] = {}

pytestmark = pytest.mark.slow  # minutes under the ci Hypothesis profile


def _setup_world() -> None:
    """Deploys a market and a pool with funded actors (once per test)."""
    _world.clear()
    if not _world:
        owner = boa.env.generate_address("pool-sm-owner")
        verifier = boa.env.generate_address("pool-sm-verifier")
        d = deploy(owner, boa.env.generate_address("pool-sm-treasury"), court=verifier)
        operator = boa.env.generate_address("pool-sm-operator")
        requester = boa.env.generate_address("pool-sm-requester")
        members = [boa.env.generate_address(f"pool-sm-member{i}") for i in range(len(GPUS))]
        for a in (requester, verifier, *members):
            fund(d, a)
        with boa.env.prank(verifier):
            d.registry.stake(10_000 * E18)
            d.registry.register_verifier()
        pool = load(
            "ProviderPool",
            d.token.address,
            d.registry.address,
            d.market.address,
            operator,
            POOL_FEE_BPS,
            MIN_MEMBER_STAKE,
            MEMBER_UNBONDING,
        )
        for m in members:
            with boa.env.prank(m):
                d.token.approve(pool.address, MAX_UINT)
        _world.update(d=d, operator=operator, requester=requester, verifier=verifier, members=members, pool=pool)


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        w = _world
        # Every example starts from the deployment and is rolled back at its end.
        self._anchor = boa.env.anchor()
        self._anchor.__enter__()
        self.d, self.pool = w["d"], w["pool"]
        self.token, self.registry, self.market = self.d.token, self.d.registry, self.d.market
        self.operator, self.requester, self.verifier = w["operator"], w["requester"], w["verifier"]
        self.members: list[str] = w["members"]
        # The model.
        self.stake = {m: 0 for m in self.members}
        self.unbonding = {m: 0 for m in self.members}
        self.unbond_at = {m: 0 for m in self.members}
        self.earned = {m: 0 for m in [*self.members, self.operator]}  # credited, all time
        self.withdrawn = {m: 0 for m in [*self.members, self.operator]}  # credit withdrawn
        self.deposited = {m: 0 for m in self.members}
        self.returned = {m: 0 for m in self.members}  # stake withdrawn
        self.slashed = {m: 0 for m in self.members}
        self.open_assign = {m: 0 for m in self.members}
        self.jobs: dict[int, dict[str, Any]] = {}  # job id -> spec, member, booked, market_settled
        self.start_balance = {m: self.token.balanceOf(m) for m in self.members}

    def teardown(self) -> None:
        try:
            self._finish_everything()
        finally:
            self._anchor.__exit__(None, None, None)

    # ------------------------------------------------------------ model helpers

    def _joined(self) -> list[str]:
        return [self.pool.member_list(i) for i in range(self.pool.member_count())]

    def _cut(self, m: str, amount: int) -> int:
        taken = min(amount, self.stake[m] + self.unbonding[m])
        from_stake = min(taken, self.stake[m])
        self.stake[m] -= from_stake
        self.unbonding[m] -= taken - from_stake
        self.slashed[m] += taken
        return taken

    def _book_loss(self, culprit: str | None, loss: int, order: list[str]) -> None:
        rest = loss
        if culprit is not None:
            rest -= self._cut(culprit, rest)
        if rest == 0:
            return
        total = sum(self.stake[a] + self.unbonding[a] for a in order)
        if total == 0:
            return
        rest = min(rest, total)
        shares = sum(self._cut(a, rest * (self.stake[a] + self.unbonding[a]) // total) for a in order)
        remainder = rest - shares
        for a in order:
            if remainder == 0:
                break
            remainder -= self._cut(a, remainder)

    def _open_jobs(self) -> list[int]:
        return [j for j, job in self.jobs.items() if not job["booked"]]

    def _slot(self, job_id: int) -> Any:
        return self.market.slots(job_id, 0)

    def _settleable(self, job_id: int) -> bool:
        job = self.jobs[job_id]
        s = self._slot(job_id)
        t = now()
        if s.status in (SLOT_ACCEPTED, SLOT_REJECTED, SLOT_VOIDED):
            return True
        if s.status == SLOT_COMMITTED:
            return t >= s.committed_at + job["spec"].challenge_window
        if s.status == SLOT_ASSIGNED:
            return t > job["lease_start"] + job["spec"].run_duration
        return False

    def _settle_at_market(self, job_id: int) -> None:
        job = self.jobs[job_id]
        s = self._slot(job_id)
        before = self.registry.total_stake(self.pool.address)
        with boa.env.prank(self.requester):
            self.market.settle(job_id, job["spec"], 0)
        after = self._slot(job_id)
        job["market_settled"] = True
        job["final"] = after.status
        job["loss"] = before - self.registry.total_stake(self.pool.address)
        if after.status == SLOT_PAID:
            paid = min(value(s.price, after.gpu_seconds), value(s.price, job["spec"].max_gpu_seconds))
            job["income"] = paid - paid * FEE_BPS // 10_000
            job["gpu_seconds"] = after.gpu_seconds
        if after.status == SLOT_SLASHED:
            assert job["loss"] == value(s.price, job["spec"].max_gpu_seconds) + BASE_SLASH

    def _book(self, job_id: int, through_pool: bool) -> None:
        job = self.jobs[job_id]
        order = self._joined()
        if not job["market_settled"] and through_pool:
            # The pool settles at the market itself: model it as a market settle then a booking.
            snapshot = self.registry.total_stake(self.pool.address)
            s = self._slot(job_id)
            self.pool.settle(job_id, job["spec"], 0)
            after = self._slot(job_id)
            job["final"] = after.status
            job["loss"] = snapshot - self.registry.total_stake(self.pool.address)
            if after.status == SLOT_PAID:
                paid = min(value(s.price, after.gpu_seconds), value(s.price, job["spec"].max_gpu_seconds))
                job["income"] = paid - paid * FEE_BPS // 10_000
                job["gpu_seconds"] = after.gpu_seconds
        else:
            self.pool.settle(job_id, job["spec"], 0)
        job["booked"] = True
        member = job["member"]
        if member is not None:
            self.open_assign[member] -= 1
        if job["final"] == SLOT_PAID:
            assert member is not None
            fee = job["income"] * POOL_FEE_BPS // 10_000
            self.earned[member] += job["income"] - fee
            self.earned[self.operator] += fee
        if job["final"] == SLOT_SLASHED:
            self._book_loss(member, job["loss"], order)

    # ------------------------------------------------------------ rules

    @initialize(stakes=st.lists(st.integers(350, 700), min_size=3, max_size=3))
    def start(self, stakes: list[int]) -> None:
        for i, amount in enumerate(stakes):
            self._join(i, amount * E18)
        with boa.env.prank(self.operator):
            self.pool.register(pool_offer(self.pool, self.operator), self.members[0])

    def _join(self, i: int, amount: int) -> None:
        m = self.members[i]
        with boa.env.prank(m):
            self.pool.join(amount, GPUS[i], MEMORY[i], m, f"10.0.0.{i}:50051")
        self.stake[m] += amount
        self.deposited[m] += amount

    @rule(i=st.integers(0, 3), amount=st.integers(100, 400))
    def join_or_add(self, i: int, amount: int) -> None:
        m = self.members[i]
        if self.pool.members(m).joined:
            with boa.env.prank(m):
                self.pool.add_stake(amount * E18)
            self.stake[m] += amount * E18
            self.deposited[m] += amount * E18
        else:
            self._join(i, amount * E18)

    @precondition(lambda self: len(self._open_jobs()) < MAX_OPEN_JOBS)
    @rule(gpus=st.sampled_from((1, 2, 4, 8)), max_gpu_seconds=st.integers(600, 3_600))
    def take_job(self, gpus: int, max_gpu_seconds: int) -> None:
        spec = make_spec(
            self.requester,
            auction=AUCTION_INSTANT,
            gpus=gpus,
            max_gpu_seconds=max_gpu_seconds,
            bundle_hash=(len(self.jobs) + 1).to_bytes(32, "big"),
        )
        with boa.env.prank(self.requester):
            job_id = self.market.post_job(spec)
        collateral = value(self.registry.price_floor(self.pool.address), max_gpu_seconds) + BASE_SLASH
        eligible = self.registry.is_eligible(self.pool.address, spec.device_kind, gpus, spec.min_memory_mb, collateral)
        if not eligible or self.pool.draining():
            with boa.env.prank(self.operator), boa.reverts():
                self.pool.take_job(job_id, spec)
            return
        with boa.env.prank(self.operator):
            self.pool.take_job(job_id, spec)
        self.jobs[job_id] = {
            "spec": spec,
            "member": None,
            "booked": False,
            "market_settled": False,
            "lease_start": now(),
        }

    @rule(data=st.data(), i=st.integers(0, 3))
    def assign(self, data: st.DataObject, i: int) -> None:
        candidates = [j for j in self._open_jobs() if self._slot(j).status == SLOT_ASSIGNED]
        if not candidates:
            return
        job_id = data.draw(st.sampled_from(candidates))
        job, m = self.jobs[job_id], self.members[i]
        ok = (
            self.pool.members(m).joined
            and self.stake[m] >= MIN_MEMBER_STAKE
            and GPUS[i] >= job["spec"].gpus
            and MEMORY[i] >= job["spec"].min_memory_mb
            and job["member"] != m
        )
        if not ok:
            with boa.env.prank(self.operator), boa.reverts():
                self.pool.assign(job_id, job["spec"], 0, m)
            return
        with boa.env.prank(self.operator):
            self.pool.assign(job_id, job["spec"], 0, m)
        if job["member"] is not None:
            self.open_assign[job["member"]] -= 1
        job["member"] = m
        self.open_assign[m] += 1

    @rule(data=st.data(), share=st.integers(1, 100))
    def commit_result(self, data: st.DataObject, share: int) -> None:
        candidates = [
            j
            for j in self._open_jobs()
            if self.jobs[j]["member"] is not None
            and self._slot(j).status == SLOT_ASSIGNED
            and now() <= self.jobs[j]["lease_start"] + self.jobs[j]["spec"].run_duration
        ]
        if not candidates:
            return
        job_id = data.draw(st.sampled_from(candidates))
        job = self.jobs[job_id]
        if now() == job["lease_start"]:
            boa.env.time_travel(seconds=1)
        held = (now() - job["lease_start"]) * job["spec"].gpus
        gpu_seconds = max(1, min(held, job["spec"].max_gpu_seconds) * share // 100)
        with boa.env.prank(job["member"]):
            self.pool.commit_result(job_id, job["spec"], 0, ROOT_HASH, gpu_seconds)

    @rule(data=st.data(), outcome=st.sampled_from(("accept", "verify", "reject", "void")), share=st.integers(0, 100))
    def verify(self, data: st.DataObject, outcome: str, share: int) -> None:
        candidates = [
            j
            for j in self._open_jobs()
            if self._slot(j).status == SLOT_COMMITTED
            and now() < self._slot(j).committed_at + self.jobs[j]["spec"].challenge_window
        ]
        if not candidates:
            return
        job_id = data.draw(st.sampled_from(candidates))
        spec = self.jobs[job_id]["spec"]
        if outcome == "accept":
            with boa.env.prank(self.requester):
                self.market.accept_result(job_id, spec, 0)
            return
        code = {"verify": OUTCOME_ACCEPT, "reject": OUTCOME_REJECT, "void": OUTCOME_VOID}[outcome]
        verified = self._slot(job_id).gpu_seconds * share // 100
        with boa.env.prank(self.verifier):
            self.market.attest(job_id, spec, 0, code, verified)

    @rule(data=st.data(), through_pool=st.booleans())
    def settle(self, data: st.DataObject, through_pool: bool) -> None:
        candidates = [j for j in self._open_jobs() if self.jobs[j]["market_settled"] or self._settleable(j)]
        if not candidates:
            return
        job_id = data.draw(st.sampled_from(candidates))
        job = self.jobs[job_id]
        if not through_pool and not job["market_settled"]:
            self._settle_at_market(job_id)  # settled by someone else; booked later
            return
        self._book(job_id, through_pool)

    @rule(seconds=st.sampled_from((600, 3_600, 86_400, 3 * 86_400, 8 * 86_400)))
    def advance_time(self, seconds: int) -> None:
        boa.env.time_travel(seconds=seconds)

    @rule(i=st.integers(0, 3), share=st.integers(1, 100))
    def request_leave(self, i: int, share: int) -> None:
        m = self.members[i]
        amount = self.stake[m] if share == 100 else self.stake[m] * share // 100
        rest = self.stake[m] - amount
        if amount == 0 or (0 < rest < MIN_MEMBER_STAKE):
            return
        with boa.env.prank(m):
            self.pool.request_leave(amount)
        self.stake[m] -= amount
        self.unbonding[m] += amount
        self.unbond_at[m] = now() + MEMBER_UNBONDING

    @rule(i=st.integers(0, 3))
    def withdraw_stake(self, i: int) -> None:
        m = self.members[i]
        try:
            with boa.env.prank(m):
                amount = self.pool.withdraw_stake()
        except BoaError:
            return
        # A member holding an assignment can never get its stake out, nor while any lease it backs
        # runs or a slash is unbooked (its pro-rata share of every slash is taken first).
        assert self.open_assign[m] == 0
        assert self.registry.stakes(self.pool.address).active_jobs == 0
        assert self.pool.unattributed()[1] == 0
        assert now() >= self.unbond_at[m]
        assert amount == self.unbonding[m]
        self.unbonding[m] = 0
        self.returned[m] += amount

    @rule(who=st.integers(0, 4))
    def withdraw_credit(self, who: int) -> None:
        account = self.operator if who == 4 else self.members[who]
        owed = self.earned[account] - self.withdrawn[account]
        if owed == 0:
            with boa.env.prank(account), boa.reverts("pool: nothing to withdraw"):
                self.pool.withdraw()
            return
        with boa.env.prank(account):
            assert self.pool.withdraw() == owed
        self.withdrawn[account] += owed

    @rule()
    def collect(self) -> None:
        if self.market.credits(self.pool.address) > 0:
            self.pool.collect()

    @rule()
    def sync(self) -> None:
        self.pool.sync()

    # ------------------------------------------------------------ invariants

    @invariant()
    def the_ledger_balances(self) -> None:
        income, loss = self.pool.unattributed()
        assets = (
            self.token.balanceOf(self.pool.address)
            + self.registry.total_stake(self.pool.address)
            + self.market.credits(self.pool.address)
        )
        owes = self.pool.total_stake() + self.pool.total_unbonding() + self.pool.total_credits()
        assert assets == owes + income - loss
        if not any(j["market_settled"] and not j["booked"] for j in self.jobs.values()):
            assert (income, loss) == (0, 0)
        assert self.pool.booked_registry_stake() + self.pool.released() == owes - self.pool.total_credits()
        # Released stake earmarked for exits: each pot is its member's alone, never above its unbonding.
        pots = [self.pool.pots(m) for m in self.members]
        assert sum(pots) == self.pool.earmarked() <= self.pool.released()
        assert all(p <= self.pool.members(m).unbonding for p, m in zip(pots, self.members, strict=True))

    @invariant()
    def every_member_holds_what_the_model_says(self) -> None:
        for m in self.members:
            rec = self.pool.members(m)
            assert (rec.stake, rec.unbonding) == (self.stake[m], self.unbonding[m])
            assert rec.assignments == self.open_assign[m]
            assert self.pool.credits(m) == self.earned[m] - self.withdrawn[m]
            # Money is conserved per member: deposits == held + returned + slashed.
            assert self.deposited[m] == self.stake[m] + self.unbonding[m] + self.returned[m] + self.slashed[m]
        assert self.pool.credits(self.operator) == self.earned[self.operator] - self.withdrawn[self.operator]
        assert self.pool.total_stake() == sum(self.stake.values())
        assert self.pool.total_unbonding() == sum(self.unbonding.values())

    # ------------------------------------------------------------ the end: nothing stuck

    def _finish_everything(self) -> None:
        # Every open slot ends: past every run deadline and challenge window, then booked.
        boa.env.time_travel(seconds=2 * 86_400)
        for job_id in self._open_jobs():
            self._book(job_id, through_pool=not self.jobs[job_id]["market_settled"])
        assert self.pool.open_assignments() == 0
        assert self.registry.stakes(self.pool.address).active_jobs == 0
        # Every member leaves with all its stake and pulls its credit; so does the operator.
        for m in self.members:
            if self.stake[m] > 0:
                with boa.env.prank(m):
                    self.pool.request_leave(self.stake[m])
                self.unbonding[m] += self.stake[m]
                self.stake[m] = 0
        for _ in range(3):  # a batch in flight, then the rest: at most two registry periods
            boa.env.time_travel(seconds=max(UNBONDING_PERIOD, MEMBER_UNBONDING) + 1)
            self.pool.sync()
        for m in self.members:
            if self.unbonding[m] > 0:
                with boa.env.prank(m):
                    assert self.pool.withdraw_stake() == self.unbonding[m]
                self.returned[m] += self.unbonding[m]
                self.unbonding[m] = 0
        for account in [*self.members, self.operator]:
            owed = self.earned[account] - self.withdrawn[account]
            if owed:
                with boa.env.prank(account):
                    assert self.pool.withdraw() == owed
                self.withdrawn[account] += owed
        for m in self.members:
            assert self.token.balanceOf(m) == self.start_balance[m] - self.slashed[m] + self.earned[m]
        assert self.token.balanceOf(self.pool.address) == 0
        assert self.registry.total_stake(self.pool.address) == 0
        assert self.market.credits(self.pool.address) == 0
        assert self.pool.total_credits() == 0 and self.pool.total_stake() == 0
        assert self.pool.total_unbonding() == 0


def test_pool__under_random_operations__keeps_its_ledger_and_owes_everyone_exactly_its_due() -> None:
    _setup_world()
    run_state_machine_as_test(
        PoolMachine,
        # The loaded Hypothesis profile (tests/conftest.py): 200 runs of 30 steps in CI.
        settings=settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]),
    )
