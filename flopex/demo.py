"""``flopex demo``: the whole market in one process on the embedded chain, told as a story.

Contracts are deployed and accounts funded. Three providers stake, register and serve gRPC on
loopback, each with its own worker and sandbox; a verifier stakes and measures their capacity.

1. A requester posts a matrix product (``examples/matmul``) to an instant auction checked by
   Freivalds' method, with a max price only the cheapest provider meets. That provider takes it,
   runs it — and returns a wrong product, consistent with the root it commits. The verifier court
   draws the verifier by stake-weighted lot; its Freivalds check rejects it, the ruling reaches the
   market after the appeal window; the provider is slashed, below the minimum stake, and the
   requester refunded.
2. The requester posts a real PyTorch training job (``examples/replay_mlp``, 20 checkpointed
   segments) to a sealed auction with replay verification. The two honest providers commit and
   reveal asks; the lowest wins at the second-lowest (reverse Vickrey). The worker runs it in its
   sandbox and streams progress; the requester downloads the results and checks them against the
   root committed on chain; the verifier replays sampled segments from their checkpoints and
   attests the verified GPU-seconds; the provider is paid for them, a fee goes to the treasury and
   the rest of the escrow back to the requester.
3. Two small GPU owners join a provider pool; its operator registers the pool and bids for it. A
   job priced below the single providers' floors goes to the pool, the operator assigns it to one
   member, whose worker runs it; the pool books the pay to that member by the GPU-seconds it
   delivered, minus the operator's fee.
4. provider-b sells a future window of its device ahead (reserved capacity); the requester buys
   it into escrow. When the window opens the requester's job runs on that device at once, without
   an auction; the provider records its metered GPU-seconds and result root on chain. After the
   window and its challenge period (the embedded chain's clock is moved forward an hour) the
   provider settles: it is paid the whole window, used or not, less the fee.

Every account's wealth (wallet + withdrawable credit + stake) is shown before and after, and the
tokens add up. The command line's ``demo`` prints the story or, with ``--json``, one JSON document.

The demo runs the project's own example jobs. Where bubblewrap is missing it says so and runs them
without the sandbox (a real provider refuses untrusted jobs then).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.contracts.events import BidRevealed, ResultAttested, SlotLeased
from marketplace.errors import ConfigError, VerificationError
from marketplace.requester.requester import JobOptions, Requester
from marketplace.types import (
    ONE_TOKEN,
    Auction,
    DeviceKind,
    Outcome,
    format_tokens,
    parse_tokens,
)

__all__ = ["DemoReport", "run_demo"]

ROLES = {
    "deployer": 0,
    "treasury": 1,
    "requester": 2,
    "verifier": 3,
    "provider-a": 4,
    "provider-b": 5,
    "provider-c": 6,
    "pool-operator": 7,
    "member-1": 8,
    "member-2": 9,
}
#: Asks per GPU-hour; provider-c is the cheapest and returns wrong products.
PROVIDER_PRICES = {"provider-a": "0.20", "provider-b": "0.25", "provider-c": "0.15"}
CHEATER = "provider-c"
#: The pool's price floor and operator fee; each member bonds MEMBER_STAKE.
POOL_PRICE, POOL_FEE_BPS, MEMBER_STAKE = "0.12", 1_000, 150 * ONE_TOKEN
MEMBERS = ("member-1", "member-2")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MATRIX_N = 256


@dataclass
class DemoReport:
    """What happened, as data: the CLI prints it as a story or as JSON."""

    chain_id: int = 0
    sandboxed: bool = True
    accounts: dict[str, str] = field(default_factory=dict)
    balances_before: dict[str, int] = field(default_factory=dict)
    balances_after: dict[str, int] = field(default_factory=dict)
    capacity: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    reservation: dict[str, Any] = field(default_factory=dict)
    steps: list[str] = field(default_factory=list)
    conserved: bool = False
    seconds: float = 0.0
    #: The market the story ran on (its embedded chain stays up as long as this is held); not in the JSON.
    contracts: Contracts | None = field(default=None, repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON-ready document (amounts as integers and as decimal strings)."""
        return {
            "chain_id": self.chain_id,
            "sandboxed": self.sandboxed,
            "accounts": self.accounts,
            "balances": {
                name: {
                    "before": self.balances_before[name],
                    "after": self.balances_after[name],
                    "change": self.balances_after[name] - self.balances_before[name],
                    "after_tokens": format_tokens(self.balances_after[name]),
                }
                for name in self.accounts
            },
            "capacity": self.capacity,
            "jobs": self.jobs,
            "reservation": self.reservation,
            "steps": self.steps,
            "conserved": self.conserved,
            "seconds": round(self.seconds, 2),
        }


