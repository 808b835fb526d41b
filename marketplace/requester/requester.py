"""The requester's day: post a bundle, see it leased, upload it, follow it, fetch and check results, pay.

:class:`Requester` drives one requester account. :meth:`~Requester.submit` validates the bundle,
posts its terms with a permit (one transaction: approval and escrow), and returns the job id.
:meth:`~Requester.follow` waits for the lease (ending the auction itself when its deadline
passes), uploads the bundle to each winner's worker over gRPC with signed requests, streams the
job's events, downloads the results, checks them against the worker's manifest, its signed receipt
and the result root it committed on chain, accepts them (when the job has no verifier) and settles.
The outcome is a :class:`JobOutcome` with the bill.

Deadlines are judged by the chain's clock (:meth:`Chain.next_timestamp`: on a JSON-RPC node the
time its next call runs at, never the wall clock), and an auction the node still finds open is
ended again after the next block. With a :class:`~marketplace.requester.records.RecordStore`, the
requester keeps a record of each job it posts (its bundle archive, output folder and options), and
:meth:`~Requester.follow` picks a job up wherever it stands — open, leased with nothing uploaded,
running, committed, disputed or settled — in this process or in a later one after a crash.

A slot held by a provider pool runs on the member its operator assigned: the requester waits for
the assignment on chain and talks to that member's worker (endpoint and receipt signer from the
pool), not to the worker the pool's registry offer names.

:meth:`~Requester.run_reserved` runs a bundle in a reservation the account holds
(:mod:`marketplace.contracts.reservations`): no auction and no market job, straight to the provider's
worker during the window; it checks the results against the worker's signed receipt and waits for
the provider to record the job's usage on chain (a :class:`ReservedOutcome`).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from marketplace.contracts import events as ev
from marketplace.contracts import reverts
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.events import SlotSettled
from marketplace.contracts.reservations import reserved_job_id
from marketplace.errors import ChainError, ConfigError, ContractRevert, VerificationError, WorkerError
from marketplace.market.routing import SlotWorker, slot_worker
from marketplace.protocol.auth import Domain
from marketplace.protocol.bundle import Bundle, load_bundle, pack_bundle
from marketplace.protocol.merkle import EMPTY_ROOT
from marketplace.requester.client import WorkerClient
from marketplace.requester.datasets import DatasetIndex, ensure_datasets
from marketplace.requester.records import JobRecord, RecordStore
from marketplace.rpc import worker_pb2 as pb
from marketplace.types import (
    Auction,
    DeviceKind,
    JobSpec,
    JobStatus,
    Policy,
    SlotStatus,
    format_tokens,
)

__all__ = [
    "OUTCOMES",
    "JobOptions",
    "JobOutcome",
    "Requester",
    "ReservedOutcome",
    "next_step",
    "spec_for_bundle",
]

MIB = 1 << 20


@dataclass(frozen=True)
class JobOptions:
    """Choices a requester makes at submission; None keeps the bundle's own."""

    max_price: int | None = None
    auction: Auction | None = None
    policy: Policy | None = None
    redundancy: int | None = None
    bid_window_s: int = 20
    reveal_window_s: int = 20
    challenge_window_s: int = 60
    run_slack_s: int = 120


#: Job outcomes :meth:`Requester.follow` can report; only ``succeeded`` is a success.
OUTCOMES = ("succeeded", "failed", "expired", "cancelled", "slashed", "dispute_lost", "refunded", "undelivered")


#: The steps of a job a requester follows, in order, as :attr:`JobOutcome.phases` names them:
#: ``submitted`` (the bundle is being packed), ``posted`` (the job is on chain), ``leased`` (seen
#: leased), ``worker`` (the slot's worker found), ``uploaded`` (the worker holds the bundle),
#: ``started`` (the worker says it started the run), ``finished`` (the run ended), ``downloaded``
#: (results fetched and checked against the worker's receipt), ``committed`` (the provider's
#: commitment seen on chain), ``verified`` (results matched to it), ``accepted``, ``settled``.
PHASES = (
    "submitted",
    "posted",
    "leased",
    "worker",
    "uploaded",
    "started",
    "finished",
    "downloaded",
    "committed",
    "verified",
    "accepted",
    "settled",
)


