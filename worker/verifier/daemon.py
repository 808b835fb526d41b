"""The verifier daemon: bring slots to the verifier court, rule where drawn, appeal, prove capacity.

A :class:`VerifierDaemon` drives one staked verifier account that joined the court
(``contracts/VerifierCourt.vy``). Each :meth:`~VerifierDaemon.step`:

1. reads new ``ResultCommitted`` and ``ResultDisputed`` events of the market, ``ProviderRegistered``
   events of the registry and the court's ``CaseOpened``, ``PanelDrawn`` and ``RoundDecided``;
2. opens a court case for every committed slot whose policy needs a check (``redundant``,
   ``replay``, ``freivalds``) and for every dispute; re-checks ``optimistic`` results on its own
   and disputes a wrong one (it is then a party: another verifier is drawn to rule);
3. rules on the cases whose panel drew it, within the ruling window, by the slot's check:

   - ``redundant``: once every slot has committed (or half the ruling window is gone), fetch each
     slot's results, group them by agreement (tensors with tolerances, other files exactly); the
     strict majority is accepted, dissenters rejected; no majority voids the slot;
   - ``replay``: fetch the slot's bundle and results; draw segments from a seed fixed by the block
     that holds the commitment; re-run each from its committed checkpoint in the sandbox and
     compare with the next committed checkpoint; re-run the tail from the last checkpoint and
     compare with the final outputs. A job without checkpoints is re-run in full;
   - ``freivalds``: check the product with random vectors drawn from the same kind of seed;
   - a dispute (and an ``optimistic`` slot) is ruled by replay, or by comparison for redundant jobs;

   an accepted slot is ruled with the verified GPU-seconds: the claim capped by what the verified
   work and the provider's attested throughput make plausible
   (:func:`marketplace.verify.billing.billing_cap`);
4. moves every open case along: draws a panel once its block has come, fines and replaces
   verifiers that did not rule in time, closes a ruling once its appeal window passed (the court
   then passes it to the market), and appeals a ruling that went against its own vote: its
   stake would be slashed if that ruling stood, so it pays the bond for a larger panel;
5. sends capacity challenges to newly registered providers (and again every
   ``capacity_interval_s``, with jitter), checks them with Freivalds plus row spot checks and
   attests the measured throughput in the registry, which flags claims above 2×;
6. brings reservations their holders reported not served to the court and rules on those it is
   drawn for (:mod:`worker.verifier.reservations`): a probe of the provider's worker during the
   window, the usage records on chain after it.

Job code is untrusted: replays run in the worker's bubblewrap sandbox (:mod:`worker.verifier.replay`).
The CLI runs it with :func:`run_verifier`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import secrets
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from marketplace.contracts.court import CaseKind, CaseState, CaseStatus
from marketplace.contracts.deployment import Contracts
from marketplace.contracts.events import ProviderRegistered, ResultCommitted, ResultDisputed
from marketplace.errors import ContractRevert, FlopexError, VerificationError, WorkerError
from marketplace.protocol.auth import Domain
from marketplace.protocol.bundle import bundle_hash, load_bundle
from marketplace.protocol.capacity import challenge_flops, verify_rows
from marketplace.requester.client import WorkerClient
from marketplace.requester.datasets import fetch_datasets
from marketplace.sdk import CHECKPOINT_LOG
from marketplace.types import ONE_TOKEN, JobSpec, Outcome, Policy, SlotStatus
from marketplace.verify import billing, compare, freivalds, sampling
from worker.daemon import StepLoop
from worker.node.environments import (
    EnvironmentBuildError,
    EnvironmentCache,
    EnvironmentSettings,
    needs_environment,
)
from worker.sandbox.runner import Limits, Sandbox
from worker.verifier.replay import ReplayRun, run_replay
from worker.verifier.reservations import ReservationReferee

__all__ = ["Verdict", "VerifierDaemon", "VerifierSettings", "run_verifier"]

log = logging.getLogger("flopex.verifier")


@dataclass(frozen=True)
class VerifierSettings:
    """How a verifier checks, stakes and challenges."""

    data_dir: Path
    stake: int = 100 * ONE_TOKEN
    poll_interval_s: float = 0.5
    rtol: float = compare.RTOL
    atol: float = compare.ATOL
    replay_fraction: float = 0.07
    replay_min_samples: int = 7
    full_rerun_rate: float = 1.0
    optimistic_check_rate: float = 1.0
    dispute_optimistic: bool = True
    freivalds_rounds: int = 2
    capacity_n: int = 1024
    capacity_rows: int = 8
    capacity_at_registration: bool = True
    capacity_interval_s: float = 0.0
    capacity_attempts: int = billing.CAPACITY_ATTEMPTS
    capacity_retry_s: float = 20.0
    billing_slack: float = 1.5
    billing_overhead_s: float = 5.0
    allow_unsandboxed: bool = False
    use_cgroups: bool = True
    replay_threads: int = 1
    memory_limit_bytes: int = 4 << 30
    reservation_probe_attempts: int = 3
    reservation_probe_interval_s: float = 10.0
    appeal_when_outvoted: bool = True
    #: Re-check the slots of rulings it did not take part in and appeal those its check contradicts
    #: (a right appeal returns the bond and earns half the pot): a whistleblower.
    whistleblow: bool = False
    #: Rule right away (False: never rule; a no-show, for tests and the demo's fined verifier).
    rules: bool = True
    #: Vote this way whatever the check says (None: honestly); a lying verifier, for tests and the demo.
    forced_outcome: Outcome | None = None
    #: Where declared environments are rebuilt for re-runs, and where their packages come from
    #: (None: ``data_dir/environments`` with PyPI).
    environments: EnvironmentSettings | None = None


@dataclass(frozen=True)
class Verdict:
    """What a check concluded about one slot."""

    job_id: int
    slot: int
    outcome: Outcome
    verified_gpu_seconds: int = 0
    claimed_gpu_seconds: int = 0
    reason: str = ""
    cost_s: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


class VerifierDaemon(StepLoop):
    """One verifier account on the market."""

    def __init__(self, contracts: Contracts, account: LocalAccount, settings: VerifierSettings) -> None:
        super().__init__(
            contracts, account, poll_interval_s=settings.poll_interval_s, role="verifier", log=log, join_timeout_s=120
        )
        self.settings = settings
        self.domain = Domain(contracts.chain.chain_id, contracts.market.address)
        self.sandbox = Sandbox(allow_unsandboxed=settings.allow_unsandboxed, use_cgroups=settings.use_cgroups)
        self.work = settings.data_dir
        self.work.mkdir(parents=True, exist_ok=True)
        self._environments: EnvironmentCache | None = None
        self.last_block = contracts.market.start_block - 1
        self.pending: dict[tuple[int, int], ResultCommitted] = {}
        self.disputes: dict[tuple[int, int], ResultDisputed] = {}
        self.done: set[tuple[int, int]] = set()
        self.ruled: set[tuple[int, int]] = set()
        self.capacity_due: dict[str, float] = {}
        self.verdicts: list[Verdict] = []
        #: The court's cases this daemon moves along, the seats it holds (case -> round), its votes
        #: ((case, round) -> outcome) and the rounds it appealed.
        self.court = contracts.court
        self.open_cases: set[int] = set()
        self.seats: dict[int, int] = {}
        self.my_votes: dict[tuple[int, int], Outcome] = {}
        self.appealed: set[tuple[int, int]] = set()
        self.rechecked: set[tuple[int, int]] = set()
        self.appeals: list[dict[str, Any]] = []
        self.capacity_log: list[dict[str, Any]] = []
        #: Measurements of a sequential capacity test under way, per provider (GFLOP/s).
        self.capacity_pending: dict[str, list[int]] = {}
        self._local_gflops: float | None = None
        self._rng = random.SystemRandom()
        #: Rules on reservations reported not served, when the deployment has reservations.
        self.referee: ReservationReferee | None = None
        if contracts.reservations is not None:
            self.referee = ReservationReferee(
                contracts.reservations,
                account,
                self.probe_reservation,
                court=contracts.court,
                rule=self._rule_reservation,
                attempts=settings.reservation_probe_attempts,
                interval_s=settings.reservation_probe_interval_s,
            )

    # ------------------------------------------------------------------ lifecycle

    def ensure_registered(self) -> None:
        """Stake up to the configured amount and register as a verifier."""
        registry, token = self.contracts.registry, self.contracts.token
        active = registry.stakes(self.address).active
        if active < self.settings.stake:
            token.approve(self.account, registry.address, self.settings.stake - active)
            registry.stake(self.account, self.settings.stake - active)
        if not registry.is_active_verifier(self.address):
            registry.register_verifier(self.account)
        if self.court is not None and not self.court.joined(self.address):
            self.court.join(self.account)

    # ------------------------------------------------------------------ one pass

    def step(self) -> None:
        """Read new events, bring slots to court, rule where drawn, move cases along, challenge who is due."""
        self._read_events()
        for key in sorted(self.disputes):
            if key not in self.ruled:
                self._handle_dispute(self.disputes[key])
        jobs = sorted({job for job, _slot in self.pending})
        for job_id in jobs:
            self._handle_job(job_id)
        self._rule_on_seats()
        self._drive_cases()
        if self.referee is not None:
            self.referee.step(self.now())
        now = time.time()
        for provider, due in sorted(self.capacity_due.items()):
            if due <= now:
                self.challenge_capacity(provider)

    def _read_events(self) -> None:
        market, registry = self.contracts.market, self.contracts.registry
        latest = self.contracts.chain.block_number()
        start = self.last_block + 1
        if start > latest:
            return
        for event in market.get_events("ResultCommitted", start):
            assert isinstance(event, ResultCommitted)
            key = (event.job_id, event.slot)
            if key not in self.done:
                self.pending[key] = event
        for event in market.get_events("ResultDisputed", start):
            assert isinstance(event, ResultDisputed)
            if event.disputer != self.address:
                self.disputes[(event.job_id, event.slot)] = event
        if self.settings.capacity_at_registration:
            for event in registry.get_events("ProviderRegistered", start):
                assert isinstance(event, ProviderRegistered)
                if event.provider != self.address:
                    self.capacity_due.setdefault(event.provider, 0.0)
        if self.court is not None:
            for opened in self.court.history("CaseOpened", start):
                self.open_cases.add(int(opened.args["case_id"]))
            for drawn in self.court.history("PanelDrawn", start, verifier=self.address):
                self.seats[int(drawn.args["case_id"])] = int(drawn.args["round"])
        if self.referee is not None:
            self.referee.scan(start)
        self.last_block = latest

    # ------------------------------------------------------------------ jobs

    def _handle_job(self, job_id: int) -> None:
        market = self.contracts.market
        spec = market.spec(job_id)
        keys = [k for k in self.pending if k[0] == job_id]
        if spec.policy == Policy.NONE:
            for key in keys:
                self._finish(key)
            return
        slots = market.slots_of(job_id)
        for key in keys:
            slot = market.slot(*key)
            if slot.status == SlotStatus.COMMITTED:
                if spec.policy == Policy.OPTIMISTIC:
                    # Optimistic: nobody is drawn unless someone disputes; re-check it on our own.
                    mine = spec.requester == self.address or any(s.provider == self.address for s in slots)
                    if not mine:
                        self._handle_optimistic(job_id, key[1], spec)
                else:
                    self._open_slot_case(job_id, key[1], spec)
            self._finish(key)

    def _open_slot_case(self, job_id: int, slot: int, spec: JobSpec) -> None:
        """Bring a slot to the court, unless someone already did."""
        if self.court is None or self.court.slot_case(job_id, slot):
            return
        try:
            self.court.open_slot_case(self.account, job_id, spec, slot)
            log.info("verifier: job %d slot %d: brought to the court", job_id, slot)
        except ContractRevert as exc:
            log.info("verifier: job %d slot %d: case not opened: %s", job_id, slot, exc.reason)

    def _finish(self, key: tuple[int, int]) -> None:
        self.pending.pop(key, None)
        self.done.add(key)

    def _handle_optimistic(self, job_id: int, slot: int, spec: JobSpec) -> None:
        seed = self._seed(job_id, slot)
        if random.Random(seed ^ 0x0F).random() >= self.settings.optimistic_check_rate:
            return
        verdict = self.check_slot(job_id, slot, spec, policy=Policy.REPLAY)
        self.verdicts.append(verdict)
        if verdict.outcome != Outcome.REJECT:
            log.info("verifier: job %d slot %d: optimistic result holds (%s)", job_id, slot, verdict.reason)
            return
        if self.settings.dispute_optimistic:
            market = self.contracts.market
            bond = market.dispute_bond()
            try:
                if bond:
                    self.contracts.token.approve(self.account, market.address, bond)
                market.dispute_result(self.account, job_id, slot)
                log.info("verifier: job %d slot %d: disputed (%s)", job_id, slot, verdict.reason)
            except ContractRevert as exc:
                log.info("verifier: job %d slot %d: dispute refused: %s", job_id, slot, exc.reason)
        else:
            # Without a dispute of its own, it brings the slot to the court, which draws who rules.
            self._open_slot_case(job_id, slot, spec)

    def _handle_dispute(self, event: ResultDisputed) -> None:
        key = (event.job_id, event.slot)
        self.ruled.add(key)
        if self.contracts.market.slot(*key).status == SlotStatus.DISPUTED:
            self._open_slot_case(event.job_id, event.slot, self.contracts.market.spec(event.job_id))

    # ------------------------------------------------------------------ the court

    def _rule_on_seats(self) -> None:
        """Rule on every case whose current panel drew this verifier."""
        if self.court is None:
            return
        for case_id, round_ in sorted(self.seats.items()):
            case = self.court.case(case_id)
            if case.status != CaseStatus.VOTING or case.round != round_ or (case_id, round_) in self.my_votes:
                self.seats.pop(case_id, None)
                continue
            if not self.settings.rules:
                continue
            if case.kind == CaseKind.RESERVATION:
                if self.referee is not None:
                    self.referee.take_seat(case.target, case_id)
                self.seats.pop(case_id, None)
                continue
            verdict = self.slot_verdict(case)
            if verdict is not None:
                self._rule(case, verdict)

    def slot_verdict(self, case: CaseState) -> Verdict | None:
        """What this verifier rules on a slot's case; None to wait (a redundant job's slots still running)."""
        market = self.contracts.market
        job_id, slot = case.target, case.slot
        spec = market.spec(job_id)
        state = market.slot(job_id, slot)
        if state.status not in (SlotStatus.COMMITTED, SlotStatus.DISPUTED):
            return self._void(job_id, slot, "the slot no longer takes a ruling")
        if spec.policy == Policy.REDUNDANT:
            live = [s for s in market.slots_of(job_id) if s.status != SlotStatus.RELEASED]
            waiting = [s for s in live if s.status == SlotStatus.ASSIGNED]
            run_deadline = market.job(job_id).lease_start + spec.run_duration
            half = case.ruling_deadline - self.court.parameters().ruling_period // 2 if self.court else 0
            if waiting and self.now() <= min(run_deadline, half):
                return None
            verdicts = [v for v in self.check_redundant(job_id, spec, live) if v.slot == slot]
            return verdicts[0] if verdicts else self._void(job_id, slot, "no result to compare")
        policy = spec.policy
        if state.status == SlotStatus.DISPUTED or policy in (Policy.OPTIMISTIC, Policy.NONE):
            policy = Policy.REPLAY if policy in (Policy.OPTIMISTIC, Policy.NONE) else policy
        return self.check_slot(job_id, slot, spec, policy=policy)

    def _rule(self, case: CaseState, verdict: Verdict) -> None:
        assert self.court is not None
        outcome = self.settings.forced_outcome if self.settings.forced_outcome is not None else verdict.outcome
        verified = verdict.verified_gpu_seconds if outcome == Outcome.ACCEPT else 0
        if outcome == Outcome.ACCEPT and verdict.outcome != Outcome.ACCEPT:
            verified = verdict.claimed_gpu_seconds
        self.verdicts.append(verdict)
        try:
            self.court.rule(self.account, case.case_id, outcome, verified)
            self.my_votes[(case.case_id, case.round)] = outcome
            log.info(
                "verifier: case %d (job %d slot %d), round %d: %s, %d of %d GPU-s (%s)",
                case.case_id,
                verdict.job_id,
                verdict.slot,
                case.round,
                outcome.name,
                verified,
                verdict.claimed_gpu_seconds,
                verdict.reason,
            )
        except ContractRevert as exc:
            log.info("verifier: case %d: ruling refused: %s", case.case_id, exc.reason)
        self.seats.pop(case.case_id, None)

    def _rule_reservation(self, case_id: int, outcome: Outcome) -> None:
        """The referee's ruling on a reservation case it holds a seat in."""
        assert self.court is not None
        case = self.court.case(case_id)
        if self.settings.forced_outcome is not None:
            outcome = self.settings.forced_outcome
        self.court.rule(self.account, case_id, outcome, 0)
        self.my_votes[(case_id, case.round)] = outcome

    def _drive_cases(self) -> None:
        """Draw, time out, appeal and close the court's open cases: whoever comes first does it."""
        court = self.court
        if court is None:
            return
        now = self.now()
        block = self.contracts.chain.block_number()
        for case_id in sorted(self.open_cases):
            case = court.case(case_id)
            try:
                if case.status == CaseStatus.CLOSED:
                    self.open_cases.discard(case_id)
                elif case.status == CaseStatus.DRAWING and block >= case.draw_block:
                    court.draw(self.account, case_id)
                elif case.status == CaseStatus.DRAWING:
                    self.nudge_clock()  # a dev chain makes blocks only for transactions
                elif case.status == CaseStatus.VOTING and now >= case.ruling_deadline:
                    court.timeout(self.account, case_id)
                elif case.status == CaseStatus.APPEALABLE:
                    mine = self.my_votes.get((case_id, case.round))
                    open_to_appeal = now < case.appeal_deadline and (case_id, case.round) not in self.appealed
                    if (
                        open_to_appeal
                        and self.settings.appeal_when_outvoted
                        and mine is not None
                        and case.outcome != mine
                    ):
                        self._appeal(case)
                    elif open_to_appeal and mine is None and self._contradicts(case):
                        self._appeal(case)
                    elif now >= case.appeal_deadline:
                        court.finalize(self.account, case_id)
                    else:
                        # A dev chain whose clock was moved ahead of the wall clock makes blocks (and
                        # time) only for transactions: ask for one, so the appeal window can end.
                        self.nudge_clock()
            except ContractRevert as exc:
                log.debug("verifier: case %d: %s", case_id, exc.reason)

    def _contradicts(self, case: CaseState) -> bool:
        """Whistleblowing: whether this verifier's own check of a slot contradicts the case's latest
        ruling (checked once per round; never on a job it requested or ran)."""
        if not self.settings.whistleblow or case.kind != CaseKind.SLOT or case.outcome is None:
            return False
        key = (case.case_id, case.round)
        if key in self.rechecked:
            return False
        self.rechecked.add(key)
        market = self.contracts.market
        spec = market.spec(case.target)
        if spec.requester == self.address or any(s.provider == self.address for s in market.slots_of(case.target)):
            return False
        verdict = self.slot_verdict(case)
        if verdict is None or verdict.outcome == Outcome.VOID:
            return False
        if verdict.outcome != case.outcome:
            log.info(
                "verifier: case %d: the round-%d ruling %s contradicts its own check (%s)",
                case.case_id,
                case.round,
                case.outcome.name,
                verdict.reason,
            )
            return True
        return False

    def _appeal(self, case: CaseState) -> None:
        """Appeal a ruling that went against this verifier's vote: a larger panel decides."""
        assert self.court is not None
        self.appealed.add((case.case_id, case.round))
        bond = self.court.next_appeal_bond(case.case_id)
        if bond:
            self.contracts.token.approve(self.account, self.court.address, bond)
        self.court.appeal(self.account, case.case_id)
        self.appeals.append({"case_id": case.case_id, "round": case.round, "bond": bond})
        log.info("verifier: case %d: appealed the round-%d ruling (bond %d)", case.case_id, case.round, bond)

    @staticmethod
    def _void(job_id: int, slot: int, reason: str) -> Verdict:
        return Verdict(job_id, slot, Outcome.VOID, reason=reason)

    # ------------------------------------------------------------------ fetching

    def _seed(self, job_id: int, slot: int) -> int:
        """The slot's verification seed: the hash of the block holding its ResultCommitted event."""
        market = self.contracts.market
        events = [
            e
            for e in market.get_events("ResultCommitted", market.start_block, job_id=job_id)
            if isinstance(e, ResultCommitted) and e.slot == slot
        ]
        if not events:
            raise VerificationError(f"job {job_id} slot {slot}: no ResultCommitted event")
        chain = self.contracts.chain
        with chain.locked():
            block = chain.w3.eth.get_block(events[-1].block_number)
        return sampling.verification_seed(bytes(block["hash"]), job_id, slot)

    def _client(self, provider: str) -> WorkerClient:
        endpoint = self.contracts.registry.offer(provider).endpoint
        return WorkerClient(endpoint, requester_key=self.account.key, domain=self.domain, timeout_s=60)

    def _slot_client(self, job_id: int, slot: int, provider: str) -> WorkerClient:
        """The worker that ran a slot: a pool's slot runs on the member its operator assigned."""
        from marketplace.market.routing import slot_worker

        worker = slot_worker(self.contracts, job_id, slot, provider)
        if worker is None:
            raise VerificationError(f"job {job_id} slot {slot}: the pool has not assigned the slot to a member")
        return WorkerClient(worker.endpoint, requester_key=self.account.key, domain=self.domain, timeout_s=60)

    def fetch(self, job_id: int, slot: int, *, bundle: bool = True) -> tuple[Path, Path | None, int]:
        """Download a slot's results (checked against the committed root) and bundle; return them and the seed."""
        market = self.contracts.market
        state = market.slot(job_id, slot)
        spec = market.spec(job_id)
        base = self.work / f"job-{job_id}" / f"slot-{slot}"
        shutil.rmtree(base, ignore_errors=True)
        with self._slot_client(job_id, slot, state.provider) as client:
            results = client.download_results(job_id, base / "results")
            if results.manifest.root != state.result_root:
                raise VerificationError("the results do not match the root committed on chain")
            bundle_dir = None
            if bundle:
                client.download_bundle(job_id, base / "bundle")
                bundle_dir = base / "bundle"
                if bundle_hash(bundle_dir) != spec.bundle_hash:
                    raise VerificationError("the bundle does not match the bundle hash posted on chain")
                fetch_datasets(client, job_id, bundle_dir, base / "datasets")
            seed = int(client.get_job(job_id).seed)
        return base / "results", bundle_dir, seed

    # ------------------------------------------------------------------ checks

    def check_slot(self, job_id: int, slot: int, spec: JobSpec, *, policy: Policy | None = None) -> Verdict:
        """Check one committed slot by ``policy`` (default: the job's) and say what to attest."""
        policy = policy or spec.policy
        claimed = self.contracts.market.slot(job_id, slot).gpu_seconds
        started = time.monotonic()
        try:
            results, bundle_dir, job_seed = self.fetch(job_id, slot)
            assert bundle_dir is not None
            seed = self._seed(job_id, slot)
            if policy == Policy.FREIVALDS:
                verdict = self._check_freivalds(job_id, slot, spec, results, bundle_dir, seed, claimed)
            else:
                verdict = self._check_replay(job_id, slot, spec, results, bundle_dir, seed, job_seed, claimed)
        except (VerificationError, FlopexError, OSError) as exc:
            # A provider that cannot show a result matching its commitment has no verified result.
            verdict = Verdict(
                job_id, slot, Outcome.REJECT, claimed_gpu_seconds=claimed, reason=f"result not verifiable: {exc}"
            )
        cost = time.monotonic() - started
        return Verdict(
            verdict.job_id,
            verdict.slot,
            verdict.outcome,
            verdict.verified_gpu_seconds,
            verdict.claimed_gpu_seconds,
            verdict.reason,
            cost,
            verdict.details,
        )

    def _accept(self, job_id: int, slot: int, spec: JobSpec, claimed: int, reason: str, **bounds: Any) -> Verdict:
        provider = self.contracts.market.slot(job_id, slot).provider
        gflops = self.contracts.registry.attestation(provider)[0] or None
        estimate = billing.billing_cap(
            claimed,
            attested_gflops=gflops,
            gpus=spec.gpus,
            slack=self.settings.billing_slack,
            overhead_s=self.settings.billing_overhead_s,
            **bounds,
        )
        return Verdict(
            job_id,
            slot,
            Outcome.ACCEPT,
            estimate.verified,
            claimed,
            reason,
            details={"plausible_gpu_seconds": estimate.plausible, "basis": estimate.basis, "capped": estimate.capped},
        )

    def _check_freivalds(
        self, job_id: int, slot: int, spec: JobSpec, results: Path, bundle_dir: Path, seed: int, claimed: int
    ) -> Verdict:
        import torch
        from safetensors.torch import load_file

        job = load_bundle(bundle_dir).spec.job
        args = list(job.args)
        dtype_name = args[args.index("--dtype") + 1] if "--dtype" in args[:-1] else "float32"
        declared = getattr(torch, dtype_name, None)
        inputs = [name for name in job.inputs if name.endswith(".safetensors")]
        product = results / "output" / "product.safetensors"
        if not inputs or not product.exists() or not isinstance(declared, torch.dtype):
            return Verdict(
                job_id,
                slot,
                Outcome.REJECT,
                claimed_gpu_seconds=claimed,
                reason="not a matrix-product job result (inputs.safetensors / product.safetensors)",
            )
        ab = load_file(str(bundle_dir / inputs[0]))
        c = load_file(str(product)).get("c")
        if c is None or c.dtype != declared:
            return Verdict(
                job_id,
                slot,
                Outcome.REJECT,
                claimed_gpu_seconds=claimed,
                reason=f"the product is not a {dtype_name} tensor named c",
            )
        ok, worst = freivalds.freivalds_check(
            ab["a"], ab["b"], c, seed=seed, rounds=self.settings.freivalds_rounds, dtype=declared
        )
        if not ok:
            return Verdict(
                job_id,
                slot,
                Outcome.REJECT,
                claimed_gpu_seconds=claimed,
                reason=f"Freivalds: error {worst:.3g}x the {dtype_name} tolerance",
            )
        n, k = ab["a"].shape
        flops = 2 * n * k * ab["b"].shape[1]
        return self._accept(
            job_id,
            slot,
            spec,
            claimed,
            f"Freivalds passed ({worst:.2g} of tolerance)",
            flops=flops,
            estimated_seconds=flops / (self.local_gflops() * 1e9),
        )

    @property
    def environments(self) -> EnvironmentCache:
        """The verifier's cache of declared environments (made on first use)."""
        if self._environments is None:
            settings = self.settings.environments or EnvironmentSettings(self.work / "environments")
            self._environments = EnvironmentCache(settings, self.sandbox)
        return self._environments

    def _check_replay(
        self,
        job_id: int,
        slot: int,
        spec: JobSpec,
        results: Path,
        bundle_dir: Path,
        seed: int,
        job_seed: int,
        claimed: int,
    ) -> Verdict:
        from safetensors.torch import load_file

        ckpt_dir = results / "checkpoints"
        entries = read_checkpoint_log(ckpt_dir)
        answer = _declared_answer(bundle_dir)
        replay_root = self.work / f"job-{job_id}" / f"slot-{slot}" / "replay"
        rtol, atol = self.settings.rtol, self.settings.atol
        limits = Limits(memory_bytes=self.settings.memory_limit_bytes)

        def run(name: str, **kw: Any) -> ReplayRun:
            return run_replay(
                self.sandbox,
                bundle_dir,
                replay_root / name,
                seed=job_seed,
                job_id=job_id,
                limits=limits,
                threads=self.settings.replay_threads,
                environments=self.environments,
                **kw,
            )

        try:
            # The job's declared environment, rebuilt here from the same files (the same key): a
            # verifier that cannot build it cannot judge the slot.
            held = load_bundle(bundle_dir)
            if needs_environment(held):
                with self.environments.use(held):
                    pass
        except EnvironmentBuildError as exc:
            return Verdict(
                job_id,
                slot,
                Outcome.VOID,
                claimed_gpu_seconds=claimed,
                reason=f"cannot judge: the job's environment does not build here ({exc.message})",
            )

        if not entries:
            if random.Random(seed ^ 0xF0).random() >= self.settings.full_rerun_rate:
                return self._accept(job_id, slot, spec, claimed, "not sampled for a full re-run")
            full = run("full")
            if not full.ok:
                return Verdict(
                    job_id,
                    slot,
                    Outcome.VOID,
                    claimed_gpu_seconds=claimed,
                    reason=f"the job does not re-run here: {full.reason or full.exit_code}",
                )
            cmp = compare.compare_results(full.directory, results, rtol=rtol, atol=atol, answer=answer)
            if not cmp:
                return self._judge_mismatch(
                    job_id, slot, spec, claimed, results, full, run("full-control"), "full re-run", full.wall_s, answer
                )
            return self._accept(job_id, slot, spec, claimed, "full re-run matches", estimated_seconds=full.wall_s)

        steps = [int(e["step"]) for e in entries]
        count = sampling.replay_samples(len(steps), self.settings.replay_fraction, self.settings.replay_min_samples)
        picks = sampling.sample_segments(seed, len(steps), count)
        times: list[float] = []
        for index in picks:
            before = steps[index - 1] if index > 0 else None
            run_i = run(
                f"segment-{index}",
                start_step=before,
                start_checkpoint=ckpt_dir / entries[index - 1]["file"] if index > 0 else None,
                until_step=steps[index],
            )
            times.append(run_i.wall_s)
            produced = run_i.checkpoint(steps[index])
            if not run_i.ok or not produced.exists():
                return Verdict(
                    job_id,
                    slot,
                    Outcome.REJECT,
                    claimed_gpu_seconds=claimed,
                    reason=f"segment {index} does not replay from its checkpoint "
                    f"({run_i.reason or run_i.exit_code}: {run_i.log()[-200:]})",
                )
            cmp = compare.compare_tensors(
                load_file(str(produced)),
                load_file(str(ckpt_dir / entries[index]["file"])),
                path=entries[index]["file"],
                rtol=rtol,
                atol=atol,
            )
            if not cmp:
                return Verdict(
                    job_id,
                    slot,
                    Outcome.REJECT,
                    claimed_gpu_seconds=claimed,
                    reason=f"segment {index} replays differently: {cmp.describe()}",
                    details={"segments": len(steps), "sampled": picks},
                )
        tail = run("tail", start_step=steps[-1], start_checkpoint=ckpt_dir / entries[-1]["file"])
        if not tail.ok:
            return Verdict(
                job_id,
                slot,
                Outcome.REJECT,
                claimed_gpu_seconds=claimed,
                reason=f"the job does not finish from its last checkpoint ({tail.reason or tail.exit_code})",
            )
        # Device time the job plausibly took: start-up (the tail run) plus every segment's own time.
        startup = tail.wall_s
        per_segment = statistics.mean(max(0.0, t - startup) for t in times) if times else 0.0
        estimate = startup + per_segment * len(steps)
        cmp = compare.compare_results(tail.directory, results, rtol=rtol, atol=atol, answer=answer)
        if not cmp:
            control = run("tail-control", start_step=steps[-1], start_checkpoint=ckpt_dir / entries[-1]["file"])
            return self._judge_mismatch(
                job_id, slot, spec, claimed, results, tail, control, "replay from the last checkpoint", estimate, answer
            )
        return self._accept(
            job_id,
            slot,
            spec,
            claimed,
            f"{len(picks)} of {len(steps)} segments and the tail replay within tolerance",
            estimated_seconds=estimate,
        )

    def _judge_mismatch(
        self,
        job_id: int,
        slot: int,
        spec: JobSpec,
        claimed: int,
        results: Path,
        rerun: ReplayRun,
        control: ReplayRun,
        what: str,
        estimate: float,
        answer: tuple[str, ...] = (),
    ) -> Verdict:
        """Rule on results that differ from a re-run, by a second, independent re-run.

        Files the two re-runs disagree on are not the job's answer to judge (a timestamp, a random
        name); the provider is rejected only for a file the job reproduces. When nothing is left,
        the slot is voided: a check that cannot judge never slashes.
        """
        if not control.ok:
            return Verdict(
                job_id,
                slot,
                Outcome.VOID,
                claimed_gpu_seconds=claimed,
                reason=f"the {what} differs and a second one does not run here "
                f"({control.reason or control.exit_code}): cannot judge",
            )
        rtol, atol = self.settings.rtol, self.settings.atol
        judged = compare.judge_by_reruns(
            rerun.directory, control.directory, results, rtol=rtol, atol=atol, answer=answer
        )
        if judged.verdict == "differs":
            return Verdict(
                job_id, slot, Outcome.REJECT, claimed_gpu_seconds=claimed, reason=f"{what} differs: {judged.describe()}"
            )
        if judged.verdict == "undecidable":
            return Verdict(
                job_id, slot, Outcome.VOID, claimed_gpu_seconds=claimed, reason=f"cannot judge: {judged.describe()}"
            )
        return self._accept(job_id, slot, spec, claimed, f"{what}: {judged.describe()}", estimated_seconds=estimate)

    def check_redundant(self, job_id: int, spec: JobSpec, slots: list[Any]) -> list[Verdict]:
        """Compare every committed slot's results; the strict majority is accepted, the rest rejected."""
        fetched: list[tuple[Any, Path]] = []
        failed: list[Any] = []
        answer: tuple[str, ...] = ()
        for s in slots:
            if s.status not in (SlotStatus.COMMITTED, SlotStatus.DISPUTED):
                continue
            try:
                # The bundle once, from the first slot that serves it: it names the job's answer.
                results, bundle_dir, _seed = self.fetch(job_id, s.slot, bundle=not fetched)
                if bundle_dir is not None:
                    answer = _declared_answer(bundle_dir)
                fetched.append((s, results))
            except (FlopexError, OSError) as exc:
                log.info("verifier: job %d slot %d: results not available: %s", job_id, s.slot, exc)
                failed.append(s)
        total = len(fetched) + len(failed)
        winners, groups = compare.majority(
            [p for _s, p in fetched], answer=answer, rtol=self.settings.rtol, atol=self.settings.atol
        )
        if winners is None or 2 * len(winners) <= total:
            return [
                Verdict(
                    job_id,
                    s.slot,
                    Outcome.VOID,
                    claimed_gpu_seconds=s.gpu_seconds,
                    reason=f"no majority among {total} results (groups {groups})",
                )
                for s in [*(s for s, _p in fetched), *failed]
            ]
        # The work's size is known from the peers who did it: the smallest claim in the majority
        # bounds the others (with the billing slack for slower devices).
        least = float(min(fetched[i][0].gpu_seconds for i in winners))
        verdicts = []
        for i, (s, _path) in enumerate(fetched):
            if i in winners:
                verdicts.append(
                    self._accept(
                        job_id,
                        s.slot,
                        spec,
                        s.gpu_seconds,
                        f"in the majority of {len(winners)} of {total}",
                        estimated_seconds=least,
                    )
                )
            else:
                verdicts.append(
                    Verdict(
                        job_id,
                        s.slot,
                        Outcome.REJECT,
                        claimed_gpu_seconds=s.gpu_seconds,
                        reason=f"dissents from the majority of {len(winners)} of {total}",
                    )
                )
        verdicts.extend(
            Verdict(
                job_id, s.slot, Outcome.REJECT, claimed_gpu_seconds=s.gpu_seconds, reason="served no results to compare"
            )
            for s in failed
        )
        return verdicts

    # ------------------------------------------------------------------ capacity

    def local_gflops(self) -> float:
        """This machine's float32 matrix-product throughput (measured once), for billing bounds."""
        if self._local_gflops is None:
            import torch

            n = 512
            a, b = torch.randn(n, n), torch.randn(n, n)
            best = math.inf
            for _ in range(3):
                t0 = time.perf_counter()
                a @ b
                best = min(best, time.perf_counter() - t0)
            self._local_gflops = max(1.0, 2 * n**3 / best / 1e9)
        return self._local_gflops

    def prove_capacity(self, provider: str, seed: int, n: int) -> tuple[int, float, float]:
        """Have ``provider``'s worker compute challenge ``seed`` of size ``n`` and check sampled rows.

        Returns ``(attested GFLOP/s, seconds it reported, wall seconds)``; raises
        :class:`VerificationError` (or a transport error) when the worker cannot prove the product.
        """
        with self._client(provider) as client:
            t0 = time.perf_counter()
            result = client.capacity_challenge(seed, n)
            wall = time.perf_counter() - t0
            picks = self._rng.sample(range(n), min(self.settings.capacity_rows, n))
            reply = client.challenge_rows(result.challenge_id, picks)
        rows = {r.index: (r.data, list(r.proof)) for r in reply.rows}
        if sorted(rows) != sorted(picks):
            raise VerificationError("capacity: the worker did not return the rows asked for")
        verify_rows(seed, n, result.rows_root, rows)
        gflops = billing.attested_gflops(challenge_flops(n), result.elapsed_seconds, wall)
        return gflops, result.elapsed_seconds, wall

    def probe_reservation(self, provider: str, gpus: int) -> None:
        """Check that ``provider``'s worker answers as its offer says, with ``gpus`` devices of its kind, and computes.

        Raises :class:`VerificationError` (or a transport error) when it does not.
        """
        offer = self.contracts.registry.offer(provider)
        kind = offer.device_kind.name.lower()
        with self._client(provider) as client:
            info = client.info()
        signer = info.receipt_signer or info.provider_address  # older workers report the signer only
        if signer.lower() != offer.signer.lower():
            raise VerificationError(
                f"the worker at {offer.endpoint} signs as {signer}, not as the offer's {offer.signer}"
            )
        devices = [d for d in info.devices if d.kind == kind]
        if len(devices) < gpus:
            raise VerificationError(f"the worker offers {len(devices)} {kind} device(s); the reservation holds {gpus}")
        self.prove_capacity(provider, secrets.randbits(63), self.settings.capacity_n)

    def challenge_capacity(self, provider: str) -> dict[str, Any]:
        """Challenge ``provider``'s worker with a seeded, timed product; attest the best it proved once the
        claim stands, or after ``capacity_attempts`` challenges (the record says ``deferred`` before)."""
        chain, registry = self.contracts.chain, self.contracts.registry
        n = self.settings.capacity_n
        with chain.locked():
            head = chain.w3.eth.get_block("latest")
        seed = int.from_bytes(
            compare.stable_hash([bytes(head["hash"]), bytes.fromhex(provider[2:]), secrets.token_bytes(8)])[:8], "big"
        )
        record: dict[str, Any] = {"provider": provider, "n": n, "seed": seed}
        interval = self.settings.capacity_interval_s
        self.capacity_due[provider] = (
            (time.time() + interval * (0.5 + self._rng.random())) if interval > 0 else math.inf
        )
        # A sequential test over time: one slow product on a busy host says little. The verifier
        # attests once billing.capacity_decision decides: at the first measurement that meets the
        # claim (load only slows a product), or after enough challenges that none did for an honest
        # provider to be that unlucky at most CAPACITY_FALSE_FLAG_RATE of the time (a one-sided
        # sign test, capped at `capacity_attempts`). Between tries it waits `capacity_retry_s` with
        # jitter (fresh, unpredictable seed; the worker's rate limit allows a challenge per 10 s
        # after a burst of 3). It attests the best rate; a failed attempt counts as 0.
        claimed = registry.offer(provider).claimed_gflops
        measured = self.capacity_pending.setdefault(provider, [])
        try:
            one, reported, wall = self.prove_capacity(provider, seed, n)
            record.update(reported_s=reported, wall_s=wall, ok=True)
        except (FlopexError, OSError) as exc:
            one = 0
            record.update(ok=False, reason=str(exc))
        measured.append(one)
        decision = billing.capacity_decision(claimed, measured, max_attempts=self.settings.capacity_attempts)
        gflops = decision.attest
        record.update(gflops=gflops, attempts=len(measured), measured=list(measured), p_value=decision.p_value)
        if not decision.decided:
            retry = self.settings.capacity_retry_s * (0.5 + self._rng.random())
            self.capacity_due[provider] = time.time() + retry
            record["deferred"] = True
            log.info(
                "verifier: capacity of %s: %d GFLOP/s so far against a claim of %d; challenging again in %.0f s",
                provider,
                gflops,
                claimed,
                retry,
            )
            self.capacity_log.append(record)
            return record
        del self.capacity_pending[provider]
        try:
            receipt = registry.attest_throughput(self.account, provider, gflops)
            flagged = any(getattr(e, "flagged", False) for e in registry.events_in(receipt))
            record["flagged"] = flagged
            log.info("verifier: capacity of %s: %d GFLOP/s%s", provider, gflops, " (flagged)" if flagged else "")
        except ContractRevert as exc:
            record["refused"] = exc.reason
        self.capacity_log.append(record)
        return record


