"""Hostile inputs that are small on the wire and huge once read: archives and job outputs.

Used by the worker's bound tests and ``benchmarks/worker_bounds.py``. Runs of zero bytes are
compressed once per MiB and the compressed block repeated (each block is flushed on its own, so
it refers to nothing before it), so a 1 GiB bomb is built in a fraction of a second.
"""

from __future__ import annotations

import struct
import tarfile
import zlib
from collections.abc import Iterable

__all__ = [
    "directories_bomb",
    "gzip_of",
    "long_name_bomb",
    "output_bomb_code",
    "pax_bomb",
    "tar_header",
]

_MIB = 1 << 20
_BLOCK = 512


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)


def gzip_of(pieces: Iterable[bytes | int]) -> bytes:
    """A gzip stream of ``pieces`` in order: bytes as they are, an int as that many zero bytes."""
    out = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"]
    crc, size = 0, 0
    zeros = bytes(_MIB)
    zero_block = _deflate(zeros)
    for piece in pieces:
        if isinstance(piece, int):
            whole, rest = divmod(piece, _MIB)
            out.append(zero_block * whole)
            for _ in range(whole):
                crc = zlib.crc32(zeros, crc)
            size += whole * _MIB
            piece = bytes(rest)
        out.append(_deflate(piece))
        crc = zlib.crc32(piece, crc)
        size += len(piece)
    final = zlib.compressobj(6, zlib.DEFLATED, -15)
    out.append(final.flush(zlib.Z_FINISH))
    out.append(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return b"".join(out)


def tar_header(name: str, size: int = 0, kind: bytes = tarfile.REGTYPE) -> bytes:
    """One 512-byte tar header block (GNU format) for ``name``."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = 0o644
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")[:_BLOCK]


def _padding(size: int) -> int:
    return -size % _BLOCK


def _tail() -> list[bytes | int]:
    job = b'[job]\nentrypoint = "main.py"\n[resources]\ndevice = "cpu"\n[market]\nmax_price = "1"\n'
    return [tar_header("job.toml", len(job)), job + bytes(_padding(len(job))), bytes(2 * _BLOCK)]


def long_name_bomb(payload: int) -> bytes:
    """A .tar.gz whose GNU long-name header announces (and holds) ``payload`` bytes of name."""
    head = tar_header("././@LongLink", payload, tarfile.GNUTYPE_LONGNAME)
    return gzip_of([head, payload + _padding(payload), *_tail()])


def pax_bomb(payload: int) -> bytes:
    """A .tar.gz whose pax extended header announces (and holds) ``payload`` bytes of records."""
    head = tar_header("././@PaxHeader", payload, tarfile.XHDTYPE)
    return gzip_of([head, payload + _padding(payload), *_tail()])


def _ustar_dir(name: bytes) -> bytes:
    buf = bytearray(_BLOCK)
    buf[0 : len(name)] = name
    buf[100:108] = b"0000755\0"
    buf[108:116] = buf[116:124] = b"0000000\0"
    buf[124:136] = buf[136:148] = b"00000000000\0"
    buf[148:156] = b" " * 8
    buf[156:157] = tarfile.DIRTYPE
    buf[257:265] = b"ustar\x0000"
    buf[148:156] = b"%06o\0 " % sum(buf)
    return bytes(buf)


def directories_bomb(count: int) -> bytes:
    """A .tar.gz of ``count`` empty directories (and a job.toml)."""
    raw = b"".join(_ustar_dir(b"d/%06d/" % i) for i in range(count))
    return gzip_of([raw, *_tail()])


def output_bomb_code(total: int, stream: str = "stdout") -> str:
    """A job's ``main.py`` that writes ``total`` bytes to ``stream`` without a single newline."""
    return (
        "import sys\n"
        f"out = sys.{stream}.buffer\n"
        "block = b'x' * (1 << 20)\n"
        f"for _ in range({total} // len(block)):\n"
        "    out.write(block)\n"
        "out.flush()\n"
    )
