"""Declared environments: what building one costs (cold) and what a cached one adds to a job (warm).

``python -m benchmarks.environments [--runs 5] [--packages 5] [--out FILE]`` writes ``--packages``
pure-Python wheels into a local wheelhouse (no network), then, with the worker's own
:class:`~worker.node.environments.EnvironmentCache` and bubblewrap sandbox:

- ``cold_build_s``: a bundle needing those packages, its environment built from nothing (uv in the
  sandbox: venv, resolution, install, the layer over the provider's torch), median of ``--runs``
  fresh caches;
- ``warm_lookup_ms``: the same bundle again, its environment found in the cache;
- with ``--pypi``, ``pypi.cold_build_s``: ``examples/extra_package``'s requirements built from PyPI;
- ``job_plain_s`` / ``job_warm_env_s``: a sandboxed job that imports torch, run with the worker's
  Python and with the cached environment's interpreter (which imports the packages too);
  ``warm_added_s`` is the difference plus the warm lookup.

Goal: a cached environment adds at most 1 s to a job (``meets_goals``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

GOAL_WARM_ADDED_S = 1.0


def _job(sandbox: object, bundle: object, python: Path | None) -> float:
    from worker.sandbox.runner import Limits, Sandbox, SandboxRequest

    assert isinstance(sandbox, Sandbox)
    limits = Limits(timeout_s=120)
    began = time.monotonic()
    space = sandbox.create_space(limits, bundle.root)  # type: ignore[attr-defined]
    try:
        req = SandboxRequest(name="envbench", space=space, entrypoint="main.py", limits=limits, python=python)
        proc = sandbox.start(req)
        with proc.stdout, proc.stderr:
            proc.stdout.read()
            err = proc.stderr.read()
        outcome = proc.wait()
        if outcome.exit_code != 0:
            raise SystemExit(f"the benchmark job failed: {err.decode(errors='replace')[-400:]}")
    finally:
        space.release()
    return time.monotonic() - began


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.environments")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--packages", type=int, default=5)
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument(
        "--pypi",
        action="store_true",
        help="also build examples/extra_package's requirements from PyPI (needs the network)",
    )
    args = parser.parse_args(argv)

    from benchmarks._env import emit, environment
    from marketplace.protocol.bundle import load_bundle
    from worker.node.environments import EnvironmentCache, EnvironmentSettings
    from worker.sandbox.runner import Sandbox
    from worker.testing.wheels import make_wheel

    sandbox = Sandbox()
    if not sandbox.sandboxed:
        raise SystemExit("benchmarks.environments needs bubblewrap (environments are built in the sandbox)")
    with tempfile.TemporaryDirectory(prefix="flopex-envbench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)
        names = [f"benchpkg{i}" for i in range(args.packages)]
        for name in names:
            make_wheel(root / "wheelhouse", name, "1.0", f"NAME = {name!r}\n" + "X = 1\n" * 200)
        bundle_dir = root / "bundle"
        bundle_dir.mkdir()
        (bundle_dir / "job.toml").write_text(
            '[job]\nentrypoint = "main.py"\n[environment]\nrequirements = "requirements.txt"\n'
            '[resources]\ndevice = "cpu"\n[market]\nmax_price = "1"\n'
        )
        (bundle_dir / "requirements.txt").write_text("".join(f"{n}==1.0\n" for n in names))
        # The same script runs with and without the environment: it imports its packages when they are there.
        probe = "".join(f"    import {n}\n" for n in names)
        (bundle_dir / "main.py").write_text(
            f"import torch\ntry:\n{probe}except ImportError:\n    pass\nprint(torch.ones(2).sum().item())\n"
        )
        bundle = load_bundle(bundle_dir)

        cold: list[float] = []
        warm: list[float] = []
        plain: list[float] = []
        with_env: list[float] = []
        for run in range(args.runs):
            settings = EnvironmentSettings(root / f"cache{run}", package_index=None, find_links=(root / "wheelhouse",))
            cache = EnvironmentCache(settings, sandbox)
            began = time.monotonic()
            with cache.use(bundle) as env:
                assert env is not None and not env.cached
            cold.append(time.monotonic() - began)
            began = time.monotonic()
            with cache.use(bundle) as env:
                assert env is not None and env.cached
                warm.append(time.monotonic() - began)
                plain.append(_job(sandbox, bundle, None))
                with_env.append(_job(sandbox, bundle, env.python))
        pypi: dict[str, object] | None = None
        if args.pypi:
            import shutil

            from worker.node.environments import EnvironmentBuildError

            example = Path(__file__).resolve().parent.parent / "examples" / "extra_package"
            shutil.copytree(example, root / "example")
            cache = EnvironmentCache(EnvironmentSettings(root / "pypi-cache"), sandbox)
            began = time.monotonic()
            try:
                with cache.use(load_bundle(root / "example")):
                    pypi = {"requirements": (example / "requirements.txt").read_text().split(), "cold_build_s": 0.0}
                pypi["cold_build_s"] = round(time.monotonic() - began, 3)
            except EnvironmentBuildError as exc:
                pypi = {"error": exc.message}
    sandbox.close()
    warm_lookup_s = statistics.median(warm)
    added = max(0.0, statistics.median(with_env) - statistics.median(plain)) + warm_lookup_s
    emit(
        {
            "benchmark": "environments",
            "runs": args.runs,
            "packages": args.packages,
            "source": "local wheelhouse (find-links), no package index",
            "sandbox_mode": sandbox.mode,
            "cold_build_s": round(statistics.median(cold), 3),
            "cold_build_s_all": [round(v, 3) for v in cold],
            "warm_lookup_ms": round(warm_lookup_s * 1000, 2),
            "job_plain_s": round(statistics.median(plain), 3),
            "job_warm_env_s": round(statistics.median(with_env), 3),
            "warm_added_s": round(added, 3),
            "goal_warm_added_s": GOAL_WARM_ADDED_S,
            "meets_goals": added <= GOAL_WARM_ADDED_S,
            "pypi": pypi,
            "environment": environment(),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
