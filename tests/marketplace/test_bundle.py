"""job.toml parsing, bundle hashing, packing and hostile archives."""

from __future__ import annotations

import io
import resource
import tarfile
from pathlib import Path

import pytest

from marketplace.errors import BundleError
from marketplace.protocol.bundle import (
    MAX_ENTRIES,
    MAX_EXTENDED_HEADER_BYTES,
    bundle_hash,
    load_bundle,
    pack_bundle,
    parse_job_toml,
    parse_price,
    unpack_bundle,
)
from worker.testing.bombs import directories_bomb, gzip_of, long_name_bomb, pax_bomb, tar_header

GOOD = """
[job]
entrypoint = "train.py"
args = ["--epochs", "3"]
inputs = ["data.bin"]

[resources]
device = "cpu"
gpus = 1
timeout_s = 60

[verification]
policy = "replay"

[market]
max_price = "2.5"
"""


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "job.toml").write_text(GOOD)
    (root / "train.py").write_text("print('hi')\n")
    (root / "data.bin").write_bytes(b"\x00\x01" * 100)
    return root


def test_a_good_job_toml__parses_into_the_spec() -> None:
    spec = parse_job_toml(GOOD)
    assert spec.job.entrypoint == "train.py"
    assert spec.job.args == ("--epochs", "3")
    assert spec.resources.device == "cpu"
    assert spec.verification.policy == "replay"
    assert spec.market.max_price == 2_500_000_000_000_000_000
    assert spec.market.auction == "sealed"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[job]\nargs = []\n[market]\nmax_price = "1"', "entrypoint: required"),
        ('[job]\nentrypoint = "a.py"\ncolour = 1\n[market]\nmax_price = "1"', "unknown key"),
        ('[job]\nentrypoint = "a.py"\n[resources]\ndevice = "tpu"\n[market]\nmax_price = "1"', "resources.device"),
        ('[job]\nentrypoint = "a.py"\n[resources]\ngpus = "2"\n[market]\nmax_price = "1"', "integer"),
        ('[job]\nentrypoint = "a.py"\n[resources]\ngpus = true\n[market]\nmax_price = "1"', "integer"),
        ('[job]\nentrypoint = "../a.py"\n[market]\nmax_price = "1"', "escapes"),
        ('[job]\nentrypoint = "/etc/a.py"\n[market]\nmax_price = "1"', "absolute"),
        ('[job]\nentrypoint = "a.py"\ninputs = ["x/../../y"]\n[market]\nmax_price = "1"', "escapes"),
        ('[job]\nentrypoint = "a.py"\n[market]\nmax_price = 2.5', "decimal string"),
        ('[job]\nentrypoint = "a.py"\n[market]\nmax_price = "-1"', "positive"),
        ('[job]\nentrypoint = "a.py"\n', "missing [market]"),
        (
            '[job]\nentrypoint = "a.py"\n[verification]\npolicy = "magic"\n[market]\nmax_price = "1"',
            "verification.policy",
        ),
        (
            '[job]\nentrypoint = "a.py"\n[verification]\noutputs = "model.pt"\n[market]\nmax_price = "1"',
            "verification.outputs: a list of file patterns",
        ),
        (
            '[job]\nentrypoint = "a.py"\n[verification]\noutputs = ["../x"]\n[market]\nmax_price = "1"',
            "is not a relative pattern",
        ),
        ("[job\n", "not valid TOML"),
        ('[extra]\n[job]\nentrypoint = "a.py"\n[market]\nmax_price = "1"', "unknown key"),
    ],
)
def test_a_bad_job_toml__raises_a_clear_bundle_error(text: str, message: str) -> None:
    with pytest.raises(BundleError, match=message.replace("[", r"\[")):
        parse_job_toml(text)


def test_verification_outputs__name_the_answer_by_pattern__none_by_default() -> None:
    assert parse_job_toml(GOOD).verification.outputs == ()
    text = '[job]\nentrypoint = "a.py"\n[verification]\noutputs = ["*.safetensors", "work/model.pt"]\n'
    spec = parse_job_toml(text + '[market]\nmax_price = "1"')
    assert spec.verification.outputs == ("*.safetensors", "work/model.pt")


def test_prices__convert_to_18_decimal_token_units() -> None:
    assert parse_price("1") == 10**18
    assert parse_price("0.000000000000000001") == 1
    with pytest.raises(BundleError, match="decimals"):
        parse_price("0.0000000000000000001")
    with pytest.raises(BundleError):
        parse_price("NaN")