def _declared_answer(bundle_dir: Path) -> tuple[str, ...]:
    """The files the bundle declares as its answer (``verification.outputs``); () compares every file."""
    try:
        return load_bundle(bundle_dir).spec.verification.outputs
    except FlopexError:
        return ()


def read_checkpoint_log(ckpt_dir: Path) -> list[dict[str, Any]]:
    """The SDK's checkpoint log, each entry checked against its file's sha256; [] when there is none.

    Raises :class:`VerificationError` when a logged checkpoint is missing or does not match its hash
    (the log and the files are both under the committed result root).
    """
    import hashlib

    path = ckpt_dir / CHECKPOINT_LOG
    if not path.exists():
        return []
    entries: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            name, digest, step = str(entry["file"]), str(entry["sha256"]), int(entry["step"])
        except (ValueError, KeyError, TypeError):
            raise VerificationError("checkpoint log: malformed line") from None
        file = ckpt_dir / name
        if "/" in name or not file.is_file() or hashlib.sha256(file.read_bytes()).hexdigest() != digest:
            raise VerificationError(f"checkpoint log: {name} is missing or does not match its hash")
        entries.append({"step": step, "file": name, "sha256": digest})
    if [e["step"] for e in entries] != sorted({e["step"] for e in entries}):
        raise VerificationError("checkpoint log: steps are not strictly increasing")
    return entries


def run_verifier(
    contracts: Contracts, account: LocalAccount, settings: VerifierSettings, stop_event: threading.Event
) -> VerifierDaemon:
    """Stake, register and run a verifier until ``stop_event`` is set (the CLI's entry point)."""
    daemon = VerifierDaemon(contracts, account, settings)
    daemon.ensure_registered()
    daemon.run(stop_event)
    if daemon.fatal:
        raise WorkerError(f"verifier stopped: {daemon.fatal}")
    return daemon
