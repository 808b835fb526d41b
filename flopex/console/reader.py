"""What the console's pages show, read from the chain through the library and the console's ledger.

:class:`MarketReader` owns one deployment's contracts (:mod:`marketplace.contracts` bindings), its
:class:`~flopex.console.ledger.Ledger` (every log, synced incrementally), a cache of each
provider's views (read again only after a registry log names the provider) and a cache of each
worker's reachability (a gRPC ``GetInfo`` with a short deadline, in the background). Every method
returns plain data for a template or a JSON answer; nothing here sends a transaction. The only key
it may hold is the requester's, to sign requests for a job's log lines.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import is_address, to_checksum_address

from flopex.console.ledger import JobRow, Ledger, Log
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.pool import Pool, pool_at
from marketplace.errors import FlopexError, WorkerError
from marketplace.market.index import compute_index, parse_window, twap
from marketplace.market.routing import slot_worker
from marketplace.market.summary import job_summary, reservation_summary
from marketplace.types import DeviceKind, JobStatus, Outcome, SlotStatus

__all__ = ["WINDOWS", "BadInput", "MarketReader", "NotFound", "parse_address", "parse_job_id"]

#: Windows the price chart offers.
WINDOWS = ("1h", "24h", "7d", "all")
#: Points of the price index drawn over a window.
INDEX_POINTS = 120


class NotFound(FlopexError, LookupError):
    """What the page asks for is not on this market (HTTP 404)."""


class BadInput(FlopexError, ValueError):
    """The request itself is malformed (HTTP 400)."""


@dataclass
class _Probe:
    state: str  # "reachable", "unreachable", "checking"
    detail: str
    checked_at: float
    last_answered: float | None = None  # Unix time of the last answer seen


def parse_address(text: str) -> str:
    """A checksummed address, or :class:`BadInput`."""
    text = text.strip()
    if not is_address(text):
        raise BadInput(f"not an address: {text!r} (expected 0x and 40 hex digits)")
    return to_checksum_address(text)


def parse_job_id(text: str) -> int:
    """A job id, or :class:`BadInput`."""
    try:
        value = int(text.strip())
    except ValueError:
        raise BadInput(f"not a job id: {text!r} (expected a number)") from None
    if value < 1:
        raise BadInput(f"not a job id: {text!r} (jobs are numbered from 1)")
    return value


class MarketReader:
    """One deployment, read for the console's pages."""

    def __init__(
        self,
        contracts: Contracts,
        *,
        deployment_path: str | None = None,
        data_dir: Path | None = None,
        requester: LocalAccount | None = None,
        probe_timeout_s: float = 1.0,
        probe_ttl_s: float = 30.0,
    ) -> None:
        self.contracts = contracts
        self.chain = contracts.chain
        self.deployment_path = deployment_path
        self.requester = requester
        d = contracts.deployment
        path = None
        if data_dir is not None:
            path = data_dir / f"index-{d.chain_id}-{d.market.lower()}.sqlite"
        self.ledger = Ledger(contracts, path)
        self.probe_timeout_s = probe_timeout_s
        self.probe_ttl_s = probe_ttl_s
        self._lock = threading.RLock()
        self._providers: dict[str, dict[str, Any]] = {}
        self._pools: dict[str, Pool | None] = {}
        self._probes: dict[str, _Probe] = {}
        self._answered: dict[str, float] = {}
        self._probing = ThreadPoolExecutor(max_workers=8, thread_name_prefix="console-probe")

    def close(self) -> None:
        """Stop probing and close the ledger."""
        self._probing.shutdown(wait=False, cancel_futures=True)
        self.ledger.close()

    # ------------------------------------------------------------------ the source

    def source(self) -> dict[str, Any]:
        """Which chain and deployment the console reads, for every page's header."""
        d = self.contracts.deployment
        return {
            "chain_id": d.chain_id,
            "rpc_url": self.chain.url or "embedded chain (in this process)",
            "deployment": self.deployment_path or "(in memory)",
            "market": d.market,
            "registry": d.registry,
            "reservations": d.reservations,
            "block": self.ledger.synced,
        }

    def sync(self) -> int:
        """Read new blocks; forget the views of providers a new registry log named."""
        with self._lock:
            latest = self.ledger.sync()
            touched, self.ledger.touched = self.ledger.touched, set()
            for address in touched:
                self._providers.pop(address, None)
            for address in self._registered():
                if address not in self._pools:
                    self._pools[address] = pool_at(self.contracts, address)
                    found = self._pools[address]
                    if found is not None:
                        self.ledger.watch_pool(found)
            return latest

    def _registered(self) -> list[str]:
        """Providers with an offer now, in order of first registration."""
        present: dict[str, bool] = {}
        for g in self.ledger.named("ProviderRegistered", "ProviderDeregistered", source="registry"):
            present[str(g.args["provider"])] = g.name == "ProviderRegistered"
        return [a for a, on in present.items() if on]

    # ------------------------------------------------------------------ market

    def open_jobs(self) -> list[dict[str, Any]]:
        """Jobs open for bids, newest first, with their terms."""
        rows = [j for j in self.ledger.jobs.values() if j.status == JobStatus.OPEN]
        return [self._job_terms(j) for j in sorted(rows, key=lambda j: -j.job_id)]

    def _job_terms(self, job: JobRow) -> dict[str, Any]:
        s = job.spec
        return {
            "job_id": job.job_id,
            "requester": s.requester,
            "status": job.status.name.lower(),
            "auction": s.auction.name.lower(),
            "policy": s.policy.name.lower(),
            "device_kind": s.device_kind.name.lower(),
            "gpus": s.gpus,
            "min_memory_mb": s.min_memory_mb,
            "redundancy": s.redundancy,
            "max_price": s.max_price,
            "max_gpu_seconds": s.max_gpu_seconds,
            "bid_deadline": s.bid_deadline,
            "escrow": job.escrow,
            "posted_time": job.posted.time,
        }

    def providers(self) -> list[dict[str, Any]]:
        """Every registered provider (pools included) with its offer, price, stake, reputation and reachability."""
        rows = []
        for address in self._registered():
            row = self._providers.get(address)
            if row is None:
                row = self._providers[address] = self._provider_row(address)
            rows.append({**row, **self.reachability_of(row["endpoint"])})
        return rows

    def _provider_row(self, address: str) -> dict[str, Any]:
        registry = self.contracts.registry
        offer = registry.offer(address)
        stake = registry.stakes(address)
        completed, failed, slashed = registry.reputation(address)
        gflops, _verifier, attested_at, flagged = registry.attestation(address)
        return {
            "provider": address,
            "pool": self._pools.get(address) is not None,
            "device_class": f"{DeviceKind(offer.device_kind).name.lower()}:{offer.device_model}".rstrip(":"),
            "gpus": offer.gpu_count,
            "memory_mb": offer.memory_mb,
            "price_floor": registry.price_floor(address),
            "claimed_gflops": offer.claimed_gflops,
            "gflops": gflops if attested_at else None,
            "flagged": flagged,
            "stake": stake.active,
            "unbonding": stake.unbonding,
            "completed": completed,
            "failed": failed,
            "slashed": slashed,
            "endpoint": offer.endpoint,
        }

    def reachability_of(self, endpoint: str) -> dict[str, Any]:
        """The last probe of ``endpoint`` (starting one in the background when none is fresh)."""
        now = time.monotonic()
        with self._lock:
            probe = self._probes.get(endpoint)
            if probe is None or (probe.state != "checking" and now - probe.checked_at > self.probe_ttl_s):
                self._probes[endpoint] = _Probe("checking", "asking the worker", now, self._answered.get(endpoint))
                self._probing.submit(self._probe, endpoint)
                probe = self._probes[endpoint]
        return {"reach": probe.state, "reach_detail": probe.detail, "last_answered": probe.last_answered}

    def _probe(self, endpoint: str) -> None:
        from marketplace.requester.probe import probe_endpoint

        answer = probe_endpoint(endpoint, self.probe_timeout_s)
        with self._lock:
            last = answer.checked_at if answer.reachable else self._answered.get(endpoint)
            if answer.reachable:
                self._answered[endpoint] = answer.checked_at
            detail = answer.detail
            if not answer.reachable:
                when = datetime.fromtimestamp(last, UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if last else None
                detail += f" (last answered {when})" if when else " (has not answered since the console started)"
            self._probes[endpoint] = _Probe(
                "reachable" if answer.reachable else "unreachable", detail, time.monotonic(), last
            )

    def reachability(self) -> dict[str, dict[str, Any]]:
        """Every provider's endpoint probe, by provider."""
        rows = self._providers.values()
        return {r["provider"]: self.reachability_of(r["endpoint"]) for r in list(rows)}

    def pools(self) -> list[dict[str, Any]]:
        """Every pool registered as a provider: operator, fee, price and members."""
        out = []
        for address, pool in self._pools.items():
            if pool is None:
                continue
            members = [m for m in pool.members() if m.joined]
            out.append(
                {
                    "pool": address,
                    "operator": pool.operator(),
                    "fee_bps": pool.fee_bps(),
                    "price_floor": self.contracts.registry.price_floor(address),
                    "total_stake": pool.total_stake(),
                    "total_gpus": pool.total_gpus(),
                    "members": [
                        {
                            "member": m.address,
                            "stake": m.stake,
                            "unbonding": m.unbonding,
                            "gpus": m.gpus,
                            "gpu_seconds": m.gpu_seconds,
                            "assignments": m.assignments,
                            "endpoint": m.endpoint,
                        }
                        for m in members
                    ],
                }
            )
        return out

    def reservations_for_sale(self) -> list[dict[str, Any]]:
        """Reservations anyone can buy now (offers and resales)."""
        reservations = self.contracts.reservations
        if reservations is None:
            return []
        now = self.chain.next_timestamp()
        sold_out = {"OfferCancelled", "ReservationSettled"}
        ids: dict[int, bool] = {}
        for g in self.ledger.logs:
            if g.source == "reservations" and "reservation_id" in g.args:
                rid = int(g.args["reservation_id"])
                ids[rid] = ids.get(rid, True) and g.name not in sold_out
        out = []
        for rid, live in ids.items():
            if live:
                state = reservations.reservation(rid)
                if state.for_sale(now):
                    out.append(reservation_summary(state, now))
        return out

    # ------------------------------------------------------------------ the price index

    def chart(self, window: str) -> dict[str, Any]:
        """The chart's data for ``window``: per device class its clearing prices and the index (TWAP) over time.

        Prices are in tokens per GPU-hour. ``x`` is the union of the lease times in the window and
        the index's sample times; each class has a ``price`` series (the price standing after each
        lease, a step line) and a ``twap`` series (the window's TWAP as it read at that time).
        """
        if window not in WINDOWS:
            raise BadInput(f"no window {window!r}; pick one of {', '.join(WINDOWS)}")
        history = self.ledger.history()
        index = compute_index(history, [window])
        seconds = parse_window(window)
        now = history.now
        classes = history.classes
        stats = index.windows[window]
        per_class: dict[str, list[tuple[int, int]]] = {
            c: [(lease.time, lease.price) for lease in history.leases if lease.device_class == c] for c in classes
        }
        first = min((p[0][0] for p in per_class.values() if p), default=now)
        start = now - seconds if seconds is not None else first
        samples = sorted({start + (now - start) * i // INDEX_POINTS for i in range(INDEX_POINTS + 1)})
        lease_times = {t for points in per_class.values() for t, _p in points if start <= t <= now}
        xs = sorted(set(samples) | lease_times)
        series = []
        for c in classes:
            points = per_class[c]
            prices: list[float | None] = []
            twaps: list[float | None] = []
            at = {t: p for t, p in points}
            for x in xs:
                prices.append(at[x] / 10**18 if x in at else None)
                since = x - seconds if seconds is not None else None
                value, _covered = twap(points, since, x) if x in samples or x in at else (None, 0)
                twaps.append(None if value is None else value / 10**18)
            series.append({"class": c, "price": prices, "twap": twaps})
        table = []
        for c, s in stats.items():
            table.append(
                {
                    "class": c,
                    "twap": s.twap,
                    "vwap": s.vwap,
                    "last": s.last,
                    "min": s.min,
                    "max": s.max,
                    "leases": s.leases,
                    "leased_gpu_hours": round(s.leased_gpu_seconds / 3600, 3),
                    "settled_gpu_hours": round(s.settled_gpu_seconds / 3600, 3),
                    "reservations": s.reservations,
                }
            )
        return {"window": window, "now": now, "start": start, "x": xs, "series": series, "stats": table}

    # ------------------------------------------------------------------ a job

    def job(self, job_id: int) -> dict[str, Any]:
        """Everything the chain says about job ``job_id``: terms, timeline, bids, leases, results, bill."""
        row = self.ledger.jobs.get(job_id)
        if row is None:
            count = len(self.ledger.jobs)
            known = f"jobs 1..{count}" if count else "no jobs yet"
            raise NotFound(f"no job {job_id} on this market ({known})")
        logged = list(row.logs)

        def events(name: str) -> list[Any]:
            """The job's events ``name`` from the logs read so far (never a log query per job)."""
            return [e for e in (g.event() for g in logged if g.name == name) if e is not None]

        summary = job_summary(self.contracts, job_id, row.spec, events)
        timeline = [self._step(g) for g in row.logs]
        bids = sorted(
            (
                {"provider": g.args["provider"], "price": int(g.args["price"]), "rank": int(g.args["rank"])}
                for g in row.logs
                if g.name == "BidRevealed"
            ),
            key=lambda b: (b["price"], b["rank"]),
        )
        committed = sum(1 for g in row.logs if g.name == "BidCommitted")
        slots = []
        for s in summary["slots"]:
            slot = int(s["slot"])
            logs = [g for g in row.logs if int(g.args.get("slot", -1)) == slot]
            lease = next((g for g in logs if g.name == "SlotLeased"), None)
            result = next((g for g in logs if g.name == "ResultCommitted"), None)
            rulings = [g for g in logs if g.name == "ResultAttested"]
            settled = next((g for g in logs if g.name == "SlotSettled"), None)
            worker: dict[str, Any] | None = None
            try:
                found = slot_worker(self.contracts, job_id, slot, s["provider"])
                if found is not None:
                    worker = {"endpoint": found.endpoint, "member": found.member}
            except FlopexError as exc:
                worker = {"endpoint": None, "error": str(exc)}
            slots.append(
                {
                    **s,
                    "lease": None if lease is None else {"price": int(lease.args["price"]), "time": lease.time},
                    "worker": worker,
                    "result": None
                    if result is None
                    else {
                        "root": "0x" + bytes(result.args["result_root"]).hex(),
                        "gpu_seconds": int(result.args["gpu_seconds"]),
                    },
                    "rulings": [
                        {
                            "verifier": g.args["verifier"],
                            "outcome": Outcome(int(g.args["outcome"])).name.lower(),
                            "claimed": int(g.args["claimed_gpu_seconds"]),
                            "verified": int(g.args["verified_gpu_seconds"]),
                        }
                        for g in rulings
                    ],
                    "bill": None
                    if settled is None
                    else {
                        "status": SlotStatus(int(settled.args["status"])).name.lower(),
                        "gpu_seconds": int(settled.args["gpu_seconds"]),
                        "price": lease.args["price"] if lease else s["price"],
                        "paid": int(settled.args["paid"]),
                        "fee": int(settled.args["fee"]),
                        "earned": int(settled.args["paid"]) - int(settled.args["fee"]),
                        "refunded": int(settled.args["refunded"]),
                        "slashed": int(settled.args["slashed"]),
                    },
                }
            )
        refunded_at_lease = sum(int(g.args["refunded"]) for g in row.logs if g.name in ("JobLeased",))
        ended = next((g for g in row.logs if g.name in ("JobExpired", "JobCancelled")), None)
        return {
            "terms": self._job_terms(row),
            "summary": summary,
            "timeline": timeline,
            "bids": bids,
            "bids_committed": committed,
            "slots": slots,
            "refunded_at_lease": refunded_at_lease,
            "refunded_at_end": int(ended.args["refunded"]) if ended is not None else 0,
            # As the logs read so far tell it (the views above may already be a block ahead).
            "status": row.status.name.lower(),
            "terminal": row.status.terminal,
            "logs_allowed": self.requester is not None
            and to_checksum_address(row.spec.requester) == self.requester.address,
        }

    @staticmethod
    def _step(g: Log) -> dict[str, Any]:
        words = {
            "JobPosted": "posted",
            "BidCommitted": f"sealed bid committed by {g.args.get('provider')}",
            "BidRevealed": f"bid revealed by {g.args.get('provider')}",
            "SlotLeased": f"slot {g.args.get('slot')} leased to {g.args.get('provider')}",
            "JobLeased": "leased",
            "ResultCommitted": f"slot {g.args.get('slot')}: result committed",
            "ResultAccepted": f"slot {g.args.get('slot')}: accepted by the requester",
            "ResultDisputed": f"slot {g.args.get('slot')}: disputed by {g.args.get('disputer')}",
            "ResultAttested": f"slot {g.args.get('slot')}: verifier ruled "
            + (Outcome(int(g.args["outcome"])).name.lower() if "outcome" in g.args else ""),
            "SlotSettled": f"slot {g.args.get('slot')}: settled, "
            + (SlotStatus(int(g.args["status"])).name.lower() if "status" in g.args else ""),
            "JobClosed": "closed",
            "JobExpired": "expired (too few asks)",
            "JobCancelled": "cancelled by the requester",
        }
        return {"step": words.get(g.name, g.name), "event": g.name, "block": g.block, "tx": g.tx_hash, "time": g.time}

    def worker_events(self, job_id: int, stop: threading.Event, retry_s: float = 1.0) -> Iterator[dict[str, Any]]:
        """The job's progress and log lines from its workers, signed with the requester's key.

        A worker that does not know the job yet (the requester has not uploaded it) is asked
        again while the job runs; once the job has ended, one failed attempt is the answer.
        """
        from marketplace.protocol.auth import Domain
        from marketplace.requester.client import WorkerClient

        if self.requester is None:
            return
        domain = Domain(self.chain.chain_id, self.contracts.market.address)
        for slot in self.contracts.market.slots_of(job_id):
            told = False
            while not stop.is_set():
                worker = slot_worker(self.contracts, job_id, slot.slot, slot.provider)
                if worker is None:
                    if not told:
                        yield {"kind": "notice", "text": f"slot {slot.slot}: the pool has not assigned a member yet"}
                        told = True
                    if self.contracts.market.job(job_id).status.terminal:
                        break
                    stop.wait(retry_s)
                    continue
                try:
                    with WorkerClient(worker.endpoint, requester_key=self.requester.key, domain=domain, retries=2) as c:
                        yield from self._watch(c, job_id, slot.slot, stop)
                    break
                except WorkerError as exc:
                    if not told:
                        yield {
                            "kind": "notice",
                            "slot": slot.slot,
                            "text": f"worker at {worker.endpoint} not answering: {exc}",
                        }
                        told = True
                    if self.contracts.market.job(job_id).status.terminal:
                        break
                    stop.wait(retry_s)

    @staticmethod
    def _watch(client: Any, job_id: int, slot: int, stop: threading.Event) -> Iterator[dict[str, Any]]:
        for event in client.watch(job_id, timeout_s=3600):
            if stop.is_set():
                return
            kind = event.WhichOneof("kind")
            if kind == "log":
                yield {"kind": "log", "slot": slot, "stream": event.log.stream, "text": event.log.text}
            elif kind == "progress":
                fraction = event.progress.fraction if event.progress.HasField("fraction") else None
                yield {"kind": "progress", "slot": slot, "fraction": fraction, "text": event.progress.message}
            elif kind:
                yield {"kind": "notice", "slot": slot, "text": f"worker: job {kind}"}

    # ------------------------------------------------------------------ an account

    def account(self, address: str) -> dict[str, Any]:
        """An account's money (wallet, credits, stake), its jobs, its earnings per day and its slashes."""
        c = self.contracts
        stake = c.registry.stakes(address)
        pools = []
        for pool_address, pool in self._pools.items():
            if pool is None:
                continue
            member = pool.member(address)
            credit = pool.credits(address)
            if member.joined or credit or member.unbonding:
                pools.append(
                    {"pool": pool_address, "stake": member.stake, "unbonding": member.unbonding, "credit": credit}
                )
        posted = [self._job_terms(j) for j in self.ledger.jobs.values() if j.spec.requester == address]
        run = []
        for g in self.ledger.named("SlotLeased", source="market"):
            if g.args["provider"] == address:
                job = self.ledger.jobs.get(int(g.args["job_id"]))
                settled = next(
                    (
                        s
                        for s in (job.logs if job else [])
                        if s.name == "SlotSettled" and s.args["slot"] == g.args["slot"]
                    ),
                    None,
                )
                run.append(
                    {
                        "job_id": int(g.args["job_id"]),
                        "slot": int(g.args["slot"]),
                        "price": int(g.args["price"]),
                        "time": g.time,
                        "status": SlotStatus(int(settled.args["status"])).name.lower() if settled else "running",
                        "earned": int(settled.args["paid"]) - int(settled.args["fee"]) if settled else 0,
                    }
                )
        earnings: dict[str, int] = {}

        def earn(g: Log, amount: int) -> None:
            day = datetime.fromtimestamp(g.time, UTC).strftime("%Y-%m-%d")
            earnings[day] = earnings.get(day, 0) + amount

        for g in self.ledger.named("SlotSettled", source="market"):
            if g.args["provider"] == address and int(g.args["paid"]):
                earn(g, int(g.args["paid"]) - int(g.args["fee"]))
        for g in self.ledger.named("ReservationSettled", source="reservations"):
            if g.args["provider"] == address and int(g.args["paid"]):
                earn(g, int(g.args["paid"]) - int(g.args["fee"]))
        for g in self.ledger.named("SlotBooked", source="pool"):
            if g.args["member"] == address and int(g.args["member_pay"]):
                earn(g, int(g.args["member_pay"]))
        return {
            "address": address,
            "is_provider": address in self._registered(),
            "is_pool": self._pools.get(address) is not None,
            "balance": c.token.balance_of(address),
            "market_credit": c.market.credits(address),
            "reservation_credit": c.reservations.credits(address) if c.reservations is not None else 0,
            "pools": pools,
            "stake": stake.active,
            "unbonding": stake.unbonding,
            "unbond_at": stake.unbond_at,
            "active_jobs": stake.active_jobs,
            "posted": sorted(posted, key=lambda j: -j["job_id"]),
            "run": sorted(run, key=lambda r: (-r["job_id"], r["slot"])),
            "earnings": [{"day": d, "earned": v} for d, v in sorted(earnings.items())],
            "slashes": self._slashes(address),
        }

    def _slashes(self, address: str) -> list[dict[str, Any]]:
        """Every slash of ``address``'s stake, with the reason read from the logs of the same transaction."""
        by_tx: dict[str, list[Log]] = {}
        for g in self.ledger.logs:
            by_tx.setdefault(g.tx_hash, []).append(g)
        out = []
        for g in self.ledger.named("StakeSlashed", source="registry"):
            if g.args["provider"] != address:
                continue
            out.append(
                {
                    "amount": int(g.args["amount"]),
                    "time": g.time,
                    "block": g.block,
                    "tx": g.tx_hash,
                    "reason": self._reason(by_tx.get(g.tx_hash, [])),
                }
            )
        for g in self.ledger.named("MemberSlashed", source="pool"):
            if g.args["member"] == address:
                why = "ran the slot that was slashed" if g.args.get("culprit") else "a share of a slot's slash"
                out.append(
                    {
                        "amount": int(g.args["amount"]),
                        "time": g.time,
                        "block": g.block,
                        "tx": g.tx_hash,
                        "reason": f"pool {g.address}: job {g.args['job_id']}, {why}",
                    }
                )
        return out

    def _reason(self, same_tx: list[Log]) -> str:
        for g in same_tx:
            if g.name == "SlotSettled" and g.source == "market":
                job_id, slot = int(g.args["job_id"]), int(g.args["slot"])
                row = self.ledger.jobs.get(job_id)
                logs = [x for x in (row.logs if row else []) if int(x.args.get("slot", -1)) == slot]
                rejected = [x for x in logs if x.name == "ResultAttested" and int(x.args["outcome"]) == Outcome.REJECT]
                policy = row.spec.policy.name.lower() if row else "?"
                if rejected:
                    return f"job {job_id} slot {slot}: a verifier rejected the result ({policy} check)"
                if not any(x.name == "ResultCommitted" for x in logs):
                    return f"job {job_id} slot {slot}: no result before the run deadline"
                return f"job {job_id} slot {slot}: slashed at settlement"
            if g.name == "ReservationSettled":
                return f"reservation {g.args['reservation_id']}: a verifier attested it was not served"
        return "slashed (no settlement in the same transaction)"
