"""Page-load time of the console's market page, on a market with many jobs and providers.

``python -m benchmarks.console`` deploys flopex on the embedded chain, registers ``--providers``
providers (three device classes, prices spread out) and a verifier, posts ``--jobs`` jobs (a
fifth of them sealed auctions with three bidders, the rest instant), runs ``--settled`` of them to
settlement through the contracts (commit, verifier's ruling, settle; one in ten rejected and
slashed) and leaves the others open, then measures:

* ``direct``: reading what the market page shows straight from the node on each load, as
  ``flopex market`` and ``flopex market index`` do (every event since deployment, a call per job
  and provider view, the block of every lease);
* ``console_cold``: the console's first market page on a fresh index (every log read once);
* ``console_warm``: the market page once the index is warm (median and worst of ``--loads``);
* ``console_restart``: a new console over the same SQLite index file: its first page;
* ``console_new_block``: a page after one more job was posted (the index reads one block).

It prints one JSON document (``--out FILE`` also writes it). ``build_market`` is the market the
console's tests use, at a small size.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._env import emit, environment
from marketplace.chain.client import Chain, dev_account
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.devmarket import setup_dev_market
from marketplace.types import ONE_TOKEN, Auction, DeviceKind, JobSpec, Offer, Outcome, Policy

REQUESTER, VERIFIER, FIRST_PROVIDER = 2, 3, 4
MODELS = (
    ("NVIDIA H100 80GB HBM3", DeviceKind.CUDA, 81_559),
    ("NVIDIA A100-SXM4-40GB", DeviceKind.CUDA, 40_960),
    ("cpu", DeviceKind.CPU, 16_384),
)


def provider_price(i: int) -> int:
    """Provider ``i``'s price floor: 1 FLOP per GPU-hour plus 0.05 per index, per class."""
    return ONE_TOKEN + (i // len(MODELS)) * ONE_TOKEN // 20


def build_market(
    contracts: Contracts, *, providers: int = 3, jobs: int = 4, settled: int = 2, sealed_every: int = 5
) -> dict[str, Any]:
    """Providers, a verifier and jobs, driven through the contracts alone (no workers).

    Returns what it made: provider addresses, the ids of settled (paid or slashed), leased and
    open jobs, and a reservation offered for sale.
    """
    chain, market, registry, token = contracts.chain, contracts.market, contracts.registry, contracts.token
    made: dict[str, Any] = {"providers": [], "paid": [], "slashed": [], "open": [], "sealed": [], "reservation": None}
    for i in range(providers):
        key = dev_account(FIRST_PROVIDER + i)
        model, kind, memory = MODELS[i % len(MODELS)]
        token.approve(key, registry.address, 2_000 * ONE_TOKEN)
        registry.stake(key, 2_000 * ONE_TOKEN)
        offer = Offer(model, kind, 8, memory, 0, provider_price(i), f"127.0.0.1:{9 + i}", key.address)
        registry.register_provider(key, offer)
        made["providers"].append(key.address)
    verifier = dev_account(VERIFIER)
    token.approve(verifier, registry.address, 200 * ONE_TOKEN)
    registry.stake(verifier, 200 * ONE_TOKEN)
    registry.register_verifier(verifier)
    contracts.require_court().join(verifier)
    requester = dev_account(REQUESTER)
    token.approve(requester, market.address, 10**9 * ONE_TOKEN)
    leased: list[tuple[int, Any]] = []
    for n in range(jobs):
        provider_index = n % providers
        model, kind, memory = MODELS[provider_index % len(MODELS)]
        sealed = sealed_every > 0 and n % sealed_every == 0 and providers >= 2 and n < settled
        now = chain.now()
        spec = JobSpec(
            requester=requester.address,
            bundle_hash=n.to_bytes(32, "big"),
            device_kind=kind,
            gpus=1,
            min_memory_mb=memory // 2,
            policy=Policy.REPLAY,
            auction=Auction.SEALED if sealed else Auction.INSTANT,
            redundancy=1,
            max_price=50 * ONE_TOKEN,
            max_gpu_seconds=1_800,
            bid_deadline=now + (120 if sealed else 80_000),  # the market's longest bid window is a day
            reveal_deadline=now + (240 if sealed else 80_060),
            run_duration=3_600,
            challenge_window=900,
        )
        job_id = market.post_job(requester, spec)
        if n >= settled:
            made["open"].append(job_id)
            continue
        if sealed:
            same_class = [j for j in range(providers) if j % len(MODELS) == provider_index % len(MODELS)]
            asks = [(dev_account(FIRST_PROVIDER + j), provider_price(j)) for j in same_class[:3]]
            salts = [(b, price, market.commit_bid(b, job_id, price)) for b, price in asks]
            chain.time_travel(max(0, spec.bid_deadline - chain.now()))
            for b, price, salt in salts:
                market.reveal_bid(b, job_id, price, salt)
            chain.time_travel(max(0, spec.reveal_deadline - chain.now()))
            market.finalize_auction(requester, job_id)
            made["sealed"].append(job_id)
            winner = min(asks, key=lambda a: a[1])[0]
        else:
            winner = dev_account(FIRST_PROVIDER + provider_index)
            market.take_job(winner, job_id)
        leased.append((job_id, winner))
        if len(leased) >= 50 or n == settled - 1:
            _finish(contracts, leased, made)
            leased = []
    if contracts.reservations is not None and providers:
        seller = dev_account(FIRST_PROVIDER)
        start = chain.next_timestamp() + 7 * 86_400
        made["reservation"] = contracts.reservations.offer(seller, start, 3_600, 1, provider_price(0))
    return made


def _finish(contracts: Contracts, leased: list[tuple[int, Any]], made: dict[str, Any]) -> None:
    """Commit, rule on and settle the leased jobs: every tenth rejected (slashed), the rest paid."""
    market, chain = contracts.market, contracts.chain
    verifier, requester = dev_account(VERIFIER), dev_account(REQUESTER)
    chain.time_travel(900)
    for job_id, winner in leased:
        # A made-up result root per job (never NO_SHOW_ROOT, which reports a no-show).
        market.commit_result(winner, job_id, 0, b"\xab" + job_id.to_bytes(31, "big"), 600)
    # The court draws its one verifier for every case; its rulings reach the market after the appeal window.
    court = contracts.require_court()
    cases = []
    for job_id, _winner in leased:
        reject = job_id % 10 == 3
        court.open_slot_case(verifier, job_id, market.spec(job_id), 0)
        case_id = court.case_count()
        court.draw(verifier, case_id)
        court.rule(verifier, case_id, Outcome.REJECT if reject else Outcome.ACCEPT, 0 if reject else 540)
        cases.append((job_id, case_id, reject))
    chain.time_travel(court.parameters().appeal_period)
    for job_id, case_id, reject in cases:
        court.finalize(verifier, case_id)
        market.settle(requester, job_id, 0)
        made["slashed" if reject else "paid"].append(job_id)


def direct_market_page(contracts: Contracts, sample: int = 5) -> dict[str, Any]:
    """What the market page shows, read straight from the node (as the command line does), timed by part.

    Every open job's summary is a few log queries over the whole history, so ``sample`` of them
    are timed and the rest extrapolated (``seconds`` is then an estimate, said so).
    """
    from marketplace.market.index import compute_index, read_history
    from marketplace.market.summary import job_summary
    from marketplace.types import JobStatus

    market, registry = contracts.market, contracts.registry
    start = contracts.deployment.start_block

    def statuses() -> list[int]:
        return [i for i in range(1, market.job_count() + 1) if market.job(i).status == JobStatus.OPEN]

    status_s, open_ids = _timed(statuses)
    summaries_s, _ = _timed(lambda: [job_summary(contracts, i) for i in open_ids[:sample]])
    per_job = summaries_s / max(1, min(sample, len(open_ids)))

    def providers() -> int:
        rows = 0
        for event in registry.get_events("ProviderRegistered", start):
            address = event.provider
            registry.offer(address), registry.price_floor(address), registry.stakes(address)
            registry.reputation(address), registry.attestation(address)
            rows += 1
        return rows

    providers_s, rows = _timed(providers)
    index_s, index = _timed(lambda: compute_index(read_history(contracts), ["24h"]))
    total = status_s + per_job * len(open_ids) + providers_s + index_s
    return {
        "seconds": round(total, 1),
        "estimated": len(open_ids) > sample,
        "parts": {
            "job_statuses": round(status_s, 2),
            "open_job_summaries": round(per_job * len(open_ids), 1),
            "open_job_summary_each": round(per_job, 2),
            "open_job_summaries_timed": min(sample, len(open_ids)),
            "providers": round(providers_s, 2),
            "price_index": round(index_s, 2),
        },
        "open_jobs": len(open_ids),
        "providers": rows,
        "classes": len(index.history.classes),
    }


def _timed(fn: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    value = fn()
    return time.perf_counter() - t, value


def run(jobs: int, providers: int, settled: int, loads: int, skip_direct: bool = False) -> dict[str, Any]:
    """Build the market, then time the market page every way."""
    from starlette.testclient import TestClient

    from flopex.console.app import create_app
    from flopex.console.reader import MarketReader

    build_s, (contracts, made) = _timed(
        lambda: (
            (c := setup_dev_market(Chain.embedded(), accounts=FIRST_PROVIDER + providers)),
            build_market(c, providers=providers, jobs=jobs, settled=settled),
        )
    )
    blocks = contracts.chain.block_number() - contracts.deployment.start_block
    result: dict[str, Any] = {
        "benchmark": "console",
        "unit": "seconds",
        "market": {
            "jobs": jobs,
            "providers": providers,
            "settled": len(made["paid"]) + len(made["slashed"]),
            "open": len(made["open"]),
            "blocks": blocks,
            "build_s": round(build_s, 1),
        },
    }
    if not skip_direct:
        result["direct"] = direct_market_page(contracts)
    with tempfile.TemporaryDirectory(prefix="flopex-console-bench-") as tmp:
        reader = MarketReader(contracts, data_dir=Path(tmp), probe_timeout_s=0.2)
        with TestClient(create_app(reader)) as client:

            def load() -> int:
                response = client.get("/market")
                assert response.status_code == 200, response.text[:200]
                return len(response.content)

            cold_s, size = _timed(load)
            warm = [_timed(load)[0] for _ in range(loads)]
            requester = dev_account(REQUESTER)
            spec = contracts.market.spec(made["open"][-1]) if made["open"] else None
            new_block_s = None
            if spec is not None:
                from dataclasses import replace

                contracts.market.post_job(requester, replace(spec, bundle_hash=b"\x01" * 32))
                new_block_s = _timed(load)[0]
        reader.close()
        restart = MarketReader(contracts, data_dir=Path(tmp), probe_timeout_s=0.2)
        with TestClient(create_app(restart)) as client:
            restart_s = _timed(lambda: client.get("/market").status_code)[0]
        restart.close()
        index_bytes = sum(p.stat().st_size for p in Path(tmp).glob("*.sqlite"))
    result.update(
        {
            "page_bytes": size,
            "console_cold": round(cold_s, 3),
            "console_warm": {"median": round(statistics.median(warm), 4), "max": round(max(warm), 4), "loads": loads},
            "console_new_block": None if new_block_s is None else round(new_block_s, 4),
            "console_restart": round(restart_s, 3),
            "index_file_bytes": index_bytes,
            "environment": environment(),
        }
    )
    if "direct" in result:
        result["speedup_warm_vs_direct"] = round(result["direct"]["seconds"] / statistics.median(warm), 1)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.console", description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000)
    parser.add_argument("--providers", type=int, default=100)
    parser.add_argument("--settled", type=int, default=600, help="Jobs run to settlement; the rest stay open.")
    parser.add_argument("--loads", type=int, default=20, help="Warm page loads to time.")
    parser.add_argument("--skip-direct", action="store_true", help="Do not time the direct read (it is slow).")
    parser.add_argument("--out", default=None, help="Also write the JSON to this file.")
    args = parser.parse_args(argv)
    emit(run(args.jobs, args.providers, min(args.settled, args.jobs), args.loads, args.skip_direct), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
