"""Gas of each step of a job's lifecycle, for one bidder and for three, and of the verifier court.

``python -m benchmarks.gas`` deploys flopex on the embedded chain, runs a sealed-auction job from
post to withdrawal with 1 and with 3 bidders, and an instant job, each on the happy path that needs
no ruling (no verification policy, no dispute: paid on its claim after the challenge window), and
prints one JSON document: the gas of every step, the total per job, the cost of each extra bidder,
and the goals (at most 500,000 gas for a one-provider job, at most 80,000 per extra bidder; iExec's
minimal workflow is about 1.98 million gas as reference). Each job is measured twice: with the
requester and provider credited and each withdrawing its credit (an approve before ``post_job``),
and with both paid at once (``set_direct_payout``, a one-off call; the job posted with a permit, as
the requester daemon does), which saves the two withdrawals. The figures measured before the gas
work are kept beside them (``before``). The court's figures come apart: a ruling (open the case,
draw one verifier, rule, close and pass it to the market), an appeal round (appeal, draw three,
three rulings, close with a slash) and a verifier's reward claim.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from benchmarks._env import environment
from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.court import Court
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.types import ONE_TOKEN, Auction, DeviceKind, JobSpec, Offer, Outcome, Policy

GOAL_ONE_PROVIDER = 500_000
GOAL_PER_EXTRA_BIDDER = 80_000
IEXEC_REFERENCE = 1_980_000
#: Measured with this benchmark before the gas work (credits withdrawn, approve + post_job for the
#: sealed job, a permit for the instant one), steady state.
BEFORE = {
    "sealed_one_provider_job": 700_881,
    "instant_one_provider_job": 536_820,
    "per_extra_bidder": 149_858,
    "sealed_steps": {
        "approve": 45_964,
        "post_job": 101_598,
        "commit_bid": 75_317,
        "reveal_bid": 77_659,
        "finalize_auction": 123_218,
        "commit_result": 66_788,
        "settle": 122_817,
        "withdraw_provider": 43_760,
        "withdraw_requester": 43_760,
    },
}
REQUESTER, VERIFIER, FIRST_PROVIDER = 2, 3, 4
#: Accounts of the extra verifiers the appeal round draws from.
PANEL = (12, 13, 14, 15)


def _gas(receipt: Any) -> int:
    return int(receipt["gasUsed"])


def _setup(bidders: int, direct: bool = False) -> tuple[Contracts, dict[str, int]]:
    contracts = setup_dev_market(Chain.embedded(), accounts=max(PANEL) + 1)
    one_off: dict[str, int] = {}
    if direct:
        for index in (REQUESTER, *range(FIRST_PROVIDER, FIRST_PROVIDER + bidders)):
            one_off["set_direct_payout"] = _gas(contracts.market.set_direct_payout(dev_account(index)))
    for i in range(bidders):
        provider = dev_account(FIRST_PROVIDER + i)
        contracts.token.approve(provider, contracts.registry.address, 500 * ONE_TOKEN)
        staked = contracts.registry.stake(provider, 500 * ONE_TOKEN)
        offer = Offer(
            "NVIDIA H100 80GB HBM3",
            DeviceKind.CUDA,
            8,
            81_559,
            60_000,
            (2 + i) * ONE_TOKEN,
            f"10.0.0.{i + 1}:7070",
            provider.address,
        )
        registered = contracts.registry.register_provider(provider, offer)
        if i == 0:
            # A pricing strategy moving the posted price before an instant take; posted back after.
            posted = contracts.registry.set_price_floor(provider, offer.price_floor + ONE_TOKEN)
            contracts.registry.set_price_floor(provider, offer.price_floor)
            one_off |= {
                "provider_stake": _gas(staked),
                "provider_register": _gas(registered),
                "provider_set_price_floor": _gas(posted),
            }
    verifier = dev_account(VERIFIER)
    contracts.token.approve(verifier, contracts.registry.address, 500 * ONE_TOKEN)
    contracts.registry.stake(verifier, 500 * ONE_TOKEN)
    one_off["verifier_register"] = _gas(contracts.registry.register_verifier(verifier))
    if contracts.court is not None:
        one_off["verifier_join_court"] = _gas(contracts.court.join(verifier))
    return contracts, one_off


def _spec(contracts: Contracts, auction: Auction, policy: Policy = Policy.NONE) -> JobSpec:
    now = contracts.chain.now()
    return JobSpec(
        requester=dev_account(REQUESTER).address,
        bundle_hash=b"\x5a" * 32,
        device_kind=DeviceKind.CUDA,
        gpus=1,
        min_memory_mb=16_000,
        policy=policy,
        auction=auction,
        redundancy=1,
        max_price=5 * ONE_TOKEN,
        max_gpu_seconds=1_800,
        bid_deadline=now + 300,
        reveal_deadline=now + 600,
        run_duration=3_600,
        challenge_window=900,
    )


def _finish(contracts: Contracts, job_id: int, steps: dict[str, int], direct: bool = False) -> None:
    """Commit, wait out the challenge window, settle and (credited, not paid at once) withdraw for
    slot 0 of a leased job."""
    market, chain = contracts.market, contracts.chain
    requester = dev_account(REQUESTER)
    winner = dev_account(FIRST_PROVIDER)
    chain.time_travel(600)
    steps["commit_result"] = _gas(market.commit_result(winner, job_id, 0, b"\x77" * 32, 500))
    chain.time_travel(market.spec(job_id).challenge_window)
    steps["settle"] = _gas(market.settle(requester, job_id, 0))
    if direct:
        return
    steps["withdraw_provider"] = _gas(contracts.chain.transact(winner, market.contract.functions.withdraw()))
    steps["withdraw_requester"] = _gas(contracts.chain.transact(requester, market.contract.functions.withdraw()))


def sealed_job(bidders: int, direct: bool = False) -> dict[str, Any]:
    """Gas of every step of a sealed-auction job with ``bidders`` bidders: the actors' first job
    (storage they touch for the first time costs 20,000 gas a slot) and their second (steady state).
    ``direct``: requester and providers paid at once, the job posted with a permit."""
    contracts, one_off = _setup(bidders, direct)
    first = _sealed_steps(contracts, bidders, direct)
    second = _sealed_steps(contracts, bidders, direct)
    return {
        "bidders": bidders,
        "steps": second,
        "total": sum(second.values()),
        "first_job_steps": first,
        "first_job_total": sum(first.values()),
        "one_off": one_off,
    }


def _sealed_steps(contracts: Contracts, bidders: int, direct: bool = False) -> dict[str, int]:
    market, chain, token = contracts.market, contracts.chain, contracts.token
    requester = dev_account(REQUESTER)
    spec = _spec(contracts, Auction.SEALED)
    steps: dict[str, int] = {}
    if direct:
        steps["post_job_with_permit"] = _post_with_permit(contracts, spec)
    else:
        steps["approve"] = _gas(token.approve(requester, market.address, spec.escrow))
        receipt = chain.transact(requester, market.contract.functions.post_job(spec.as_tuple()))
        steps["post_job"] = _gas(receipt)
    job_id = market.job_count()
    market._specs[job_id] = spec
    salts = []
    for i in range(bidders):
        provider = dev_account(FIRST_PROVIDER + i)
        price = (2 + i) * ONE_TOKEN
        salt = bytes([i + 1]) * 32
        commitment = market.bid_commitment(job_id, provider.address, price, salt)
        r = chain.transact(provider, market.contract.functions.commit_bid(job_id, spec.as_tuple(), commitment))
        steps[f"commit_bid_{i + 1}"] = _gas(r)
        salts.append((provider, price, salt))
    chain.time_travel(300)
    for i, (provider, price, salt) in enumerate(salts):
        steps[f"reveal_bid_{i + 1}"] = _gas(market.reveal_bid(provider, job_id, price, salt))
    chain.time_travel(300)
    steps["finalize_auction"] = _gas(market.finalize_auction(requester, job_id))
    _finish(contracts, job_id, steps, direct)
    return steps


def _post_with_permit(contracts: Contracts, spec: JobSpec) -> int:
    market, chain = contracts.market, contracts.chain
    requester = dev_account(REQUESTER)
    v, r, s = contracts.token.sign_permit(requester, market.address, spec.escrow, chain.now() + 600)
    fn = market.contract.functions.post_job_with_permit(spec.as_tuple(), chain.now() + 600, v, r, s)
    return _gas(chain.transact(requester, fn))


def instant_job(direct: bool = False) -> dict[str, Any]:
    """Gas of every step of an instant job posted with a permit (second job: steady state)."""
    contracts, _ = _setup(1, direct)
    first = _instant_steps(contracts, direct)
    second = _instant_steps(contracts, direct)
    return {
        "bidders": 1,
        "steps": second,
        "total": sum(second.values()),
        "first_job_total": sum(first.values()),
    }


def _instant_steps(contracts: Contracts, direct: bool = False) -> dict[str, int]:
    market = contracts.market
    spec = _spec(contracts, Auction.INSTANT)
    steps = {"post_job_with_permit": _post_with_permit(contracts, spec)}
    job_id = market.job_count()
    market._specs[job_id] = spec
    steps["take_job"] = _gas(market.take_job(dev_account(FIRST_PROVIDER), job_id))
    _finish(contracts, job_id, steps, direct)
    return steps


def court_steps() -> dict[str, int]:
    """Gas of a ruling through the court on an instant replay job (second case: steady state), of an
    appeal round that overturns it, and of a verifier's reward claim."""
    contracts, _ = _setup(1)
    court = contracts.require_court()
    for index in PANEL:
        account = dev_account(index)
        contracts.token.approve(account, contracts.registry.address, 500 * ONE_TOKEN)
        contracts.registry.stake(account, 500 * ONE_TOKEN)
        contracts.registry.register_verifier(account)
        court.join(account)
    _ruling(contracts, court, appeal=False)
    return _ruling(contracts, court, appeal=True)