def _balances(contracts: Contracts, pool: Any = None) -> dict[str, int]:
    """Each role's wealth in the system: wallet + withdrawable credit + stake (in a pool too)."""
    out = {}
    for name, index in ROLES.items():
        address = dev_account(index).address
        out[name] = (
            contracts.token.balance_of(address)
            + contracts.market.credits(address)
            + contracts.registry.total_stake(address)
        )
        if contracts.reservations is not None:
            out[name] += contracts.reservations.credits(address)
        if pool is not None:
            member = pool.member(address)
            out[name] += member.stake + member.unbonding + pool.credits(address)
    return out


class _Stage:
    """The market's moving parts, started and stopped together."""

    def __init__(self, contracts: Contracts, home: Path, sandboxed: bool) -> None:
        self.contracts, self.home, self.sandboxed = contracts, home, sandboxed
        self.servers: list[Any] = []
        self.daemons: list[Any] = []

    def provider(self, name: str) -> Any:
        from marketplace.market.pricing import strategy_from_spec
        from worker.provider.daemon import ProviderDaemon, ProviderSettings, chain_worker, device_terms
        from worker.testing.cheats import Cheat, CheatingProvider

        contracts = self.contracts
        data = self.home / name
        server, endpoint = chain_worker(contracts, data, allow_unsandboxed=not self.sandboxed, lease_refresh_s=0.1)
        # The cheater keeps only the minimum stake: one slash takes it below, out of the market.
        stake = contracts.registry.min_provider_stake() if name == CHEATER else 300 * ONE_TOKEN
        settings = ProviderSettings(
            endpoint=endpoint,
            price_floor=parse_tokens(PROVIDER_PRICES[name]),
            strategy=strategy_from_spec("fixed"),
            stake=stake,
            poll_interval_s=0.1,
            **device_terms(server),
        )
        account = dev_account(ROLES[name])
        state = data / "provider-state.json"
        daemon: ProviderDaemon
        if name == CHEATER:
            daemon = CheatingProvider(contracts, account, server, settings, state, cheat=Cheat("random"), seed=7)
        else:
            daemon = ProviderDaemon(contracts, account, server, settings, state)
        daemon.ensure_registered()
        server.start()
        daemon.start()
        self.servers.append(server)
        self.daemons.append(daemon)
        return daemon

    def pool(self) -> Any:
        """Deploy a pool, start its two members (each with a worker) and its operator."""
        from marketplace.contracts.pool import deploy_pool
        from marketplace.market.pricing import strategy_from_spec
        from worker.pool.operator import MemberDaemon, OperatorSettings, PoolOperatorDaemon
        from worker.provider.daemon import ProviderSettings, chain_worker, device_terms

        contracts = self.contracts
        operator = dev_account(ROLES["pool-operator"])
        pool = deploy_pool(contracts.chain, operator, contracts, POOL_FEE_BPS, 100 * ONE_TOKEN, 3_600)
        for name in MEMBERS:
            data = self.home / name
            server, endpoint = chain_worker(contracts, data, allow_unsandboxed=not self.sandboxed, lease_refresh_s=0.1)
            settings = ProviderSettings(
                endpoint=endpoint,
                price_floor=1,
                strategy=strategy_from_spec("fixed"),
                stake=MEMBER_STAKE,
                poll_interval_s=0.1,
                **device_terms(server),
            )
            member = MemberDaemon(
                contracts, dev_account(ROLES[name]), server, pool, settings, data / "member-state.json"
            )
            member.ensure_registered()
            server.start()
            member.start()
            self.servers.append(server)
            self.daemons.append(member)
        settings_ = OperatorSettings(
            price_floor=parse_tokens(POOL_PRICE),
            strategy=strategy_from_spec("fixed"),
            device_model="pooled CPU",
            device_kind=DeviceKind.CPU,
            poll_interval_s=0.1,
        )
        daemon = PoolOperatorDaemon(contracts, operator, pool, settings_, self.home / "operator-state.json")
        daemon.ensure_registered()
        daemon.start()
        self.daemons.append(daemon)
        return pool

    def verifier(self) -> Any:
        from worker.verifier.daemon import VerifierDaemon, VerifierSettings

        settings = VerifierSettings(
            data_dir=self.home / "verifier",
            poll_interval_s=0.1,
            capacity_n=512,
            capacity_retry_s=5.0,  # the demo's minutes: a slow first product is measured again soon
            replay_min_samples=3,
            allow_unsandboxed=not self.sandboxed,
        )
        daemon = VerifierDaemon(self.contracts, dev_account(ROLES["verifier"]), settings)
        daemon.ensure_registered()
        daemon.start()
        self.daemons.append(daemon)
        return daemon

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon._stop.set()
        for daemon in self.daemons:
            daemon.stop()
        for server in self.servers:
            server.stop(0)


