"""Binding of the verifier court (``contracts/VerifierCourt.vy``) and its deployment.

The court is the only account whose rulings the market (``attest``) and the reservations contract
(``attest_failure``, ``attest_served``) take. A case is opened for a job slot that needs a ruling (a
policy check or a dispute) or for a reservation; a panel is drawn by stake-weighted lot among the
verifiers that joined, never a party; the drawn verifiers rule; anyone may appeal a ruling to a larger
panel (1, 3, 7 verifiers) with a bond; the last round's ruling is passed on, the verifiers who voted
against it are slashed and the right side is paid. See docs/verification.md and docs/economics.md.

:class:`Court` wraps every function; transactions take the sending account first, as in
:mod:`marketplace.contracts.deployment`. :func:`deploy_court` deploys it next to a market (and
reservations), names it their court and lets it slash verifier stakes in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from marketplace.chain.client import Chain
from marketplace.contracts.base import Bound, artifact
from marketplace.contracts.registry import Registry
from marketplace.errors import ConfigError
from marketplace.types import ONE_TOKEN, JobSpec, Outcome

__all__ = [
    "NO_RULING",
    "CaseKind",
    "CaseState",
    "CaseStatus",
    "Court",
    "CourtEvent",
    "CourtParameters",
    "deploy_court",
    "load_court",
]

ZERO_ADDRESS = "0x" + "00" * 20
#: The ruling of a case nobody ruled on.
NO_RULING = 3


class CaseKind(IntEnum):
    """What a case rules on."""

    SLOT = 0
    RESERVATION = 1


class CaseStatus(IntEnum):
    """Where a case stands."""

    DRAWING = 1
    VOTING = 2
    APPEALABLE = 3
    CLOSED = 4


@dataclass(frozen=True)
class CourtParameters:
    """The court's periods, bonds and penalties (the owner may change them later).

    The defaults suit a development chain, where a job's challenge window is minutes: a short appeal
    window keeps the demo and the tests moving. A public deployment sets hours (docs/economics.md).
    """

    draw_delay: int = 1  # blocks between opening a case (or an appeal) and its draw
    ruling_period: int = 300  # seconds a drawn panel has to rule
    appeal_period: int = 15  # seconds in which a ruling may be appealed
    appeal_bond: int = 20 * ONE_TOKEN  # per seat of the next panel
    vote_stake: int = 100 * ONE_TOKEN  # slashed from a vote against the final ruling
    no_show_fine: int = 10 * ONE_TOKEN  # slashed from a drawn verifier that does not rule


@dataclass(frozen=True)
class CaseState:
    """A case as the court holds it."""

    case_id: int
    kind: CaseKind
    status: CaseStatus
    round: int
    seats: int
    cast: int
    ruling: int  # an Outcome, or NO_RULING
    verified_gpu_seconds: int
    target: int  # job id or reservation id
    slot: int
    draw_block: int
    ruling_deadline: int
    appeal_deadline: int
    held: int

    @property
    def outcome(self) -> Outcome | None:
        """The latest ruling, or None when there is none."""
        return None if self.ruling == NO_RULING else Outcome(self.ruling)


@dataclass(frozen=True)
class CourtEvent:
    """One of the court's events: its name, arguments and block."""

    name: str
    args: dict[str, Any]
    block_number: int


