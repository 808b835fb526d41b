"""Allocation on chain: a small simulated market replayed against the real contracts.

The allocation simulator (:mod:`benchmarks.allocation`) clears its leases with
:mod:`marketplace.market.auction`, the Python mirror of ``contracts/JobMarket.vy``. This benchmark
checks that mirror where it matters: it draws a small workload with the simulator's own
generator, runs the ``auction`` (sealed) and ``instant`` policies on it, then replays every
job against the deployed token, registry and market on a dev chain (anvil, or the embedded
eth-tester chain) and compares, job by job, what each side says happened:

* whether the job was leased or expired;
* which provider won it (sealed: the contract picks the winner from the reveals);
* the lease price per GPU-hour (sealed: the contract's second-lowest ask, or the max);
* what the provider was paid for its GPU-seconds, the protocol fee on it, and what went back
  to the requester (the refund at the lease plus the refund at settlement, or the whole escrow).

Then, per account: each provider's credit against what the simulator paid it (less fees), the
number of jobs the registry counts it completed, each requester's credit against its refunds, the
treasury's credit against the fees; and that the market holds exactly the credits it owes.

How the replay follows the simulation:

* Providers stake the minimum plus what backs every lease they may hold at once (each lease
  locks its value and the base slash) and register their devices, memory and price floor; requesters
  are dev accounts of their own (a requester never bids on its own job).
* The chain's clock follows the simulation's: an action due at simulated second ``t`` runs once
  the chain reaches ``T0 + t`` (a dev chain's clock is moved forward, never back). Each block
  takes at least a second on eth-tester, so the chain may run a few seconds late; deadlines are
  set from the chain's own time, so that slack never changes an outcome.
* A job the simulator leases is posted when it clears. Sealed: posted when its auction opens, the
  simulator's bidders commit their asks in its reveal order, bids close 30 s later, reveals close
  60 s after the post (the simulator's bid window) and the auction is finalized. Instant: posted
  and taken at once by the simulator's taker. A job the simulator drops is posted at its arrival,
  open until its patience runs out, and then finalized: it expires with a full refund. A job's
  wait before it clears is the simulator's business, not replayed.
* The contract charges an instant take the provider's posted price (its registered price
  floor), and the simulator's providers price instant jobs with their strategy. A provider whose
  strategy asks something else posts that price (``set_price_floor``) just before it takes, as
  the provider daemon in ``worker/`` does; ``price_reposts`` counts these. ``--instant-at-floor``
  turns this off (takers take at the price they registered): the chain then disagrees with the
  simulator on every take whose ask was not that price.
* No work runs: at the lease start plus the job's simulated duration (moved there by time
  travel, not waited for) the winner commits a dummy result root and the simulated GPU-seconds
  (GPUs × duration), the requester accepts it, and the slot settles. Verification policy
  ``none``; one slot per job (the simulator has no redundancy).

Run ``python -m benchmarks.allocation_chain --help``; the result is one JSON document on
stdout, and the command exits 1 when chain and simulator disagree.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from benchmarks._env import emit, environment
from benchmarks.allocation import (
    DEVICE_CLASSES,
    DONE,
    DROPPED,
    RunResult,
    SimulationParams,
    make_workload,
    policy_rng_seed,
    simulate,
)
from marketplace.chain.anvil import Anvil
from marketplace.chain.client import Chain, dev_account
from marketplace.contracts import events as ev
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.errors import ChainError, FlopexError
from marketplace.market.auction import settle, slot_value
from marketplace.types import ONE_TOKEN, Auction, DeviceKind, JobSpec, Offer, Policy

#: Stake each provider adds to the minimum to back its concurrent leases (dev accounts hold 100,000).
COLLATERAL_STAKE = 20_000 * ONE_TOKEN

__all__ = [
    "FIELDS",
    "ChainRunParams",
    "JobOutcome",
    "ReplayError",
    "compare",
    "expected_outcomes",
    "main",
    "replay",
    "run",
]

MarketPolicy = Literal["auction", "instant"]
MARKET_POLICIES: tuple[MarketPolicy, ...] = ("auction", "instant")

FIELDS = ("leased", "provider", "price", "paid", "fee", "refund")
"""What is compared for each job."""

BPS = 10_000
CHALLENGE_WINDOW_S = 3_600
RUN_MARGIN_S = 600
"""A job's run deadline: its max GPU-seconds per device plus this margin after the lease."""
START_DELAY_S = 60
"""Chain seconds between the end of the set-up and simulated second 0."""


