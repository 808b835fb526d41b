"""Unpacking an archive while its bytes arrive.

:class:`StreamingUnpack` runs :func:`~marketplace.protocol.bundle.unpack_bundle` in a thread that
reads from a bounded in-memory pipe; the upload loop :meth:`~StreamingUnpack.feed`\\ s each chunk
as it writes it to the partial archive, so extraction (and the bundle hash, computed as the files
are written) overlaps the transfer instead of following it. Nothing it writes is used until the
caller has checked the whole archive's digest: :meth:`~StreamingUnpack.result` only hands back
what was unpacked, and :meth:`~StreamingUnpack.abort` stops it for a stream that broke off.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path
from typing import IO, Any, cast

from marketplace.protocol.bundle import Bundle, unpack_bundle

__all__ = ["StreamingUnpack"]

_QUEUED_BYTES = 32 << 20
"""Most bytes waiting for the unpacking thread before :meth:`StreamingUnpack.feed` waits."""


class _Aborted(Exception):
    """Raised inside the unpacking thread when the upload stopped before its end."""


class _Pipe:
    """A bounded byte pipe between the upload loop (writer) and the unpacking thread (reader)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._closed = False
        self._aborted = False
        self._reader_gone = False
        self._head = b""

    def write(self, data: bytes) -> None:
        with self._cond:
            while self._queued >= _QUEUED_BYTES and not self._reader_gone:
                self._cond.wait()
            if self._reader_gone:
                return  # the unpacker ended (done or failed): the rest is only checked by digest
            self._items.append(data)
            self._queued += len(data)
            self._cond.notify_all()

    def close(self, *, aborted: bool = False) -> None:
        with self._cond:
            self._closed = True
            self._aborted = aborted
            self._cond.notify_all()

    def reader_done(self) -> None:
        with self._cond:
            self._reader_gone = True
            self._items.clear()
            self._queued = 0
            self._cond.notify_all()

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            with self._cond:
                while not self._items and not self._closed:
                    self._cond.wait()
                if self._aborted:
                    raise _Aborted()
                if not self._items:
                    return b""
                self._head = self._items.popleft()
                self._queued -= len(self._head)
                self._cond.notify_all()
        if size is None or size < 0 or size >= len(self._head):
            data, self._head = self._head, b""
        else:
            data, self._head = self._head[:size], self._head[size:]
        return data


class StreamingUnpack:
    """Unpack an archive into ``dest`` (a new directory) from bytes fed as they arrive."""

    def __init__(self, dest: Path, *, max_bytes: int) -> None:
        self.dest = dest
        self._pipe = _Pipe()
        self._bundle: Bundle | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(max_bytes,), name="unpack", daemon=True)
        self._thread.start()

    def _run(self, max_bytes: int) -> None:
        try:
            self._bundle = unpack_bundle(cast(IO[bytes], self._pipe), self.dest, max_bytes=max_bytes)
        except BaseException as exc:  # handed to the caller by result()
            self._error = exc
        finally:
            self._pipe.reader_done()

    def feed(self, data: bytes) -> None:
        """The next bytes of the archive, in order."""
        self._pipe.write(data)

    def result(self) -> Bundle:
        """Wait for the unpacking to end after the archive's last byte; the bundle, or its error."""
        self._pipe.close()
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._bundle is not None
        return self._bundle

    def abort(self) -> None:
        """Stop unpacking (the upload broke off); what was written stays for the caller to delete."""
        self._pipe.close(aborted=True)
        self._thread.join()

    def __enter__(self) -> StreamingUnpack:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._thread.is_alive():
            self.abort()
