"""Capacity challenges: a timed matrix product both the worker and its verifier can rebuild.

The challenger picks a seed and a size ``n``. Both sides generate the same float32 matrices
``A`` and ``B`` (:func:`challenge_matrices`, CPU ``torch.Generator``, so the bytes are the same
everywhere). The worker computes ``C = A·B`` on its device, commits to the rows of ``C`` with a
Merkle root (leaf of row ``i`` = ``keccak256(0x00 ‖ uint64_be(i) ‖ keccak256(row bytes))``, the
row as little-endian float32, nodes as in :mod:`marketplace.protocol.merkle`) and reports the elapsed
time and ``2n³`` FLOPs. The verifier then asks for a few random rows with their proofs and
checks each one with Freivalds' test restricted to those rows: for a random vector ``r``,
``C[i]·r ≈ A[i]·(B r)`` — O(n²) once for ``B r`` plus O(n) per row, against O(n³) to redo it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from eth_hash.auto import keccak

from marketplace.errors import VerificationError
from marketplace.protocol.merkle import merkle_root, node_hash, proof_for, verify_proof

if TYPE_CHECKING:
    import torch

__all__ = [
    "challenge_flops",
    "challenge_matrices",
    "row_leaf",
    "row_leaves",
    "row_proof",
    "rows_root",
    "verify_rows",
]


def challenge_flops(n: int) -> int:
    """FLOPs of an ``n×n`` by ``n×n`` matrix product (a multiply and an add per term)."""
    return 2 * n**3


def challenge_matrices(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the float32 matrices ``A`` and ``B`` (``n×n``, standard normal) of challenge ``seed``."""
    import torch

    if n < 1:
        raise ValueError("capacity: n must be positive")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed % (1 << 63))
    a = torch.randn(n, n, generator=gen, dtype=torch.float32)
    b = torch.randn(n, n, generator=gen, dtype=torch.float32)
    return a, b


def row_leaf(index: int, row: bytes) -> bytes:
    """Return the Merkle leaf of row ``index`` whose little-endian float32 bytes are ``row``."""
    return keccak(b"\x00" + index.to_bytes(8, "big") + keccak(row))


def row_leaves(c: torch.Tensor) -> list[bytes]:
    """Return the leaves of every row of the product ``c`` (moved to the CPU as float32)."""
    host = c.detach().to("cpu", dtype=c.new_empty(0).float().dtype).contiguous().numpy()
    return [row_leaf(i, host[i].astype("<f4").tobytes()) for i in range(host.shape[0])]


def rows_root(leaves: Sequence[bytes]) -> bytes:
    """Return the Merkle root over the row leaves."""
    return merkle_root(leaves)


def row_proof(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Return the proof of row ``index``."""
    return proof_for(leaves, index)


def verify_rows(
    seed: int,
    n: int,
    root: bytes,
    rows: Mapping[int, tuple[bytes, Sequence[bytes]]],
    *,
    rtol: float = 1e-3,
    rng: random.Random | None = None,
) -> None:
    """Check spot rows of a challenge against its root and with Freivalds' test.

    ``rows`` maps a row index to ``(row bytes, proof)``. Raises :class:`VerificationError` when a
    proof fails or a row is not the product's row within a relative tolerance ``rtol`` (float32
    sums differ across devices, so equality is never required).
    """
    import numpy as np
    import torch

    a, b = challenge_matrices(seed, n)
    rng = rng or random.SystemRandom()
    r = torch.tensor([rng.choice((-1.0, 1.0)) * rng.random() for _ in range(n)], dtype=torch.float64)
    br = b.double() @ r
    for index, (row, proof) in rows.items():
        if not 0 <= index < n or len(row) != 4 * n:
            raise VerificationError(f"capacity: row {index} is malformed")
        if not verify_proof(proof, root, row_leaf(index, row)):
            raise VerificationError(f"capacity: row {index} does not match the committed root")
        c_row = torch.from_numpy(np.frombuffer(row, dtype="<f4").astype(np.float64))
        got = float(c_row @ r)
        want = float(a[index].double() @ br)
        scale = float(a[index].double().abs() @ (b.double().abs() @ r.abs()))
        if abs(got - want) > rtol * max(scale, 1e-12):
            raise VerificationError(f"capacity: row {index} fails Freivalds' check ({got} vs {want})")


# Re-exported for callers that build their own proofs over row leaves.
node = node_hash