@dataclass
class JobOutcome:
    """What a job came to: its outcome and why, and per slot its provider, run, price, seconds and money.

    ``status`` is one of :data:`OUTCOMES`: ``succeeded`` when every slot ran to exit status 0 and
    was paid; ``failed`` when a slot's process exited non-zero or its run failed (its run time is
    billed all the same, as for every job that ran); ``expired`` or ``cancelled`` when it was
    never leased; ``slashed`` when a slot's provider was slashed (rejected by a verifier, or no
    result by the run deadline); ``dispute_lost`` when the requester disputed a result a verifier
    then accepted in full or nobody ruled on; ``refunded`` when a slot was voided;
    ``undelivered`` when results could not be downloaded. ``reason`` says why in one line.
    """

    job_id: int
    results: list[Path] = field(default_factory=list)
    slots: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    verified: set[int] = field(default_factory=set)
    """Slots whose results were downloaded and matched their on-chain commitment."""
    unverified: list[int] = field(default_factory=list)
    """Slots whose job ran but whose results could not be downloaded (disputed, never accepted)."""
    runs: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Per slot, how the worker says the run ended: ``state``, ``exit_code`` and ``reason``."""
    status: str = "succeeded"
    reason: str | None = None
    refunded_at_lease: int = 0
    """Escrow returned when the lease started (what the clearing price left of the max price)."""
    unseen: set[int] = field(default_factory=set)
    """Slots found settled (or judged) whose run's end their worker no longer tells."""
    dataset_bytes_uploaded: int = 0
    """Bytes of ``job.datasets`` put on the job's workers for it (0 when they held them all)."""
    phases: dict[str, float] = field(default_factory=dict)
    """When each step of the job was seen from here (unix seconds), by :data:`PHASES` name; a slot's
    steps are its first slot's to reach them."""

    @property
    def ok(self) -> bool:
        """True only when the job succeeded."""
        return self.status == "succeeded"

    @property
    def paid(self) -> int:
        """Tokens paid to providers (fees included)."""
        return sum(int(s.get("paid", 0)) for s in self.slots)

    @property
    def ruled(self) -> list[int]:
        """Slots a verifier accepted (the only results called verified)."""
        return sorted(
            s["slot"]
            for s in self.slots
            if any(r["outcome"] == "accept" for r in s.get("rulings", ())) and s["status"] == "paid"
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "job_id": self.job_id,
            "status": self.status,
            "ok": self.ok,
            "reason": self.reason,
            "results": [str(p) for p in self.results],
            "slots": self.slots,
            "refunded_at_lease": self.refunded_at_lease,
            "matched_slots": sorted(self.verified),
            "verified_slots": self.ruled,
            "undownloaded_slots": sorted(self.unverified),
            "dataset_bytes_uploaded": self.dataset_bytes_uploaded,
            "phases": {k: round(v, 3) for k, v in sorted(self.phases.items(), key=lambda kv: kv[1])},
        }

    def mark(self, phase: str, at: float | None = None) -> None:
        """Note that ``phase`` was reached now (or at ``at``), unless it already was."""
        self.phases.setdefault(phase, time.time() if at is None else at)


@dataclass
class ReservedOutcome:
    """What a job in a reservation came to: its results, its metering and its usage record on chain."""

    reservation_id: int
    job_id: int
    results: Path
    result_root: bytes
    state: str
    device_seconds: int
    recorded_gpu_seconds: int | None = None  # None while the provider has not recorded it
    events: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "reservation_id": self.reservation_id,
            "job_id": self.job_id,
            "results": str(self.results),
            "result_root": "0x" + self.result_root.hex(),
            "state": self.state,
            "device_seconds": self.device_seconds,
            "recorded_gpu_seconds": self.recorded_gpu_seconds,
        }


def spec_for_bundle(bundle: Bundle, requester: str, now: int, options: JobOptions = JobOptions()) -> JobSpec:
    """The on-chain terms of ``bundle`` with ``options`` applied."""
    res, ver, mkt = bundle.spec.resources, bundle.spec.verification, bundle.spec.market
    auction = options.auction if options.auction is not None else Auction[mkt.auction.upper()]
    policy = options.policy if options.policy is not None else Policy[ver.policy.upper()]
    redundancy = options.redundancy if options.redundancy is not None else ver.redundancy
    if policy == Policy.REDUNDANT and redundancy < 2:
        redundancy = 2
    max_gpu_seconds = int(Fraction(str(res.max_gpu_hours)) * 3600)
    if max_gpu_seconds < 1:
        raise ConfigError("resources.max_gpu_hours is below one GPU-second")
    bid_deadline = now + options.bid_window_s
    reveal_deadline = bid_deadline + (options.reveal_window_s if auction == Auction.SEALED else 0)
    return JobSpec(
        requester=requester,
        bundle_hash=bundle.hash,
        device_kind=DeviceKind.CUDA if res.device == "cuda" else DeviceKind.CPU,
        gpus=res.gpus,
        min_memory_mb=int(Fraction(str(res.min_memory_gb)) * 1024),
        policy=policy,
        auction=auction,
        redundancy=redundancy,
        max_price=options.max_price if options.max_price is not None else mkt.max_price,
        max_gpu_seconds=max_gpu_seconds,
        bid_deadline=bid_deadline,
        reveal_deadline=reveal_deadline,
        run_duration=res.timeout_s + options.run_slack_s,
        challenge_window=options.challenge_window_s,
    )


def next_step(contracts: Contracts, job_id: int) -> str | None:
    """What moves job ``job_id`` on from where it stands, naming the command; None once it can change no more."""
    market = contracts.market
    state = market.job(job_id)
    follow = f"`flopex job follow {job_id}` (as its requester)"
    if state.status == JobStatus.OPEN:
        spec = market.spec(job_id)
        end = spec.reveal_deadline if spec.auction == Auction.SEALED else spec.bid_deadline
        if contracts.chain.next_timestamp() >= end:
            return f"its auction is over but not ended: {follow} ends it (leased, or expired and the escrow refunded)"
        return f"open until chain time {end}: {follow} waits and ends the auction then"
    if state.status == JobStatus.LEASED:
        return (
            f"leased: {follow} uploads the bundle if the worker lacks it, follows the run, checks the results "
            "against the chain, accepts or disputes them and settles"
        )
    return None


