"""``flopex demo``: the market in one process on the embedded chain, told as a story.

Contracts are deployed and accounts funded; three providers with different prices stake and
register, and a verifier stakes. A requester posts a job to a sealed auction: the providers commit
and reveal their asks, the lowest wins and is paid the second-lowest (reverse Vickrey). The winner
computes a real matrix product with PyTorch, commits the Merkle root of the result's rows and the
GPU-seconds it claims; the verifier checks the product with Freivalds' method and attests; the
provider is paid for verified GPU-seconds, a fee goes to the treasury and the rest of the escrow
back to the requester. A second job goes to an instant auction; its provider never delivers, and
after the deadline the requester is refunded and the provider slashed. Every account's balance is
shown before and after, and the tokens add up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from marketplace import capacity
from marketplace.bindings import Contracts
from marketplace.chain import Chain, dev_account
from marketplace.devchain import setup_dev_market
from marketplace.events import JobLeased, SlotLeased, SlotSettled
from marketplace.types import (
    ONE_TOKEN,
    Auction,
    DeviceKind,
    JobSpec,
    Offer,
    Outcome,
    Policy,
    format_tokens,
    parse_tokens,
    slot_value,
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
}
PROVIDER_PRICES = {"provider-a": "2.0", "provider-b": "2.5", "provider-c": "3.5"}
STAKE = 500 * ONE_TOKEN
MATRIX_N = 512


@dataclass
class DemoReport:
    """What happened, as data: the CLI prints it as a story or as JSON."""

    chain_id: int = 0
    accounts: dict[str, str] = field(default_factory=dict)
    balances_before: dict[str, int] = field(default_factory=dict)
    balances_after: dict[str, int] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    conserved: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The report as one JSON-ready document (amounts as integers and as decimal strings)."""
        return {
            "chain_id": self.chain_id,
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
            "jobs": self.jobs,
            "steps": self.steps,
            "conserved": self.conserved,
            "seconds": round(self.seconds, 2),
        }


def _balances(contracts: Contracts) -> dict[str, int]:
    """Each role's wealth in the system: wallet + withdrawable credit + stake."""
    out = {}
    for name, index in ROLES.items():
        address = dev_account(index).address
        out[name] = (
            contracts.token.balance_of(address)
            + contracts.market.credits(address)
            + contracts.registry.total_stake(address)
        )
    return out


def run_demo(say: Callable[[str], None] = lambda _line: None) -> DemoReport:
    """Run the whole story on a fresh embedded chain; ``say`` receives progress lines."""
    started = time.monotonic()
    report = DemoReport()

    def step(line: str) -> None:
        report.steps.append(line)
        say(line)

    chain = Chain.embedded()
    contracts = setup_dev_market(chain, accounts=len(ROLES))
    market, registry, token = contracts.market, contracts.registry, contracts.token
    keys = {name: dev_account(index) for name, index in ROLES.items()}
    report.chain_id = chain.chain_id
    report.accounts = {name: key.address for name, key in keys.items()}
    step(f"deployed token {token.address}, registry {registry.address}, market {market.address}")

    for name, price in PROVIDER_PRICES.items():
        key = keys[name]
        token.approve(key, registry.address, STAKE)
        registry.stake(key, STAKE)
        offer = Offer("CPU (demo device)", DeviceKind.CPU, 1, 8_192, 20, parse_tokens(price),
                      f"127.0.0.1:{7100 + ROLES[name]}", key.address)
        registry.register_provider(key, offer)
        step(f"{name} staked {format_tokens(STAKE)} FLOP and offers 1 device at {price} FLOP/GPU-h")
    verifier = keys["verifier"]
    token.approve(verifier, registry.address, STAKE)
    registry.stake(verifier, STAKE)
    registry.register_verifier(verifier)
    step(f"verifier staked {format_tokens(STAKE)} FLOP")
    report.balances_before = _balances(contracts)

    report.jobs.append(_sealed_matrix_job(contracts, keys, step))
    report.jobs.append(_instant_job_provider_vanishes(contracts, keys, step))

    for key in keys.values():
        if market.credits(key.address):
            market.withdraw(key)
    step("everyone withdrew their credit")
    report.balances_after = _balances(contracts)
    before, after = sum(report.balances_before.values()), sum(report.balances_after.values())
    report.conserved = before == after and token.balance_of(market.address) == 0
    report.seconds = time.monotonic() - started
    return report


def _spec(chain: Chain, requester: str, **kw: Any) -> JobSpec:
    now = chain.now()
    base: dict[str, Any] = {
        "requester": requester,
        "bundle_hash": b"\x00" * 32,
        "device_kind": DeviceKind.CPU,
        "gpus": 1,
        "min_memory_mb": 1_024,
        "policy": Policy.FREIVALDS,
        "auction": Auction.SEALED,
        "redundancy": 1,
        "max_price": parse_tokens("5"),
        "max_gpu_seconds": 1_800,
        "bid_deadline": now + 60,
        "reveal_deadline": now + 120,
        "run_duration": 600,
        "challenge_window": 300,
    }
    base.update(kw)
    return JobSpec(**base)


