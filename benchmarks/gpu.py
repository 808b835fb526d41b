"""CUDA readiness: the project's GPU paths, one after another, on a machine with an NVIDIA GPU.

``python -m benchmarks.gpu [--n 4096] [--epochs 20] [--out FILE]`` prints one JSON document. Each
section runs the project's own code on the GPU and reports what it measured:

- ``nvml``: :func:`worker.node.devices.detect_devices` (NVML first, torch.cuda second): model,
  memory, UUID, driver, compute capability of each GPU;
- ``capacity``: a capacity challenge as a worker runs it (:class:`worker.node.challenges.ChallengeRunner`
  on the ``cuda`` device), spot rows checked by the verifier's
  :func:`marketplace.protocol.capacity.verify_rows`, the GFLOP/s it attests
  (:func:`marketplace.verify.billing.attested_gflops`);
- ``freivalds``: :func:`marketplace.verify.freivalds.freivalds_check` of an honest and a wrong
  product on the GPU, and its cost as interleaved (check, product) pairs
  (:func:`benchmarks._pairs.interleaved_pairs`);
- ``metering``: CUDA-event time of a training run's kernels against the wall time a worker meters
  (the worker bills wall time × devices; the events say how much of it the GPU worked);
- ``replay``: ``examples/train_mlp`` run twice on the GPU with ``sdk.deterministic()`` (seeded
  generators, deterministic kernels, fixed cuBLAS workspace) and the same seed; its checkpoints
  compared with :func:`marketplace.verify.compare.compare_tensors` and byte for byte;
- ``market_job``: the same script as a CUDA job through the market on the embedded chain (post,
  instant auction, lease, upload over gRPC, sandboxed run on the GPU, results checked against the
  on-chain root, settlement), with one provider daemon and its worker in this process.

On a machine without an NVIDIA GPU every section says it was skipped and why, and the command
exits 0. ``--device cpu`` runs the sections that do not need NVML or CUDA events on the CPU, to try
the script's plumbing on any machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._env import emit, environment

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("nvml", "capacity", "freivalds", "metering", "replay", "market_job")


def cuda_status() -> tuple[bool, str]:
    """Whether a CUDA device is usable here, and if not, why not."""
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        built = torch.version.cuda
        why = "torch has no CUDA build" if built is None else f"torch (CUDA {built}) sees no NVIDIA GPU"
        return False, why
    return True, f"{torch.cuda.device_count()} CUDA device(s), torch CUDA {torch.version.cuda}"


def section_nvml() -> dict[str, Any]:
    from worker.node.devices import detect_devices

    devices = detect_devices(use_gpus=True)
    gpus = [d for d in devices if d.kind == "cuda"]
    # NVML fills in the driver and UUID; torch.cuda alone does not
    source = "nvml" if gpus and all(d.driver for d in gpus) else ("torch.cuda" if gpus else None)
    return {"devices": [_fields(d) for d in gpus], "count": len(gpus), "source": source}


def _fields(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(obj) and not isinstance(obj, type):
        return asdict(obj)
    return {"repr": repr(obj)}


def section_capacity(device: str, n: int) -> dict[str, Any]:
    import random
    import secrets

    from marketplace.protocol.capacity import verify_rows
    from marketplace.verify import billing
    from worker.node.challenges import ChallengeRunner
    from worker.node.devices import detect_devices

    devices = detect_devices(use_gpus=device == "cuda")
    runner = ChallengeRunner(devices, max_n=max(n, 1))
    rows = []
    for _ in range(3):
        seed = secrets.randbits(63)
        t0 = time.perf_counter()
        result = runner.run(seed, n, device, threading.Event())
        wall = time.perf_counter() - t0
        picked = random.SystemRandom().sample(range(n), k=min(8, n))
        got = runner.rows(result.challenge_id, picked)
        verify_rows(seed, n, result.root, {i: (row, proof) for i, row, proof in got})
        rows.append(
            {
                "device_s": round(result.elapsed_s, 4),
                "wall_s": round(wall, 4),
                "attested_gflops": billing.attested_gflops(result.flops, result.elapsed_s, wall),
                "rows_checked": len(picked),
            }
        )
    return {"n": n, "challenges": rows, "best_attested_gflops": max(r["attested_gflops"] for r in rows)}


def section_freivalds(device: str, n: int) -> dict[str, Any]:
    import torch

    from benchmarks._pairs import interleaved_pairs
    from marketplace.verify.freivalds import freivalds_check

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(n, n, generator=gen).to(dev)
    b = torch.randn(n, n, generator=gen).to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    c = a @ b
    sync()
    ok_honest, worst_honest = freivalds_check(a, b, c, seed=11, rounds=2, dtype=torch.float32)
    wrong = c.clone()
    wrong[n // 2, n // 3] += 1.0
    ok_wrong, worst_wrong = freivalds_check(a, b, wrong, seed=12, rounds=2, dtype=torch.float32)

    def product() -> None:
        a @ b
        sync()

    def check() -> None:
        freivalds_check(a, b, c, seed=13, rounds=1, dtype=torch.float32)
        sync()

    pairs = interleaved_pairs(check, product, rounds=11, warmup=2)
    return {
        "n": n,
        "honest_accepted": bool(ok_honest),
        "honest_worst": round(float(worst_honest), 4),
        "one_wrong_entry_rejected": not ok_wrong,
        "wrong_worst": round(float(worst_wrong), 4),
        "cost_fraction": round(pairs.median_ratio, 4),
        "cost_pairs": pairs.as_json(),
        "threads": torch.get_num_threads(),
    }


def _bundle(workdir: Path, device: str, epochs: int) -> Path:
    """examples/train_mlp as a bundle asking for ``device``."""
    bundle = workdir / "bundle"
    shutil.copytree(ROOT / "examples" / "train_mlp", bundle)
    toml = (bundle / "job.toml").read_text()
    toml = toml.replace('device = "cpu"', f'device = "{device}"').replace(
        'args = ["--epochs", "4"', f'args = ["--epochs", "{epochs}"'
    )
    (bundle / "job.toml").write_text(toml)
    return bundle


def _run_script(bundle: Path, out: Path, device: str, epochs: int, seed: int) -> float:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FLOPEX_DEVICE": device,
        "FLOPEX_SEED": str(seed),
        "FLOPEX_OUTPUT_DIR": str(out / "output"),
        "FLOPEX_CHECKPOINT_DIR": str(out / "checkpoints"),
    }
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, str(bundle / "train.py"), "--epochs", str(epochs)],
        cwd=bundle,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return time.perf_counter() - t0


def section_replay(device: str, epochs: int, workdir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from marketplace.verify.compare import compare_tensors

    bundle = _bundle(workdir, device, epochs)
    walls = [_run_script(bundle, workdir / f"run{i}", device, epochs, seed=1234) for i in (0, 1)]
    names = sorted(p.name for p in (workdir / "run0" / "checkpoints").glob("*.safetensors"))
    agree = identical = 0
    for name in names:
        first, second = workdir / "run0" / "checkpoints" / name, workdir / "run1" / "checkpoints" / name
        agree += compare_tensors(load_file(str(second)), load_file(str(first))).agree
        identical += first.read_bytes() == second.read_bytes()
    return {
        "epochs": epochs,
        "checkpoints": len(names),
        "agree_within_tolerance": agree,
        "byte_identical": identical,
        "deterministic": bool(names) and identical == len(names),
        "wall_s": [round(w, 3) for w in walls],
    }


def section_metering(device: str, epochs: int) -> dict[str, Any]:
    """CUDA-event time of a training loop's GPU work against its wall time (what a worker bills)."""
    import torch
    from torch import nn

    dev = torch.device(device)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(65536, 256, generator=gen).to(dev)
    y = torch.randn(65536, 1, generator=gen).to(dev)
    model = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    end = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
    torch.cuda.synchronize(dev)
    wall0 = time.perf_counter()
    start.record()
    for _ in range(epochs):
        for i in range(0, x.shape[0], 4096):
            loss = nn.functional.mse_loss(model(x[i : i + 4096]), y[i : i + 4096])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
    end.record()
    torch.cuda.synchronize(dev)
    wall = time.perf_counter() - wall0
    event_s = start.elapsed_time(end) / 1000
    return {
        "epochs": epochs,
        "wall_s": round(wall, 4),
        "cuda_event_s": round(event_s, 4),
        "event_over_wall": round(event_s / wall, 4) if wall else None,
        "metered_device_seconds_wall_based": max(1, round(wall)),
    }