def run_demo(say: Callable[[str], None] = lambda _line: None) -> DemoReport:
    """Run the whole story on a fresh embedded chain; ``say`` receives progress lines."""
    if not (EXAMPLES / "matmul").is_dir() or not (EXAMPLES / "replay_mlp").is_dir():
        raise ConfigError(f"the demo runs the example jobs in {EXAMPLES}; run it from a source checkout")
    started = time.monotonic()
    report = DemoReport(sandboxed=shutil.which("bwrap") is not None)

    def step(line: str) -> None:
        report.steps.append(line)
        say(line)

    logging.getLogger("flopex").setLevel(logging.ERROR)
    chain = Chain.embedded()
    contracts = setup_dev_market(chain, accounts=len(ROLES))
    market, registry, token = contracts.market, contracts.registry, contracts.token
    report.chain_id = chain.chain_id
    report.accounts = {name: dev_account(index).address for name, index in ROLES.items()}
    step(
        f"deployed on an embedded chain: token {token.address[:10]}…, registry {registry.address[:10]}…, "
        f"market {market.address[:10]}…"
    )
    if not report.sandboxed:
        step("bubblewrap is not installed: the demo runs its own example jobs without the sandbox")

    with tempfile.TemporaryDirectory(prefix="flopex-demo-") as tmp:
        home = Path(tmp)
        stage = _Stage(contracts, home, report.sandboxed)
        try:
            report.balances_before = _balances(contracts)
            for name in PROVIDER_PRICES:
                daemon = stage.provider(name)
                stake = registry.stakes(daemon.address).active
                step(
                    f"{name} staked {format_tokens(stake)} FLOP, serves a CPU device on "
                    f"{daemon.settings.endpoint} and asks {PROVIDER_PRICES[name]} FLOP/GPU-h"
                )
            verifier = stage.verifier()
            step(f"verifier staked {format_tokens(registry.stakes(verifier.address).active)} FLOP")
            report.capacity = _capacity(contracts, stage, step)
            requester = Requester(contracts, dev_account(ROLES["requester"]), say=lambda _l: None)
            report.jobs.append(_matrix_job(contracts, requester, home, step))
            report.jobs.append(_training_job(contracts, requester, home, step))
            pool = stage.pool()
            step(
                f"pool {pool.address[:10]}…: member-1 and member-2 bonded {format_tokens(MEMBER_STAKE)} FLOP each; "
                f"its operator registered it at {POOL_PRICE} FLOP/GPU-h and keeps {POOL_FEE_BPS // 100}% of its pay"
            )
            report.jobs.append(_pool_job(contracts, requester, pool, home, step))
            report.reservation = _reservation(contracts, requester, home, step)
        finally:
            stage.stop()

    for index in ROLES.values():
        key = dev_account(index)
        if market.credits(key.address):
            market.withdraw(key)
    step("everyone withdrew their credit")
    for name in (*MEMBERS, "pool-operator"):
        if pool.credits(dev_account(ROLES[name]).address):
            pool.withdraw(dev_account(ROLES[name]))
    reservations = contracts.require_reservations()
    for index in ROLES.values():
        if reservations.credits(dev_account(index).address):
            reservations.withdraw(dev_account(index))
    report.balances_after = _balances(contracts, pool)
    before, after = sum(report.balances_before.values()), sum(report.balances_after.values())
    report.conserved = (
        before == after
        and token.balance_of(market.address) == 0
        and token.balance_of(pool.address) == 0
        and token.balance_of(reservations.address) == 0
    )
    report.seconds = time.monotonic() - started
    report.contracts = contracts
    return report


