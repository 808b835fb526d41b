"""What a dataset read by hash saves on a repeated job: bytes uploaded and seconds to a running job.

``python -m benchmarks.datasets [--mib 64] [--out FILE]`` starts a worker process on loopback and
runs the same job (a script that reads every byte of a MIB-sized dataset and writes its sha256)
three ways, end to end through gRPC and the sandbox:

- ``inline``: the data inside the bundle (``job.inputs``), as before datasets: every job uploads it;
- ``first``: the bundle names the dataset by hash; the worker lacks it, so the requester puts it
  (:func:`~marketplace.requester.datasets.ensure_datasets`) and then uploads the small bundle;
- ``repeat``: the same again: the worker holds the dataset, so only the bundle goes up.

For each: the bytes sent, ``upload_s`` (packed, hashed, uploaded, worker-side checks included)
and ``total_s`` (to the job's final event). It prints one JSON document; ``meets_goals`` holds
when the repeat sends no dataset byte and its upload takes at most a tenth of the first's.
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path
from typing import Any

READER = (
    "import hashlib, os, pathlib, sys\n"
    "root = pathlib.Path(sys.argv[1])\n"
    "h = hashlib.sha256()\n"
    "for p in sorted(root.rglob('*')):\n"
    "    if p.is_file():\n"
    "        with open(p, 'rb') as fh:\n"
    "            while b := fh.read(1 << 20):\n"
    "                h.update(b)\n"
    "pathlib.Path(os.environ['FLOPEX_OUTPUT_DIR'], 'digest.txt').write_text(h.hexdigest())\n"
)


def _bundle(root: Path, toml_job: str) -> Path:
    root.mkdir(parents=True)
    (root / "main.py").write_text(READER)
    (root / "job.toml").write_text(
        f'[job]\nentrypoint = "main.py"\n{toml_job}\n[resources]\ndevice = "cpu"\ntimeout_s = 600\n'
        '[market]\nmax_price = "1"\n'
    )
    return root


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.datasets")
    parser.add_argument("--mib", type=int, default=64, help="dataset size in MiB")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    args = parser.parse_args(argv)

    from eth_account import Account

    from benchmarks._env import emit, environment, worker_process
    from marketplace.protocol.auth import Domain
    from marketplace.protocol.bundle import load_bundle, pack_bundle
    from marketplace.protocol.datasets import dataset_hash, format_dataset
    from marketplace.requester.client import WorkerClient
    from marketplace.requester.datasets import DatasetIndex, ensure_datasets
    from worker.node.leases import DeviceRequirements, Lease, LeaseFile

    market = "0x" + "5a" * 20
    requester = Account.create()
    ids = itertools.count(1)
    with tempfile.TemporaryDirectory(prefix="flopex-bench-data-") as tmp_name:
        tmp = Path(tmp_name)
        key = tmp / "provider.key"
        key.write_text(Account.create().key.hex())
        leases_path = tmp / "leases.json"
        LeaseFile.write(leases_path, [])
        mb = str(args.mib * 3 + 64)
        leases: list[Lease] = []
        with worker_process(
            tmp / "worker",
            leases_path,
            key,
            market,
            *("--max-bundle-mb", mb, "--max-disk-mb", mb, "--max-file-mb", mb, "--memory-limit-mb", "2048"),
            *("--dataset-stranger-quota-mb", mb),
        ) as (_worker, hello):
            data = tmp / "data"
            data.mkdir()
            for i in range(4):
                with open(data / f"part-{i}.bin", "wb") as fh:
                    for _ in range(args.mib // 4 or 1):
                        fh.write(os.urandom(1 << 20))
            digest = dataset_hash(data)
            index = DatasetIndex(tmp / "requester")
            index.remember(digest, data)
            by_hash = _bundle(
                tmp / "by-hash", f'args = ["{{data_dir}}/train"]\ndatasets = {{ train = "{format_dataset(digest)}" }}'
            )
            inline = _bundle(tmp / "inline", 'args = ["{input_dir}/data"]\ninputs = []')
            (inline / "data").mkdir()
            for part in data.iterdir():
                (inline / "data" / part.name).write_bytes(part.read_bytes())

            def run(bundle: Path) -> dict[str, Any]:
                job_id = next(ids)
                t0 = time.perf_counter()
                archive = pack_bundle(bundle)
                leases.append(
                    Lease(
                        job_id,
                        requester.address,
                        (hello["provider"],),
                        load_bundle(bundle).hash,
                        int(time.time()) + 3600,
                        DeviceRequirements("cpu", 1),
                    )
                )
                LeaseFile.write(leases_path, leases)
                time.sleep(0.05)
                with WorkerClient(
                    f"127.0.0.1:{hello['port']}",
                    requester_key=requester.key,
                    domain=Domain(31337, market),
                    timeout_s=600,
                ) as client:
                    sent = ensure_datasets(client, archive, index)
                    client.upload_bundle(job_id, archive)
                    upload_s = time.perf_counter() - t0
                    client.start_job(job_id, 1)
                    final = client.wait(job_id, timeout_s=600)
                    total_s = time.perf_counter() - t0
                    assert final.HasField("finished"), final
                    out = client.download_results(job_id, tmp / f"results-{job_id}")
                digest_txt = (out.directory / "output" / "digest.txt").read_text()
                return {
                    "dataset_bytes_sent": sent,
                    "bundle_bytes_sent": len(archive),
                    "bytes_sent": sent + len(archive),
                    "upload_s": round(upload_s, 3),
                    "total_s": round(total_s, 3),
                    "data_sha256": digest_txt,
                }

            inline_run = run(inline)
            first = run(by_hash)
            repeat = run(by_hash)
    # every run read the same bytes (the same part files in the same order): the digests agree
    same = inline_run["data_sha256"] == first["data_sha256"] == repeat["data_sha256"]
    goals = {
        "repeat_uploads_no_dataset_byte": repeat["dataset_bytes_sent"] == 0,
        "repeat_upload_at_most_a_tenth_of_first": repeat["upload_s"] <= 0.1 * first["upload_s"],
        "every_run_read_the_same_data": same,
    }
    emit(
        {
            "benchmark": "datasets",
            "dataset_mib": args.mib,
            "inline": inline_run,
            "first": first,
            "repeat": repeat,
            "saved_bytes_on_repeat": first["bytes_sent"] - repeat["bytes_sent"],
            "saved_upload_s_on_repeat": round(first["upload_s"] - repeat["upload_s"], 3),
            "saved_total_s_on_repeat": round(first["total_s"] - repeat["total_s"], 3),
            "goals": goals,
            "meets_goals": all(goals.values()),
            "environment": environment(),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