def section_market_job(device: str, epochs: int, workdir: Path) -> dict[str, Any]:
    """A CUDA job through the market on the embedded chain, as benchmarks.e2e runs one on the CPU."""
    from marketplace.chain.client import Chain, dev_account
    from marketplace.contracts.devmarket import setup_dev_market
    from marketplace.market.pricing import strategy_from_spec
    from marketplace.requester.requester import JobOptions, Requester
    from marketplace.types import ONE_TOKEN, Auction, DeviceKind, Policy, parse_tokens
    from worker.node.chain_leases import ChainLeases
    from worker.node.config import WorkerConfig
    from worker.node.devices import detect_devices
    from worker.node.service import create_server
    from worker.provider.daemon import ProviderDaemon, ProviderSettings

    bundle = _bundle(workdir, device, epochs)
    kind = DeviceKind.CUDA if device == "cuda" else DeviceKind.CPU
    found = [d for d in detect_devices(use_gpus=device == "cuda") if d.kind == device]
    chain = Chain.embedded()
    contracts = setup_dev_market(chain, accounts=5)
    config = WorkerConfig(
        data_dir=workdir / "worker",
        leases=ChainLeases(contracts, refresh_s=0.05),
        chain_id=chain.chain_id,
        market_address=contracts.market.address,
    )
    server, port = create_server(config)
    server.start()
    settings = ProviderSettings(
        endpoint=f"127.0.0.1:{port}",
        price_floor=parse_tokens("0.2"),
        strategy=strategy_from_spec("fixed"),
        stake=200 * ONE_TOKEN,
        device_model=found[0].model if found else device,
        device_kind=kind,
        gpu_count=1,
        memory_mb=4096,
        poll_interval_s=0.05,
    )
    daemon = ProviderDaemon(contracts, dev_account(4), server, settings, workdir / "provider.json")
    daemon.ensure_registered()
    daemon.start()
    while chain.now() > time.time():
        time.sleep(0.2)
    try:
        requester = Requester(contracts, dev_account(2))
        options = JobOptions(auction=Auction.INSTANT, policy=Policy.NONE, challenge_window_s=5)
        started = time.perf_counter()
        job_id = requester.submit(bundle, options)
        outcome = requester.follow(job_id, workdir / "results", timeout_s=540)
        total = time.perf_counter() - started
    finally:
        daemon.stop()
        server.stop()
    metrics = next((workdir / "results").rglob("metrics.json"), None)
    ran_on = None
    if metrics is not None:
        import json

        ran_on = json.loads(metrics.read_text()).get("device")
    return {"job_id": job_id, "wall_s": round(total, 3), "ran_on": ran_on, "bill": outcome.slots}


