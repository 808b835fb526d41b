"""Ruling on reservations reported not served (``Reservations.report_not_served``).

A holder that says its reserved devices did not serve it puts up a bond and the reservation is
``DISPUTED``; the referee brings it to the verifier court, which draws a panel (never the provider
or the holder); a drawn verifier rules, and the court's final ruling goes to the reservations
contract (after a second challenge period with none, the provider is paid and gets the bond).
:class:`ReservationReferee` is the verifier's side, run by the
:class:`~worker.verifier.daemon.VerifierDaemon` each step, for the cases its verifier was drawn for:

- **During the window** it probes the provider's worker: it must answer at the offer's endpoint,
  sign as the offer's receipt key, list at least the reserved number of devices of the offer's
  kind, and prove a seeded capacity challenge (a timed matrix product whose sampled rows pass
  Freivalds' test against their Merkle root). A probe that passes rules the report down
  (``attest_served``: the bond goes to the provider). A worker that fails ``attempts`` probes in a
  row, ``interval_s`` apart (a network blip is not a failure), did not serve: ``attest_failure``
  (the holder is refunded with its bond and the slash).
- **After the window** there is nothing left to probe. Usage records on chain (``record_usage``,
  one per job the provider ran for the holder, with its result root) show it served:
  ``attest_served``. With none, a report cannot be told from a holder that never sent a job, so
  the referee does not rule and the contract refunds the holder without slashing anyone.

What a probe shows is that the reserved devices were there and computing for a stranger at the
time of the report, not that the holder's own jobs were admitted: a provider that answers probes
while refusing its holder's jobs is not caught by them. docs/reservations.md discusses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount

from marketplace.contracts.court import Court
from marketplace.contracts.reservations import Reservations, ReservationStatus
from marketplace.errors import ContractRevert, FlopexError
from marketplace.types import Outcome

__all__ = ["ReservationReferee", "Ruling"]

log = logging.getLogger("flopex.verifier.reservations")


@dataclass(frozen=True)
class Ruling:
    """What the referee decided about one report."""

    reservation_id: int
    outcome: str  # "served", "failed" or "no ruling"
    reason: str


@dataclass
class _Report:
    failures: int = 0
    next_probe: float = 0.0
    last_error: str = ""


class ReservationReferee:
    """Rules on the reports that reservations were not served."""

    def __init__(
        self,
        reservations: Reservations,
        account: LocalAccount,
        probe: Callable[[str, int], None],
        *,
        court: Court | None,
        rule: Callable[[int, Outcome], None],
        attempts: int = 3,
        interval_s: float = 10.0,
    ) -> None:
        self.reservations = reservations
        self.account = account
        self.probe = probe
        self.court = court
        self.rule = rule
        #: Reservation -> the case this verifier holds a seat in.
        self.seats: dict[int, int] = {}
        self.attempts = max(1, attempts)
        self.interval_s = interval_s
        self.reports: dict[int, _Report] = {}
        self.rulings: list[Ruling] = []

    def scan(self, from_block: int) -> None:
        """Bring the reports made since ``from_block`` to the court."""
        for event in self.reservations.history("NotServedReported", from_block):
            reservation_id = int(event.args["reservation_id"])
            if self.court is None or self.court.reservation_case(reservation_id):
                continue
            try:
                self.court.open_reservation_case(self.account, reservation_id)
            except ContractRevert as exc:
                log.info("verifier: reservation %d: case not opened: %s", reservation_id, exc.reason)

    def take_seat(self, reservation_id: int, case_id: int) -> None:
        """This verifier was drawn to rule on ``reservation_id``'s case ``case_id``."""
        self.seats[reservation_id] = case_id
        self.reports.setdefault(reservation_id, _Report())

    def step(self, now: int) -> None:
        """Rule on whatever can be ruled on at chain time ``now``."""
        for reservation_id in sorted(self.reports):
            try:
                self._handle(reservation_id, now)
            except ContractRevert as exc:
                log.info("verifier: reservation %d: %s", reservation_id, exc.reason)
                self.reports.pop(reservation_id, None)

    def _handle(self, reservation_id: int, now: int) -> None:
        r = self.reservations.reservation(reservation_id)
        me = self.account.address
        serving = (ReservationStatus.RESERVED, ReservationStatus.DISPUTED)
        if r.status not in serving or me in (r.provider, r.holder) or reservation_id not in self.seats:
            self.reports.pop(reservation_id, None)  # ruled on already, settled, or not ours to judge
            return
        report = self.reports[reservation_id]
        if now >= r.end:
            if r.usage_records > 0:
                self._rule(
                    reservation_id, "served", f"{r.usage_records} usage record(s) on chain, {r.used_gpu_seconds} GPU-s"
                )
            else:
                self._rule(reservation_id, "no ruling", "reported after the window with no usage on chain")
            return
        if time.monotonic() < report.next_probe:
            return
        try:
            self.probe(r.provider, r.gpus)
        except (FlopexError, OSError) as exc:
            report.failures += 1
            report.last_error = str(exc)
            report.next_probe = time.monotonic() + self.interval_s
            log.info(
                "verifier: reservation %d: probe %d of %d failed: %s",
                reservation_id,
                report.failures,
                self.attempts,
                exc,
            )
            if report.failures >= self.attempts:
                self._rule(reservation_id, "failed", f"{report.failures} probes failed; last: {report.last_error}")
            return
        self._rule(
            reservation_id, "served", "the worker answered with the reserved devices and proved a capacity challenge"
        )

    def _rule(self, reservation_id: int, outcome: str, reason: str) -> None:
        case_id = self.seats.pop(reservation_id)
        vote = {"served": Outcome.ACCEPT, "failed": Outcome.REJECT}.get(outcome, Outcome.VOID)
        self.rule(case_id, vote)
        self.rulings.append(Ruling(reservation_id, outcome, reason))
        self.reports.pop(reservation_id, None)
        log.info("verifier: reservation %d: %s (%s)", reservation_id, outcome, reason)
