"""Datasets by hash through a real worker process over gRPC: put, resume, refuse, mount, chain jobs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from eth_account.signers.local import LocalAccount

from marketplace.errors import VerificationError, WorkerError
from marketplace.protocol.auth import sign_request
from marketplace.protocol.bundle import load_bundle, pack_bundle
from marketplace.protocol.datasets import dataset_hash, dataset_request_digest, format_dataset, pack_dataset
from marketplace.requester.client import WorkerClient
from marketplace.requester.datasets import (
    DatasetIndex,
    dataset_from_job,
    download_dataset,
    ensure_datasets,
    has_dataset,
    list_datasets,
    put_dataset,
    query_dataset,
)
from marketplace.rpc import worker_pb2 as pb
from tests.worker.workerkit import DOMAIN, REPO, WorkerProcess, lease_for, next_job_id, submit

READER = """
import json, os, pathlib, sys
data = pathlib.Path(os.environ["FLOPEX_DATA_DIR"]) / "train"
arg = pathlib.Path(sys.argv[1])
assert arg == data, (arg, data)
total = sum(int(x) for x in (data / "numbers.txt").read_text().split())
try:
    (data / "numbers.txt").write_text("0")
    writable = True
except OSError:
    writable = False
out = pathlib.Path(os.environ["FLOPEX_OUTPUT_DIR"])
(out / "sum.json").write_text(json.dumps({"sum": total, "writable": writable}))
"""


def _dataset(tmp_path: Path, name: str = "data", numbers: range = range(1, 101)) -> Path:
    folder = tmp_path / name
    (folder / "extra").mkdir(parents=True)
    (folder / "numbers.txt").write_text(" ".join(str(n) for n in numbers))
    (folder / "extra" / "noise.bin").write_bytes(os.urandom(3 << 20))
    return folder


def _reader_bundle(tmp_path: Path, digest: bytes, name: str = "reader") -> Path:
    root = tmp_path / name
    root.mkdir()
    (root / "main.py").write_text(READER)
    (root / "job.toml").write_text(
        '[job]\nentrypoint = "main.py"\nargs = ["{data_dir}/train"]\n'
        f'datasets = {{ train = "{format_dataset(digest)}" }}\n'
        '[resources]\ndevice = "cpu"\ntimeout_s = 60\n[market]\nmax_price = "1"\n'
    )
    return root


def _run(worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, bundle: Path, tmp_path: Path) -> int:
    archive = tmp_path / f"{bundle.name}.tar.gz"
    pack_bundle(bundle, archive)
    job_id = submit(worker, client, requester.address, archive, load_bundle(bundle).hash)
    final = client.wait(job_id, timeout_s=120)
    assert final.HasField("finished"), final
    return job_id


def test_put__uploads_once_and_resumes_after_a_break(client: WorkerClient, tmp_path: Path) -> None:
    folder = _dataset(tmp_path)
    digest = dataset_hash(folder)
    assert not has_dataset(client, digest)
    first = put_dataset(client, folder, chunk_size=256 << 10, stop_after=1 << 20)
    assert first.hash == digest and first.name == format_dataset(digest)
    assert not first.already_held and first.files == 2
    # the first stream stopped after 1 MiB; the second resumed there: no byte was sent twice
    assert first.bytes_sent == first.archive_bytes
    assert has_dataset(client, digest)
    again = put_dataset(client, folder)
    assert again.already_held and again.bytes_sent == 0
    listed = list_datasets(client)
    assert digest in [bytes(d.dataset_hash) for d in listed.datasets]
    assert listed.quota_used_bytes >= first.size_bytes and listed.quota_bytes > listed.quota_used_bytes


def test_put_of_files_under_another_name__is_refused(client: WorkerClient, tmp_path: Path) -> None:
    claimed = dataset_hash(_dataset(tmp_path, "real"))
    _, archive = pack_dataset(_dataset(tmp_path, "fake", range(5)))
    sha = hashlib.sha256(archive).digest()
    signed = sign_request(client._key, DOMAIN, 0, "PutDataset", dataset_request_digest(claimed, sha))  # type: ignore[arg-type]
    auth = pb.RequestAuth(nonce=signed.nonce.to_bytes(32, "big"), expiry=signed.expiry, signature=signed.signature)
    head = pb.DatasetHeader(dataset_hash=claimed, archive_size=len(archive), archive_sha256=sha, auth=auth)
    messages = [pb.DatasetChunk(header=head), pb.DatasetChunk(data=archive, sha256=sha)]
    with pytest.raises(grpc.RpcError) as err:
        client._stub.PutDataset(iter(messages), timeout=30)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "nothing was kept" in (err.value.details() or "")
    assert not has_dataset(client, claimed)


def test_a_damaged_put_without_chunk_hashes__is_data_loss_and_nothing_is_kept(
    worker: WorkerProcess, client: WorkerClient, tmp_path: Path
) -> None:
    folder = _dataset(tmp_path, numbers=range(13))
    digest, archive = pack_dataset(folder)
    sha = hashlib.sha256(archive).digest()
    damaged = bytearray(archive)
    damaged[len(archive) // 2] ^= 0x01  # inside the random file
    used = list_datasets(client).quota_used_bytes
    auth = client.auth(0, "PutDataset", dataset_request_digest(digest, sha))
    head = pb.DatasetHeader(dataset_hash=digest, archive_size=len(archive), archive_sha256=sha, auth=auth)
    step = 256 << 10
    messages = [pb.DatasetChunk(header=head)]
    messages += [pb.DatasetChunk(data=bytes(damaged[i : i + step])) for i in range(0, len(damaged), step)]
    with pytest.raises(grpc.RpcError) as err:
        client._stub.PutDataset(iter(messages), timeout=30)
    assert err.value.code() == grpc.StatusCode.DATA_LOSS
    assert "dataset archive does not match its sha256" in (err.value.details() or "")
    assert not has_dataset(client, digest)
    assert query_dataset(client, digest, sha).received_bytes == 0
    assert list_datasets(client).quota_used_bytes == used
    store = worker.data_dir / "datasets"
    assert not list((store / "parts").glob(f"*{digest.hex()}*"))
    assert not (store / "trees" / digest.hex()).exists()
    # the right bytes (put without chunk hashes, the default) are kept; with them, too
    put = put_dataset(client, folder)
    assert put.hash == digest and not put.already_held and has_dataset(client, digest)
    hashed = put_dataset(
        client, _dataset(tmp_path, "hashed"), chunk_size=256 << 10, stop_after=1 << 20, chunk_hashes=True
    )
    assert hashed.bytes_sent == hashed.archive_bytes and has_dataset(client, hashed.hash)


def test_an_unsigned_or_replayed_put__is_refused(client: WorkerClient, tmp_path: Path) -> None:
    digest, archive = pack_dataset(_dataset(tmp_path))
    sha = hashlib.sha256(archive).digest()
    head = pb.DatasetHeader(dataset_hash=digest, archive_size=len(archive), archive_sha256=sha)
    with pytest.raises(grpc.RpcError) as err:
        client._stub.PutDataset(iter([pb.DatasetChunk(header=head)]), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    auth = client.auth(0, "QueryDataset", dataset_request_digest(digest, sha))
    request = pb.QueryDatasetRequest(dataset_hash=digest, archive_sha256=sha, auth=auth)
    client._stub.QueryDataset(request, timeout=30)
    with pytest.raises(grpc.RpcError) as err:
        client._stub.QueryDataset(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "replayed" in (err.value.details() or "")


@pytest.mark.bwrap
def test_a_job__reads_its_dataset_read_only_by_hash_and_its_outputs_feed_the_next_job(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    folder = _dataset(tmp_path)
    digest = put_dataset(client, folder).hash
    job_id = _run(worker, client, requester, _reader_bundle(tmp_path, digest), tmp_path)
    results = client.download_results(job_id, tmp_path / "r1", provider=worker.provider)
    assert (results.directory / "output" / "sum.json").read_text() == '{"sum": 5050, "writable": false}'

    # the job's outputs, kept as a dataset, are the next job's input by hash: nothing uploaded
    chained = dataset_from_job(client, job_id)
    assert chained == dataset_hash(results.directory / "output")
    assert has_dataset(client, chained)
    # a job reading it may download it (what a verifier does to re-run it), checked against its name
    second = tmp_path / "second"
    second.mkdir()
    (second / "main.py").write_text(
        "import os, pathlib, shutil\n"
        "d = pathlib.Path(os.environ['FLOPEX_DATA_DIR']) / 'prev'\n"
        "shutil.copy(d / 'sum.json', pathlib.Path(os.environ['FLOPEX_OUTPUT_DIR']) / 'again.json')\n"
    )
    (second / "job.toml").write_text(
        f'[job]\nentrypoint = "main.py"\ndatasets = {{ prev = "{format_dataset(chained)}" }}\n'
        '[resources]\ndevice = "cpu"\ntimeout_s = 60\n[market]\nmax_price = "1"\n'
    )
    job2 = _run(worker, client, requester, second, tmp_path)
    out = client.download_results(job2, tmp_path / "r2", provider=worker.provider)
    assert (out.directory / "output" / "again.json").read_text() == '{"sum": 5050, "writable": false}'
    got = download_dataset(client, job2, chained, tmp_path / "fetched")
    assert dataset_hash(got) == chained


def test_a_bundle_naming_a_dataset_the_worker_lacks__is_refused_with_the_put_command(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    folder = _dataset(tmp_path, numbers=range(7))
    digest = dataset_hash(folder)
    bundle = _reader_bundle(tmp_path, digest)
    archive = pack_bundle(bundle)
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, load_bundle(bundle).hash))
    with pytest.raises(WorkerError) as err:
        client.upload_bundle(job_id, archive)
    assert err.value.code == "INVALID_ARGUMENT"
    assert format_dataset(digest) in err.value.message and "flopex data put DIR --provider" in err.value.message
    assert "\n" not in err.value.message

    # what a requester's submit does: put what the worker lacks from the folder it knows, then the bundle
    index = DatasetIndex(tmp_path / "requester")
    with pytest.raises(Exception, match="no folder here holds it"):
        ensure_datasets(client, archive, index)
    index.remember(digest, folder)
    sent = ensure_datasets(client, archive, index)
    assert sent > 3 << 20
    assert ensure_datasets(client, archive, index) == 0  # the next job on the same data uploads nothing
    status = client.upload_bundle(job_id, archive)
    assert status.complete


def test_a_stranger__cannot_download_a_jobs_dataset_or_make_one_from_its_outputs(
    worker: WorkerProcess, client: WorkerClient, stranger: LocalAccount, tmp_path: Path
) -> None:
    folder = _dataset(tmp_path, numbers=range(3))
    digest = put_dataset(client, folder).hash
    with WorkerClient(worker.target, requester_key=stranger.key, domain=DOMAIN, timeout_s=20) as other:
        with pytest.raises(WorkerError) as err:
            download_dataset(other, 1, digest, tmp_path / "x")
        assert err.value.code == "PERMISSION_DENIED"
        with pytest.raises(WorkerError) as err:
            dataset_from_job(other, 1)
        assert err.value.code == "PERMISSION_DENIED"
        assert list(list_datasets(other).datasets) == []  # the list is per account


def test_a_dataset_altered_on_the_worker__is_refused_by_whoever_fetches_it(
    worker: WorkerProcess, client: WorkerClient, requester: LocalAccount, tmp_path: Path
) -> None:
    folder = _dataset(tmp_path, numbers=range(11))
    digest = put_dataset(client, folder).hash
    bundle = _reader_bundle(tmp_path, digest)
    job_id = next_job_id()
    worker.add_lease(lease_for(job_id, requester.address, worker.provider, load_bundle(bundle).hash))
    assert client.upload_bundle(job_id, pack_bundle(bundle)).complete
    assert dataset_hash(download_dataset(client, job_id, digest, tmp_path / "good")) == digest
    numbers = worker.data_dir / "datasets" / "trees" / digest.hex() / "numbers.txt"
    numbers.chmod(0o644)
    numbers.write_text("1 2 3")  # a provider serving other data under the name
    with pytest.raises(VerificationError, match="hash to data:"):
        download_dataset(client, job_id, digest, tmp_path / "bad")


def test_the_data_commands__put_once_then_say_it_is_held(worker: WorkerProcess, tmp_path: Path) -> None:
    folder = _dataset(tmp_path, numbers=range(13))
    name = format_dataset(dataset_hash(folder))
    base = [sys.executable, "-m", "flopex", "data"]
    where = ["--provider", worker.target, "--dev", "3", "--json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "FLOPEX_HOME": str(tmp_path / "home")}

    def flopex(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

    hashed = flopex("hash", str(folder), "--json")
    assert json.loads(hashed.stdout)["dataset"] == name
    missing = flopex("has", name, *where)
    assert missing.returncode == 1 and json.loads(missing.stdout)["present"] is False
    assert f"flopex data put DIR --provider {worker.target}" in missing.stderr
    put = flopex("put", str(folder), *where)
    assert put.returncode == 0, put.stderr
    first = json.loads(put.stdout)
    assert first["dataset"] == name and first["bytes_sent"] > 3 << 20 and not first["already_held"]
    again = json.loads(flopex("put", str(folder), *where).stdout)
    assert again["already_held"] and again["bytes_sent"] == 0
    assert json.loads(flopex("has", name, *where).stdout)["present"] is True
    listed = json.loads(flopex("ls", *where).stdout)
    assert [d["dataset"] for d in listed["datasets"]] == [name]
    remembered = json.loads(next((tmp_path / "home").glob("requester-*/datasets.json")).read_text())
    assert remembered == {name: str(folder.resolve())}
    bad = flopex("has", "data:zz", *where)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "not a dataset name" in bad.stderr