class Court(Bound):
    """The verifier court."""

    NAME = "VerifierCourt"

    def __init__(self, chain: Chain, address: str, start_block: int = 0) -> None:
        super().__init__(chain, address)
        self.start_block = start_block

    # -- verifiers

    def join(self, account: LocalAccount) -> Any:
        """Enter ``account`` (an active verifier) into the draws."""
        return self.transact(account, "join")

    def leave(self, account: LocalAccount, verifier: str | None = None) -> Any:
        """Take ``verifier`` (default: ``account`` itself) out of the draws."""
        return self.transact(account, "leave", verifier or account.address)

    def joined(self, account: str) -> bool:
        """Whether ``account`` is in the draws."""
        return int(self.call("joined", account)) > 0

    def verifier_count(self) -> int:
        """How many verifiers are in the draws."""
        return int(self.call("verifier_count"))

    # -- cases

    def open_slot_case(self, account: LocalAccount, job_id: int, spec: JobSpec, slot: int) -> Any:
        """Open the case of a committed or disputed slot."""
        return self.transact(account, "open_slot_case", job_id, spec.as_tuple(), slot)

    def open_reservation_case(self, account: LocalAccount, reservation_id: int) -> Any:
        """Open the case of a reservation."""
        return self.transact(account, "open_reservation_case", reservation_id)

    def draw(self, account: LocalAccount, case_id: int) -> Any:
        """Draw the panel of a case's round."""
        return self.transact(account, "draw", case_id)

    def rule(self, account: LocalAccount, case_id: int, outcome: Outcome, verified_gpu_seconds: int = 0) -> Any:
        """Rule as a drawn verifier."""
        return self.transact(account, "rule", case_id, int(outcome), verified_gpu_seconds)

    def timeout(self, account: LocalAccount, case_id: int) -> Any:
        """Fine and replace the drawn verifiers that did not rule in time."""
        return self.transact(account, "timeout", case_id)

    def appeal(self, account: LocalAccount, case_id: int) -> Any:
        """Appeal a case's latest ruling (approve the bond first: :meth:`next_appeal_bond`)."""
        return self.transact(account, "appeal", case_id)

    def finalize(self, account: LocalAccount, case_id: int) -> Any:
        """Close a ruled case after its appeal window."""
        return self.transact(account, "finalize", case_id)

    def withdraw(self, account: LocalAccount) -> int:
        """Withdraw ``account``'s credit; returns the amount."""
        before = self.credits(account.address)
        self.transact(account, "withdraw")
        return before

    def decide_alone(
        self, verifier: LocalAccount, case_id: int, outcome: Outcome, verified_gpu_seconds: int = 0
    ) -> Any:
        """On a development chain whose only joined verifier is ``verifier``: draw it, rule, move the
        chain's clock past the appeal window and close the case, so its ruling reaches the market or the
        reservations contract. Returns the closing transaction's receipt."""
        if self.chain.block_number() < self.case(case_id).draw_block:
            self.chain.mine()  # the draw's block must come first (a node estimates on the latest block)
        self.draw(verifier, case_id)
        ruled = self.rule(verifier, case_id, outcome, verified_gpu_seconds)
        if self.case(case_id).status == CaseStatus.CLOSED:
            return ruled  # no appeal could finish inside the slot's window: the ruling went on at once
        self.chain.time_travel(self.parameters().appeal_period)
        return self.finalize(verifier, case_id)

    def decide_slot_alone(
        self, verifier: LocalAccount, job_id: int, spec: JobSpec, slot: int, outcome: Outcome, verified: int = 0
    ) -> Any:
        """:meth:`decide_alone` on a job slot's case, opened first when there is none."""
        case_id = self.slot_case(job_id, slot)
        if not case_id:
            self.open_slot_case(verifier, job_id, spec, slot)
            case_id = self.slot_case(job_id, slot)
        return self.decide_alone(verifier, case_id, outcome, verified)

    # -- views

    def case(self, case_id: int) -> CaseState:
        """A case's state."""
        c = self.call("cases", case_id)
        return CaseState(
            case_id,
            CaseKind(int(c[0])),
            CaseStatus(int(c[1])),
            *(int(x) for x in c[2:]),
        )

    def case_count(self) -> int:
        """Cases opened so far."""
        return int(self.call("case_count"))

    def slot_case(self, job_id: int, slot: int) -> int:
        """The case of a job slot; 0 when none."""
        return int(self.call("slot_case", job_id, slot))

    def reservation_case(self, reservation_id: int) -> int:
        """The case of a reservation; 0 when none."""
        return int(self.call("reservation_case", reservation_id))

    def panel(self, case_id: int, round_: int) -> list[str]:
        """The verifiers seated in a round (vacant seats left out)."""
        return [to_checksum_address(a) for a in self.call("panel", case_id, round_) if int(a, 16) != 0]

    def votes(self, case_id: int, seat: int) -> tuple[bool, int, int]:
        """``(voted, outcome, verified GPU-seconds)`` of a seat."""
        word = int(self.call("votes", case_id, seat))
        return bool(word & 1), (word >> 8) & 255, word >> 16

    def next_appeal_bond(self, case_id: int) -> int:
        """The bond an appeal of the case's latest ruling puts up."""
        c = self.case(case_id)
        return int(self.call("appeal_bond")) * int(self.call("panel_size", c.round + 1))

    def deadline(self, case_id: int) -> int:
        """The last moment the case's ruling can be passed on (0: no longer)."""
        return int(self.call("deadline", case_id))

    def credits(self, account: str) -> int:
        """What ``account`` can withdraw."""
        return int(self.call("credits", account))

    def total_credits(self) -> int:
        """Sum of every credit."""
        return int(self.call("total_credits"))

    def total_held(self) -> int:
        """What open cases hold (appeal bonds and fines)."""
        return int(self.call("total_held"))

    def parameters(self) -> CourtParameters:
        """The court's current periods, bonds and penalties."""
        return CourtParameters(
            draw_delay=int(self.call("draw_delay")),
            ruling_period=int(self.call("ruling_period")),
            appeal_period=int(self.call("appeal_period")),
            appeal_bond=int(self.call("appeal_bond")),
            vote_stake=int(self.call("vote_stake")),
            no_show_fine=int(self.call("no_show_fine")),
        )

    def history(self, name: str, from_block: int | None = None, **filters: Any) -> list[CourtEvent]:
        """Events ``name`` since ``from_block`` (the deployment's first block), filtered on indexed arguments."""
        with self.chain.locked():
            logs = getattr(self.contract.events, name)().get_logs(
                from_block=self.start_block if from_block is None else from_block, argument_filters=filters or None
            )
        return [CourtEvent(log["event"], dict(log["args"]), int(log["blockNumber"])) for log in logs]


