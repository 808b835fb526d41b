"""The loop every daemon of one account on the market runs: the provider's, the pool's, the verifier's.

A daemon says what one :meth:`StepLoop.step` does; the loop calls it until stopped, each time
something may have changed: a new block on the chain (:meth:`~marketplace.chain.client.Chain.add_block_listener`),
a :meth:`StepLoop.wake` from what the daemon serves (its worker ending a job), or at the latest
``poll_interval_s`` after the last step (deadlines pass with the clock, not only with blocks).
A step that fails on a condition of the market (a :class:`FlopexError`: a revert, an
unreachable node) is logged and tried again on the next pass; a chain that no longer has the market
(a dev chain that was restarted) or an unexpected error stops the daemon with the reason in
:attr:`StepLoop.fatal`, rather than leaving a dead thread in a process that looks alive.
"""

from __future__ import annotations

import logging
import math
import threading
import time

from eth_account.signers.local import LocalAccount

from marketplace.contracts.deployment import Contracts
from marketplace.errors import FlopexError

__all__ = ["NUDGE_GAP_S", "STEP_GAP_S", "StepLoop"]

#: The shortest wall-clock gap between two blocks one daemon asks a dev chain for: its clock moves
#: by about a second a block, so a daemon's nudges keep it near the wall clock's pace, however
#: often other daemons' blocks wake it.
NUDGE_GAP_S = 1.0
#: The shortest gap between the starts of two steps (at most ``poll_interval_s``): a burst of blocks
#: (a dev chain asked for many, other daemons' transactions) is seen a few steps at a time.
STEP_GAP_S = 0.1


class StepLoop:
    """One account on the market, stepped in a loop; subclasses say what a :meth:`step` does.

    ``role`` names it in logs and in its thread's name (``provider``, ``pool operator``, ``verifier``).
    """

    def __init__(
        self,
        contracts: Contracts,
        account: LocalAccount,
        *,
        poll_interval_s: float,
        role: str,
        log: logging.Logger,
        join_timeout_s: float = 30.0,
    ) -> None:
        self.contracts = contracts
        self.account = account
        self.poll_interval_s = poll_interval_s
        self.role = role
        self.log = log
        self.join_timeout_s = join_timeout_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._last_nudge = -math.inf
        self._step_again_at = math.inf  # a nudge put off by the gap: step again then
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

    def wake(self) -> None:
        """Step again now (after the step under way, if one is): something it acts on changed."""
        self._wake.set()

    def start(self) -> None:
        """Run :meth:`step` in a background thread until :meth:`stop`."""
        name = f"{self.role.replace(' ', '-')}-{self.address[:8]}"
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread.start()

    def run(self, stop: threading.Event | None = None) -> None:
        """Step until stopped (by :meth:`stop`, or by ``stop`` when given); see the module's docs."""
        chain = self.contracts.chain
        chain.add_block_listener(self._wake.set)
        try:
            self._loop(stop)
        finally:
            chain.remove_block_listener(self._wake.set)

    def _loop(self, stop: threading.Event | None) -> None:
        last_step = -math.inf
        while not self._stop.is_set() and not (stop is not None and stop.is_set()):
            early = last_step + min(self.poll_interval_s, STEP_GAP_S) - time.monotonic()
            if early > 0 and self._stop.wait(early):
                break
            last_step = time.monotonic()
            self._wake.clear()  # what happens from here on is seen by this step or wakes the next
            self._step_again_at = math.inf
            try:
                self.step()
            except FlopexError as exc:
                if self._market_gone():
                    self._fail(
                        f"the chain no longer has the market at {self.contracts.market.address} "
                        "(was it restarted?); redeploy and start again"
                    )
                    break
                self.log.warning("%s %s: %s", self.role, self.address, exc)
            except Exception as exc:
                if self._stop.is_set():
                    break  # stopping: what the step used may already be closed under it
                self.log.exception("%s %s: unexpected error", self.role, self.address)
                self._fail(f"unexpected error: {type(exc).__name__}: {exc}")
                break
            self._wake.wait(max(0.0, min(self.poll_interval_s, self._step_again_at - time.monotonic())))

    def _fail(self, reason: str) -> None:
        self.fatal = reason
        self.log.error("%s %s: %s", self.role, self.address, reason)
        self._stop.set()
        self._wake.set()

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
        """Stop the loop and wait for its thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.join_timeout_s)

    def now(self) -> int:
        """The time deadlines are judged by: the chain's, or the wall clock if the chain is idle."""
        return self.contracts.chain.next_timestamp()

    def nudge_clock(self) -> None:
        """Ask a dev chain for a block, so its clock catches up; other chains make blocks on their own.

        At most one every ``NUDGE_GAP_S`` seconds of wall clock: the block wakes
        every daemon on the chain, this one too, and a daemon that nudged on every wake would run the
        chain's clock ahead by a second a block as fast as blocks can be made. One put off makes the
        loop step again when it is due.
        """
        now = time.monotonic()
        if now - self._last_nudge < NUDGE_GAP_S:
            self._step_again_at = min(self._step_again_at, self._last_nudge + NUDGE_GAP_S)
            return
        self._last_nudge = now
        try:
            self.contracts.chain.mine()
        except FlopexError:
            pass  # not a dev chain: its blocks come on their own