def _ruling(contracts: Contracts, court: Court, *, appeal: bool) -> dict[str, int]:
    market, chain = contracts.market, contracts.chain
    requester, winner = dev_account(REQUESTER), dev_account(FIRST_PROVIDER)
    spec = _spec(contracts, Auction.INSTANT, Policy.REPLAY)
    contracts.token.approve(requester, market.address, spec.escrow)
    chain.transact(requester, market.contract.functions.post_job(spec.as_tuple()))
    job_id = market.job_count()
    market._specs[job_id] = spec
    market.take_job(winner, job_id)
    chain.time_travel(600)
    market.commit_result(winner, job_id, 0, b"\x77" * 32, 500)
    steps = {"open_case": _gas(court.open_slot_case(requester, job_id, spec, 0))}
    case_id = court.case_count()
    steps["draw_one"] = _gas(court.draw(requester, case_id))
    by_address: dict[str, Any] = {str(dev_account(i).address): dev_account(i) for i in (VERIFIER, *PANEL)}
    (first,) = court.panel(case_id, 0)
    steps["rule"] = _gas(court.rule(by_address[first], case_id, Outcome.REJECT if appeal else Outcome.ACCEPT, 0))
    if appeal:
        bond = court.next_appeal_bond(case_id)
        contracts.token.approve(winner, court.address, bond)
        steps["appeal"] = _gas(court.appeal(winner, case_id))
        steps["draw_three"] = _gas(court.draw(requester, case_id))
        rulings = [_gas(court.rule(by_address[v], case_id, Outcome.ACCEPT, 500)) for v in court.panel(case_id, 1)]
        steps["rule_in_a_panel_of_three"] = rulings[0]
        steps["rule_last_of_three"] = rulings[-1]
    chain.time_travel(court.parameters().appeal_period)
    steps["finalize"] = _gas(court.finalize(requester, case_id))
    if appeal:
        reward = court.panel(case_id, 1)[0]
        steps["withdraw_reward"] = _gas(chain.transact(by_address[reward], court.contract.functions.withdraw()))
    return steps