def deploy_court(
    chain: Chain,
    deployer: LocalAccount,
    *,
    token: str,
    registry: Registry,
    market: str,
    reservations: str | None,
    treasury: str,
    parameters: CourtParameters | None = None,
) -> Court:
    """Deploy the court over a market (and reservations) and let it slash verifier stakes.

    ``deployer`` must own the registry; naming the court in the market and the reservations contract
    is left to the caller (:func:`marketplace.contracts.deployment.deploy_all` does both).
    """
    params = parameters or CourtParameters()
    owner = registry.owner()
    if to_checksum_address(owner) != deployer.address:
        raise ConfigError(f"only the registry's owner {owner} can let a court slash")
    art = artifact(Court.NAME)
    receipt = chain.deploy(
        deployer,
        art["abi"],
        art["bytecode"],
        token,
        registry.address,
        market,
        reservations or ZERO_ADDRESS,
        to_checksum_address(treasury),
        params.draw_delay,
        params.ruling_period,
        params.appeal_period,
        params.appeal_bond,
        params.vote_stake,
        params.no_show_fine,
    )
    court = Court(chain, str(receipt["contractAddress"]))
    registry.authorize(deployer, court.address, "court")
    return court


def load_court(chain: Chain, address: str, start_block: int = 0) -> Court:
    """Bind to a deployed court; checks that code exists at ``address``."""
    with chain.locked():
        code = chain.w3.eth.get_code(to_checksum_address(address))
    if not code:
        raise ConfigError(f"no court contract at {address} on this chain; is the deployment file stale?")
    return Court(chain, address, start_block)