def run(device: str, n: int, epochs: int, only: set[str]) -> dict[str, Any]:
    ok, why = cuda_status()
    sections: dict[str, Any] = {}
    needs_cuda = {"nvml", "metering"}
    with tempfile.TemporaryDirectory(prefix="flopex-gpu-") as tmp_name:
        tmp = Path(tmp_name)
        plan: dict[str, Callable[[], dict[str, Any]]] = {
            "nvml": section_nvml,
            "capacity": lambda: section_capacity(device, n),
            "freivalds": lambda: section_freivalds(device, n),
            "metering": lambda: section_metering(device, epochs),
            "replay": lambda: section_replay(device, epochs, tmp / "replay"),
            "market_job": lambda: section_market_job(device, epochs, tmp / "market"),
        }
        for name in SECTIONS:
            if name not in only:
                sections[name] = {"status": "skipped", "reason": "not asked for (--only)"}
                continue
            if device == "cuda" and not ok:
                sections[name] = {"status": "skipped", "reason": f"no CUDA device: {why}"}
                continue
            if device == "cpu" and name in needs_cuda:
                sections[name] = {"status": "skipped", "reason": "needs an NVIDIA GPU (NVML, CUDA events)"}
                continue
            (tmp / name).mkdir(exist_ok=True)
            t0 = time.perf_counter()
            try:
                sections[name] = {"status": "ran", **plan[name](), "seconds": round(time.perf_counter() - t0, 2)}
            except Exception as exc:  # a section that fails is reported, the others still run
                sections[name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
    return {"cuda": {"available": ok, "detail": why}, "sections": sections}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--n", type=int, default=4096, help="capacity challenge and Freivalds size")
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the training runs")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections to run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if unknown := only - set(SECTIONS):
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if args.n < 1 or args.epochs < 1:
        parser.error("--n and --epochs must be positive")
    started = time.perf_counter()
    result = run(args.device, args.n, args.epochs, only)
    sections = result["sections"]
    ran = [k for k, v in sections.items() if v["status"] == "ran"]
    document: dict[str, Any] = {
        "benchmark": "gpu",
        "environment": environment(),
        "parameters": vars(args),
        **result,
        "ran": ran,
        "skipped": [k for k, v in sections.items() if v["status"] == "skipped"],
        "failed": [k for k, v in sections.items() if v["status"] == "failed"],
        "seconds": round(time.perf_counter() - started, 1),
        "goals": {"seconds_max": 600, "freivalds_cost_max": 0.10, "replay_deterministic": True},
    }
    if args.device == "cuda" and result["cuda"]["available"]:
        fr, rp = sections.get("freivalds", {}), sections.get("replay", {})
        document["meets_goals"] = {
            "all_sections_ran": len(ran) == len(only),
            "under_10_minutes": document["seconds"] <= 600,
            "freivalds_cost": fr.get("cost_fraction", 1.0) <= 0.10,
            "replay_deterministic": bool(rp.get("deterministic")),
        }
    else:
        document["meets_goals"] = None  # nothing was measured on a GPU here
    emit(document, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
