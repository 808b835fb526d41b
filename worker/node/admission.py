"""Admission control of the worker's gRPC service: nobody can freeze a worker without paying for it.

:class:`Admission` is a server interceptor on ``flopex.v1.WorkerService`` (health checks and
reflection pass untouched). Every rpc belongs to a class — ``upload``, ``stream`` (watches,
downloads), ``call`` (the other signed unary rpcs and GetInfo) or ``challenge`` (the public
CapacityChallenge and ChallengeRows) — and each class has a global cap and a per-peer cap on
concurrent calls; a call beyond either is refused at once with RESOURCE_EXHAUSTED, before it is
parsed or authorised. Capacity challenges are also rate limited per peer and globally
(:class:`TokenBucket`), and so are the lease look-ups signed requests cause (the service checks
the signature first, so only a recoverable signature costs one). The server's thread pool is
sized as the sum of the caps plus a reserve, so health checks always find a thread.

:class:`Watchdog` cancels calls that outlive a deadline set by the service (an upload whose first
message does not arrive in time, or that falls silent between chunks).
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from marketplace.rpc import SERVICE_NAME

__all__ = ["STREAM_METHODS", "Admission", "AdmissionLimits", "TokenBucket", "Watchdog", "method_class", "peer_host"]

STREAM_METHODS = frozenset({"WatchJob", "DownloadResults", "DownloadBundle", "DownloadDataset"})
CHALLENGE_METHODS = frozenset({"CapacityChallenge", "ChallengeRows"})


def method_class(method: str) -> str:
    """The admission class of an rpc name: ``upload``, ``stream``, ``challenge`` or ``call``.

    Uploads have a class of their own: they are the only stream that can be opened before anything
    is signed (the signature is in the first message), so a flood of them leaves watches and
    downloads alone.
    """
    if method in ("UploadBundle", "PutDataset"):
        return "upload"
    if method in STREAM_METHODS:
        return "stream"
    if method in CHALLENGE_METHODS:
        return "challenge"
    return "call"


def peer_host(peer: str) -> str:
    """The host part of a gRPC peer string (``ipv4:1.2.3.4:5``, ``ipv6:[::1]:5``, ``unix:...``)."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6" and rest.startswith("["):
        return rest[1 : rest.find("]")]
    if kind in ("ipv4", "ipv6"):
        return rest.rsplit(":", 1)[0]
    return peer


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """Caps on concurrent calls per class, globally and per peer host; challenge rates."""

    uploads: int = 32
    uploads_per_peer: int = 8
    streams: int = 64
    streams_per_peer: int = 16
    calls: int = 32
    calls_per_peer: int = 16
    challenges: int = 2
    challenges_per_peer: int = 1
    challenge_rate_per_peer: float = 0.1
    """Capacity challenges a peer may start per second (after its burst)."""
    challenge_burst_per_peer: int = 3
    challenge_rate: float = 0.5
    """Capacity challenges the worker starts per second, all peers together (after the burst)."""
    challenge_burst: int = 5
    lookup_rate_per_peer: float = 50.0
    """Lease look-ups (a chain read when not cached) a peer's well-signed requests may cause per second."""
    lookup_burst_per_peer: int = 200
    lookup_rate: float = 500.0
    """Lease look-ups per second, all peers together."""
    lookup_burst: int = 1000

    def cap(self, cls: str) -> tuple[int, int]:
        """(global, per-peer) caps of class ``cls``."""
        if cls == "upload":
            return self.uploads, self.uploads_per_peer
        if cls == "stream":
            return self.streams, self.streams_per_peer
        if cls == "challenge":
            return self.challenges, self.challenges_per_peer
        return self.calls, self.calls_per_peer

    def threads(self, reserve: int = 8) -> int:
        """Threads the server needs so that every admitted call and ``reserve`` more (health) run."""
        return self.uploads + self.streams + self.calls + self.challenges + reserve