class Requester:
    """One requester account: submits jobs and follows them to the end."""

    def __init__(
        self,
        contracts: Contracts,
        account: LocalAccount,
        *,
        say: Callable[[str], None] | None = None,
        records: RecordStore | None = None,
    ):
        self.contracts = contracts
        self.account = account
        self.say = say or (lambda _line: None)
        self.records = records
        self.domain = Domain(contracts.chain.chain_id, contracts.market.address)
        self._archives: dict[int, bytes] = {}
        self.datasets: DatasetIndex | None = DatasetIndex(records.root) if records is not None else None
        """Where the folders of datasets put from here are remembered (``flopex data put``)."""
        self._posted: dict[int, dict[str, float]] = {}  # job -> when it was submitted and posted, from here
        self._settled_events: dict[int, dict[str, list[Any]]] = {}  # job -> its events once settled

    def now(self) -> int:
        """The time deadlines are judged by: the chain's (see :meth:`Chain.next_timestamp`)."""
        return self.contracts.chain.next_timestamp()

    def submit(
        self, bundle_dir: str | Path, options: JobOptions = JobOptions(), *, out_dir: str | Path | None = None
    ) -> int:
        """Validate the bundle and post its job with a permit; returns the job id.

        With a record store the bundle archive is kept before the job is posted, and the job's
        record (naming ``out_dir``, where its results are to go, by default ``./results-ID``) is
        written right after.
        """
        submitted = time.time()
        bundle = load_bundle(bundle_dir)
        archive = pack_bundle(bundle_dir)
        spec = spec_for_bundle(bundle, self.account.address, self.now(), options)
        balance = self.contracts.token.balance_of(self.account.address)
        if balance < spec.escrow:
            raise ConfigError(f"the escrow needs {spec.escrow} token units; the account holds {balance}")
        kept = self.records.save_archive(bundle.hash, archive) if self.records is not None else None
        job_id = self.contracts.market.post_job_with_permit(
            self.account, spec, self.contracts.token, deadline=self.now() + 3600
        )
        self._archives[job_id] = archive
        self._posted[job_id] = {"submitted": submitted, "posted": time.time()}
        if self.records is not None:
            self._keep_record(
                JobRecord(
                    job_id=job_id,
                    chain_id=self.contracts.chain.chain_id,
                    market=self.contracts.market.address,
                    requester=self.account.address,
                    bundle_hash=bundle.hash.hex(),
                    archive=kept,
                    bundle_dir=str(Path(bundle_dir).resolve()),
                    out_dir=str(Path(out_dir if out_dir is not None else f"results-{job_id}").resolve()),
                    options=_options_json(options),
                    posted_at=spec.bid_deadline - options.bid_window_s,
                )
            )
        self.say(
            f"job {job_id} posted: {spec.auction.name.lower()} auction, max {format_tokens(spec.max_price)} "
            f"FLOP/GPU-h, escrow {format_tokens(spec.escrow)} FLOP"
        )
        return job_id

    def _keep_record(self, record: JobRecord) -> None:
        """Write a posted job's record; a failure is said, never raised: the job is on chain already."""
        assert self.records is not None
        try:
            self.records.save(record)
        except ConfigError as exc:
            self.say(
                f"job {record.job_id} is posted, but {exc}; `flopex job follow {record.job_id} --bundle DIR` "
                "picks it up without one"
            )

    def run_reserved(
        self,
        reservation_id: int,
        bundle_dir: str | Path,
        out_dir: str | Path,
        *,
        seq: int | None = None,
        timeout_s: float = 3600.0,
        record_timeout_s: float = 120.0,
    ) -> ReservedOutcome:
        """Run a bundle in reservation ``reservation_id`` (held by this account, its window open).

        Uploads it to the provider's worker as job ``seq`` of the reservation (a fresh random one
        when None), follows it, downloads and checks the results against the worker's signed
        receipt, then waits up to ``record_timeout_s`` for the provider's usage record carrying the
        same result root. Raises :class:`ConfigError` when the account does not hold the
        reservation, its window is not open or the bundle does not fit the reserved devices.
        """
        contracts = self.contracts
        reservations = contracts.require_reservations()
        r = reservations.reservation(reservation_id)
        if r.holder is None or r.holder != self.account.address:
            raise ConfigError(
                f"reservation {reservation_id} is held by {r.holder or 'nobody'}, not by {self.account.address}"
            )
        if not r.status.serving:
            raise ConfigError(f"reservation {reservation_id} is {r.status.name.lower()}: its devices serve no jobs")
        now = self.now()
        if not r.start <= now < r.end:
            raise ConfigError(f"reservation {reservation_id}'s window is [{r.start}, {r.end}); it is {now} now")
        bundle = load_bundle(bundle_dir)
        offer = contracts.registry.offer(r.provider)
        res = bundle.spec.resources
        kind = offer.device_kind.name.lower()
        if res.device != kind or res.gpus > r.gpus:
            raise ConfigError(
                f"the bundle asks for {res.gpus} {res.device} devices; reservation "
                f"{reservation_id} holds {r.gpus} {kind}"
            )
        archive = pack_bundle(bundle_dir)
        seq = secrets.randbelow(1 << 24) if seq is None else seq
        job_id = reserved_job_id(reservation_id, seq)
        self.say(f"reservation {reservation_id}: job {seq} on {r.provider} ({offer.endpoint})")
        dest = Path(out_dir)
        with WorkerClient(offer.endpoint, requester_key=self.account.key, domain=self.domain) as client:
            ensure_datasets(client, archive, self.datasets, lambda line: self.say(f"job {job_id}: {line}"))
            client.upload_bundle(job_id, archive)
            client.start_job(job_id, seed=seq)
            events: list[str] = []
            for event in client.watch(job_id, timeout_s=timeout_s):
                line = _describe(event)
                if line:
                    events.append(line)
                    self.say(f"reservation {reservation_id} job {seq}: {line}")
            results = client.download_results(job_id, dest, provider=offer.signer)
            state = client.get_job(job_id)
        root = results.manifest.root
        receipt = results.receipt.receipt if results.receipt is not None else None
        outcome = ReservedOutcome(
            reservation_id,
            job_id,
            dest,
            root,
            _job_state(state.state),
            receipt.device_seconds if receipt is not None else 0,
            events=events,
        )
        self.say(f"reservation {reservation_id} job {seq}: results verified against the signed receipt")
        outcome.recorded_gpu_seconds = self.wait_for_usage(reservation_id, root, timeout_s=record_timeout_s)
        if outcome.recorded_gpu_seconds is not None:
            self.say(
                f"reservation {reservation_id} job {seq}: the provider recorded "
                f"{outcome.recorded_gpu_seconds} GPU-s with the same result root"
            )
        return outcome

    def wait_for_usage(self, reservation_id: int, root: bytes, *, timeout_s: float = 120.0) -> int | None:
        """GPU-seconds of the provider's usage record with result root ``root``, or None if none came in time."""
        reservations = self.contracts.require_reservations()
        deadline = time.monotonic() + timeout_s
        while True:
            for event in reservations.history("UsageRecorded", reservation_id=reservation_id):
                if bytes(event.args["result_root"]) == root:
                    return int(event.args["gpu_seconds"])
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.5)

    def wait_for_lease(self, job_id: int, *, timeout_s: float = 600.0) -> JobStatus:
        """Wait for the auction to end, ending it once its deadline passes; returns the job status.

        The deadline is judged by the chain's clock. Ending it leases the job to the winners or,
        with too few asks (an instant job nobody took), expires it and refunds the escrow. A node
        that still finds the auction open (its pending block trails the clock) is asked again
        after its next block; a dev chain that makes blocks only for transactions is asked for
        one once the wall clock is past the deadline and its own clock is not.
        """
        market = self.contracts.market
        spec = market.spec(job_id)
        end = spec.reveal_deadline if spec.auction == Auction.SEALED else spec.bid_deadline
        deadline = time.monotonic() + timeout_s
        said = False
        last_nudge = 0.0
        chain = self.contracts.chain
        while time.monotonic() < deadline:
            seen = chain.blocks_seen
            status = market.job(job_id).status
            if status != JobStatus.OPEN:
                return status
            if self.now() >= end:
                try:
                    market.finalize_auction(self.account, job_id)
                except ContractRevert as exc:
                    if reverts.auction_still_open(exc):
                        self._after_next_block(timeout_s=max(0.0, min(5.0, deadline - time.monotonic())))
                    elif not reverts.job_not_open(exc):
                        raise
                continue
            if not said:
                self.say(f"job {job_id}: open; its auction ends at chain time {end} (in {end - self.now()} s)")
                said = True
            if time.time() >= end + 2 and time.monotonic() - last_nudge >= 2:
                self._nudge_chain()
                last_nudge = time.monotonic()
            chain.wait_for_block(seen, 0.2)  # a take leases an instant job in a block: woken by it
        raise ChainError(f"job {job_id} was not leased within {timeout_s:.0f} s")

    def _nudge_chain(self) -> None:
        """Ask a dev chain for a block, so its clock catches up; other chains make blocks on their own."""
        try:
            self.contracts.chain.mine()
        except (ChainError, ContractRevert):
            pass

    def _after_next_block(self, *, timeout_s: float) -> None:
        """Return once the chain has a block after the latest one (asking a dev chain for it if none comes)."""
        chain = self.contracts.chain
        start = chain.block_number()
        deadline = time.monotonic() + timeout_s
        nudged = False
        seen = chain.blocks_seen
        while time.monotonic() < deadline:
            seen = chain.wait_for_block(seen, 0.2)
            if chain.block_number() > start:
                return
            if not nudged and time.monotonic() >= deadline - timeout_s / 2:
                self._nudge_chain()
                nudged = True

    def follow(
        self,
        job_id: int,
        out_dir: str | Path | None = None,
        *,
        timeout_s: float = 3600.0,
        archive: bytes | None = None,
        bundle_dir: str | Path | None = None,
    ) -> JobOutcome:
        """Run a posted job to its end from wherever it stands; returns its outcome and bill.

        Open: waits, and ends the auction at its deadline (leased, or expired and refunded).
        Leased: per slot, uploads the bundle if its worker lacks it, starts it, follows its
        events, downloads the results and checks them against the root committed on chain,
        accepts them (no verifier) or disputes them; then waits for rulings and windows and
        settles. Settled: reads the bill (and fetches the results still served). The bundle to
        upload is ``archive``, or the one this requester posted in this process, or the one its
        record keeps, or ``bundle_dir`` packed (which must be the bundle posted); results go to
        ``out_dir``, or the folder the record names, or ``./results-ID``.

        Raises :class:`ConfigError` for a job this market does not have, one another account
        posted, or a bundle that is needed and cannot be found.
        """
        market = self.contracts.market
        count = market.job_count()
        if not 1 <= job_id <= count:
            raise ConfigError(
                f"there is no job {job_id} on the market at {market.address} "
                f"({count} job(s) posted there; is this the right --deployment?)"
            )
        spec = market.spec(job_id)
        if spec.requester.lower() != self.account.address.lower():
            raise ConfigError(f"job {job_id} was posted by {spec.requester}, not by {self.account.address}")
        record = self._record(job_id, spec.bundle_hash)
        if out_dir is None:
            out_dir = record.out_dir if record is not None and record.out_dir else f"results-{job_id}"
        if bundle_dir is not None:  # given: it must be the bundle posted, and it is the one uploaded
            archive = self._bundle_for(job_id, spec.bundle_hash, None, bundle_dir)
        if archive is None:
            archive = self._archives.get(job_id) or self._bundle_for(job_id, spec.bundle_hash, record, None)
        outcome = JobOutcome(job_id)
        for phase, at in self._posted.get(job_id, {}).items():
            outcome.mark(phase, at)
        status = market.job(job_id).status
        if status == JobStatus.OPEN:
            status = self.wait_for_lease(job_id, timeout_s=timeout_s)
        if status == JobStatus.LEASED:
            outcome.mark("leased")
        if status in (JobStatus.EXPIRED, JobStatus.CANCELLED, JobStatus.OPEN):
            from marketplace.market.summary import job_reasons

            outcome.status = status.name.lower() if status in (JobStatus.EXPIRED, JobStatus.CANCELLED) else "expired"
            outcome.reason = job_reasons(self.contracts, job_id, spec)["reason"] or "never leased; escrow refunded"
            self.say(f"job {job_id} {outcome.status}: {outcome.reason}")
            credit = market.credits(self.account.address)
            if credit:
                self.say(f"{format_tokens(credit)} FLOP of credit to withdraw (`flopex account withdraw`)")
            return outcome
        slots = market.slots_of(job_id)
        # The k providers run the job at the same time, each followed on its own thread.
        with ThreadPoolExecutor(max_workers=max(1, len(slots)), thread_name_prefix=f"job-{job_id}") as runner:
            futures = [
                runner.submit(self._follow_slot, job_id, slot, archive, out_dir, timeout_s, outcome) for slot in slots
            ]
            for future in futures:
                future.result()
        outcome.results.sort()
        if spec.policy == Policy.NONE:
            # Only results downloaded and checked against their commitment are accepted; any other
            # committed slot is disputed (a failed download) or left to settlement.
            for slot in market.slots_of(job_id):
                if slot.status == SlotStatus.COMMITTED and slot.slot in outcome.verified:
                    try:
                        market.accept_result(self.account, job_id, slot.slot)
                        outcome.mark("accepted")
                    except ContractRevert:
                        if market.slot(job_id, slot.slot).status == SlotStatus.COMMITTED:
                            raise
                        # the provider settled it (its window over) between the read and the call
        outcome.slots = self.settle(job_id, timeout_s=timeout_s, runs=outcome.runs)
        outcome.mark("settled")
        events = self._settled_events.pop(job_id, None) or self.job_events(job_id)
        for leased in events.get("JobLeased", []):
            outcome.refunded_at_lease = leased.refunded
        outcome.status, outcome.reason = _judge(outcome)
        if outcome.refunded_at_lease:
            self.say(f"job {job_id}: {format_tokens(outcome.refunded_at_lease)} FLOP of escrow refunded at the lease")
        self.say(f"job {job_id} {outcome.status}" + (f": {outcome.reason}" if outcome.reason else ""))
        return outcome

    def _record(self, job_id: int, bundle_hash: bytes) -> JobRecord | None:
        """This job's record, when the store has one that matches the job on chain."""
        if self.records is None:
            return None
        record = self.records.load(self.contracts.chain.chain_id, self.contracts.market.address, job_id)
        if record is None:
            return None
        if record.bundle_hash != bundle_hash.hex() or record.requester.lower() != self.account.address.lower():
            # A record left by an earlier chain at the same market address (a restarted dev chain).
            self.say(f"job {job_id}: the record in {self.records.root} is of another job; not using it")
            return None
        return record

    def _bundle_for(
        self, job_id: int, bundle_hash: bytes, record: JobRecord | None, bundle_dir: str | Path | None
    ) -> bytes | None:
        """The archive of the bundle job ``job_id`` was posted with: given, kept, or packed again; None if none."""
        if bundle_dir is not None:
            given = load_bundle(bundle_dir)
            if given.hash != bundle_hash:
                raise ConfigError(
                    f"{bundle_dir} is not the bundle job {job_id} was posted with "
                    f"(its hash is {given.hash.hex()[:16]}…, the job's {bundle_hash.hex()[:16]}…)"
                )
            return pack_bundle(bundle_dir)
        if record is None or self.records is None:
            return None
        kept = self.records.archive(record)
        if kept is not None:
            return kept
        if record.bundle_dir is not None and Path(record.bundle_dir).is_dir():
            try:
                if load_bundle(record.bundle_dir).hash == bundle_hash:
                    return pack_bundle(record.bundle_dir)
            except ConfigError:
                pass  # the folder changed since; nothing to upload from it
        return None

    def _follow_slot(
        self, job_id: int, slot: Any, archive: bytes | None, out_dir: str | Path, timeout_s: float, outcome: JobOutcome
    ) -> None:
        """Run one slot; a provider that fails or cheats is left to settlement (refund, slash) or disputed."""
        try:
            self._run_slot(job_id, slot, archive, out_dir, timeout_s, outcome)
        except _DownloadFailed as exc:
            # The job ran but its results never arrived whole: they cannot be checked, so they are
            # disputed, never accepted.
            self.say(f"job {job_id} slot {slot.slot}: {exc}; disputing the result")
            outcome.unverified.append(slot.slot)
            try:
                self._wait_commit(job_id, slot.slot, timeout_s)
                self.dispute(job_id, slot.slot)
            except (ChainError, ContractRevert) as failed:
                self.say(f"job {job_id} slot {slot.slot}: could not dispute: {failed}")
        except VerificationError as exc:
            # The provider's results do not match what it committed: dispute, a verifier rules.
            self.say(f"job {job_id} slot {slot.slot}: {exc}; disputing the result")
            try:
                self._wait_commit(job_id, slot.slot, timeout_s)
                self.dispute(job_id, slot.slot)
            except ChainError as failed:
                self.say(f"job {job_id} slot {slot.slot}: could not dispute: {failed}")
        except (WorkerError, ChainError) as exc:
            # The provider failed us: its slot ends refunded (and the provider slashed) at settlement.
            self.say(f"job {job_id} slot {slot.slot}: {exc}; waiting for the run deadline to settle")

    def _run_slot(
        self, job_id: int, slot: Any, archive: bytes | None, out_dir: str | Path, timeout_s: float, outcome: JobOutcome
    ) -> None:
        """Upload, run, follow and fetch one slot's run, and check it against its commitment.

        Picks the run up where it is: the bundle is uploaded only when the worker lacks it
        (resuming a part-uploaded one), a started job is not started again, and its events are
        followed from the first. A slot past its commitment (disputed, judged or settled) is only
        fetched, when its worker still serves the results.
        """
        price = format_tokens(slot.price)
        self.say(f"job {job_id} slot {slot.slot}: leased to {slot.provider} at {price} FLOP/GPU-h")
        if slot.status not in (SlotStatus.ASSIGNED, SlotStatus.COMMITTED):
            self._fetch_settled_slot(job_id, slot, out_dir, outcome)
            return
        run_deadline = self.contracts.market.job(job_id).lease_start + self.contracts.market.spec(job_id).run_duration
        worker = self.worker_of(
            job_id, slot.slot, slot.provider, timeout_s=max(1.0, min(timeout_s, run_deadline - self.now()))
        )
        outcome.mark("worker")
        if worker.member is not None:
            self.say(f"job {job_id} slot {slot.slot}: the pool assigned it to member {worker.member}")
        with WorkerClient(worker.endpoint, requester_key=self.account.key, domain=self.domain) as client:
            held = _worker_job(client, job_id)
            if held is None or held.state == pb.JOB_STATE_UPLOADING:
                if archive is None:
                    raise ConfigError(
                        f"job {job_id}: its worker has no bundle yet and none is recorded here; "
                        "give the bundle it was posted with (--bundle DIR)"
                    )
                outcome.dataset_bytes_uploaded += ensure_datasets(
                    client, archive, self.datasets, lambda line: self.say(f"job {job_id} slot {slot.slot}: {line}")
                )
                client.upload_bundle(job_id, archive)
                outcome.mark("uploaded")
            else:
                self.say(f"job {job_id} slot {slot.slot}: the worker holds it ({_job_state(held.state)}); following it")
            client.start_job(job_id, seed=job_id)
            for event in client.watch(job_id, timeout_s=timeout_s):
                line = _describe(event)
                if line:
                    outcome.events.append(line)
                    self.say(f"job {job_id}: {line}")
                kind = event.WhichOneof("kind")
                if kind == "started":
                    outcome.mark("started", event.time_unix_ms / 1000)
                if kind in ("finished", "failed"):
                    outcome.mark("finished", event.time_unix_ms / 1000)
                if kind == "finished":
                    outcome.runs[slot.slot] = {
                        "state": "succeeded",
                        "exit_code": event.finished.exit_code,
                        "reason": None,
                    }
                elif kind == "failed":
                    outcome.runs[slot.slot] = {
                        "state": "failed",
                        "exit_code": event.failed.exit_code,
                        "reason": event.failed.reason,
                    }
            dest = Path(out_dir) / f"slot-{slot.slot}"
            results = self._download(client, job_id, dest, worker.signer)
            outcome.mark("downloaded")
            outcome.results.append(dest)
            committed = self._wait_commit(job_id, slot.slot, timeout_s)
            outcome.mark("committed")
            if committed.result_root != results.manifest.root:
                raise VerificationError(
                    f"job {job_id}: the results do not match the root the provider committed on chain"
                )
            root = committed.result_root.hex()[:16]
            outcome.verified.add(slot.slot)
            outcome.mark("verified")
            self.say(f"job {job_id} slot {slot.slot}: the results match the root committed on chain {root}…")

    def _fetch_settled_slot(self, job_id: int, slot: Any, out_dir: str | Path, outcome: JobOutcome) -> None:
        """A slot past its commitment: how its run ended and its results, if its worker still has them."""
        try:
            worker = self.worker_of(job_id, slot.slot, slot.provider, timeout_s=1.0)
            with WorkerClient(worker.endpoint, requester_key=self.account.key, domain=self.domain) as client:
                held = _worker_job(client, job_id)
                if held is None:
                    raise WorkerError(f"the worker no longer knows job {job_id}")
                final = client.wait(job_id, timeout_s=30.0)
                kind = final.WhichOneof("kind")
                outcome.runs[slot.slot] = {
                    "state": "succeeded" if kind == "finished" else "failed",
                    "exit_code": final.finished.exit_code if kind == "finished" else final.failed.exit_code,
                    "reason": final.failed.reason if kind == "failed" else None,
                }
                if slot.result_root == EMPTY_ROOT:
                    return
                dest = Path(out_dir) / f"slot-{slot.slot}"
                results = client.download_results(job_id, dest, provider=worker.signer)
        except (WorkerError, ChainError, VerificationError) as exc:
            self.say(f"job {job_id} slot {slot.slot}: {slot.status.name.lower()}; its run and results: {exc}")
            outcome.unseen.add(slot.slot)
            return
        if results.manifest.root != slot.result_root:
            self.say(f"job {job_id} slot {slot.slot}: the results served now differ from the root committed on chain")
            return
        outcome.results.append(dest)
        outcome.verified.add(slot.slot)
        self.say(f"job {job_id} slot {slot.slot}: the results match the root committed on chain")

    def _download(self, client: WorkerClient, job_id: int, dest: Path, signer: str, attempts: int = 3) -> Any:
        """Download and check results, trying ``attempts`` times; raise :class:`_DownloadFailed` after.

        A mismatch against the worker's own manifest or receipt is a :class:`VerificationError`
        (the worker cheated); anything else that stops the download is a failed download.
        """
        last: Exception | None = None
        for attempt in range(attempts):
            try:
                return client.download_results(job_id, dest, provider=signer)
            except VerificationError:
                raise
            except (WorkerError, OSError) as exc:
                last = exc
                time.sleep(0.5 * (attempt + 1))
        raise _DownloadFailed(f"the results could not be downloaded ({last})")

    def worker_of(self, job_id: int, slot: int, provider: str, *, timeout_s: float = 600.0) -> SlotWorker:
        """The worker that runs a slot: the provider's own, or, for a pool, the assigned member's.

        Waits (up to ``timeout_s``) for a pool's operator to assign the slot on chain.
        """
        deadline = time.monotonic() + timeout_s
        chain = self.contracts.chain
        while True:
            seen = chain.blocks_seen
            worker = slot_worker(self.contracts, job_id, slot, provider)
            if worker is not None:
                return worker
            if time.monotonic() >= deadline:
                raise ChainError(
                    f"job {job_id} slot {slot}: the pool {provider} assigned it to no member within {timeout_s:.0f} s"
                )
            chain.wait_for_block(seen, 0.2)

    def dispute(self, job_id: int, slot: int) -> None:
        """Dispute a committed result, putting up the market's dispute bond."""
        market = self.contracts.market
        bond = market.dispute_bond()
        if bond:
            self.contracts.token.approve(self.account, market.address, bond)
        market.dispute_result(self.account, job_id, slot)

    def _wait_commit(self, job_id: int, slot: int, timeout_s: float) -> Any:
        market = self.contracts.market
        deadline = time.monotonic() + timeout_s
        chain = self.contracts.chain
        while time.monotonic() < deadline:
            seen = chain.blocks_seen
            state = market.slot(job_id, slot)
            if state.status not in (SlotStatus.ASSIGNED, SlotStatus.NONE):
                return state
            chain.wait_for_block(seen, 0.2)  # the commitment comes in a block: woken by it
        raise ChainError(f"job {job_id}: the provider did not commit a result within {timeout_s:.0f} s")

    def settle(
        self, job_id: int, *, timeout_s: float = 3600.0, runs: dict[int, dict[str, Any]] | None = None
    ) -> list[dict[str, Any]]:
        """Settle every slot once it can end (waiting for verifiers or windows); returns the bill.

        Each slot's bill carries the reason it ended as it did (from the chain's events) and, with
        ``runs`` (how each slot's run ended, from its worker), the run's state and exit status.
        The job's events are read once, when every slot has ended.
        """
        market = self.contracts.market
        spec = market.spec(job_id)
        deadline = time.monotonic() + timeout_s
        ended: set[int] = set()
        chain = self.contracts.chain
        while len(ended) < spec.redundancy and time.monotonic() < deadline:
            seen = chain.blocks_seen
            for slot in market.slots_of(job_id):
                if slot.slot in ended:
                    continue
                if slot.status.terminal:
                    ended.add(slot.slot)
                    continue
                try:
                    market.settle(self.account, job_id, slot.slot)
                except ContractRevert as exc:
                    if reverts.settled_by_another(exc):
                        pass  # a provider or verifier settled it between our read and our call
                    elif reverts.too_early_to_settle(exc):
                        continue
                    else:
                        raise
                ended.add(slot.slot)
            if len(ended) < spec.redundancy:
                chain.wait_for_block(seen, 0.3)  # a ruling or a window's end: a block, or the clock
        from marketplace.market.summary import job_reasons

        found = self._settled_events[job_id] = self.job_events(job_id)
        bills = {slot: self._bill(job_id, slot, found.get("SlotSettled", [])) for slot in ended}
        reasons = job_reasons(self.contracts, job_id, spec, lambda name: found.get(name, []))["slots"]
        for bill in bills.values():
            why = reasons.get(bill["slot"], {"reason": None, "rulings": []})
            bill["reason"] = why["reason"]
            bill["rulings"] = why["rulings"]
            run = (runs or {}).get(bill["slot"])
            bill["run"] = run["state"] if run else None
            bill["exit_code"] = run["exit_code"] if run else None
            bill["run_reason"] = run["reason"] if run else None
            head = f"job {job_id} slot {bill['slot']}: {bill['status']}"
            if run and run["state"] == "failed":
                head += f" for a run that failed ({run['reason'] or 'exit status ' + str(run['exit_code'])})"
            self.say(
                f"{head}: {bill['gpu_seconds']} GPU-s, "
                f"paid {format_tokens(bill['paid'])} FLOP (fee {format_tokens(bill['fee'])}), "
                f"refunded {format_tokens(bill['refunded'])}, slashed {format_tokens(bill['slashed'])}"
                + (f"; {bill['reason']}" if bill["reason"] else "")
            )
        return [bills[k] for k in sorted(bills)]

    def job_events(self, job_id: int) -> dict[str, list[Any]]:
        """The market's decoded events of job ``job_id``, by event name, read from the chain at once.

        On the embedded chain the market's logs are read in one pass over the blocks (eth-tester's
        own log filter walks the chain again for every query); a JSON-RPC node is asked per kind of
        event, filtered on the job by the node.
        """
        market = self.contracts.market
        chain = self.contracts.chain
        found: dict[str, list[Any]] = {}
        if chain.is_embedded:
            logs = chain.logs([market.address], market.start_block, chain.block_number())
            for event in map(ev.decode, market.logs_in({"logs": logs})):
                if event is not None and getattr(event, "job_id", None) == job_id:
                    found.setdefault(type(event).__name__, []).append(event)
            return found
        for name in _JOB_EVENTS:
            found[name] = market.get_events(name, market.start_block, job_id=job_id)
        return found

    def _bill(self, job_id: int, slot: int, settled: list[Any]) -> dict[str, Any]:
        for event in settled:
            if isinstance(event, SlotSettled) and event.slot == slot:
                return {
                    "slot": slot,
                    "provider": event.provider,
                    "status": event.status.name.lower(),
                    "gpu_seconds": event.gpu_seconds,
                    "price": self.contracts.market.slot(job_id, slot).price,
                    "paid": event.paid,
                    "fee": event.fee,
                    "refunded": event.refunded,
                    "slashed": event.slashed,
                }
        raise ChainError(f"job {job_id} slot {slot} has no settlement event")