class ReplayError(ChainError):
    """Raised when the chain cannot follow the simulation's timeline (a deadline would be missed)."""


@dataclass(frozen=True, slots=True)
class ChainRunParams:
    """Knobs of one agreement run."""

    providers: int = 8
    jobs: int = 40
    requesters: int = 4
    seed: int = 1
    load: float = 1.2
    policies: tuple[MarketPolicy, ...] = MARKET_POLICIES
    instant_at_floor: bool = False
    """Instant takers take at their registered floor instead of re-posting their strategy's ask."""

    def simulation(self) -> SimulationParams:
        """The simulator's parameters for this run (one load, these policies)."""
        return SimulationParams(
            providers=self.providers,
            jobs=self.jobs,
            seed=self.seed,
            loads=(self.load,),
            policies=self.policies,
            requesters=self.requesters,
        )


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """How one job ended, in token units: as the simulator books it or as the chain did."""

    job: int
    leased: bool
    provider: int | None
    """Index of the winning provider in the workload; None when the job expired."""
    price: int | None
    """Lease price per GPU-hour; None when the job expired."""
    paid: int
    """Paid for the GPU-seconds, before the protocol fee."""
    fee: int
    """Protocol fee taken from ``paid``."""
    refund: int
    """Everything that went back to the requester."""

    def as_json(self) -> dict[str, Any]:
        """Money as decimal strings (token units do not fit a JSON double)."""
        return {
            "leased": self.leased,
            "provider": self.provider,
            "price": None if self.price is None else str(self.price),
            "paid": str(self.paid),
            "fee": str(self.fee),
            "refund": str(self.refund),
        }


# ---------------------------------------------------------------- the simulator's side


def expected_outcomes(result: RunResult, fee_bps: int) -> list[JobOutcome]:
    """What the simulator's books say each job should end with on chain.

    A leased job is settled with :func:`marketplace.market.auction.settle` on its GPUs × duration; the
    fee is ``paid × fee_bps // 10_000`` as the contract takes it. A dropped job refunds its escrow.
    """
    w = result.workload
    out: list[JobOutcome] = []
    for j, state in enumerate(result.state):
        escrow = slot_value(w.max_price[j], w.max_gpu_seconds[j])
        if state == DONE:
            price, work = result.price[j], w.gpus[j] * w.duration[j]
            s = settle(price, work, max_gpu_seconds=w.max_gpu_seconds[j], max_price=w.max_price[j])
            if s.payout != result.payout[j]:
                raise AssertionError(f"job {j}: the simulator booked {result.payout[j]}, settle() says {s.payout}")
            fee = s.payout * fee_bps // BPS
            out.append(JobOutcome(j, True, result.provider[j], price, s.payout, fee, s.refund))
        elif state == DROPPED:
            out.append(JobOutcome(j, False, None, None, 0, 0, escrow))
        else:
            raise AssertionError(f"job {j} neither done nor dropped")
    return out


def compare(expected: Sequence[JobOutcome], observed: Sequence[JobOutcome]) -> dict[str, Any]:
    """Compares two accounts of the same jobs, field by field.

    Returns ``agree``, ``mismatches`` (a count per field in :data:`FIELDS`), ``mismatched_jobs``
    and ``rows`` (one per job, both sides and the fields that differ).
    """
    if [e.job for e in expected] != [o.job for o in observed]:
        raise ValueError("compare: the two sides do not list the same jobs")
    counts = dict.fromkeys(FIELDS, 0)
    rows: list[dict[str, Any]] = []
    bad: list[int] = []
    for e, o in zip(expected, observed, strict=True):
        differ = [f for f in FIELDS if getattr(e, f) != getattr(o, f)]
        for f in differ:
            counts[f] += 1
        if differ:
            bad.append(e.job)
        rows.append({"job": e.job, "simulator": e.as_json(), "chain": o.as_json(), "differ": differ})
    return {"agree": not bad, "mismatches": counts, "mismatched_jobs": bad, "rows": rows}


def _totals(outcomes: Sequence[JobOutcome]) -> dict[str, Any]:
    return {
        "leased": sum(o.leased for o in outcomes),
        "expired": sum(not o.leased for o in outcomes),
        "paid": str(sum(o.paid for o in outcomes)),
        "fee": str(sum(o.fee for o in outcomes)),
        "refund": str(sum(o.refund for o in outcomes)),
        "paid_tokens": round(sum(o.paid for o in outcomes) / ONE_TOKEN, 4),
    }


