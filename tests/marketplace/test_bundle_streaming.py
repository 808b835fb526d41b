"""The BLAKE3 bundle hash, archives packed as parallel gzip members, and hashing while unpacking."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path

import blake3
import pytest

from marketplace.errors import BundleError
from marketplace.protocol.bundle import (
    PACK_BLOCK,
    BundleHasher,
    bundle_hash,
    load_bundle,
    pack_bundle,
    unpack_bundle,
)

TOML = '[job]\nentrypoint = "main.py"\n[resources]\ndevice = "cpu"\n[market]\nmax_price = "1"\n'


def _bundle(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir()
    (root / "job.toml").write_text(TOML)
    (root / "main.py").write_text("print(1)\n")
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_the_bundle_hash__is_blake3_of_the_documented_framing(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b", {"data/x.bin": b"\x00\x01\x02"})
    expected = blake3.blake3(b"flopex-bundle-v2\0")
    for rel, data in sorted(
        [("data/x.bin", b"\x00\x01\x02"), ("job.toml", TOML.encode()), ("main.py", b"print(1)\n")],
        key=lambda item: item[0].encode(),
    ):
        expected.update(rel.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    assert bundle_hash(root) == expected.digest()
    # pinned: a change of format shows here first
    assert bundle_hash(root).hex() == "26ccd5cd418d3241f944a69e7109b41581e45c5579706d467acac32c485fc973"
    assert len(bundle_hash(root)) == 32


def test_the_incremental_hasher__gives_the_directory_hash(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b", {"a.bin": os.urandom(3000)})
    h = BundleHasher()
    for rel in ("a.bin", "job.toml", "main.py"):
        data = (root / rel).read_bytes()
        h.file(rel, len(data))
        h.update(data[:100])
        h.update(data[100:])
    assert h.digest() == bundle_hash(root)


def test_dense_data__is_stored_and_text_is_compressed(tmp_path: Path) -> None:
    dense = os.urandom(3 * PACK_BLOCK)
    archive = pack_bundle(_bundle(tmp_path / "dense", {"w.bin": dense}))
    assert len(dense) < len(archive) < len(dense) * 1.01
    text = b"loss 0.25 at step 1000\n" * (3 * PACK_BLOCK // 23)
    archive = pack_bundle(_bundle(tmp_path / "text", {"log.txt": text}))
    assert len(archive) < len(text) // 20


def test_the_packed_archive__is_the_same_bytes_for_any_thread_count_and_a_standard_tar_gz(tmp_path: Path) -> None:
    files = {"w.bin": os.urandom(2 * PACK_BLOCK + 17), "t.txt": b"abc\n" * PACK_BLOCK}
    root = _bundle(tmp_path / "b", files)
    one = pack_bundle(root, threads=1)
    assert pack_bundle(root, threads=4) == one == pack_bundle(root)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(one)), mode="r:") as tar:
        names = tar.getnames()
        assert names == ["job.toml", "main.py", "t.txt", "w.bin"]
        for name, data in files.items():
            member = tar.extractfile(name)
            assert member is not None and member.read() == data


def test_the_packed_archive__carries_the_sha256_of_its_bytes_hashed_while_packing(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b", {"dense.bin": os.urandom(3 * PACK_BLOCK + 7), "text.txt": b"abc\n" * 300_000})
    for threads in (1, 3):
        packed = pack_bundle(root, tmp_path / f"a{threads}.tar.gz", threads=threads)
        assert isinstance(packed, bytes) and packed == (tmp_path / f"a{threads}.tar.gz").read_bytes()
        assert packed.sha256 == hashlib.sha256(packed).digest()
    (root / "text.txt").write_bytes(b"abd\n" * 300_000)
    assert pack_bundle(root).sha256 != packed.sha256


def test_unpacking__hashes_while_writing_and_reads_a_stream_once(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b", {"w.bin": os.urandom(PACK_BLOCK + 5), "d/e.txt": b"e" * 1000})
    archive = pack_bundle(root)
    from_path = tmp_path / "a.tar.gz"
    from_path.write_bytes(archive)
    one = unpack_bundle(from_path, tmp_path / "u1", max_bytes=1 << 30)
    two = unpack_bundle(io.BytesIO(archive), tmp_path / "u2", max_bytes=1 << 30)
    assert one.hash == two.hash == bundle_hash(root) == load_bundle(tmp_path / "u2").hash
    assert (tmp_path / "u2" / "w.bin").read_bytes() == (root / "w.bin").read_bytes()


def test_an_archive_out_of_canonical_order__still_gets_the_true_hash(tmp_path: Path) -> None:
    root = _bundle(tmp_path / "b", {"z.bin": b"zz", "a.bin": b"aa"})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name in ("z.bin", "main.py", "job.toml", "a.bin"):  # not sorted
            tar.add(root / name, arcname=name)
    archive = tmp_path / "x.tar.gz"
    archive.write_bytes(raw.getvalue())
    assert unpack_bundle(archive, tmp_path / "u", max_bytes=1 << 20).hash == bundle_hash(root)


def test_a_damaged_member__is_refused_by_its_crc(tmp_path: Path) -> None:
    archive = bytearray(pack_bundle(_bundle(tmp_path / "b", {"w.bin": os.urandom(2 * PACK_BLOCK)})))
    archive[PACK_BLOCK + 100] ^= 0x01  # inside a stored block of the second member
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(bytes(archive))
    with pytest.raises(BundleError, match="corrupt"):
        unpack_bundle(path, tmp_path / "u", max_bytes=1 << 30)


def test_an_archive_cut_short_or_followed_by_garbage__is_refused(tmp_path: Path) -> None:
    archive = pack_bundle(_bundle(tmp_path / "b", {"w.bin": os.urandom(2 * PACK_BLOCK)}))
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive[: len(archive) // 2])
    with pytest.raises(BundleError):
        unpack_bundle(cut, tmp_path / "u1", max_bytes=1 << 30)
    empty = tmp_path / "empty.tar.gz"
    empty.write_bytes(b"")
    with pytest.raises(BundleError, match="not a readable"):
        unpack_bundle(empty, tmp_path / "u2", max_bytes=1 << 30)


def test_a_tiny_member_that_inflates_hugely__stops_at_the_byte_limit(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("job.toml")
        info.size = 64 << 20
        tar.addfile(info, io.BytesIO(bytes(64 << 20)))
    body = raw.getvalue()
    bomb = gzip.compress(body[: len(body) // 2]) + gzip.compress(body[len(body) // 2 :])  # two members
    assert len(bomb) < 1 << 20
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(bomb)
    with pytest.raises(BundleError, match="exceeds the limit"):
        unpack_bundle(path, tmp_path / "u", max_bytes=8 << 20)


def test_a_stored_block__is_valid_raw_deflate(tmp_path: Path) -> None:
    from marketplace.protocol.bundle import _stored

    for size in (0, 1, 0xFFFF, 0xFFFF + 1, 3 * 0xFFFF + 7):
        data = os.urandom(size)
        assert zlib.decompress(_stored(data), -zlib.MAX_WBITS) == data


class _Trickle(io.RawIOBase):
    """A source that hands out at most a few odd-sized bytes per read, as a slow network would."""

    def __init__(self, data: bytes, sizes: tuple[int, ...]) -> None:
        super().__init__()
        self._data = memoryview(data)
        self._pos = 0
        self._sizes = sizes
        self._turn = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        step = self._sizes[self._turn % len(self._sizes)]
        self._turn += 1
        n = step if size is None or size < 0 else min(size, step)
        piece = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(piece)
        return piece


@pytest.mark.parametrize("pack", ["flopex", "one_gzip_stream"])
def test_members_split_anywhere_across_reads__unpack_byte_for_byte(tmp_path: Path, pack: str) -> None:
    """Members' content taken out block by block: sizes around tar's 512-byte blocks and the packer's
    blocks, many small files in one block and one file over several, read from a stream whose reads
    end at odd offsets: every file and the bundle hash come out as packed."""
    sizes = [0, 1, 511, 512, 513, 4095, PACK_BLOCK - 1, PACK_BLOCK, PACK_BLOCK + 1, 3 * PACK_BLOCK + 7]
    files = {f"d/f{i:02d}.bin": os.urandom(n) for i, n in enumerate(sizes)}
    files.update({f"small/s{i:03d}.txt": os.urandom(i * 37 % 700) for i in range(120)})
    root = _bundle(tmp_path / "b", files)
    if pack == "flopex":
        archive = bytes(pack_bundle(root))
    else:
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                tar.add(path, arcname=path.relative_to(root).as_posix())
        archive = raw.getvalue()
    for reads in ((PACK_BLOCK,), (7, 511, 333, 1_000, 65_539)):
        out = tmp_path / f"u-{len(reads)}"
        unpacked = unpack_bundle(_Trickle(archive, reads), out, max_bytes=1 << 30)
        assert unpacked.hash == bundle_hash(root)
        for name, data in files.items():
            assert (out / name).read_bytes() == data


def test_a_member_longer_than_what_follows__is_cut_short_not_padded(tmp_path: Path) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in (("job.toml", TOML.encode()), ("main.py", b"print(1)\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo("z.bin")
        info.size = 10_000
        tar.addfile(info, io.BytesIO(bytes(10_000)))
    body = raw.getvalue()
    cut = body[: body.index(bytes(10_000)) + 3_000]  # the header says 10,000 bytes; 3,000 follow
    path = tmp_path / "cut.tar.gz"
    path.write_bytes(gzip.compress(cut))
    with pytest.raises(BundleError, match="cut short"):
        unpack_bundle(path, tmp_path / "u", max_bytes=1 << 30)