def _capacity(contracts: Contracts, stage: _Stage, step: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    """Wait for the verifier's capacity attestations of the providers and tell them."""
    out: dict[str, dict[str, Any]] = {}
    for name in PROVIDER_PRICES:
        address = dev_account(ROLES[name]).address

        def attested(a: str = address) -> bool:
            return contracts.registry.attestation(a)[2] > 0

        contracts.chain.wait_until(attested, timeout=120)
        gflops, _verifier, _at, flagged = contracts.registry.attestation(address)
        out[name] = {"gflops": gflops, "flagged": flagged}
    line = ", ".join(f"{n} {v['gflops']} GFLOP/s" for n, v in out.items())
    step(f"verifier measured each provider with a seeded matrix challenge: {line}")
    return out


def _matrix_job(contracts: Contracts, requester: Requester, home: Path, step: Callable[[str], None]) -> dict[str, Any]:
    import torch
    from safetensors.torch import save_file

    market = contracts.market
    bundle = home / "matmul"
    shutil.copytree(EXAMPLES / "matmul", bundle)
    gen = torch.Generator().manual_seed(11)
    a, b = (torch.randn(MATRIX_N, MATRIX_N, generator=gen) for _ in range(2))
    save_file({"a": a, "b": b}, str(bundle / "inputs.safetensors"))
    options = JobOptions(
        auction=Auction.INSTANT, max_price=parse_tokens("0.18"), bid_window_s=60, challenge_window_s=600, run_slack_s=60
    )
    job_id = requester.submit(bundle, options)
    spec = market.spec(job_id)
    step(
        f"job {job_id}: a {MATRIX_N}x{MATRIX_N} matrix product, instant auction, max "
        f"{format_tokens(spec.max_price)} FLOP/GPU-h, checked by Freivalds; escrow {format_tokens(spec.escrow)} FLOP"
    )
    outcome = requester.follow(job_id, home / f"results-{job_id}", timeout_s=300)
    [leased] = [
        e for e in market.get_events("SlotLeased", market.start_block, job_id=job_id) if isinstance(e, SlotLeased)
    ]
    taker = _name_of(leased.provider)
    step(
        f"job {job_id}: {taker} took it at its floor, {format_tokens(leased.price)} FLOP/GPU-h, ran it and "
        "committed the result's Merkle root"
    )
    verdict = _verdict(contracts, job_id)
    bill = outcome.slots[0]
    step(
        f"job {job_id}: the verifier checked A(Br) = Cr with random r drawn after the commitment: "
        f"{'correct' if verdict == Outcome.ACCEPT else 'WRONG'} → {Outcome(verdict).name.lower()}"
    )
    step(_court_line(contracts, job_id))
    stake_left = contracts.registry.stakes(leased.provider).active
    step(
        f"job {job_id}: {taker} slashed {format_tokens(bill['slashed'])} FLOP (half to the requester); "
        f"requester refunded {format_tokens(bill['refunded'])} FLOP; {taker}'s stake is now "
        f"{format_tokens(stake_left)} FLOP, below the minimum: it can no longer bid"
    )
    return _job_record(
        job_id, "matrix product", "instant", "freivalds", taker, leased.price, spec.escrow, verdict, bill, bids={}
    )


def _training_job(
    contracts: Contracts, requester: Requester, home: Path, step: Callable[[str], None]
) -> dict[str, Any]:
    market, chain = contracts.market, contracts.chain
    options = JobOptions(
        auction=Auction.SEALED, bid_window_s=60, reveal_window_s=60, challenge_window_s=600, run_slack_s=60
    )
    job_id = requester.submit(EXAMPLES / "replay_mlp", options)
    spec = market.spec(job_id)
    step(
        f"job {job_id}: PyTorch training (an MLP, 20 checkpointed segments), sealed auction, max "
        f"{format_tokens(spec.max_price)} FLOP/GPU-h, replay verification; escrow {format_tokens(spec.escrow)} FLOP"
    )
    honest = [n for n in PROVIDER_PRICES if n != CHEATER]
    chain.wait_until(
        lambda: len(market.get_events("BidCommitted", market.start_block, job_id=job_id)) >= len(honest), timeout=60
    )
    commits = market.get_events("BidCommitted", market.start_block, job_id=job_id)
    step(
        f"job {job_id}: sealed bids committed by {', '.join(_name_of(c.provider) for c in commits)}; "
        "nobody can see the asks"
    )
    chain.time_travel(max(0, spec.bid_deadline - chain.now()))
    chain.wait_until(
        lambda: len(market.get_events("BidRevealed", market.start_block, job_id=job_id)) >= len(commits), timeout=60
    )
    reveals = [
        e for e in market.get_events("BidRevealed", market.start_block, job_id=job_id) if isinstance(e, BidRevealed)
    ]
    bids = {_name_of(r.provider): r.price for r in reveals}
    step(
        f"job {job_id}: bidding closed; asks revealed: "
        + ", ".join(f"{n} {format_tokens(p)}" for n, p in sorted(bids.items(), key=lambda kv: kv[1]))
    )
    chain.time_travel(max(0, spec.reveal_deadline - chain.now()))
    progress: list[str] = []

    def follow_say(line: str) -> None:
        if "progress" in line and ("50%" in line or "100%" in line):
            progress.append(line)
            step(f"  {line}")

    requester.say = follow_say
    outcome = requester.follow(job_id, home / f"results-{job_id}", timeout_s=300)
    [leased] = [
        e for e in market.get_events("SlotLeased", market.start_block, job_id=job_id) if isinstance(e, SlotLeased)
    ]
    winner = _name_of(leased.provider)
    bill = outcome.slots[0]
    verdict = _verdict(contracts, job_id)
    attested = _attestation(contracts, job_id)
    step(_court_line(contracts, job_id))
    step(
        f"job {job_id}: {winner} won with the lowest ask and is paid the second-lowest, "
        f"{format_tokens(leased.price)} FLOP/GPU-h; results downloaded and matched the root on chain"
    )
    step(
        f"job {job_id}: the verifier replayed sampled segments from their checkpoints: "
        f"{Outcome(verdict).name.lower()}, {attested.verified_gpu_seconds} of {attested.claimed_gpu_seconds} "
        "claimed GPU-s verified"
    )
    step(
        f"job {job_id}: bill: {bill['gpu_seconds']} GPU-s x {format_tokens(leased.price)} FLOP/GPU-h = "
        f"{format_tokens(bill['paid'])} FLOP paid ({format_tokens(bill['fee'])} fee to the treasury), "
        f"{format_tokens(bill['refunded'])} FLOP refunded"
    )
    return _job_record(
        job_id, "training", "sealed", "replay", winner, leased.price, spec.escrow, verdict, bill, bids=bids
    )


def _pool_job(
    contracts: Contracts, requester: Requester, pool: Any, home: Path, step: Callable[[str], None]
) -> dict[str, Any]:
    from marketplace.requester.requester import JobOptions as Options
    from marketplace.types import Policy

    market = contracts.market
    options = Options(
        auction=Auction.INSTANT,
        policy=Policy.NONE,
        max_price=parse_tokens("0.15"),
        bid_window_s=60,
        challenge_window_s=600,
        run_slack_s=60,
    )
    job_id = requester.submit(EXAMPLES / "train_mlp", options)
    spec = market.spec(job_id)
    step(
        f"job {job_id}: a training job at max {format_tokens(spec.max_price)} FLOP/GPU-h, below every single "
        "provider's floor"
    )
    outcome = requester.follow(job_id, home / f"results-{job_id}", timeout_s=300)
    bill = outcome.slots[0]
    assigned = pool.pool_events("SlotAssigned", 0, job_id=job_id)[-1]
    runner = _name_of(assigned.args["member"])
    contracts.chain.wait_until(lambda: pool.booked(job_id, 0), timeout=60)
    pay = {name: pool.member(dev_account(ROLES[name]).address).gpu_seconds for name in MEMBERS}
    fee_share = (bill["paid"] - bill["fee"]) * POOL_FEE_BPS // 10_000
    step(
        f"job {job_id}: the pool took it at {POOL_PRICE} FLOP/GPU-h; its operator assigned it to {runner}, whose "
        f"worker ran it ({bill['gpu_seconds']} GPU-s); the requester accepted the results"
    )
    step(
        f"job {job_id}: the pool was paid {format_tokens(bill['paid'] - bill['fee'])} FLOP: "
        f"{format_tokens(bill['paid'] - bill['fee'] - fee_share)} to {runner}, {format_tokens(fee_share)} to the "
        f"operator, nothing to the member that did no work"
    )
    record = _job_record(
        job_id,
        "training (pool)",
        "instant",
        "none",
        "pool",
        market.slot(job_id, 0).price,
        spec.escrow,
        int(Outcome.ACCEPT),
        bill,
        bids={},
    )
    record["pool"] = {"runner": runner, "operator_fee": fee_share, "member_gpu_seconds": pay}
    return record


def _reservation(contracts: Contracts, requester: Requester, home: Path, step: Callable[[str], None]) -> dict[str, Any]:
    """provider-b sells a window ahead; the requester buys it, runs a job in it; the provider is paid for the window."""
    from marketplace.contracts.reservations import ReservationStatus

    reservations, chain = contracts.require_reservations(), contracts.chain
    seller = dev_account(ROLES["provider-b"])
    price, duration = parse_tokens("0.18"), 1_800
    start = chain.next_timestamp() + 30
    rid = reservations.offer(seller, start, duration, 1, price)
    reservations.buy_with_permit(requester.account, rid, contracts.token, deadline=start)
    r = reservations.reservation(rid)
    step(
        f"reservation {rid}: provider-b offered its device for {duration // 60} minutes starting in 30 s, at "
        f"{format_tokens(price)} FLOP/GPU-h; the requester bought it ahead: {format_tokens(r.value)} FLOP in escrow"
    )
    chain.time_travel(start - chain.now() + 60)  # a minute into the window
    outcome = requester.run_reserved(rid, EXAMPLES / "plain_torch", home / "reserved", seq=1, record_timeout_s=60)
    step(
        f"reservation {rid}: the requester's job ran on provider-b's device at once, no auction "
        f"({outcome.state}); provider-b recorded {outcome.recorded_gpu_seconds} GPU-s and its result root on chain"
    )
    chain.time_travel(duration + reservations.challenge_period())
    chain.wait_until(lambda: reservations.reservation(rid).status == ReservationStatus.PAID, timeout=60)
    settled = reservations.history("ReservationSettled", reservation_id=rid)[-1].args
    step(
        f"reservation {rid}: an hour after the window provider-b settled it: paid {format_tokens(settled['paid'])} "
        f"FLOP for the whole window (used or not), {format_tokens(settled['fee'])} FLOP of it to the treasury"
    )
    return {
        "reservation_id": rid,
        "provider": "provider-b",
        "holder": "requester",
        "gpus": r.gpus,
        "start": r.start,
        "duration": r.duration,
        "price": r.price,
        "value": r.value,
        "job": {k: v for k, v in outcome.to_json().items() if k != "results"},
        "used_gpu_seconds": int(settled["used_gpu_seconds"]),
        "status": ReservationStatus(int(settled["status"])).name.lower(),
        "paid": int(settled["paid"]),
        "fee": int(settled["fee"]),
        "refunded": int(settled["refunded"]),
    }


def _job_record(
    job_id: int,
    kind: str,
    auction: str,
    policy: str,
    winner: str,
    price: int,
    escrow: int,
    verdict: int,
    bill: dict[str, Any],
    *,
    bids: dict[str, int],
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "kind": kind,
        "auction": auction,
        "policy": policy,
        "bids": bids,
        "winner": winner,
        "clearing_price": price,
        "escrow": escrow,
        "refunded_at_lease": escrow - bill["paid"] - bill["refunded"],
        "verified": verdict == Outcome.ACCEPT,
        "gpu_seconds": bill["gpu_seconds"],
        "paid": bill["paid"],
        "fee": bill["fee"],
        "refunded": bill["refunded"],
        "slashed": bill["slashed"],
        "status": bill["status"],
    }


def _court_line(contracts: Contracts, job_id: int) -> str:
    """How the court decided a job's slot 0: who was drawn, and when the ruling reached the market."""
    court = contracts.require_court()
    case_id = court.slot_case(job_id, 0)
    case = court.case(case_id)
    panel = [_name_of(a) for a in court.panel(case_id, case.round)]
    return (
        f"job {job_id}: the verifier court drew {', '.join(panel)} by stake-weighted lot for case {case_id}, from a "
        f"block after the commitment (no party can be drawn); nobody appealed within "
        f"{court.parameters().appeal_period} s, so the ruling went to the market"
    )


def _attestation(contracts: Contracts, job_id: int) -> ResultAttested:
    market = contracts.market
    found = [
        e
        for e in market.get_events("ResultAttested", market.start_block, job_id=job_id)
        if isinstance(e, ResultAttested)
    ]
    if not found:
        raise VerificationError(f"job {job_id} was settled without an attestation")
    return found[-1]


def _verdict(contracts: Contracts, job_id: int) -> int:
    return int(_attestation(contracts, job_id).outcome)


def _name_of(address: str) -> str:
    for name, index in ROLES.items():
        if dev_account(index).address == address:
            return name
    return address