class TokenBucket:
    """A token bucket per key plus one for all keys together; thread-safe, with bounded memory."""

    def __init__(self, rate: float, burst: int, global_rate: float, global_burst: int, max_keys: int = 4096) -> None:
        self.rate, self.burst = rate, float(burst)
        self.global_rate, self.global_burst = global_rate, float(global_burst)
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[float, float]] = {}
        self._global = (float(global_burst), time.monotonic())

    @staticmethod
    def _refill(state: tuple[float, float], rate: float, burst: float, now: float) -> float:
        tokens, stamp = state
        return min(burst, tokens + (now - stamp) * rate)

    def take(self, key: str) -> bool:
        """Take one token for ``key`` (and one of the global bucket); False when either is empty."""
        now = time.monotonic()
        with self._lock:
            mine = self._refill(self._keys.get(key, (self.burst, now)), self.rate, self.burst, now)
            every = self._refill(self._global, self.global_rate, self.global_burst, now)
            if mine < 1 or every < 1:
                self._keys[key] = (mine, now)
                self._global = (every, now)
                return False
            if key not in self._keys and len(self._keys) >= self.max_keys:
                full = [k for k, (t, s) in self._keys.items() if t + (now - s) * self.rate >= self.burst]
                for k in full or list(self._keys)[: self.max_keys // 2]:
                    del self._keys[k]
            self._keys[key] = (mine - 1, now)
            self._global = (every - 1, now)
            return True


class Watchdog:
    """One thread that calls a function when its deadline passes, unless disarmed first."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._actions: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="rpc-watchdog", daemon=True)
        self._thread.start()

    def arm(self, seconds: float, action: Callable[[], None]) -> int:
        """Call ``action`` in ``seconds`` unless :meth:`disarm` is called with the returned id."""
        ident = next(self._ids)
        when = time.monotonic() + seconds
        with self._cond:
            self._actions[ident] = action
            earliest = not self._heap or when < self._heap[0][0]
            heapq.heappush(self._heap, (when, ident))
            if earliest:  # the thread sleeps until the earliest deadline: wake it only to move that
                self._cond.notify()
        return ident

    def disarm(self, ident: int) -> None:
        """Forget the action ``ident`` (a no-op when it already ran)."""
        with self._cond:
            self._actions.pop(ident, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._cond.wait(None if not self._heap else max(0.0, self._heap[0][0] - time.monotonic()))
                _, ident = heapq.heappop(self._heap)
                action = self._actions.pop(ident, None)
            if action is not None:
                try:
                    action()
                except Exception:  # a cancelled call may already be gone
                    pass


class _Slot:
    """Counts admitted calls per class, globally and per peer host."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._total: dict[str, int] = {}
        self._peers: dict[tuple[str, str], int] = {}

    def acquire(self, cls: str, peer: str) -> str | None:
        """Admit a call (None) or say why not."""
        cap, per_peer = self.limits.cap(cls)
        with self._lock:
            total = self._total.get(cls, 0)
            mine = self._peers.get((cls, peer), 0)
            if total >= cap:
                return f"the worker is serving its maximum of {cap} concurrent {cls}s; retry later"
            if mine >= per_peer:
                return f"at most {per_peer} concurrent {cls}s per peer; retry later"
            self._total[cls] = total + 1
            self._peers[(cls, peer)] = mine + 1
            return None

    def release(self, cls: str, peer: str) -> None:
        """Release an admitted call."""
        with self._lock:
            self._total[cls] -= 1
            left = self._peers[(cls, peer)] - 1
            if left:
                self._peers[(cls, peer)] = left
            else:
                del self._peers[(cls, peer)]

    def in_use(self, cls: str) -> int:
        """Calls of ``cls`` now admitted."""
        with self._lock:
            return self._total.get(cls, 0)


class Admission(grpc.ServerInterceptor):  # type: ignore[misc]
    """Caps concurrent worker calls per class and peer; rate-limits capacity challenges."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self.slots = _Slot(limits)
        lim = limits
        self.challenge_rate = TokenBucket(
            lim.challenge_rate_per_peer, lim.challenge_burst_per_peer, lim.challenge_rate, lim.challenge_burst
        )
        self._prefix = f"/{SERVICE_NAME}/"

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: grpc.HandlerCallDetails
    ) -> Any:
        """Wrap the worker service's handlers; pass every other service's untouched."""
        handler = continuation(handler_call_details)
        full = handler_call_details.method
        if handler is None or not full.startswith(self._prefix):
            return handler
        method = full[len(self._prefix) :]
        cls = method_class(method)
        rated = method == "CapacityChallenge"
        if handler.request_streaming and handler.response_streaming:
            return handler  # the worker has no bidirectional rpc
        if handler.response_streaming:
            inner = handler.unary_stream

            def streaming(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                peer = self._admit(cls, rated, context)
                try:
                    yield from inner(request, context)
                finally:
                    self.slots.release(cls, peer)

            return grpc.unary_stream_rpc_method_handler(
                streaming, handler.request_deserializer, handler.response_serializer
            )
        behaviour = handler.stream_unary if handler.request_streaming else handler.unary_unary

        def unary(request: Any, context: grpc.ServicerContext) -> Any:
            peer = self._admit(cls, rated, context)
            try:
                return behaviour(request, context)
            finally:
                self.slots.release(cls, peer)

        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)

    def _admit(self, cls: str, rated: bool, context: grpc.ServicerContext) -> str:
        peer = peer_host(context.peer() or "")
        if rated and not self.challenge_rate.take(peer):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "capacity challenges are rate limited; retry later")
        refused = self.slots.acquire(cls, peer)
        if refused is not None:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refused)
        return peer
