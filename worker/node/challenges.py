"""Capacity challenges on the worker's side: run the seeded product, keep it for spot checks.

See :mod:`marketplace.protocol.capacity` for the protocol. The product runs in row blocks so a cancelled
call stops between blocks; only the blocks' device time counts as elapsed time.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from marketplace.errors import WorkerError
from marketplace.protocol.capacity import challenge_flops, challenge_matrices, row_leaves, row_proof, rows_root
from worker.node.devices import DeviceInfo

__all__ = ["ChallengeResult", "ChallengeRunner"]

_BLOCK_ROWS = 512
_KEEP = 4


@dataclass(frozen=True, slots=True)
class ChallengeResult:
    """A finished challenge: its id, rows root, device seconds, FLOPs and device."""

    challenge_id: str
    root: bytes
    elapsed_s: float
    flops: int
    device: DeviceInfo
    n: int


class ChallengeRunner:
    """Runs one challenge at a time and remembers the last few for row queries."""

    def __init__(self, devices: Sequence[DeviceInfo], max_n: int) -> None:
        self._devices = list(devices)
        self._max_n = max_n
        self._busy = threading.Lock()
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, tuple[bytes, list[bytes], Any]] = OrderedDict()

    def run(self, seed: int, n: int, kind: str, cancelled: threading.Event) -> ChallengeResult:
        """Compute challenge ``(seed, n)`` on a device of ``kind`` (or the best one)."""
        import torch

        if not 1 <= n <= self._max_n:
            raise WorkerError(f"challenge size must be between 1 and {self._max_n}", code="INVALID_ARGUMENT")
        kinds = {d.kind for d in self._devices}
        kind = kind or ("cuda" if "cuda" in kinds else "cpu")
        if kind not in kinds:
            raise WorkerError(f"this worker has no {kind} device", code="FAILED_PRECONDITION")
        device = next(d for d in self._devices if d.kind == kind)
        if not self._busy.acquire(blocking=False):
            raise WorkerError("a capacity challenge is already running; retry later", code="RESOURCE_EXHAUSTED")
        try:
            a, b = challenge_matrices(seed, n)
            target = torch.device("cuda", device.index) if kind == "cuda" else torch.device("cpu")
            a, b = a.to(target), b.to(target)
            blocks = []
            elapsed = 0.0
            for start in range(0, n, _BLOCK_ROWS):
                if cancelled.is_set():
                    raise WorkerError("the challenge was cancelled", code="CANCELLED")
                t0 = time.perf_counter()
                block = a[start : start + _BLOCK_ROWS] @ b
                if kind == "cuda":
                    torch.cuda.synchronize(target)
                elapsed += time.perf_counter() - t0
                blocks.append(block.cpu())
            c = torch.cat(blocks)
            leaves = row_leaves(c)
            root = rows_root(leaves)
            challenge_id = secrets.token_hex(16)
            with self._lock:
                self._kept[challenge_id] = (root, leaves, c.numpy())
                while len(self._kept) > _KEEP:
                    self._kept.popitem(last=False)
            return ChallengeResult(challenge_id, root, elapsed, challenge_flops(n), device, n)
        finally:
            self._busy.release()

    def rows(self, challenge_id: str, indices: Sequence[int]) -> list[tuple[int, bytes, list[bytes]]]:
        """Rows of a kept challenge's product with their Merkle proofs."""
        if len(indices) > 64:
            raise WorkerError("at most 64 rows per request", code="INVALID_ARGUMENT")
        with self._lock:
            kept = self._kept.get(challenge_id)
        if kept is None:
            raise WorkerError(f"no challenge {challenge_id!r} (it may have been forgotten)", code="NOT_FOUND")
        _root, leaves, matrix = kept
        out = []
        for i in indices:
            if not 0 <= i < len(leaves):
                raise WorkerError(f"row {i} is out of range", code="INVALID_ARGUMENT")
            out.append((i, bytes(matrix[i].astype("<f4").tobytes()), row_proof(leaves, i)))
        return out