def run() -> dict[str, Any]:
    """Measure everything and compare with the goals."""
    one = sealed_job(1)
    three = sealed_job(3)
    instant = instant_job()
    one_direct = sealed_job(1, direct=True)
    three_direct = sealed_job(3, direct=True)
    instant_direct = instant_job(direct=True)
    court = court_steps()
    per_extra = (three["total"] - one["total"]) // 2
    per_extra_direct = (three_direct["total"] - one_direct["total"]) // 2
    return {
        "benchmark": "gas",
        "unit": "gas",
        "sealed_one_bidder": one,
        "sealed_three_bidders": three,
        "instant_with_permit": instant,
        "per_extra_bidder": per_extra,
        "paid_at_once": {
            "sealed_one_bidder": one_direct,
            "sealed_three_bidders": three_direct,
            "instant_with_permit": instant_direct,
            "per_extra_bidder": per_extra_direct,
        },
        "before": BEFORE,
        "after": {
            "sealed_one_provider_job": one["total"],
            "instant_one_provider_job": instant["total"],
            "per_extra_bidder": per_extra,
            "sealed_one_provider_job_paid_at_once": one_direct["total"],
            "instant_one_provider_job_paid_at_once": instant_direct["total"],
        },
        "court": {
            "steps": court,
            "ruling": court["open_case"] + court["draw_one"] + court["rule"],
            "appeal_round": court["appeal"]
            + court["draw_three"]
            + 2 * court["rule_in_a_panel_of_three"]
            + court["rule_last_of_three"],
            "finalize_after_an_appeal": court["finalize"],
            "reward_claim": court["withdraw_reward"],
        },
        "goals": {
            "one_provider_job_max": GOAL_ONE_PROVIDER,
            "per_extra_bidder_max": GOAL_PER_EXTRA_BIDDER,
            "iexec_minimal_workflow_reference": IEXEC_REFERENCE,
        },
        "meets_goals": {
            "sealed_one_provider_job": one["total"] <= GOAL_ONE_PROVIDER,
            "instant_one_provider_job": instant["total"] <= GOAL_ONE_PROVIDER,
            "per_extra_bidder": per_extra <= GOAL_PER_EXTRA_BIDDER,
            "sealed_one_provider_job_paid_at_once": one_direct["total"] <= GOAL_ONE_PROVIDER,
            "instant_one_provider_job_paid_at_once": instant_direct["total"] <= GOAL_ONE_PROVIDER,
        },
        "environment": environment(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gas", description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    json.dump(run(), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
