"""Merkle trees over job results, compatible with on-chain proof verification.

A job's *result root* commits to every byte it produced. Each result file is cut into
1 MiB chunks (an empty file still has one, empty, chunk); files are taken in sorted order of
their relative POSIX paths. The leaf of chunk ``i`` of file ``path`` is::

    keccak256(0x00 ‖ keccak256(path) ‖ uint64_be(i) ‖ blake3(chunk))

(73 bytes hashed, so a leaf can never be mistaken for an internal node, which hashes 64). The
chunk's bytes are hashed with BLAKE3 (32 bytes, SIMD; an order of magnitude faster than keccak256
in software), so a result is hashed at the speed it streams; a proof shows the chunk's BLAKE3
digest, and everything above it is keccak256, as contracts verify.
Internal nodes hash the *sorted* pair of their children, ``keccak256(min(a, b) ‖ max(a, b))``,
exactly as OpenZeppelin's ``MerkleProof`` and snekmate's ``merkle_proof_verification``
expect, so a proof made here verifies on chain unchanged. A level with an odd number of
nodes promotes its last node to the next level as it is. An empty result set has the root
:data:`EMPTY_ROOT` (``keccak256(b"")``).
"""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import blake3
from eth_hash.auto import keccak

from marketplace.errors import WorkerError

__all__ = [
    "CHUNK_SIZE",
    "EMPTY_ROOT",
    "FileEntry",
    "ResultManifest",
    "bounded_manifest",
    "chunk_digest",
    "chunk_leaf",
    "file_leaves",
    "file_sha256",
    "list_files",
    "manifest_of",
    "merkle_root",
    "node_hash",
    "proof_for",
    "verify_proof",
]

CHUNK_SIZE = 1 << 20
"""Size of a result chunk: 1 MiB."""

EMPTY_ROOT = keccak(b"")
"""Root of an empty result set: keccak256 of the empty string."""


def chunk_digest(chunk: bytes | memoryview) -> bytes:
    """The 32-byte BLAKE3 digest of a chunk's bytes, as its leaf commits to it."""
    return blake3.blake3(chunk).digest()


def chunk_leaf(path: str, index: int, chunk: bytes | memoryview, *, digest: bytes | None = None) -> bytes:
    """Return the leaf hash of chunk ``index`` (0-based) of the file at relative ``path``.

    ``digest`` is the chunk's :func:`chunk_digest` when the caller has it already (``chunk`` is
    then not read).
    """
    if index < 0 or index >= 1 << 64:
        raise ValueError(f"merkle: chunk index out of range: {index}")
    inner = digest if digest is not None else chunk_digest(chunk)
    return keccak(b"\x00" + keccak(path.encode("utf-8")) + index.to_bytes(8, "big") + inner)


def node_hash(a: bytes, b: bytes) -> bytes:
    """Hash two sibling nodes as OpenZeppelin does: keccak256 of the sorted pair."""
    return keccak(a + b) if a <= b else keccak(b + a)


def _next_level(level: Sequence[bytes]) -> list[bytes]:
    nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        nxt.append(level[-1])
    return nxt


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """Return the root over ``leaves`` in order; :data:`EMPTY_ROOT` for none."""
    if not leaves:
        return EMPTY_ROOT
    level = list(leaves)
    while len(level) > 1:
        level = _next_level(level)
    return level[0]


