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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount

from marketplace.contracts.deployment import Contracts
from marketplace.errors import WorkerError
from marketplace.types import JobSpec, SlotStatus
from worker.daemon import StepLoop

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
    if status in (SlotStatus.ACCEPTED, SlotStatus.REJECTED, SlotStatus.VOIDED, SlotStatus.NO_SHOW):
        return True
    if status == SlotStatus.COMMITTED:
        return now >= committed_at + spec.challenge_window
    if status == SlotStatus.DISPUTED:
        return now >= committed_at + 2 * spec.challenge_window
    return False


class ChainDaemon(StepLoop):
    """A :class:`~worker.daemon.StepLoop` that remembers its bids and slots in a JSON state file.

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
        super().__init__(contracts, account, poll_interval_s=poll_interval_s, role=role, log=log)
        self.state_path = state_path
        self.memory = self._load()

    def stop(self) -> None:
        """Stop the loop (a worker is stopped by its owner) and save the memory."""
        super().stop()
        self._save()

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