#: The market's events about a job that its outcome is read from.
_JOB_EVENTS = (
    "JobLeased",
    "JobExpired",
    "JobCancelled",
    "ResultCommitted",
    "ResultAccepted",
    "ResultDisputed",
    "ResultAttested",
    "SlotSettled",
)


def _judge(outcome: JobOutcome) -> tuple[str, str | None]:
    """A settled job's outcome (one of :data:`OUTCOMES`) and the reason, worst first."""
    by_slot = {b["slot"]: b for b in outcome.slots}
    for bill in outcome.slots:
        if bill["status"] == "slashed":
            return "slashed", f"slot {bill['slot']}: {bill.get('reason') or 'slashed'}"
    for bill in outcome.slots:
        if bill["status"] == "paid" and (bill.get("reason") or "").find("dispute was lost") >= 0:
            return "dispute_lost", f"slot {bill['slot']}: {bill['reason']}"
    for bill in outcome.slots:
        if bill.get("reason") and "reported a no-show" in bill["reason"]:
            # No runnable bundle reached the provider in time (a requester resumed too late, say).
            return "refunded", f"slot {bill['slot']}: {bill['reason']}"
    for slot, run in sorted(outcome.runs.items()):
        if run["state"] == "failed" or run["exit_code"] != 0:
            why = run["reason"] or f"the job exited with status {run['exit_code']}"
            run_bill = by_slot.get(slot)
            billed = (
                f"; its {run_bill['gpu_seconds']} GPU-s of run time billed ({format_tokens(run_bill['paid'])} FLOP), "
                "as for every job that ran"
                if run_bill is not None and run_bill["status"] == "paid"
                else ""
            )
            return "failed", f"slot {slot}: {why} (exit status {run['exit_code']}){billed}"
    if outcome.unverified:
        slots = ", ".join(str(s) for s in sorted(outcome.unverified))
        return "undelivered", f"the results of slot(s) {slots} could not be downloaded; disputed, not accepted"
    for bill in outcome.slots:
        if bill["status"] != "paid":
            return "refunded", f"slot {bill['slot']}: {bill.get('reason') or bill['status']}"
    for slot in sorted(by_slot):
        if slot not in outcome.runs and slot not in outcome.unseen:
            return "failed", f"slot {slot}: the run's end was never seen (the provider failed or vanished)"
    unseen = sorted(s for s in outcome.unseen if s not in outcome.runs)
    if unseen:
        slots = ", ".join(str(s) for s in unseen)
        return "succeeded", f"paid; how the run of slot(s) {slots} ended was not seen (its worker no longer tells)"
    return "succeeded", None


