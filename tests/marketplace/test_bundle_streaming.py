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
