"""What every daemon that drives an account on the market shares: its step loop and its memory.

A :class:`ChainDaemon` runs its :meth:`~ChainDaemon.step` in a background thread until stopped,
retries a step that failed on a condition of the chain, stops with a reason (:attr:`fatal`) on a
chain that no longer has the market or on a bug, and keeps its :class:`Memory` (last block read,
bids, slots) in a JSON state file, so a restarted daemon carries on where it left off. The
provider daemon (:mod:`worker.provider.daemon`), a pool's member daemon and a pool's operator
daemon (:mod:`worker.pool.operator`) are ChainDaemons.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from marketplace.contracts.deployment import Contracts
from marketplace.errors import FlopexError, WorkerError
from marketplace.types import JobSpec, SlotStatus

__all__ = ["ChainDaemon", "Memory", "can_settle"]


@dataclass
class Memory:
    """What a daemon must not forget across restarts."""

    last_block: int = -1
    bids: dict[int, dict[str, Any]] = field(default_factory=dict)  # job -> price, salt, revealed
    slots: dict[int, int] = field(default_factory=dict)  # job -> slot index
    done: set[int] = field(default_factory=set)  # jobs whose slot is settled
    ignored: set[int] = field(default_factory=set)  # jobs it will not bid for
    reservations: set[int] = field(default_factory=set)  # offered reservations not yet settled
    recorded: set[int] = field(default_factory=set)  # reserved jobs whose usage is on chain
    recording: set[int] = field(default_factory=set)  # reserved jobs whose record_usage may be in flight

    def to_json(self) -> dict[str, Any]:
        return {
            "last_block": self.last_block,
            "bids": {str(k): v for k, v in self.bids.items()},
            "slots": {str(k): v for k, v in self.slots.items()},
            "done": sorted(self.done),
            "ignored": sorted(self.ignored),
            "reservations": sorted(self.reservations),
            "recorded": sorted(self.recorded),
            "recording": sorted(self.recording),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Memory:
        return cls(
            last_block=int(data.get("last_block", -1)),
            bids={int(k): v for k, v in data.get("bids", {}).items()},
            slots={int(k): int(v) for k, v in data.get("slots", {}).items()},
            done=set(map(int, data.get("done", []))),
            ignored=set(map(int, data.get("ignored", []))),
            reservations=set(map(int, data.get("reservations", []))),
            recorded=set(map(int, data.get("recorded", []))),
            recording=set(map(int, data.get("recording", []))),
        )


def can_settle(status: SlotStatus, committed_at: int, spec: JobSpec, now: int) -> bool:
    """Whether a slot in ``status``, committed at ``committed_at``, can be settled at ``now``."""
    if status in (SlotStatus.ACCEPTED, SlotStatus.REJECTED, SlotStatus.VOIDED):
        return True
    if status == SlotStatus.COMMITTED:
        return now >= committed_at + spec.challenge_window
    if status == SlotStatus.DISPUTED:
        return now >= committed_at + 2 * spec.challenge_window
    return False


class ChainDaemon:
    """One account on the market, stepped in a loop; subclasses say what a :meth:`step` does.

    ``role`` names it in logs and its thread's name (``provider``, ``member``, ``pool operator``).
    """

    def __init__(
        self,
        contracts: Contracts,
        account: LocalAccount,
        state_path: Path,
        *,
        poll_interval_s: float,
        role: str,
        log: logging.Logger,
    ) -> None:
        self.contracts = contracts
        self.account = account
        self.state_path = state_path
        self.poll_interval_s = poll_interval_s
        self.role = role
        self.log = log
        self.memory = self._load()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Why the daemon stopped by itself, if it did.
        self.fatal: str | None = None

    @property
    def address(self) -> str:
        """The daemon's account on chain."""
        return self.account.address

    def step(self) -> None:
        """Do everything that can be done now."""
        raise NotImplementedError

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Run :meth:`step` in a background thread until :meth:`stop`."""
        name = f"{self.role.replace(' ', '-')}-{self.address[:8]}"
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread.start()

    def run(self) -> None:
        """Step until stopped; errors of one step are logged and the next step tries again.

        An unreachable chain is retried; a chain that no longer has the market (a dev chain that
        was restarted) stops the daemon with a clear reason in :attr:`fatal`.
        """
        while not self._stop.is_set():
            try:
                self.step()
            except FlopexError as exc:
                if self._market_gone():
                    self.fatal = (
                        f"the chain no longer has the market at {self.contracts.market.address} "
                        "(was it restarted?); redeploy and start again"
                    )
                    self.log.error("%s %s: %s", self.role, self.address, self.fatal)
                    self._stop.set()
                    break
                self.log.warning("%s %s: %s", self.role, self.address, exc)
            except Exception as exc:
                if self._stop.is_set():
                    break  # stopping: the worker may already be closed under us
                # A bug, not a condition of the market: stop with the reason rather than hang on
                # a dead thread while the process looks alive.
                self.log.exception("%s %s: unexpected error", self.role, self.address)
                self.fatal = f"unexpected error: {type(exc).__name__}: {exc}"
                self._stop.set()
                break
            self._stop.wait(self.poll_interval_s)

    def _market_gone(self) -> bool:
        """True when the chain answers but has no code at the market's address."""
        try:
            with self.contracts.chain.locked():
                return not self.contracts.chain.w3.eth.get_code(self.contracts.market.address)
        except Exception:  # unreachable: not gone, just away
            return False

    @property
    def stopped(self) -> bool:
        """True once the loop has ended (stopped or failed)."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Stop the loop (a worker is stopped by its owner) and save the memory."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._save()

    # ------------------------------------------------------------------ the chain's clock

    def now(self) -> int:
        """The time deadlines are judged by: the chain's, or the wall clock if the chain is idle."""
        return self.contracts.chain.next_timestamp()

    def _nudge_clock(self) -> None:
        """Ask a dev chain for a block, so its clock catches up; other chains make blocks on their own."""
        try:
            self.contracts.chain.mine()
        except FlopexError:
            pass  # not a dev chain: its blocks come on their own

    # ------------------------------------------------------------------ memory

    def _load(self) -> Memory:
        try:
            return Memory.from_json(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return Memory()
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise WorkerError(f"{self.role} state {self.state_path} is corrupt: {exc}") from exc

    def _save(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(self.memory.to_json()))
        os.replace(tmp, self.state_path)