def test_the_bundle_hash__depends_on_paths_and_bytes_only(bundle_dir: Path, tmp_path: Path) -> None:
    first = bundle_hash(bundle_dir)
    (bundle_dir / "data.bin").touch()
    assert bundle_hash(bundle_dir) == first
    (bundle_dir / "data.bin").write_bytes(b"changed")
    assert bundle_hash(bundle_dir) != first


def test_a_bundle__round_trips_through_its_canonical_archive(bundle_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "b.tar.gz"
    data = pack_bundle(bundle_dir, archive)
    assert pack_bundle(bundle_dir) == data
    bundle = unpack_bundle(archive, tmp_path / "out", max_bytes=1 << 20)
    assert bundle.hash == load_bundle(bundle_dir).hash
    assert bundle.spec.job.entrypoint == "train.py"


def test_a_bundle_with_a_symlink__is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "link").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="symbolic links"):
        load_bundle(bundle_dir)


def test_a_bundle_without_its_entrypoint__is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "train.py").unlink()
    with pytest.raises(BundleError, match="not a file in the bundle"):
        load_bundle(bundle_dir)


def _archive(tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("symlink", "not a regular file"),
        ("hardlink", "not a regular file"),
        ("device", "not a regular file"),
        ("absolute", "absolute"),
        ("dotdot", "escapes"),
        ("fifo", "not a regular file"),
    ],
)
def test_hostile_archive_members__are_refused(tmp_path: Path, kind: str, message: str) -> None:
    members = [_file("job.toml", GOOD.encode()), _file("train.py", b""), _file("data.bin", b"")]
    if kind in ("symlink", "hardlink"):
        info = tarfile.TarInfo("evil")
        info.type = tarfile.SYMTYPE if kind == "symlink" else tarfile.LNKTYPE
        info.linkname = "/etc/shadow"
        members.append((info, None))
    elif kind in ("device", "fifo"):
        info = tarfile.TarInfo("dev")
        info.type = tarfile.CHRTYPE if kind == "device" else tarfile.FIFOTYPE
        members.append((info, None))
    elif kind == "absolute":
        members.append(_file("/tmp/evil", b"x"))
    else:
        members.append(_file("../evil", b"x"))
    with pytest.raises(BundleError, match=message):
        unpack_bundle(_archive(tmp_path, members), tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "evil").exists()


def test_an_archive_beyond_the_size_limit__is_refused_while_extracting(tmp_path: Path) -> None:
    big = b"\x00" * (3 << 20)  # compresses to a few KiB: the limit must count extracted bytes
    members = [_file("job.toml", GOOD.encode()), _file("train.py", b""), _file("data.bin", big)]
    archive = _archive(tmp_path, members)
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(BundleError, match="exceeds the limit"):
        unpack_bundle(archive, tmp_path / "out", max_bytes=1 << 20)


def test_a_corrupt_archive__is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08garbage" * 10)
    with pytest.raises(BundleError):
        unpack_bundle(path, tmp_path / "out", max_bytes=1 << 20)


def _toml(resources: str) -> str:
    return f'[job]\nentrypoint = "a.py"\n[resources]\n{resources}\n[market]\nmax_price = "1"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_toml("timeout_s = 604801"), "resources.timeout_s: must be at most 604800"),
        (_toml(f"timeout_s = {2**64}"), "resources.timeout_s: must be at most 604800"),
        (_toml(f"timeout_s = {10**400}"), "resources.timeout_s: must be at most"),
        (_toml("min_memory_gb = 1e300"), "resources.min_memory_gb: must be at most 16384"),
        (_toml(f"min_memory_gb = {10**400}"), "resources.min_memory_gb: must be at most"),
        (_toml("gpus = 100000"), "resources.gpus: must be at most 1024"),
        (_toml("max_gpu_hours = 1e12"), "resources.max_gpu_hours: must be at most"),
        ('[job]\nentrypoint = "a.py"\n[verification]\nredundancy = 300\n[market]\nmax_price = "1"', "at most 5"),
        ('[job]\nentrypoint = "a.py"\nargs = [' + '"a",' * 2000 + ']\n[market]\nmax_price = "1"', "at most 1024 arg"),
        ('[job]\nentrypoint = "a.py"\nargs = ["' + "x" * 70000 + '"]\n[market]\nmax_price = "1"', "bytes in all"),
        ('[job]\nentrypoint = "a.py"\nargs = ["a\\u0000b"]\n[market]\nmax_price = "1"', "NUL"),
        ("x = " + "[" * 100_000 + "]" * 100_000 + "\n", "nested too deeply"),
        ("# " + "x" * (300 << 10) + "\n", "longer than the limit"),
    ],
    ids=[
        "timeout-over-7-days",
        "timeout-2**64",
        "timeout-huge",
        "memory-1e300",
        "memory-huge-int",
        "gpus",
        "gpu-hours",
        "redundancy",
        "args-count",
        "args-bytes",
        "args-nul",
        "deep-arrays",
        "huge-file",
    ],
)
def test_job_toml_beyond_its_bounds__is_one_short_bundle_error(text: str, message: str) -> None:
    with pytest.raises(BundleError, match=message.replace("[", r"\[")) as exc:
        parse_job_toml(text)
    assert "\n" not in str(exc.value) and len(str(exc.value)) < 200