class _DownloadFailed(WorkerError):
    """Raised when a slot's results could not be downloaded after retries."""


def _worker_job(client: WorkerClient, job_id: int) -> Any:
    """The worker's record of a job (``pb.JobStatus``), or None when it has none."""
    try:
        return client.get_job(job_id)
    except WorkerError as exc:
        if exc.code == "NOT_FOUND":
            return None
        raise


def _options_json(options: JobOptions) -> dict[str, Any]:
    """Job options as JSON data (enums by name)."""
    return {k: (v.name.lower() if isinstance(v, Enum) else v) for k, v in asdict(options).items()}


def _job_state(state: int) -> str:
    """A worker job state's name (``succeeded``, ``failed``...)."""
    return str(pb.JobState.Name(state)).removeprefix("JOB_STATE_").lower()


def _describe(event: Any) -> str:
    """One line for a worker event, or '' for those not worth a line."""
    kind = event.WhichOneof("kind")
    if kind == "queued":
        return "queued"
    if kind == "started":
        return "started"
    if kind == "progress":
        p = event.progress
        head = f"progress {p.fraction:.0%}" if p.HasField("fraction") else "progress"
        return f"{head} {p.message}".rstrip()
    if kind == "log":
        return f"{event.log.stream}: {event.log.text.rstrip()}"
    if kind == "finished":
        m = event.finished.metering
        built = f", its environment built in {m.env_build_millis / 1000:.1f} s first" if m.env_build_millis else ""
        return f"finished: {m.device_millis / 1000:.1f} device-s, {m.cpu_millis / 1000:.1f} CPU-s{built}"
    if kind == "failed":
        return f"failed: {event.failed.reason}"
    return ""
