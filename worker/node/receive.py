"""Receiving an upload's archive and unpacking it in the same pass.

:class:`ArchiveReceiver` is a read-only stream over an upload's chunks: each chunk is pulled from
the gRPC stream only when the unpacker asks for more bytes, checked (its sha256 when it carries
one, the announced size), appended to the partial archive and fed to the archive's running sha256,
then handed to the unpacker. So every byte is read off the wire once, written to the partial
archive once, hashed once for the archive and once (BLAKE3) for the bundle as its file is
written, in one thread, without queues between threads. What the unpacker leaves unread (the
archive's end) is taken by :meth:`ArchiveReceiver.drain`. Nothing unpacked is used before the
caller has checked the whole archive's digest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import IO, Any

from marketplace.errors import WorkerError

__all__ = ["ArchiveReceiver"]


class ArchiveReceiver:
    """Pulls ``(data, sha256)`` chunks from ``chunks`` as it is read; appends each to ``part``."""

    def __init__(
        self, chunks: Iterator[tuple[bytes, bytes]], part: IO[bytes], running: Any, held: int, size: int
    ) -> None:
        self._chunks = chunks
        self._part = part
        self._running = running
        self.held = held
        """Bytes of the archive held (those before this stream included)."""
        self._size = size
        self._head = b""
        self.ended = False
        """Whether the stream has no more chunks."""

    def _pull(self) -> bytes:
        for data, chunk_sha in self._chunks:
            if chunk_sha and hashlib.sha256(data).digest() != chunk_sha:
                raise WorkerError(f"chunk at offset {self.held} does not match its sha256", code="DATA_LOSS")
            if self.held + len(data) > self._size:
                raise WorkerError(f"upload is larger than the announced {self._size} bytes", code="INVALID_ARGUMENT")
            self._part.write(data)
            self._part.flush()
            self.held += len(data)
            if self._running is not None:
                self._running.update(data)
            if data:
                return data
        self.ended = True
        return b""

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the archive (b"" at the stream's end)."""
        if not self._head:
            if self.ended:
                return b""
            self._head = self._pull()
        if size is None or size < 0 or size >= len(self._head):
            data, self._head = self._head, b""
        else:
            data, self._head = self._head[:size], self._head[size:]
        return data

    def drain(self) -> None:
        """Receive (check, keep and hash) the rest of the stream."""
        self._head = b""
        while not self.ended:
            self._pull()
