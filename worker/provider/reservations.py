"""Serving reserved capacity: the provider's side of its reservations (``contracts/Reservations.vy``).

A provider that offered a window of its devices and saw it bought serves the holder's jobs in
that window without an auction: the worker admits them through their lease
(:mod:`worker.node.chain_leases`, job ids from :func:`marketplace.contracts.reservations.reserved_job_id`), runs
them on at most the reserved devices at once, and meters them as any job. :class:`ReservedCapacity`
does the rest, a step at a time, for the :class:`~worker.provider.daemon.ProviderDaemon`:

- it follows the provider's offers (``OfferPosted``) and keeps the bought, unsettled ones;
- after each of the holder's jobs ends it records the job's metered GPU-seconds and result root
  on chain (``record_usage``), so the usage digest commits to every job served; a record that
  would exceed the device time the chain has seen elapse waits for the chain's clock, as a
  market commit does, and is cut to what remains once the window has closed;
- it settles each reservation once its challenge period is over (twice that when the holder
  reported it was not served), and withdraws the pay;
- it tells the daemon how many devices are reserved over any span of time, so the daemon does
  not bid reserved devices away in the job market.

A reservation nobody bought is left alone; once its window starts nobody can buy it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from eth_account.signers.local import LocalAccount

from marketplace.contracts.reservations import (
    Reservations,
    ReservationState,
    ReservationStatus,
    reserved_job,
    reserved_job_ids,
)
from marketplace.errors import ContractRevert
from marketplace.protocol.merkle import EMPTY_ROOT
from worker.node.service import WorkerServer
from worker.node.store import TERMINAL

__all__ = ["ReservedCapacity"]

log = logging.getLogger("flopex.provider.reserved")


class ReservedCapacity:
    """The reservations one provider account offered, served through its worker.

    ``tracked`` (reservation ids offered and not yet settled), ``recorded`` (job ids whose usage
    is on chain) and ``recording`` (job ids whose ``record_usage`` was being sent) are the daemon's
    memory, kept across restarts and updated in place; ``save`` writes it. A job is put in
    ``recording`` and saved before its transaction is sent, so a daemon that died in between finds
    it there and looks for its ``UsageRecorded`` event before recording it again.
    """

    def __init__(
        self,
        reservations: Reservations,
        account: LocalAccount,
        worker: WorkerServer,
        *,
        tracked: set[int] | None = None,
        recorded: set[int] | None = None,
        recording: set[int] | None = None,
        save: Callable[[], None] = lambda: None,
        nudge_clock: Callable[[], None] = lambda: None,
    ) -> None:
        self.reservations = reservations
        self.account = account
        self.worker = worker
        self.nudge_clock = nudge_clock
        self.tracked = set() if tracked is None else tracked
        self.recorded = set() if recorded is None else recorded
        self.recording = set() if recording is None else recording
        self.save = save
        self.states: dict[int, ReservationState] = {}  # as read this step
        self._challenge: int | None = None

    @property
    def challenge_period(self) -> int:
        """The contract's challenge period (fixed at deployment)."""
        if self._challenge is None:
            self._challenge = self.reservations.challenge_period()
        return self._challenge

    # ------------------------------------------------------------------ following offers

    def scan(self, from_block: int) -> None:
        """Track the provider's offers posted since ``from_block``."""
        for event in self.reservations.history("OfferPosted", from_block, provider=self.account.address):
            self.tracked.add(int(event.args["reservation_id"]))

    def reserved_gpus(self, start: int, end: int) -> int:
        """Devices promised in offers (bought or still for sale) whose windows overlap ``[start, end)``."""
        return sum(
            r.gpus
            for r in self.states.values()
            if (r.status.serving or r.status == ReservationStatus.OFFERED) and r.start < end and start < r.end
        )

    def held_now(self, now: int) -> int:
        """Devices held by bought reservations whose window is open at ``now``."""
        return sum(r.gpus for r in self.states.values() if r.status.serving and r.start <= now < r.end)

    # ------------------------------------------------------------------ one pass

    def step(self, now: int) -> None:
        """Record usage, settle and withdraw: whatever can be done at chain time ``now``."""
        self.states = {}
        for reservation_id in sorted(self.tracked):
            r = self.reservations.reservation(reservation_id)
            try:
                self._serve(r, now)
            except ContractRevert as exc:
                log.info("provider %s: reservation %d: %s", self.account.address, reservation_id, exc.reason)
        if self.reservations.credits(self.account.address) > 0:
            paid = self.reservations.withdraw(self.account)
            log.info("provider %s: withdrew %d from reservations", self.account.address, paid)

    def _serve(self, r: ReservationState, now: int) -> None:
        rid = r.reservation_id
        if r.status.terminal or (r.status == ReservationStatus.OFFERED and now >= r.start):
            self._forget(rid)  # settled, cancelled, or never bought before its window
            return
        self.states[rid] = r
        if r.status == ReservationStatus.OFFERED:
            return
        if r.status.serving:
            r = self._record_usage(r, now)
        period = self.challenge_period
        due = {
            ReservationStatus.FAILED: 0,
            ReservationStatus.RESERVED: r.end + period,
            ReservationStatus.SERVED: r.end + period,
            ReservationStatus.DISPUTED: r.end + 2 * period,
        }[r.status]
        # Usage can be recorded until `end + period`, when settling opens: what ended by then is on chain.
        if now >= due:
            self.reservations.settle(self.account, rid)
            log.info("provider %s: settled reservation %d", self.account.address, rid)
            self._forget(rid)

    def _record_usage(self, r: ReservationState, now: int) -> ReservationState:
        """Put each ended job's GPU-seconds and result root on chain; returns the updated state."""
        if now < r.start:
            return r
        closes = r.end + self.challenge_period
        for job in self.worker.manager.store.jobs_in(*TERMINAL, ids=reserved_job_ids(r.reservation_id)):
            job_id = job.job_id
            if job_id in self.recorded:
                continue
            root = job.result_root or EMPTY_ROOT
            if job_id in self.recording and self._on_chain(r.reservation_id, root):
                # Sent before a restart, and mined: do not record it twice.
                self.recorded.add(job_id)
                self.recording.discard(job_id)
                self.save()
                continue
            millis = int((job.metering or {}).get("device_millis", 0))
            if millis <= 0 or now >= closes:
                self.recorded.add(job_id)  # it never ran (nothing to record), or records are closed
                continue
            seconds = (millis + 999) // 1000
            room = r.gpus * (min(now, r.end) - r.start) - r.used_gpu_seconds
            if seconds > room:
                if now < r.end:
                    # The chain has not yet seen the device time pass (a dev chain's clock moves
                    # with blocks): ask for a block and record on a later step.
                    self.nudge_clock()
                    return r
                seconds = room  # the window is over: the rest of it is all that can be billed
            if seconds > 0:
                self.recording.add(job_id)
                self.save()
                self.reservations.record_usage(self.account, r.reservation_id, seconds, root)
                log.info(
                    "provider %s: reservation %d: recorded job %d, %d GPU-s",
                    self.account.address,
                    r.reservation_id,
                    job_id,
                    seconds,
                )
            self.recorded.add(job_id)
            self.recording.discard(job_id)
            self.save()
            r = self.reservations.reservation(r.reservation_id)
            self.states[r.reservation_id] = r
        return r

    def _on_chain(self, reservation_id: int, root: bytes) -> bool:
        """Whether a ``UsageRecorded`` of the reservation carries result root ``root``."""
        return any(
            bytes(e.args["result_root"]) == root
            for e in self.reservations.history("UsageRecorded", reservation_id=reservation_id)
        )

    def _forget(self, reservation_id: int) -> None:
        self.tracked.discard(reservation_id)
        self.states.pop(reservation_id, None)
        for done in (self.recorded, self.recording):
            for job_id in [j for j in done if (reserved_job(j) or (0, 0))[0] == reservation_id]:
                done.discard(job_id)