def proof_for(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Return the sibling path proving ``leaves[index]`` against :func:`merkle_root` of ``leaves``."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"merkle: no leaf {index} among {len(leaves)}")
    proof: list[bytes] = []
    level = list(leaves)
    while len(level) > 1:
        sibling = index ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        level = _next_level(level)
        index //= 2
    return proof


def verify_proof(proof: Iterable[bytes], root: bytes, leaf: bytes) -> bool:
    """Return whether ``proof`` leads from ``leaf`` to ``root`` (the on-chain algorithm)."""
    computed = leaf
    for sibling in proof:
        computed = node_hash(computed, sibling)
    return computed == root


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One result file: its relative POSIX path, size, sha256 and number of Merkle chunks."""

    path: str
    size: int
    sha256: bytes
    chunks: int


@dataclass(frozen=True, slots=True)
class ResultManifest:
    """Every result file with its hashes, and the Merkle root over all their chunks."""

    files: tuple[FileEntry, ...]
    root: bytes

    @property
    def total_bytes(self) -> int:
        """Sum of the sizes of all files."""
        return sum(f.size for f in self.files)


def list_files(directory: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """Return ``(relative POSIX path, absolute path)`` of each regular file under ``directory``, sorted.

    Symbolic links are never followed and never listed.
    """
    base = Path(directory)
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            if full.is_symlink() or not full.is_file():
                continue
            found.append((full.relative_to(base).as_posix(), full))
    found.sort(key=lambda item: item[0].encode("utf-8"))
    return found


def file_sha256(path: str | os.PathLike[str]) -> bytes:
    """The sha256 of the file at ``path``, read in blocks of :data:`CHUNK_SIZE`."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_SIZE):
            digest.update(block)
    return digest.digest()


def file_leaves(rel_path: str, path: str | os.PathLike[str]) -> Iterator[tuple[bytes, bytes]]:
    """Yield ``(leaf, chunk)`` for each 1 MiB chunk of the file (one empty chunk for an empty file)."""
    with open(path, "rb") as fh:
        index = 0
        while True:
            chunk = fh.read(CHUNK_SIZE)
            if not chunk and index > 0:
                return
            yield chunk_leaf(rel_path, index, chunk), chunk
            index += 1
            if len(chunk) < CHUNK_SIZE:
                return


def manifest_of(directory: str | os.PathLike[str]) -> tuple[ResultManifest, list[bytes]]:
    """Hash every file under ``directory``; return the manifest and the ordered leaves."""
    leaves: list[bytes] = []
    entries: list[FileEntry] = []
    for rel, full in list_files(directory):
        sha = hashlib.sha256()
        size = 0
        count = 0
        for leaf, chunk in file_leaves(rel, full):
            sha.update(chunk)
            size += len(chunk)
            count += 1
            leaves.append(leaf)
        entries.append(FileEntry(rel, size, sha.digest(), count))
    return ResultManifest(tuple(entries), merkle_root(leaves)), leaves


def _over(what: str) -> WorkerError:
    return WorkerError(f"results: {what}", code="RESOURCE_EXHAUSTED")


def bounded_manifest(
    directory: str | os.PathLike[str], *, max_entries: int, max_bytes: int, deadline: float
) -> tuple[ResultManifest, list[str]]:
    """:func:`manifest_of` for untrusted output, within bounds; also returns the names left out.

    Walks without following links, counting every entry (directories, links and special files
    too) and raises :class:`WorkerError` (``RESOURCE_EXHAUSTED``) past ``max_entries`` entries,
    past ``max_bytes`` of regular files by their *apparent* size (a sparse file counts whole: it
    would be hashed whole) or past ``deadline`` (a ``time.monotonic()`` value), checked between
    chunks. A path that is not valid UTF-8 cannot be named in the manifest: it is left out and
    returned (as :func:`os.fsdecode` gives it) in the second list.
    """
    base = os.fspath(directory)
    entries = 0
    total = 0
    found: list[tuple[bytes, str, str]] = []
    invalid: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(base, rel_dir) if rel_dir else base) as it:
            for entry in it:
                entries += 1
                if entries > max_entries:
                    raise _over(f"more than {max_entries} files and directories")
                if entries % 256 == 0 and time.monotonic() > deadline:
                    raise _over("listing them took longer than the time left to the job")
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    stack.append(rel)
                    continue
                if not stat.S_ISREG(info.st_mode):
                    continue
                try:
                    key = rel.encode("utf-8")
                except UnicodeEncodeError:
                    invalid.append(rel)
                    continue
                total += info.st_size
                if total > max_bytes:
                    raise _over(f"more than {max_bytes} bytes in all (sparse files count whole)")
                found.append((key, rel, entry.path))
    found.sort()
    leaves: list[bytes] = []
    files: list[FileEntry] = []
    for _key, rel, full in found:
        sha = hashlib.sha256()
        size = count = 0
        for leaf, chunk in file_leaves(rel, full):
            if time.monotonic() > deadline:
                raise _over("hashing them took longer than the time left to the job")
            sha.update(chunk)
            size += len(chunk)
            count += 1
            leaves.append(leaf)
        files.append(FileEntry(rel, size, sha.digest(), count))
    return ResultManifest(tuple(files), merkle_root(leaves)), sorted(invalid)
