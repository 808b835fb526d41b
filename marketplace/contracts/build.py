"""Compile the Vyper contracts into the artifacts flopex uses at run time.

``python -m marketplace.contracts.build`` compiles every contract in ``contracts/`` with the pinned Vyper
compiler and writes ``marketplace/artifacts/<Contract>.json`` (ABI, creation and runtime bytecode,
the source's sha256 and the compiler version). ``python -m marketplace.contracts.build --check`` compiles
again and fails if any artifact differs from its source: the tests run it so that the ABIs and
bytecode the chain client deploys are always the ones the sources produce.

Only this step needs the compiler (the ``dev`` extra); the artifacts ship with the package.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from marketplace.errors import ConfigError

__all__ = ["ARTIFACT_DIR", "CONTRACTS", "CONTRACT_DIR", "build_artifact", "check", "write_all"]

ROOT = Path(__file__).resolve().parents[2]
CONTRACT_DIR = ROOT / "contracts"
ARTIFACT_DIR = Path(__file__).resolve().parent / "artifacts"
#: The deployable contracts, in deployment order.
CONTRACTS = ("ComputeToken", "ProviderRegistry", "JobMarket", "ProviderPool", "Reservations", "VerifierCourt")
COMPILER = "vyper"
COMPILER_VERSION = "0.4.3"


def _compiler_version() -> str:
    out = subprocess.run([sys.executable, "-m", "vyper", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().split("+")[0]


def build_artifact(name: str) -> dict[str, Any]:
    """Compile ``contracts/<name>.vy`` and return its artifact."""
    source = CONTRACT_DIR / f"{name}.vy"
    if not source.is_file():
        raise ConfigError(f"no contract source at {source}")
    version = _compiler_version()
    if version != COMPILER_VERSION:
        raise ConfigError(f"contracts need vyper {COMPILER_VERSION}, found {version}")
    proc = subprocess.run(
        [sys.executable, "-m", "vyper", "-f", "abi,bytecode,bytecode_runtime", str(source)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise ConfigError(f"vyper failed on {source.name}:\n{proc.stderr.strip()}")
    abi_line, bytecode, runtime = proc.stdout.strip().splitlines()
    return {
        "_generated": f"by `python -m marketplace.contracts.build` with {COMPILER} {version} from contracts/{name}.vy",
        "contract": name,
        "compiler": f"{COMPILER} {version}",
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "abi": json.loads(abi_line),
        "bytecode": bytecode,
        "bytecode_runtime": runtime,
    }


def _artifact_path(name: str) -> Path:
    return ARTIFACT_DIR / f"{name}.json"


def write_all() -> list[Path]:
    """Compile every contract and write its artifact; return the paths written."""
    ARTIFACT_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name in CONTRACTS:
        path = _artifact_path(name)
        path.write_text(json.dumps(build_artifact(name), indent=1, sort_keys=True) + "\n")
        written.append(path)
    return written


def check() -> list[str]:
    """Compile every contract and return the names whose artifact differs from a fresh build."""
    stale = []
    for name in CONTRACTS:
        path = _artifact_path(name)
        if not path.is_file() or json.loads(path.read_text()) != build_artifact(name):
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m marketplace.contracts.build", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if an artifact differs from its source")
    args = parser.parse_args(argv)
    if args.check:
        stale = check()
        if stale:
            print(f"stale artifacts: {', '.join(stale)}; run `python -m marketplace.contracts.build`", file=sys.stderr)
            return 1
        print("artifacts match their sources")
        return 0
    for path in write_all():
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