def test_a_bundle_with_a_name_too_long__is_refused_at_submit(bundle_dir: Path) -> None:
    deep = bundle_dir.joinpath(*(c * 250 for c in "nmopq"))
    deep.mkdir(parents=True)
    (deep / "file").write_text("x")
    with pytest.raises(BundleError, match="longer than the limit of 1024"):
        load_bundle(bundle_dir)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("bomb", [long_name_bomb, pax_bomb], ids=["gnu-long-name", "pax"])
def test_an_extended_header_of_a_gib__is_refused_on_its_size_field_without_reading_it(
    tmp_path: Path, bomb: object
) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(bomb(1 << 30))  # type: ignore[operator]
    assert archive.stat().st_size < 2 << 20
    before = _peak_rss_mib()
    with pytest.raises(
        BundleError, match=f"header of {1 << 30} bytes exceeds the limit of {MAX_EXTENDED_HEADER_BYTES}"
    ):
        unpack_bundle(archive, tmp_path / "out", max_bytes=4 << 30)
    assert _peak_rss_mib() - before < 64  # tarfile would have read the whole GiB into memory


def test_a_chain_of_extended_headers__is_cut_short(tmp_path: Path) -> None:
    record = b"20 comment=aaaaaaaa\n"
    link = [tar_header("././@PaxHeader", len(record), tarfile.XHDTYPE), record + bytes(512 - len(record))]
    archive = tmp_path / "chain.tar.gz"
    archive.write_bytes(gzip_of([*link * 5000, tar_header("a"), bytes(1024)]))
    with pytest.raises(BundleError, match="extended headers in a row"):
        unpack_bundle(archive, tmp_path / "out", max_bytes=1 << 20)


@pytest.mark.slow
def test_a_bundle_of_100k_directories__is_refused_by_the_entry_limit(tmp_path: Path) -> None:
    archive = tmp_path / "dirs.tar.gz"
    archive.write_bytes(directories_bomb(100_000))
    with pytest.raises(BundleError, match=f"more than {MAX_ENTRIES} entries"):
        unpack_bundle(archive, tmp_path / "out", max_bytes=1 << 20)
    assert sum(1 for _ in (tmp_path / "out").rglob("*")) <= MAX_ENTRIES + 1


def test_a_member_named_with_300_characters__is_a_bundle_error_not_an_os_error(tmp_path: Path) -> None:
    members = [_file("job.toml", GOOD.encode()), _file("train.py", b""), _file("x" * 300, b"x")]
    with pytest.raises(BundleError, match="is 300 bytes, longer than the limit of 255"):
        unpack_bundle(_archive(tmp_path, members), tmp_path / "out", max_bytes=1 << 20)


def test_a_file_where_a_directory_must_go__is_a_bundle_error(tmp_path: Path) -> None:
    members = [_file("job.toml", GOOD.encode()), _file("a", b"x"), _file("a/b", b"y")]
    with pytest.raises(BundleError, match="clashes"):
        unpack_bundle(_archive(tmp_path, members), tmp_path / "out", max_bytes=1 << 20)


def test_a_sparse_member__is_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    with pytest.raises(BundleError, match="not a regular file"):
        unpack_bundle(_archive(tmp_path, [(info, None)]), tmp_path / "out", max_bytes=1 << 20)