def _sealed_matrix_job(contracts: Contracts, keys: dict[str, Any], step: Callable[[str], None]) -> dict[str, Any]:
    market, chain, token = contracts.market, contracts.chain, contracts.token
    requester, verifier = keys["requester"], keys["verifier"]
    seed = int.from_bytes(keys["requester"].address.encode()[:8], "big")
    spec = _spec(chain, requester.address, bundle_hash=seed.to_bytes(32, "big"))
    token.approve(requester, market.address, spec.escrow)
    job_id = market.post_job(requester, spec)
    step(
        f"job {job_id}: requester posts a {MATRIX_N}x{MATRIX_N} matrix product, sealed auction, "
        f"max {format_tokens(spec.max_price)} FLOP/GPU-h, escrow {format_tokens(spec.escrow)} FLOP"
    )

    salts = {}
    for name, price in PROVIDER_PRICES.items():
        salts[name] = market.commit_bid(keys[name], job_id, parse_tokens(price))
    step(f"job {job_id}: 3 sealed bids committed")
    chain.time_travel(60)
    for name, price in PROVIDER_PRICES.items():
        market.reveal_bid(keys[name], job_id, parse_tokens(price), salts[name])
    step(f"job {job_id}: bids revealed: " + ", ".join(f"{n} {p}" for n, p in PROVIDER_PRICES.items()))
    chain.time_travel(60)
    events = market.events_in(market.finalize_auction(requester, job_id))
    leased = next(e for e in events if isinstance(e, SlotLeased))
    lease = next(e for e in events if isinstance(e, JobLeased))
    winner_name = next(n for n, k in keys.items() if k.address == leased.provider)
    winner = keys[winner_name]
    step(
        f"job {job_id}: {winner_name} wins at the second-lowest ask, {format_tokens(lease.clearing_price)} "
        f"FLOP/GPU-h; {format_tokens(lease.refunded)} FLOP of escrow refunded"
    )

    # The winner computes; device time is measured, the result committed as a Merkle root of rows.
    a, b = capacity.challenge_matrices(seed, MATRIX_N)
    t0 = time.perf_counter()
    c = a @ b
    elapsed = time.perf_counter() - t0
    root = capacity.rows_root(capacity.row_leaves(c))
    claimed = max(1, round(elapsed))
    chain.time_travel(max(claimed, 30))
    market.commit_result(winner, job_id, 0, root, claimed)
    step(f"job {job_id}: {winner_name} computed it in {elapsed * 1000:.0f} ms, committed root {root.hex()[:16]}…")

    # Freivalds: A(Br) == Cr for a random r drawn after the commitment.
    r = torch.randn(MATRIX_N, 1, generator=torch.Generator().manual_seed(chain.now()), dtype=torch.float64)
    ok = torch.allclose(a.double() @ (b.double() @ r), c.double() @ r, rtol=1e-4, atol=1e-3)
    verified_root = capacity.rows_root(capacity.row_leaves(c)) == root
    outcome = Outcome.ACCEPT if ok and verified_root else Outcome.REJECT
    market.attest(verifier, job_id, 0, outcome, claimed)
    step(f"job {job_id}: verifier checked it by Freivalds' method: {'correct' if ok else 'WRONG'}")
    settled = next(e for e in market.events_in(market.settle(requester, job_id, 0)) if isinstance(e, SlotSettled))
    step(
        f"job {job_id}: settled: {settled.gpu_seconds} GPU-s x {format_tokens(leased.price)} FLOP/GPU-h = "
        f"{format_tokens(settled.paid)} FLOP paid ({format_tokens(settled.fee)} fee), "
        f"{format_tokens(settled.refunded)} FLOP refunded"
    )
    return {
        "job_id": job_id,
        "kind": "matrix product",
        "auction": "sealed",
        "policy": "freivalds",
        "bids": {n: parse_tokens(p) for n, p in PROVIDER_PRICES.items()},
        "winner": winner_name,
        "clearing_price": lease.clearing_price,
        "escrow": spec.escrow,
        "refunded_at_lease": lease.refunded,
        "verified": outcome == Outcome.ACCEPT,
        "gpu_seconds": settled.gpu_seconds,
        "paid": settled.paid,
        "fee": settled.fee,
        "refunded": settled.refunded,
        "slashed": settled.slashed,
        "status": settled.status.name.lower(),
    }


def _instant_job_provider_vanishes(
    contracts: Contracts, keys: dict[str, Any], step: Callable[[str], None]
) -> dict[str, Any]:
    market, chain, token = contracts.market, contracts.chain, contracts.token
    requester, taker = keys["requester"], keys["provider-c"]
    spec = _spec(chain, requester.address, auction=Auction.INSTANT, policy=Policy.NONE)
    token.approve(requester, market.address, spec.escrow)
    job_id = market.post_job(requester, spec)
    market.take_job(taker, job_id)
    price = market.slot(job_id, 0).price
    step(f"job {job_id}: instant auction: provider-c takes it at its floor, {format_tokens(price)} FLOP/GPU-h")
    chain.time_travel(spec.run_duration + 1)
    step(f"job {job_id}: provider-c never commits a result; the run deadline passes")
    settled = next(e for e in market.events_in(market.settle(requester, job_id, 0)) if isinstance(e, SlotSettled))
    step(
        f"job {job_id}: requester refunded {format_tokens(settled.refunded)} FLOP; provider-c slashed "
        f"{format_tokens(settled.slashed)} FLOP"
    )
    return {
        "job_id": job_id,
        "kind": "no delivery",
        "auction": "instant",
        "policy": "none",
        "winner": "provider-c",
        "clearing_price": price,
        "escrow": spec.escrow,
        "refunded_at_lease": spec.escrow - slot_value(price, spec.max_gpu_seconds),
        "paid": settled.paid,
        "fee": settled.fee,
        "refunded": settled.refunded,
        "slashed": settled.slashed,
        "status": settled.status.name.lower(),
    }
