"""The worker's dataset store on its own: hash check, resumption, quotas, the budget, LRU and pins."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from marketplace.errors import BundleError, WorkerError
from marketplace.protocol.bundle import pack_tree, parse_job_toml
from marketplace.protocol.datasets import dataset_hash, format_dataset, pack_dataset, parse_dataset
from marketplace.protocol.merkle import manifest_of
from worker.node.datasets import DatasetLimits, DatasetStore
from worker.sandbox.runner import Limits, Sandbox

ALICE = "0x" + "a1" * 20
BOB = "0x" + "b0" * 20


def _tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def _chunks(data: bytes, size: int = 1000) -> list[tuple[bytes, bytes]]:
    return [(data[i : i + size], hashlib.sha256(data[i : i + size]).digest()) for i in range(0, len(data), size)]


def _put(store: DatasetStore, account: str, folder: Path) -> bytes:
    digest, archive = pack_dataset(folder)
    sha = hashlib.sha256(archive).digest()
    present, held = store.receive(account, digest, len(archive), sha, 0, _chunks(archive))
    assert present and held == len(archive)
    return digest


def _data(tmp_path: Path, name: str, size: int) -> Path:
    return _tree(tmp_path / name, {"x.bin": os.urandom(size)})


def test_the_name__is_the_merkle_root_of_the_files_and_parses_back(tmp_path: Path) -> None:
    folder = _tree(tmp_path / "d", {"a.txt": b"alpha", "sub/b.txt": b"beta"})
    digest = dataset_hash(folder)
    assert digest == manifest_of(folder)[0].root
    assert parse_dataset(format_dataset(digest)) == digest
    (folder / "a.txt").write_bytes(b"alphA")
    assert dataset_hash(folder) != digest
    with pytest.raises(BundleError, match="not a dataset name"):
        parse_dataset("data:1234")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BundleError, match="holds no files"):
        dataset_hash(empty)


def test_job_toml__reads_datasets_by_name_and_refuses_bad_entries() -> None:
    base = '[job]\nentrypoint = "m.py"\n{}\n[market]\nmax_price = "1"\n'
    spec = parse_job_toml(base.format('datasets = { train = "data:' + "ab" * 32 + '" }'))
    assert spec.job.datasets == (("train", bytes.fromhex("ab" * 32)),)
    with pytest.raises(BundleError, match=r"job.datasets.train: 'data:12' is not a dataset name"):
        parse_job_toml(base.format('datasets = { train = "data:12" }'))
    with pytest.raises(BundleError, match="not a dataset folder name"):
        parse_job_toml(base.format('datasets = { "../x" = "data:' + "ab" * 32 + '" }'))


def test_a_put__is_checked_kept_read_only_and_listed(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store", DatasetLimits())
    folder = _tree(tmp_path / "d", {"a.txt": b"alpha", "sub/b.txt": b"beta"})
    digest = _put(store, ALICE, folder)
    info = store.info(digest)
    assert info is not None and info.size == 9 and info.files == 2 and info.owner == ALICE
    assert (store.tree(digest) / "sub" / "b.txt").read_bytes() == b"beta"
    assert manifest_of(store.tree(digest))[0].root == digest
    assert oct((store.tree(digest) / "a.txt").stat().st_mode & 0o777) == "0o444"
    assert [d.hash for d in store.list(ALICE)] == [digest] and store.list(BOB) == []
    assert store.used(ALICE) == 9


def test_an_interrupted_put__resumes_from_the_bytes_held(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store", DatasetLimits())
    digest, archive = pack_dataset(_data(tmp_path, "d", 50_000))
    sha = hashlib.sha256(archive).digest()
    half = len(archive) // 2
    present, held = store.receive(ALICE, digest, len(archive), sha, 0, _chunks(archive[:half]))
    assert not present and held == half == store.held(ALICE, digest, sha)
    with pytest.raises(WorkerError, match=r"does not match the \d+ bytes held"):
        store.receive(ALICE, digest, len(archive), sha, 0, _chunks(archive))
    present, held = store.receive(ALICE, digest, len(archive), sha, half, _chunks(archive[half:]))
    assert present and held == len(archive) and store.info(digest) is not None
    assert store.held(ALICE, digest, sha) == 0  # the part is gone


def test_files_that_are_not_the_named_dataset__are_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store", DatasetLimits())
    claimed = dataset_hash(_tree(tmp_path / "real", {"a.txt": b"the real data"}))
    archive = pack_tree(_tree(tmp_path / "fake", {"a.txt": b"something else"}))
    sha = hashlib.sha256(archive).digest()
    with pytest.raises(WorkerError, match=r"hash to data:\w+, not data:") as err:
        store.receive(ALICE, claimed, len(archive), sha, 0, _chunks(archive))
    assert err.value.code == "DATA_LOSS"
    assert store.info(claimed) is None and store.used(ALICE) == 0
    assert list((store.root / "trees").iterdir()) == [] and list((store.root / "parts").iterdir()) == []
    # a chunk whose sha256 is not the one sent is refused too
    with pytest.raises(WorkerError, match="does not match its sha256"):
        store.receive(ALICE, claimed, len(archive), sha, 0, [(archive, b"\0" * 32)])


def test_chunks_without_their_sha256__are_kept_and_the_whole_archive_is_checked_before_anything_is(
    tmp_path: Path,
) -> None:
    store = DatasetStore(tmp_path / "store", DatasetLimits())
    digest, archive = pack_dataset(_data(tmp_path, "d", 50_000))
    sha = hashlib.sha256(archive).digest()
    damaged = bytearray(archive)
    damaged[len(archive) // 2] ^= 0x01
    bare = [(data, b"") for data, _ in _chunks(bytes(damaged))]
    with pytest.raises(WorkerError, match="dataset archive does not match its sha256") as err:
        store.receive(ALICE, digest, len(archive), sha, 0, bare)
    assert err.value.code == "DATA_LOSS"
    assert store.info(digest) is None and store.used(ALICE) == 0 and store.held(ALICE, digest, sha) == 0
    assert list((store.root / "trees").iterdir()) == [] and list((store.root / "parts").iterdir()) == []
    # the right bytes without chunk hashes are kept, as with them
    present, held = store.receive(ALICE, digest, len(archive), sha, 0, [(d, b"") for d, _ in _chunks(archive)])
    assert present and held == len(archive) and store.info(digest) is not None


def test_the_quota__binds_one_account_and_a_stranger_gets_less(tmp_path: Path) -> None:
    limits = DatasetLimits(account_quota_bytes=300_000, stranger_quota_bytes=120_000, disk_budget_bytes=10**9)
    store = DatasetStore(tmp_path / "store", limits)
    _put(store, ALICE, _data(tmp_path, "a1", 100_000))
    with pytest.raises(WorkerError, match=f"{ALICE} holds .* of its 120000 bytes") as err:
        _put(store, ALICE, _data(tmp_path, "a2", 100_000))
    assert err.value.code == "RESOURCE_EXHAUSTED"
    store.admit_job(1, ALICE, (), "ENDPOINT")  # a job here makes Alice a customer: the larger quota
    _put(store, ALICE, _data(tmp_path, "a2", 100_000))
    assert store.quota(ALICE) == 300_000 and store.quota(BOB) == 120_000


def test_a_dataset_over_the_size_limit__is_refused(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store", DatasetLimits(max_dataset_bytes=10_000))
    with pytest.raises(WorkerError, match="exceed this worker's limit of 10000 bytes per dataset"):
        _put(store, ALICE, _data(tmp_path, "big", 50_000))
    assert store.used(ALICE) == 0


def test_the_budget__evicts_least_recently_used_datasets_but_never_pinned_ones(tmp_path: Path) -> None:
    live: set[int] = set()
    limits = DatasetLimits(disk_budget_bytes=330_000, stranger_budget_bytes=330_000, stranger_quota_bytes=10**9)
    store = DatasetStore(tmp_path / "store", limits, is_live=lambda job: job in live)
    first = _put(store, ALICE, _data(tmp_path, "d1", 100_000))
    second = _put(store, ALICE, _data(tmp_path, "d2", 100_000))
    third = _put(store, ALICE, _data(tmp_path, "d3", 100_000))
    store.admit_job(7, BOB, [("train", first)], "ENDPOINT")  # a live job reads the oldest: pinned
    live.add(7)
    fourth = _put(store, ALICE, _data(tmp_path, "d4", 100_000))
    assert store.info(first) is not None and store.info(second) is None  # the LRU unpinned one went
    assert store.info(third) is not None and store.info(fourth) is not None
    assert store.pinned(first) and not store.evict(first)
    # everything left is pinned: a new put is refused, nothing is evicted
    store.admit_job(8, BOB, [("a", third), ("b", fourth)], "ENDPOINT")
    live.add(8)
    with pytest.raises(WorkerError, match="full of datasets live jobs read"):
        _put(store, ALICE, _data(tmp_path, "d5", 100_000))
    assert all(store.info(d) is not None for d in (first, third, fourth))
    live.clear()  # the jobs ended: the pins are gone
    _put(store, ALICE, _data(tmp_path, "d5", 100_000))
    assert store.info(first) is None


def test_a_stranger__can_only_evict_other_strangers_datasets(tmp_path: Path) -> None:
    limits = DatasetLimits(disk_budget_bytes=220_000, stranger_budget_bytes=220_000, stranger_quota_bytes=10**9)
    store = DatasetStore(tmp_path / "store", limits)
    store.admit_job(1, ALICE, (), "ENDPOINT")
    customer = _put(store, ALICE, _data(tmp_path, "c", 100_000))
    stranger = _put(store, BOB, _data(tmp_path, "s1", 100_000))
    _put(store, BOB, _data(tmp_path, "s2", 100_000))  # evicts Bob's own older one, not Alice's
    assert store.info(customer) is not None and store.info(stranger) is None


def test_a_job_naming_a_missing_dataset__is_refused_in_one_line_with_the_put_command(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store", DatasetLimits())
    missing = b"\x11" * 32
    with pytest.raises(BundleError) as err:
        store.admit_job(3, ALICE, [("train", missing)], "127.0.0.1:7000")
    text = str(err.value)
    assert "\n" not in text and format_dataset(missing) in text
    assert "flopex data put DIR --provider 127.0.0.1:7000" in text
    assert not store.reads(3, missing)


def test_a_job_output_folder__becomes_a_dataset_by_its_hash(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store", DatasetLimits())
    out = _tree(tmp_path / "out", {"model.pt": b"weights", "m.json": b"{}"})
    digest = store.add_tree(ALICE, out)
    assert digest == dataset_hash(out) and store.info(digest) is not None
    assert store.add_tree(BOB, out) == digest  # the same files: the same dataset, held once
    assert [d.hash for d in store.list(BOB)] == [digest]


def test_without_a_sandbox__the_data_folder_links_each_dataset(tmp_path: Path) -> None:
    bundle = _tree(tmp_path / "bundle", {"main.py": b"", "job.toml": b""})
    tree = _tree(tmp_path / "tree", {"a.txt": b"data"})
    bare = Sandbox(bwrap=str(tmp_path / "no-bwrap"), allow_unsandboxed=True, use_cgroups=False)
    try:
        space = bare.create_space(Limits(max_disk_bytes=1 << 20), bundle, (), {"train": tree})
        try:
            folder = Path(bare.job_folders(space)["data_dir"])
            assert (folder / "train" / "a.txt").read_bytes() == b"data"
            assert space.data_sources == {"train": tree}
        finally:
            space.release()
        assert tree.is_dir() and (tree / "a.txt").read_bytes() == b"data"  # released, the dataset stays
    finally:
        bare.close()


def test_an_unfinished_upload_left_idle__is_deleted_and_frees_the_quota(tmp_path: Path) -> None:
    store = DatasetStore(tmp_path / "store", DatasetLimits(upload_idle_s=3600))
    digest, archive = pack_dataset(_data(tmp_path, "d", 20_000))
    sha = hashlib.sha256(archive).digest()
    store.receive(ALICE, digest, len(archive), sha, 0, _chunks(archive[:5000]))
    assert store.used(ALICE) == len(archive)  # an upload counts its announced size from its first byte
    assert store.expire_parts() == 0
    store.limits = DatasetLimits(upload_idle_s=0)
    time.sleep(0.01)
    assert store.expire_parts() == 1
    assert store.used(ALICE) == 0 and store.held(ALICE, digest, sha) == 0