# ---------------------------------------------------------------- the chain's side

# Actions, in the order they run at the same chain second: results first (devices free), then
# the steps of auctions under way, then new posts.
RESULT, FINALIZE, REVEAL, POST = range(4)


class _Replay:
    """One policy's simulation replayed on one fresh deployment."""

    def __init__(self, chain: Chain, result: RunResult, params: SimulationParams, *, repost: bool) -> None:
        self.chain, self.result, self.params, self.repost = chain, result, params, repost
        w = self.w = result.workload
        self.sealed = result.policy == "auction"
        n_providers, n_requesters = len(w.p_floor), params.requesters
        # Account 0 deploys and mints, 1 is the treasury; then providers, then requesters.
        self.accounts = 2 + n_providers + n_requesters
        self.providers = [dev_account(2 + p) for p in range(n_providers)]
        self.requesters = [dev_account(2 + n_providers + r) for r in range(n_requesters)]
        self.index: dict[str, int] = {a.address: p for p, a in enumerate(self.providers)}
        self.contracts: Contracts = setup_dev_market(chain, accounts=self.accounts)
        # The simulated market lets a job wait as long as its patience (hours to days): the owner
        # (dev account 0) opens the market's window bounds to the hard limit in its code.
        longest = self.contracts.market.max_window()
        market, owner = self.contracts.market, dev_account(0)
        ready = market.queue_change(owner, "set_window_bounds", longest, longest, longest)
        chain.time_travel(ready - chain.now())  # the owner's change waits out its delay
        market.set_window_bounds(owner, longest, longest, longest)
        self.fee_bps = self.contracts.market.fee_bps()
        self.posted_floor = list(w.p_floor)
        self.price_reposts = 0
        self.sealed_bids = 0
        self.job_id: dict[int, int] = {}
        self.specs: dict[int, JobSpec] = {}
        self.salts: dict[int, list[bytes]] = {}
        self.outcome: dict[int, JobOutcome] = {}
        self.refund: dict[int, int] = {}
        self.leased: dict[int, tuple[int, int]] = {}
        self.queue: list[tuple[int, int, int, int]] = []
        self.seq = 0
        self.t0 = 0

    # -- set-up

    def register(self) -> None:
        """Stakes and registers every provider; requesters approve the market once."""
        c, w = self.contracts, self.w
        # Each lease locks its value plus the base slash of free stake; the simulator never refuses
        # a provider for its stake, so every provider backs more leases than it can hold at once.
        stake = c.registry.min_provider_stake() + COLLATERAL_STAKE
        for p, account in enumerate(self.providers):
            c.token.approve(account, c.registry.address, stake)
            c.registry.stake(account, stake)
            self._register(p, w.p_floor[p])
        for account in self.requesters:
            c.token.approve(account, c.market.address, c.token.balance_of(account.address))

    def _register(self, p: int, floor: int) -> None:
        w = self.w
        account = self.providers[p]
        offer = Offer(
            device_model=DEVICE_CLASSES[int(w.p_class[p])].name,
            device_kind=DeviceKind.CUDA,
            gpu_count=int(w.p_devices[p]),
            memory_mb=int(w.p_memory[p]) * 1_024,
            claimed_gflops=1_000,
            price_floor=floor,
            endpoint=f"sim-provider-{p}.invalid:443",
            signer=account.address,
        )
        self.contracts.registry.register_provider(account, offer)
        self.posted_floor[p] = floor

    # -- the timeline

    def push(self, at: int, kind: int, j: int) -> None:
        self.seq += 1
        heapq.heappush(self.queue, (at, kind, self.seq, j))

    def advance_to(self, at: int) -> None:
        """Moves the chain's clock so that the next transaction is stamped ``at`` or later."""
        now = self.chain.now()
        if now < at:
            self.chain.time_travel(at - now)

    def run(self) -> list[JobOutcome]:
        """Replays every job and returns the chain's account of each."""
        self.register()
        self.t0 = self.chain.now() + START_DELAY_S
        r, w = self.result, self.w
        for j, state in enumerate(r.state):
            if state == DONE:
                cleared = r.start[j] - (self.params.bid_window_s if self.sealed else 0)
                self.push(self.t0 + cleared, POST, j)
            else:
                self.push(self.t0 + w.arrival[j], POST, j)
        handlers: dict[int, Callable[[int, int], None]] = {
            POST: self.post,
            REVEAL: self.reveal,
            FINALIZE: self.finalize,
            RESULT: self.commit_result,
        }
        while self.queue:
            at, kind, _, j = heapq.heappop(self.queue)
            self.advance_to(at)
            handlers[kind](j, at)
        return [self.outcome[j] for j in range(len(r.state))]

    # -- actions

    def _spec(self, j: int, bid_deadline: int, reveal_deadline: int) -> JobSpec:
        w = self.w
        gpus, max_gpu_seconds = w.gpus[j], w.max_gpu_seconds[j]
        return JobSpec(
            requester=self.requesters[w.requester[j]].address,
            bundle_hash=hashlib.sha256(f"flopex allocation job {j}".encode()).digest(),
            device_kind=DeviceKind.CUDA,
            gpus=gpus,
            min_memory_mb=w.memory_gb[j] * 1_024,
            policy=Policy.NONE,
            auction=Auction.SEALED if self.sealed else Auction.INSTANT,
            redundancy=1,
            max_price=w.max_price[j],
            max_gpu_seconds=max_gpu_seconds,
            bid_deadline=bid_deadline,
            reveal_deadline=reveal_deadline,
            run_duration=-(-max_gpu_seconds // gpus) + RUN_MARGIN_S,
            challenge_window=CHALLENGE_WINDOW_S,
        )

    def post(self, j: int, at: int) -> None:
        r, w, market = self.result, self.w, self.contracts.market
        now = self.chain.now()
        window, half = self.params.bid_window_s, self.params.bid_window_s // 2
        requester = self.requesters[w.requester[j]]
        if r.state[j] == DROPPED:
            # Open until the requester's patience runs out; nobody bids.
            bid_deadline = max(self.t0 + w.patience[j], now + window)
            spec = self._spec(j, bid_deadline, bid_deadline + half if self.sealed else 0)
            self.job_id[j] = market.post_job(requester, spec)
            self.push(spec.reveal_deadline if self.sealed else bid_deadline, FINALIZE, j)
        elif self.sealed:
            spec = self._spec(j, now + half, now + window)
            self.job_id[j] = job_id = market.post_job(requester, spec)
            salts = []
            for p, ask in r.bids[j]:
                salts.append(market.commit_bid(self.providers[p], job_id, ask))
            self.sealed_bids += len(salts)
            self.salts[j] = salts
            self._check_before(spec.bid_deadline, j, "bid")
            self.push(spec.bid_deadline, REVEAL, j)
        else:
            spec = self._spec(j, now + window, 0)
            self.job_id[j] = job_id = market.post_job(requester, spec)
            p, price = r.provider[j], r.price[j]
            if self.repost and self.posted_floor[p] != price:
                # As the provider daemon does: post the strategy's ask, then take at it.
                self.contracts.registry.set_price_floor(self.providers[p], price)
                self.posted_floor[p] = price
                self.price_reposts += 1
            self._leased(j, market.take_job(self.providers[p], job_id))
        self.specs[j] = spec

    def _check_before(self, deadline: int, j: int, what: str) -> None:
        if self.chain.now() >= deadline:
            raise ReplayError(
                f"job {j}: the chain reached its {what} deadline before every {what} landed; "
                "too many transactions at one simulated instant"
            )

    def reveal(self, j: int, at: int) -> None:
        market, spec = self.contracts.market, self.specs[j]
        for (p, ask), salt in zip(self.result.bids[j], self.salts.pop(j), strict=True):
            market.reveal_bid(self.providers[p], self.job_id[j], ask, salt)
        self._check_before(spec.reveal_deadline, j, "reveal")
        self.push(spec.reveal_deadline, FINALIZE, j)

    def finalize(self, j: int, at: int) -> None:
        market, spec = self.contracts.market, self.specs[j]
        receipt = market.finalize_auction(self.requesters[self.w.requester[j]], self.job_id[j])
        events = market.events_in(receipt)
        expired = [e for e in events if isinstance(e, ev.JobExpired)]
        if expired:
            self.outcome[j] = JobOutcome(j, False, None, None, 0, 0, expired[0].refunded)
            return
        if spec.auction != Auction.SEALED:
            raise ReplayError(f"job {j}: an instant job was finalized without expiring")
        self._leased(j, receipt)

    def _leased(self, j: int, receipt: Any) -> None:
        market = self.contracts.market
        events = market.events_in(receipt)
        slot = next(e for e in events if isinstance(e, ev.SlotLeased))
        lease = next(e for e in events if isinstance(e, ev.JobLeased))
        if lease.clearing_price != slot.price:
            raise ReplayError(f"job {j}: JobLeased and SlotLeased disagree on the price")
        self.leased[j] = (self.index[slot.provider], slot.price)
        self.refund[j] = lease.refunded
        lease_start = market.job(self.job_id[j]).lease_start
        self.push(lease_start + self.w.duration[j], RESULT, j)

    def commit_result(self, j: int, at: int) -> None:
        market, w = self.contracts.market, self.w
        job_id, (p, price) = self.job_id[j], self.leased[j]
        provider = self.providers[p]
        root = hashlib.sha256(f"flopex allocation result {j}".encode()).digest()
        market.commit_result(provider, job_id, 0, root, w.gpus[j] * w.duration[j])
        market.accept_result(self.requesters[w.requester[j]], job_id, 0)
        settled = next(e for e in market.events_in(market.settle(provider, job_id, 0)) if isinstance(e, ev.SlotSettled))
        self.outcome[j] = JobOutcome(j, True, p, price, settled.paid, settled.fee, self.refund[j] + settled.refunded)

    # -- accounts

    def check_accounts(self, expected: Sequence[JobOutcome]) -> dict[str, Any]:
        """Credits, completed-job counters and solvency against the simulator's books."""
        c, w = self.contracts, self.w
        treasury = c.market.treasury()
        want: dict[str, int] = dict.fromkeys([a.address for a in self.providers + self.requesters] + [treasury], 0)
        completed = [0] * len(self.providers)
        for e in expected:
            requester = self.requesters[w.requester[e.job]].address
            want[requester] += e.refund
            if e.provider is not None:
                want[self.providers[e.provider].address] += e.paid - e.fee
                completed[e.provider] += 1
            want[treasury] += e.fee
        wrong = [
            {"account": a, "expected": str(v), "chain": str(c.market.credits(a))}
            for a, v in want.items()
            if c.market.credits(a) != v
        ]
        counted = [c.registry.reputation(a.address)[0] for a in self.providers]
        open_jobs = [j for j, job_id in self.job_id.items() if not c.market.job(job_id).status.terminal]
        held = c.token.balance_of(c.market.address)
        owed = c.market.total_credits()
        return {
            "agree": not wrong and counted == completed and not open_jobs and held == owed,
            "credits_checked": len(want),
            "credit_mismatches": wrong,
            "completed_per_provider": {"simulator": completed, "chain": counted},
            "jobs_not_closed": open_jobs,
            "market_holds_what_it_owes": held == owed,
        }


def replay(chain: Chain, result: RunResult, params: SimulationParams, *, repost: bool = True) -> dict[str, Any]:
    """Replays one policy's simulation on a fresh deployment on ``chain`` and compares both sides.

    With ``repost`` (the default) an instant taker first posts the price its strategy asked in the
    simulation, as the provider daemon does; without it, it takes at its registered floor and the
    chain charges that.

    Returns the policy's entry of the JSON document: ``agree``, the comparison (counts, rows),
    totals on both sides, the per-account check and the chain's figures.
    """
    began = time.perf_counter()
    before = _sent(chain, 2 + len(result.workload.p_floor) + params.requesters)
    r = _Replay(chain, result, params, repost=repost)
    observed = r.run()
    expected = expected_outcomes(result, r.fee_bps)
    comparison = compare(expected, observed)
    accounts = r.check_accounts(expected)
    elapsed = time.perf_counter() - began
    sent = _sent(chain, r.accounts) - before
    bidders = [len(b) for b in result.bids.values()]
    return {
        "policy": result.policy,
        "agree": comparison["agree"] and accounts["agree"],
        "jobs": len(observed),
        "mismatches": comparison["mismatches"],
        "mismatched_jobs": comparison["mismatched_jobs"],
        "totals": {"simulator": _totals(expected), "chain": _totals(observed)},
        "accounts": accounts,
        "chain": {
            "transactions": sent,
            "elapsed_s": round(elapsed, 2),
            "tx_per_s": round(sent / elapsed, 1) if elapsed > 0 else None,
            "sealed_bids": r.sealed_bids,
            "auctions_with_2_or_more_bids": sum(1 for b in bidders if b >= 2),
            "price_reposts": r.price_reposts,
            "fee_bps": r.fee_bps,
            "simulated_span_s": max([result.workload.horizon, *result.end]),
        },
        "rows": comparison["rows"],
    }


def _sent(chain: Chain, accounts: int) -> int:
    """Transactions sent so far by dev accounts 0..``accounts``-1."""
    with chain.locked():
        return sum(int(chain.w3.eth.get_transaction_count(dev_account(i).address)) for i in range(accounts))


def run(params: ChainRunParams, chain: Chain) -> dict[str, Any]:
    """Simulates each policy on one workload, replays each on ``chain`` and returns the JSON document."""
    began = time.perf_counter()
    sim = params.simulation()
    workload = make_workload(params.providers, params.jobs, params.seed, params.load, sim)
    results = []
    for policy in params.policies:
        rng_seed = policy_rng_seed(params.seed, policy, params.load)
        result = simulate(workload, policy, sim, load=params.load, rng_seed=rng_seed)
        results.append(replay(chain, result, sim, repost=not params.instant_at_floor))
    return {
        "benchmark": "allocation_chain",
        "params": asdict(params) | {"policies": list(params.policies), "bid_window_s": sim.bid_window_s},
        "market": {
            "devices": workload.capacity,
            "providers": [
                {
                    "device": DEVICE_CLASSES[int(workload.p_class[p])].name,
                    "devices": int(workload.p_devices[p]),
                    "floor": str(workload.p_floor[p]),
                    "strategy": workload.p_strategy[p],
                }
                for p in range(params.providers)
            ],
        },
        "chain": "embedded" if chain.is_embedded else "json-rpc",
        "agree": all(r["agree"] for r in results),
        "results": results,
        "elapsed_s": round(time.perf_counter() - began, 2),
        "environment": environment(),
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.allocation_chain", description=__doc__.splitlines()[0])
    defaults = ChainRunParams()
    parser.add_argument("--providers", type=int, default=defaults.providers, help="providers (default %(default)s)")
    parser.add_argument("--jobs", type=int, default=defaults.jobs, help="jobs (default %(default)s)")
    parser.add_argument("--requesters", type=int, default=defaults.requesters, help="requesters (default %(default)s)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="workload seed (default %(default)s)")
    parser.add_argument("--load", type=float, default=defaults.load, help="offered load (default %(default)s)")
    parser.add_argument("--policies", default=",".join(MARKET_POLICIES), help="auction and/or instant, comma-separated")
    parser.add_argument(
        "--instant-at-floor",
        action="store_true",
        help="instant takers take at their registered floor without posting their strategy's ask",
    )
    parser.add_argument(
        "--chain",
        default="anvil",
        choices=("anvil", "embedded"),
        help="a fresh anvil node on 127.0.0.1 (default), or the embedded eth-tester chain",
    )
    parser.add_argument("--rpc-url", default=None, help="replay on this dev node instead (it must let its clock move)")
    parser.add_argument("--out", default=None, help="also write the JSON document here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Runs the agreement check from the command line, prints its JSON and returns it."""
    args = _parse_args(argv)
    policies = tuple(p.strip() for p in args.policies.split(","))
    if not policies or any(p not in MARKET_POLICIES for p in policies):
        raise SystemExit(f"allocation_chain: --policies takes auction and/or instant, got {args.policies!r}")
    if min(args.providers, args.jobs, args.requesters) < 1 or args.load <= 0:
        raise SystemExit("allocation_chain: providers, jobs, requesters and load must be positive")
    params = ChainRunParams(
        providers=args.providers,
        jobs=args.jobs,
        requesters=args.requesters,
        seed=args.seed,
        load=args.load,
        policies=policies,
        instant_at_floor=args.instant_at_floor,
    )
    try:
        if args.rpc_url:
            doc = run(params, Chain.connect(args.rpc_url))
        elif args.chain == "embedded":
            doc = run(params, Chain.embedded())
        else:
            with Anvil() as node:
                doc = run(params, Chain.connect(node.url))
            doc["chain"] = "anvil"
    except FlopexError as exc:
        raise SystemExit(f"allocation_chain: {exc}") from None
    emit(doc, args.out)
    return doc


if __name__ == "__main__":
    sys.exit(0 if main(sys.argv[1:])["agree"] else 1)
